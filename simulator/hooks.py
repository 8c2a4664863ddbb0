"""The test hooks under /_sim/: stats, truth (Dome or Polymarket view), faults, and the admin calls.

Hooks need no key, are not rate-limited and are not counted as API requests. Admin calls that
move the simulated world forward are counted apart as ``requests.admin`` (outside
``requests_total``); a bad body is a 400 ``invalid_admin`` and changes nothing:

* ``POST /_sim/admin/add_trades`` ``{"wallet": "0x..", "count": n}`` or ``{"wallets": {"0x..": n,
  ...}}`` -> ``{"wallets": {address: new trade count}, "now": clock}`` (Simulator.add_trades_many).
* ``POST /_sim/admin/settle_markets`` ``{"condition_ids": [...]}`` or ``{"count": n}`` (the n
  lowest-index open markets, fewer if fewer are open) -> ``{"condition_ids": [settled],
  "closed_events": [event_slug closed by this call], "now": clock}``.

Both views follow: added fills show on /v2/trades once older than the lag, settled markets close
on Gamma and resolve on /v2/resolutions.
"""

from __future__ import annotations

import json
from typing import Any

from simulator.dome_api import _dumps, _one


class SimHooks:
    """The /_sim/ endpoints, mixed into the HTTP handler."""

    def _sim_endpoint(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes
    ) -> None:
        sim = self.server.sim
        if method == "GET" and path == "/_sim/stats":
            self._send(200, _dumps(sim.stats()), record=False)
        elif method == "POST" and path == "/_sim/reset_stats":
            sim.reset_stats()
            self._send(200, _dumps({"ok": True}), record=False)
        elif method == "GET" and path == "/_sim/health":
            self._send(200, _dumps({"ok": True}), record=False)
        elif method == "GET" and path == "/_sim/truth":
            wallet = _one(query, "wallet")
            source = _one(query, "source") or "dome"
            rows = (_one(query, "rows") or "true").lower() not in ("false", "0")
            if source not in ("dome", "polymarket"):
                self._error(
                    400, "invalid_source", "source must be dome or polymarket", record=False
                )
                return
            if wallet is not None:
                truth = sim.wallet_truth(wallet, source=source)
            elif source == "dome":
                truth = sim.truth()
            else:
                truth = sim.truth(source="polymarket", rows=rows)
            self._send(200, _dumps(truth), record=False)
        elif path == "/_sim/faults" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    payload = json.loads(body or b"[]")
                    if isinstance(payload, dict) and set(payload) == {"spec"}:
                        payload = payload["spec"]
                    if not isinstance(payload, (list, str)):
                        raise ValueError("expected a list of rules or {'spec': '...'}")
                    sim.set_faults(payload)
                except ValueError as exc:
                    self._error(400, "invalid_faults", str(exc), record=False)
                    return
            rules = [rule.to_dict() for rule in sim.faults()]
            self._send(200, _dumps({"faults": rules}), record=False)
        elif method == "POST" and path in ("/_sim/admin/add_trades", "/_sim/admin/settle_markets"):
            sim._stats.admin()
            try:
                payload = json.loads(body or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError("expected a JSON object")
                if path.endswith("add_trades"):
                    answer = self._admin_add_trades(payload)
                else:
                    answer = self._admin_settle(payload)
            except ValueError as exc:  # json.JSONDecodeError is one
                self._error(400, "invalid_admin", str(exc), record=False)
                return
            self._send(200, _dumps(answer), record=False)
        else:
            self._error(404, "not_found", f"no such simulator endpoint: {path}", record=False)

    def _admin_add_trades(self, payload: dict[str, Any]) -> dict[str, Any]:
        sim = self.server.sim
        if set(payload) == {"wallet", "count"}:
            if not isinstance(payload["wallet"], str):
                raise ValueError("wallet must be an address")
            counts = {payload["wallet"]: payload["count"]}
        elif set(payload) == {"wallets"} and isinstance(payload["wallets"], dict):
            counts = payload["wallets"]
        else:
            raise ValueError('expected {"wallet": "0x..", "count": n} or {"wallets": {"0x..": n}}')
        return {"wallets": sim._add_trades(counts), "now": sim.simulator.now()}

    def _admin_settle(self, payload: dict[str, Any]) -> dict[str, Any]:
        sim = self.server.sim
        if set(payload) == {"condition_ids"}:
            ids = payload["condition_ids"]
            if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
                raise ValueError("condition_ids must be a list of strings")
            settled, closed = sim._settle(ids, None)
        elif set(payload) == {"count"}:
            settled, closed = sim._settle(None, payload["count"])
        else:
            raise ValueError('expected {"condition_ids": [...]} or {"count": n}')
        return {"condition_ids": settled, "closed_events": closed, "now": sim.simulator.now()}

"""ReadWallets: the `traders` table's addresses, normalized; anything that is not an address is a reject."""

from __future__ import annotations

import re
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from pipeline.warehouse import WarehouseRef
from transforms.metrics import NAMESPACE

REJECTS = "rejects"
_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")


def normalize_wallet(raw: object) -> tuple[str | None, str | None]:
    """(address, None) for a usable wallet, (None, reason) otherwise: trimmed, lowercased, 0x+40 hex."""
    if raw is None:
        return None, "null wallet_address"
    if not isinstance(raw, str):
        return None, f"not a string: {type(raw).__name__}"
    text = raw.strip().lower()
    if not text:
        return None, "empty wallet_address"
    if not text.startswith("0x") and len(text) == 40:
        text = "0x" + text
    if not _ADDRESS.match(text):
        return None, "not 0x followed by 40 hex digits"
    return text, None


class _ReadWarehouseFn(beam.DoFn):
    """Reads one query's rows from the warehouse inside the graph (one code path for every runner)."""

    def __init__(self, warehouse: WarehouseRef, method: str) -> None:
        self._warehouse, self._method = warehouse, method

    def process(self, _: object) -> Iterator[object]:
        with self._warehouse.open() as warehouse:
            yield from getattr(warehouse, self._method)()


class ReadFromWarehouse(beam.PTransform):
    """The rows one warehouse read method yields, as a PCollection (a root of the graph)."""

    def __init__(self, warehouse: WarehouseRef, method: str) -> None:
        super().__init__()
        self._fn = _ReadWarehouseFn(warehouse, method)

    def expand(self, pbegin):
        return pbegin | "Start" >> beam.Create([None]) | "Read" >> beam.ParDo(self._fn)


class _NormalizeFn(beam.DoFn):
    def __init__(self, run_id: str) -> None:
        self._run_id = run_id
        self._rejected = Metrics.counter(NAMESPACE, "wallets_rejected")

    def process(self, raw: object) -> Iterator[object]:
        wallet, reason = normalize_wallet(raw)
        if wallet is not None:
            yield wallet
            return
        self._rejected.inc()
        shown = raw if isinstance(raw, str) or raw is None else repr(raw)
        yield TaggedOutput(
            REJECTS, {"wallet_address": shown, "reason": reason, "run_id": self._run_id}
        )


class ReadWallets(beam.PTransform):
    """Normalized wallets (main output) and reject rows (`rejects`) from `traders`.

    An address listed twice (or in two spellings) comes out twice: SelectWallets groups by wallet
    anyway, and a Distinct of its own here was one more barrier in front of the first request."""

    def __init__(self, warehouse: WarehouseRef, run_id: str) -> None:
        super().__init__()
        self._warehouse, self._run_id = warehouse, run_id

    def expand(self, pbegin):
        raw = pbegin | "ReadTraders" >> ReadFromWarehouse(self._warehouse, "read_traders")
        checked = raw | "Normalize" >> beam.ParDo(_NormalizeFn(self._run_id)).with_outputs(
            REJECTS, main="wallets"
        )
        return {"wallets": checked.wallets, REJECTS: checked[REJECTS]}

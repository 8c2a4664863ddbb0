"""A deterministic, fault-injecting API simulator over HTTP on 127.0.0.1: Dome and Polymarket, one world.

Top level on purpose: it never ships to Dataflow workers (setup.py packages pipeline* and
transforms* only). Modules: config (SimConfig, faults grammar, buckets), data (the seeded world),
polymarket_view (that world as Polymarket rows, Gamma objects, resolutions), http (server and
routing), dome_api, polymarket_api, limits (rate limits and stats), faults (the rule engine),
hooks (/_sim/*), server (SimServer, serve), cli (`python -m pipeline simulate`).

Tests and the demo prove the production client against it::

    from simulator import SimConfig, serve

    with serve(SimConfig(seed=7, wallets=50, tier="dev")) as sim:
        client = DomeClient(base_url=sim.base_url, api_key=sim.api_key)
        ...
        assert sim.stats()["peak_1s_accepted"] <= 100
        # Polymarket: data_api_url = gamma_api_url = sim.root_url, no key
        truth = sim.truth(source="polymarket")
"""

from simulator.config import (
    FAULT_KINDS,
    PM_BUCKETS,
    PM_THROTTLES,
    TIERS,
    FaultRule,
    SimConfig,
    parse_fault_spec,
)
from simulator.data import Simulator
from simulator.server import SimServer, serve

__all__ = [
    "FAULT_KINDS",
    "PM_BUCKETS",
    "PM_THROTTLES",
    "TIERS",
    "FaultRule",
    "SimConfig",
    "SimServer",
    "Simulator",
    "parse_fault_spec",
    "serve",
]

"""A deterministic, fault-injecting Dome API simulator served over HTTP on 127.0.0.1.

Tests and the demo prove the production client against it::

    from pipeline.simulator import SimConfig, serve

    with serve(SimConfig(seed=7, wallets=50, tier="dev")) as sim:
        client = DomeClient(base_url=sim.base_url, api_key=sim.api_key)
        ...
        assert sim.stats()["peak_1s_accepted"] <= 100
"""

from pipeline.simulator.config import (
    FAULT_KINDS,
    TIERS,
    FaultRule,
    SimConfig,
    parse_fault_spec,
)
from pipeline.simulator.data import Simulator
from pipeline.simulator.server import SimServer, serve

__all__ = [
    "FAULT_KINDS",
    "TIERS",
    "FaultRule",
    "SimConfig",
    "SimServer",
    "Simulator",
    "parse_fault_spec",
    "serve",
]

"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def sim_server() -> Iterator[Callable[..., Any]]:
    """Factory: `sim_server(**SimConfig overrides) -> SimServer` on 127.0.0.1, closed at teardown."""
    from simulator import SimConfig, serve

    servers = []

    def start(**overrides: Any) -> Any:
        server = serve(SimConfig(**overrides))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()

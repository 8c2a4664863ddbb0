"""The suite's own guard (conftest.loopback_only): a test that would leave 127.0.0.1 fails at
once, naming the host, and loopback stays open."""

from __future__ import annotations

import socket

import pytest
import requests


def test_a_lookup_or_a_connection_beyond_loopback_fails_naming_the_host():
    with pytest.raises(OSError, match=r"looked up 'data-api\.polymarket\.com'"):
        socket.getaddrinfo("data-api.polymarket.com", 443)
    with (
        socket.socket() as raw,
        pytest.raises(OSError, match=r"connected to \('192\.0\.2\.1', 80\)"),
    ):
        raw.connect(("192.0.2.1", 80))  # TEST-NET-1, no lookup first
    with pytest.raises(requests.ConnectionError, match=r"tests stay on 127\.0\.0\.1"):
        requests.get("https://data-api.polymarket.com/v2/status", timeout=1)


def test_loopback_stays_open(sim_server):
    server = sim_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
    assert socket.getaddrinfo("localhost", server.port)

"""Shared pytest fixtures: the simulator, and the `world` the end-to-end tests run in."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import World, seed_traders

# The bucket and project of the production path's stand-ins (gcp-storage-emulator, bqemulator).
PROJECT = "test-project"
BUCKET = "backfill-staging"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "world(**how): how the `world` fixture builds its world: SimConfig overrides, `traders` "
        "(the values of `traders`, made from the wallets), `warehouse` ('duckdb' or 'bigquery'); "
        "a test's marker adds to its module's",
    )


def _loopback(host: object) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a name: resolving it would already leave the machine


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches beyond 127.0.0.1 (the standard): a name lookup or a connection to any
    other host fails at once with a line naming it, in this process (a test's subprocesses
    are on their own: they are given loopback URLs). A test that forgot a URL option (the
    default source is the real API) fails instead of quietly asking the internet."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host):
            raise OSError(f"a test looked up {host!r}: tests stay on 127.0.0.1")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise OSError(f"a test connected to {address!r}: tests stay on 127.0.0.1")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


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


@pytest.fixture(scope="module")
def emulators(tmp_path_factory) -> Iterator[tuple[Any, Any]]:
    """gcp-storage-emulator and bqemulator, one pair a module (BigQuery loads read the GCS files)."""
    from tests.bq_emulator import BigQueryEmulator
    from tests.gcs_emulator import StorageEmulator

    gcs = StorageEmulator(tmp_path_factory.mktemp("gcs"))
    with gcs, BigQueryEmulator(gcs.objects_root, project=PROJECT) as bq:
        yield gcs, bq


@pytest.fixture
def source() -> str:
    """The source the `world`'s runs fetch from; a test or module parametrizes it for both."""
    return "dome"


@pytest.fixture
def world(request, source, tmp_path, sim_server, monkeypatch) -> World:
    """A simulator, a warehouse whose `traders` are its wallets, a staging root, and `source`.

    The `world` markers, the module's then the test's, say how: the simulator's config, what
    `traders` holds (`traders=lambda wallets: [...]`, the wallets by default) and the warehouse
    (`warehouse="bigquery"`: a dataset on bqemulator, staging on gs://; a DuckDB file otherwise).
    """
    how: dict[str, Any] = {"tier": "unlimited"}
    for marker in reversed(list(request.node.iter_markers("world"))):
        how.update(marker.kwargs)
    make_traders = how.pop("traders", None)
    warehouse = how.pop("warehouse", "duckdb")
    server = sim_server(**how)
    monkeypatch.setenv("DOME_API_KEY", server.api_key)
    wallets = server.simulator.wallet_addresses()
    traders = wallets if make_traders is None else make_traders(wallets)
    if warehouse == "bigquery":
        emulators = request.getfixturevalue("emulators")
        return World(server, wallets, source, **_on_bigquery(traders, emulators, monkeypatch))
    db = tmp_path / "wh.duckdb"
    seed_traders(db, traders)
    return World(server, wallets, source, tmp_path / "staging", db=db)


def _on_bigquery(traders: list, emulators: tuple[Any, Any], monkeypatch) -> dict[str, Any]:
    """A new dataset on bqemulator (tables made, `traders` inserted as they are) and staging in a
    gs:// bucket, with the environment that sends the runs there: World's `dataset`, `bq`,
    `staging`."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery, storage

    from pipeline.warehouse import open_warehouse

    gcs, bq_emulator = emulators
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(gcs.credentials_file()))
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bq_emulator.endpoint)
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    if client.lookup_bucket(BUCKET) is None:
        client.create_bucket(BUCKET)

    name = f"e2e_{uuid.uuid4().hex[:8]}"
    dataset = f"{PROJECT}.{name}"
    with open_warehouse(f"bigquery:{dataset}") as warehouse:
        warehouse.ensure_tables()
    bq = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=bq_emulator.endpoint),
    )
    bq.query(
        f"INSERT INTO `{dataset}.traders` (wallet_address) SELECT w FROM UNNEST(@w) AS w",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[bigquery.ArrayQueryParameter("w", "STRING", traders)]
        ),
    ).result()
    return {"dataset": dataset, "bq": bq, "staging": f"gs://{BUCKET}/{name}"}

"""Run bqemulator in a child process on a free 127.0.0.1 port, so tests talk to it with the real client.

A child process rather than bqemulator's in-process fixture: its server owns an asyncio loop,
gRPC threads and a DuckDB connection, and keeping those out of the test process means a crash or
hang in the emulator cannot take pytest (or Beam's workers) down with it. In the child, before
the server starts: DuckDB's spatial extension (which bqemulator insists on; we use no GEOGRAPHY)
is skipped and the best-effort Avro extension switched off, because this machine has no route
to extensions.duckdb.org; and named query parameters are passed on to multi-statement queries,
which BigQuery supports and bqemulator 1.4.0 drops (the commit transaction is one such query).

`gs://bucket/path` URIs in load jobs resolve to `<gcs_root>/bucket/path` (bqemulator's
`BQEMU_GCS_LOCAL_ROOT`): write a staging file to `emulator.gcs_path(uri)` and load it by its URI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

# Runs in the child: the two patches, then bqemulator's own CLI (`start` and its flags).
_BOOT = """
import contextvars
import sys

from bqemulator.jobs import executor
from bqemulator.scripting import interpreter
from bqemulator.storage.engine import DuckDBEngine

DuckDBEngine._load_spatial = lambda self: None

# Named query parameters in multi-statement queries: BigQuery binds them in every statement;
# bqemulator 1.4.0 drops them on the scripting path (its interpreter binds None). Carry the
# job's parameters to the interpreter's binder.
_job_params = contextvars.ContextVar("bqemu_job_params", default=None)
_run_query_body = executor._run_query_body


async def _run_query_body_with_params(**kwargs):
    token = _job_params.set(kwargs.get("query_params"))
    try:
        return await _run_query_body(**kwargs)
    finally:
        _job_params.reset(token)


_bind_parameters = interpreter.bind_parameters


def _bind_script_parameters(sql, query_parameters=None):
    if query_parameters is None:
        query_parameters = _job_params.get()
    return _bind_parameters(sql, query_parameters)


executor._run_query_body = _run_query_body_with_params
interpreter.bind_parameters = _bind_script_parameters

from bqemulator.cli import main

sys.exit(main())
"""


def free_port() -> int:
    """A port nobody listens on right now (the emulator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChildProcess:
    """A child process for the tests: `start()` returns it once it answers, `stop()` ends it, and
    `with ...:` does both, so a failing test cannot leave the process behind."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class BigQueryEmulator(ChildProcess):
    """One bqemulator process: `start()`, point clients at `endpoint`, `stop()`.

    `gcs_root` is the folder `gs://` URIs resolve under (a fresh temporary folder, removed by
    `stop()`, if not given); `project` is the emulator's default project id. A context manager.
    """

    def __init__(
        self,
        gcs_root: str | Path | None = None,
        *,
        project: str = "test-project",
        startup_timeout: float = 60.0,
    ) -> None:
        self._own_root = gcs_root is None
        self.gcs_root = Path(gcs_root or tempfile.mkdtemp(prefix="bqemu-gcs-")).absolute()
        self.project = project
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self.port: int | None = None

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:PORT`: the value for `ClientOptions(api_endpoint=...)`."""
        if self.port is None:
            raise RuntimeError("the emulator is not started")
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A `bigquery.Client` of the caller's own on this emulator (anonymous); close it after."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.endpoint),
        )

    def gcs_path(self, uri: str) -> Path:
        """The local file a `gs://bucket/path` URI names inside this emulator."""
        if not uri.startswith("gs://"):
            raise ValueError(f"{uri!r} is not a gs:// URI")
        return self.gcs_root / uri.removeprefix("gs://")

    def start(self) -> BigQueryEmulator:
        """Start the process and return once `/readyz` answers; raise with its log if it dies."""
        if self._process is not None:
            raise RuntimeError("the emulator is already started")
        self.gcs_root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        fd, log_name = tempfile.mkstemp(prefix="bqemu-", suffix=".log")
        self._log = Path(log_name)
        env = {
            **os.environ,
            "BQEMU_GCS_LOCAL_ROOT": str(self.gcs_root),
            "BQEMU_ENABLE_FORMAT_EXTENSIONS": "false",
            "BQEMU_LOG_LEVEL": "warning",
        }
        env.pop("BIGQUERY_EMULATOR_HOST", None)
        argv = [
            sys.executable,
            "-c",
            _BOOT,
            "start",
            "--rest-host=127.0.0.1",
            f"--rest-port={self.port}",
            "--grpc-host=127.0.0.1",
            "--grpc-port=0",
            "--ephemeral",
            f"--project={self.project}",
        ]
        with os.fdopen(fd, "wb") as log:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"bqemulator exited with code {self._process.returncode} while starting:\n"
                    f"{self.log_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"bqemulator did not answer on {self.endpoint} within "
                    f"{self._startup_timeout:g} s:\n{self.log_text()}"
                )
            time.sleep(0.1)

    def log_text(self) -> str:
        """What the emulator printed so far (for failure messages)."""
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")[-20_000:]

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 10 s). Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.unlink()
            self._log = None
        if self._own_root:
            shutil.rmtree(self.gcs_root, ignore_errors=True)

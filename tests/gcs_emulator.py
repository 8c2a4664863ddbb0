"""Run gcp-storage-emulator in a child process, storing objects on disk, for Beam's real GCS path.

On disk (not --in-memory) it keeps each object at `<data_dir>/.cloudstorage/<bucket>/<object>`,
which is the layout bqemulator's `BQEMU_GCS_LOCAL_ROOT` resolves `gs://bucket/object` load URIs
against: so the staging that Beam writes through the storage emulator is what the BigQuery
warehouse's load jobs read, by its gs:// URIs, with no copy in between.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.bq_emulator import ChildProcess, free_port


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    """Answers any OAuth token request with a dummy access token."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"access_token": "dummy", "expires_in": 3600, "token_type": "Bearer"})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


class StorageEmulator(ChildProcess):
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self._process: subprocess.Popen | None = None
        self._token_server: http.server.ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def objects_root(self) -> Path:
        """Where `gs://bucket/object` lives on disk: give this to bqemulator as its GCS root."""
        return self.data_dir / ".cloudstorage"

    def credentials_file(self) -> Path:
        """Service-account credentials with a fresh key, whose token endpoint is a local stub.

        Beam's GCS client takes Application Default Credentials: with none it spends ~25 s
        probing (the metadata server) before going anonymous, and a dummy authorized-user file
        sends every upload's token refresh to oauth2.googleapis.com (google-auth ignores its
        token_uri). A service-account file honours `token_uri`, so the real auth flow and the
        real GCS client run and no request leaves 127.0.0.1 (the storage emulator ignores the
        token).
        """
        if self._token_server is None:
            self._token_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
            threading.Thread(target=self._token_server.serve_forever, daemon=True).start()
        port = self._token_server.server_address[1]
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path = self.data_dir / "dummy-credentials.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "test-project",
                    "private_key_id": "test",
                    "private_key": pem,
                    "client_email": "backfill-test@test-project.iam.gserviceaccount.com",
                    "client_id": "1",
                    "token_uri": f"http://127.0.0.1:{port}/token",
                }
            )
        )
        return path

    def start(self) -> StorageEmulator:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "gcp_storage_emulator", "--data-dir", str(self.data_dir),
            "start", "--host", "127.0.0.1", "--port", str(self.port), "--quiet",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self._process.poll() is not None:
                    raise RuntimeError("gcp-storage-emulator exited at start") from None
                time.sleep(0.1)
        raise RuntimeError("gcp-storage-emulator did not start within 30 s")

    def stop(self) -> None:
        if self._token_server is not None:
            self._token_server.shutdown()
            self._token_server.server_close()
            self._token_server = None
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

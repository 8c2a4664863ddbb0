"""Where a worker gets the Dome API key: Secret Manager in production, the environment locally.

The key is never a pipeline option value (options are visible in the job graph and the console):
an option names the secret *version*, and each worker reads the key itself in `DoFn.setup`.
"""

from __future__ import annotations

import os
import re

from pipeline.sources.dome.client import API_KEY_ENV
from pipeline.sources.errors import ConfigError

SECRET_VERSION = re.compile(r"^projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+$")


def load_api_key(secret_version: str | None) -> str:
    if secret_version:
        return _from_secret_manager(secret_version)
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise ConfigError(
            f"no API key: set {API_KEY_ENV}, or --api_key_secret=projects/P/secrets/S/versions/V"
        )
    return checked_key(key, API_KEY_ENV)


def checked_key(key: str, where: str) -> str:
    """An HTTP header carries only visible ASCII: say so now, not as a deep encoding error."""
    if not (key.isascii() and key.isprintable() and " " not in key):
        raise ConfigError(f"the API key in {where} has characters a header cannot carry")
    return key


def _from_secret_manager(secret_version: str) -> str:
    """The key read from Secret Manager; ConfigError, one line naming the option, on any failure.

    Creating the client is inside the `try`: it is where missing or unusable Google credentials
    fail (DefaultCredentialsError), before any request is made.
    """
    from google.cloud import secretmanager  # ships with apache-beam[gcp]; only needed here

    try:
        client = secretmanager.SecretManagerServiceClient()
        response = client.access_secret_version(name=secret_version)
    except Exception as exc:  # the message names the secret, never its value
        raise ConfigError(
            f"--api_key_secret {secret_version}: cannot read it ({type(exc).__name__}: "
            f"{_first_line(exc)}); check the Google credentials and the secret's access"
        ) from None
    key = response.payload.data.decode("utf-8", errors="replace").strip()
    if not key:
        raise ConfigError(f"{secret_version} is empty")
    return checked_key(key, secret_version)


def _first_line(exc: Exception) -> str:
    """The first line of an error's message, cut short: google-auth's run to several lines."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return line if len(line) <= 200 else f"{line[:200]}..."

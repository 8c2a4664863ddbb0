"""Bad input at the edges of the command line is one line saying what to fix, never a traceback.

Here: the Dome API key named by `--api_key_secret` when Google credentials are unusable. The
Secret Manager client is made for real; pointing GOOGLE_APPLICATION_CREDENTIALS at a file that is
missing or not JSON makes it fail locally, before any request leaves the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.api_key import load_api_key
from pipeline.sources.errors import ConfigError

SECRET = "projects/p/secrets/dome/versions/3"


@pytest.mark.parametrize("credentials", ["missing.json", "garbage.json"])
def test_a_secret_without_usable_credentials_is_one_line_naming_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, credentials: str
) -> None:
    (tmp_path / "garbage.json").write_text("not json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / credentials))
    with pytest.raises(ConfigError) as raised:
        load_api_key(SECRET)
    message = str(raised.value)
    assert message.startswith(f"--api_key_secret {SECRET}: cannot read it (DefaultCredentials")
    assert "\n" not in message and credentials in message

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


def test_a_local_run_reads_its_secret_before_anything_starts(tmp_path, monkeypatch, capsys):
    """It was read in the workers' setup: the run took the lease, claimed its id, and ended
    inside its first step with Beam's traceback and 'the source did not answer'."""
    from pipeline.__main__ import main as cli
    from pipeline.warehouse.seed import seed_traders

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    db, staging = tmp_path / "w.duckdb", tmp_path / "staging"
    seed_traders(db, ["0x" + "a" * 40])
    argv = ["run", f"--warehouse=duckdb:{db}", f"--staging_root={staging}", "--source=dome"]
    argv += [f"--api_key_secret={SECRET}", "--api_base_url=http://127.0.0.1:9"]
    assert cli(argv) == 2
    out, err = capsys.readouterr()
    assert f"--api_key_secret {SECRET}: cannot read it" in out and "Traceback" not in out + err
    assert not staging.exists()  # nothing started

"""Options are checked before anything starts, and each problem says what to fix."""

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.api_key import load_api_key
from pipeline.dome.errors import ConfigError
from pipeline.options import OptionsError, derive_rate_shares, resolve


def test_defaults_resolve():
    config = resolve(PipelineOptions([]))
    assert config.warehouse == "duckdb:backfill.duckdb" and config.rate_shares == 1
    assert config.rate_limit.per_second == 10 and config.rate_limit.per_10s == 100
    assert config.run_id and config.run_staging.endswith(config.run_id)


def test_every_problem_is_listed_with_what_to_fix():
    argv = [
        "--warehouse=postgres:x",
        "--trades_table=t; DROP TABLE x",
        "--run_id=../etc",
        "--page_limit=5000",
        "--max_wallets=0",
        "--api_base_url=ftp://x",
        "--api_key_secret=my-key",
    ]
    with pytest.raises(OptionsError) as error:
        resolve(PipelineOptions(argv))
    message = str(error.value)
    for expected in (
        "--warehouse",
        "'t; DROP TABLE x'",
        "--run_id '../etc'",
        "--page_limit must be 1-1000",
        "--max_wallets must be at least 1",
        "--api_base_url 'ftp://x'",
        "projects/P/secrets/S/versions/V",
    ):
        assert expected in message, expected


def test_dataflow_needs_the_secret_and_splits_the_rate():
    with pytest.raises(OptionsError, match="--api_key_secret is required on Dataflow"):
        resolve(PipelineOptions(["--runner=DataflowRunner"]))
    options = PipelineOptions(
        [
            "--runner=DataflowRunner",
            "--max_num_workers=5",
            "--machine_type=n2-standard-4",
            "--api_key_secret=projects/p/secrets/dome/versions/3",
            "--tier=dev",
        ]
    )
    assert derive_rate_shares(options) == 20
    config = resolve(options)
    share = config.process_rate_limit
    assert 20 * share.per_second <= 100 and 20 * share.per_10s <= 500


def test_multi_processing_splits_by_worker_count():
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=3"])
    assert derive_rate_shares(options) == 3
    assert derive_rate_shares(PipelineOptions(["--rate_shares=7"])) == 1  # explicit wins in resolve
    assert resolve(PipelineOptions(["--rate_shares=7"])).rate_shares == 7


def test_explicit_rates_override_the_tier():
    config = resolve(PipelineOptions(["--tier=pro", "--rate_per_second=42", "--rate_per_10s=200"]))
    assert (config.rate_limit.per_second, config.rate_limit.per_10s) == (42, 200)


def test_api_key_from_environment_only(monkeypatch):
    monkeypatch.delenv("DOME_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="set DOME_API_KEY"):
        load_api_key(None)
    monkeypatch.setenv("DOME_API_KEY", "  k-123  ")
    assert load_api_key(None) == "k-123"


def test_command_options_are_left_out_before_beam_sees_them():
    from pipeline.options import resolve_command_argv

    config = resolve_command_argv(
        ["--last_runs", "3", "--report_only", "--warehouse=duckdb:x.duckdb", "--tier=dev"],
        {"--last_runs": True, "--report_only": False},
    )
    assert config.warehouse == "duckdb:x.duckdb" and config.rate_limit.per_second == 100

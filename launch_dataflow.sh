#!/usr/bin/env bash
# Deploys the backfill to Google Cloud as a Dataflow Flex Template, run every 30 minutes by Cloud
# Scheduler. Subcommands (each accepts --dry-run: print the exact commands and request bodies,
# shell-quoted, one per line, and change nothing):
#   setup     enable the APIs; create the bucket, the BigQuery dataset, the service account and its
#             roles, the Artifact Registry repository, and with SOURCE=dome the API key's secret
#             (key read from stdin); SOURCE=polymarket (the default) needs no key and no secret
#   build     build the image with Cloud Build; write the template spec to gs://BUCKET/templates/
#   run       launch one run now (job name fixed: a second launch while one is active is refused)
#   schedule  create or update the Cloud Scheduler job that launches a run every 30 minutes
#   status    recent jobs, the scheduler job, and the command that shows the backfill's progress
# Configuration comes from the environment; `./launch_dataflow.sh help` lists it with the defaults.
set -euo pipefail

readonly JOB_NAME="trade-backfill" # fixed on purpose: see cmd_run (409 ALREADY_EXISTS)
readonly APIS=(dataflow.googleapis.com bigquery.googleapis.com storage.googleapis.com
  cloudscheduler.googleapis.com artifactregistry.googleapis.com cloudbuild.googleapis.com)
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
  BUCKET               bucket for staging, temp files and the template [PROJECT-trade-backfill]
  DATASET              BigQuery dataset [polymarket]; BQ_LOCATION its location [REGION]
  SOURCE               polymarket (Polymarket's public APIs, no key) or dome (an API key) [polymarket]
  EGRESS               how workers reach the internet: shared (one IP for all, e.g. Cloud NAT) or
                       per_worker (each worker its own external IP, Dataflow's default) [shared];
                       Polymarket's limits are per IP: the job's processes sharing an IP split them
  BUCKET_LIMITS        SOURCE=polymarket: lower per-10 s limits for the whole job, e.g.
                       trades=100,markets=150 [the published limits]
  TIER                 SOURCE=dome: the API tier, free, dev or pro [free]
  MAX_WORKERS          Dataflow's maximum number of workers [2]
  MACHINE_TYPE         worker machine type [n1-standard-1]
  SERVICE_ACCOUNT      service account name (not the email) [trade-backfill]
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
  SCHEDULE             cron schedule [*/30 * * * *]; TIME_ZONE [Etc/UTC]
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

# Reads and checks the configuration; reports every problem at once.
configure() {
  PROJECT="${PROJECT:-}"
  REGION="${REGION:-us-central1}"
  BUCKET="${BUCKET:-${PROJECT}-trade-backfill}"
  DATASET="${DATASET:-polymarket}"
  BQ_LOCATION="${BQ_LOCATION:-$REGION}"
  SOURCE="${SOURCE:-polymarket}"
  EGRESS="${EGRESS:-shared}"
  BUCKET_LIMITS="${BUCKET_LIMITS:-}"
  TIER="${TIER:-free}"
  MAX_WORKERS="${MAX_WORKERS:-2}"
  MACHINE_TYPE="${MACHINE_TYPE:-n1-standard-1}"
  SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-trade-backfill}"
  SECRET="${SECRET:-dome-api-key}"
  SECRET_VERSION="${SECRET_VERSION:-latest}"
  REPOSITORY="${REPOSITORY:-trade-backfill}"
  if [[ -z "${IMAGE_TAG:-}" ]]; then
    IMAGE_TAG="$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo latest)"
  fi
  MAX_WALLETS="${MAX_WALLETS:-}"
  REFRESH_AFTER="${REFRESH_AFTER-6h}"
  VERIFY="${VERIFY:-false}"
  RATE_PER_SECOND="${RATE_PER_SECOND:-}"
  RATE_PER_10S="${RATE_PER_10S:-}"
  SCHEDULE="${SCHEDULE:-*/30 * * * *}"
  TIME_ZONE="${TIME_ZONE:-Etc/UTC}"
  SCHEDULER_RETRIES="${SCHEDULER_RETRIES:-0}"
  PYTHON="${PYTHON:-python3}"

  local -a problems=()
  [[ "$PROJECT" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
    problems+=("PROJECT='$PROJECT': set it to your project id, e.g. export PROJECT=\$(gcloud config get-value project)")
  [[ "$REGION" =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || problems+=("REGION='$REGION': a region such as us-central1")
  [[ "$BUCKET" =~ ^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$ ]] ||
    problems+=("BUCKET='$BUCKET': 3-63 lowercase letters, digits, '-' or '_'")
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
  { is_int "$MAX_WORKERS" && ((MAX_WORKERS <= 1000)); } || problems+=("MAX_WORKERS='$MAX_WORKERS': 1-1000")
  [[ "$MACHINE_TYPE" =~ ^[a-z][a-z0-9]*(-[a-z0-9]+)+$ ]] || problems+=("MACHINE_TYPE='$MACHINE_TYPE': e.g. n1-standard-2")
  [[ "$SERVICE_ACCOUNT" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
    problems+=("SERVICE_ACCOUNT='$SERVICE_ACCOUNT': 6-30 lowercase letters, digits or '-' (the name, not the email)")
  [[ "$SECRET" =~ ^[A-Za-z0-9_-]{1,255}$ ]] || problems+=("SECRET='$SECRET': letters, digits, '-' or '_'")
  [[ "$SECRET_VERSION" =~ ^([1-9][0-9]*|latest)$ ]] || problems+=("SECRET_VERSION='$SECRET_VERSION': a number or latest")
  [[ "$REPOSITORY" =~ ^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$ ]] || problems+=("REPOSITORY='$REPOSITORY': lowercase letters, digits, '-'")
  [[ "$IMAGE_TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || problems+=("IMAGE_TAG='$IMAGE_TAG': a Docker tag")
  [[ -z "$MAX_WALLETS" ]] || is_int "$MAX_WALLETS" || problems+=("MAX_WALLETS='$MAX_WALLETS': a positive integer, or unset")
  [[ -z "$REFRESH_AFTER" || "$REFRESH_AFTER" =~ ^[0-9]+(\.[0-9]+)?[smhd]?$ ]] || problems+=("REFRESH_AFTER='$REFRESH_AFTER': a duration like 30m, 6h, 1d, or empty")
  [[ "$VERIFY" =~ ^(true|false)$ ]] || problems+=("VERIFY='$VERIFY': true or false")
  [[ -z "$RATE_PER_SECOND" ]] || is_number "$RATE_PER_SECOND" || problems+=("RATE_PER_SECOND='$RATE_PER_SECOND': a positive number, or unset")
  [[ -z "$RATE_PER_10S" ]] || is_number "$RATE_PER_10S" || problems+=("RATE_PER_10S='$RATE_PER_10S': a positive number, or unset")
  [[ "$(wc -w <<<"$SCHEDULE")" -eq 5 ]] || problems+=("SCHEDULE='$SCHEDULE': five cron fields, e.g. */30 * * * *")
  [[ "$TIME_ZONE" =~ ^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$ ]] || problems+=("TIME_ZONE='$TIME_ZONE': e.g. Etc/UTC")
  [[ "$SCHEDULER_RETRIES" =~ ^[0-5]$ ]] || problems+=("SCHEDULER_RETRIES='$SCHEDULER_RETRIES': 0-5")

  SA_EMAIL="${SERVICE_ACCOUNT}@${PROJECT}.iam.gserviceaccount.com"
  IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/trade-backfill:${IMAGE_TAG}"
  TEMPLATE="gs://${BUCKET}/templates/backfill.json"
  SECRET_PATH="projects/${PROJECT}/secrets/${SECRET}/versions/${SECRET_VERSION}"

  # The rate limit is shared by every process that draws on it; each gets 1/RATE_SHARES of it.
  # Dataflow runs one SDK process per vCPU, and the autoscaler never exceeds MAX_WORKERS, so
  # MAX_WORKERS x vCPUs is the most processes that can fetch at once. Dome's limit is the key's
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
    RATE_SHARES=$((MAX_WORKERS * vcpus))
  fi
  # Each process must get at least 0.1 request/s of the narrowest sustained limit (as the
  # pipeline checks): Dome, the tier's (or RATE_PER_*); Polymarket, the smallest bucket per
  # 10 s (published: /trades, 200 per 10 s = 20/s), lowered by BUCKET_LIMITS.
  if ((${#problems[@]} == 0)); then
    local narrowest of
    if [[ "$SOURCE" == "dome" ]]; then
      local limits="10 100"  # DOME_TIERS below, tested against pipeline/sources/dome/client.py
      case "$TIER" in dev) limits="100 500" ;; pro) limits="300 3000" ;; esac
      narrowest="$(awk -v l="$limits" -v s="${RATE_PER_SECOND}" -v t="${RATE_PER_10S}" \
        'BEGIN { split(l, d, " "); ps = (s == "" ? d[1] : s); pt = (t == "" ? d[2] : t);
                 print (ps + 0 < pt / 10 ? ps + 0 : pt / 10) }')"
      of="the $TIER tier"
    else
      narrowest="$(awk -v l="$POLYMARKET_LIMITS" -v o="${BUCKET_LIMITS//,/ }" \
        'BEGIN { n = split(l, d, " "); for (i = 1; i <= n; i++) { split(d[i], kv, "="); lim[kv[1]] = kv[2] + 0 }
                 n = split(o, d, " "); for (i = 1; i <= n; i++) { split(d[i], kv, "="); lim[kv[1]] = kv[2] + 0 }
                 m = -1; for (b in lim) if (m < 0 || lim[b] < m) m = lim[b]; print m / 10 }')"
      of="Polymarket's per-IP limits (EGRESS=$EGRESS)"
    fi
    if ! awk -v m="$narrowest" -v n="$RATE_SHARES" 'BEGIN { exit !(m / n >= 0.1) }'; then
      problems+=("$RATE_SHARES processes share the narrowest limit, $narrowest request/s: each would get under 0.1 request/s of $of; lower MAX_WORKERS or use a smaller MACHINE_TYPE")
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

cmd_setup() {
  local -a apis=("${APIS[@]}")
  [[ "$SOURCE" != "dome" ]] || apis+=(secretmanager.googleapis.com)
  run gcloud services enable "${apis[@]}" --project="$PROJECT"
  ensure "the bucket" gcloud storage buckets describe "gs://${BUCKET}" --project="$PROJECT" -- \
    gcloud storage buckets create "gs://${BUCKET}" --project="$PROJECT" --location="$REGION" \
    --uniform-bucket-level-access
  ensure "the dataset" bq --project_id="$PROJECT" show --dataset "${PROJECT}:${DATASET}" -- \
    bq --project_id="$PROJECT" --location="$BQ_LOCATION" mk --dataset "${PROJECT}:${DATASET}"
  ensure "the service account" gcloud iam service-accounts describe "$SA_EMAIL" --project="$PROJECT" -- \
    gcloud iam service-accounts create "$SERVICE_ACCOUNT" --project="$PROJECT" \
    --display-name="Trade backfill (Dataflow launcher and workers)"
  # The service account launches the job (Cloud Scheduler's token), runs the launcher VM and the
  # workers: dataflow.developer to create jobs, dataflow.worker to work, BigQuery to write and run
  # the commit, serviceAccountUser on itself to start VMs that run as itself.
  local role
  for role in roles/dataflow.developer roles/dataflow.worker roles/bigquery.dataEditor roles/bigquery.jobUser; do
    run gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:${SA_EMAIL}" \
      --role="$role" --condition=None --quiet --format=none
  done
  run gcloud iam service-accounts add-iam-policy-binding "$SA_EMAIL" --project="$PROJECT" \
    --member="serviceAccount:${SA_EMAIL}" --role=roles/iam.serviceAccountUser --format=none
  run gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" \
    --member="serviceAccount:${SA_EMAIL}" --role=roles/storage.objectAdmin --format=none
  ensure "the repository" gcloud artifacts repositories describe "$REPOSITORY" --project="$PROJECT" \
    --location="$REGION" -- \
    gcloud artifacts repositories create "$REPOSITORY" --project="$PROJECT" --location="$REGION" \
    --repository-format=docker --description="Trade backfill: Flex Template and worker image"
  run gcloud artifacts repositories add-iam-policy-binding "$REPOSITORY" --project="$PROJECT" \
    --location="$REGION" --member="serviceAccount:${SA_EMAIL}" --role=roles/artifactregistry.reader --format=none
  if [[ "$SOURCE" != "dome" ]]; then
    if ((DRY_RUN)); then
      echo "# SOURCE=${SOURCE}: no API key, so no secret (SOURCE=dome creates it)"
    else
      echo "= SOURCE=${SOURCE}: no API key, so no secret (SOURCE=dome creates it)" >&2
    fi
    return
  fi
  setup_secret
  run gcloud secrets add-iam-policy-binding "$SECRET" --project="$PROJECT" \
    --member="serviceAccount:${SA_EMAIL}" --role=roles/secretmanager.secretAccessor --format=none
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
  # One image: the Flex Template launcher and the workers' SDK container (see Dockerfile).
  run gcloud builds submit "$ROOT" --project="$PROJECT" --tag="$IMAGE"
  run gcloud dataflow flex-template build "$TEMPLATE" --project="$PROJECT" --image="$IMAGE" \
    --sdk-language=PYTHON --metadata-file="$ROOT/flex_template.json"
}

# A run's job name is always trade-backfill. Dataflow allows one *active* job per name and region:
# a launch while a run is still going (even still launching) fails with 409 ALREADY_EXISTS
# ("There is already an active job named trade-backfill"), so two runs never overlap. Cloud
# Scheduler's launch 30 minutes later then fails harmlessly; with --max-retry-attempts=0 (or a small
# SCHEDULER_RETRIES) it is not retried, and the next tick launches once the run has finished.
cmd_run() {
  require_image
  launch_parameters
  local -a args=(gcloud dataflow flex-template run "$JOB_NAME" --project="$PROJECT" --region="$REGION"
    --template-file-gcs-location="$TEMPLATE" --service-account-email="$SA_EMAIL"
    --max-workers="$MAX_WORKERS" --worker-machine-type="$MACHINE_TYPE"
    --temp-location="gs://${BUCKET}/tmp" --staging-location="gs://${BUCKET}/dataflow-staging")
  local param
  for param in "${PARAMS[@]}"; do
    args+=("--parameters=${param}")
  done
  # The workers run the image the launcher ran (a Beam option, not a template parameter).
  args+=("--parameters=sdk_container_image=${IMAGE}")
  run "${args[@]}"
}

launch_body() {
  launch_parameters
  "$PYTHON" - "$JOB_NAME" "$TEMPLATE" "$MAX_WORKERS" "$SA_EMAIL" "gs://${BUCKET}/tmp" \
    "gs://${BUCKET}/dataflow-staging" "$IMAGE" "$MACHINE_TYPE" "${PARAMS[@]}" <<'EOF'
import json, sys
job, template, workers, account, temp, staging, image, machine, *params = sys.argv[1:]
body = {"launchParameter": {
    "jobName": job,
    "containerSpecGcsPath": template,
    "parameters": dict(p.split("=", 1) for p in params),
    "environment": {"maxWorkers": int(workers), "serviceAccountEmail": account,
                    "tempLocation": temp, "stagingLocation": staging,
                    "sdkContainerImage": image, "machineType": machine},
}}
print(json.dumps(body, indent=2))
EOF
}

# Every SCHEDULE tick POSTs the launch body with an OAuth token of the service account. The body's
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
    --oauth-service-account-email="$SA_EMAIL"
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
  echo "# python -m pipeline status --warehouse=bigquery:${PROJECT}.${DATASET}"
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

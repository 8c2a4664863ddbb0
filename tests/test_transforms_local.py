"""The graph's steps that need no API, each in a TestPipeline on the local runner with a real DuckDB."""

import json
import pickle
import time

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline.staging import RunStaging
from pipeline.warehouse import TableNames, WarehouseRef
from tests.support import local_pipeline, query, seed_traders
from transforms.lookups import EVENTS, MARKETS, Claims, LookupSpec
from transforms.read_wallets import ReadWallets, normalize_wallet
from transforms.select_wallets import NEW, REFRESH, RefreshPolicy, SelectWallets, plan_fetch
from transforms.skip_known import KeyPlan, needs_fetch
from transforms.stage import WriteStaging

A = "0x" + "a" * 40
B = "0x" + "b" * 40
C = "0x" + "c" * 40


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"  {A.upper().replace('0X', '0x')} ", (A, None)),
        ("A" * 40, ("0x" + "a" * 40, None)),
        (None, (None, "null wallet_address")),
        ("", (None, "empty wallet_address")),
        ("0x123", (None, "not 0x followed by 40 hex digits")),
        ("0x" + "z" * 40, (None, "not 0x followed by 40 hex digits")),
        (12, (None, "not a string: int")),
    ],
)
def test_normalize_wallet(raw, expected):
    assert normalize_wallet(raw) == expected


def test_read_wallets_normalizes_and_rejects(tmp_path):
    """Two spellings of one address come out as one address, twice (SelectWallets makes them one
    request: test_select_wallets_asks_once_for_a_wallet_listed_twice)."""
    db = tmp_path / "w.duckdb"
    seed_traders(db, [A, A.upper().replace("0X", "0x"), f" {B}", None, "junk"])
    with local_pipeline() as p:
        read = p | ReadWallets(WarehouseRef(f"duckdb:{db}", TableNames()), "run1")
        assert_that(read["wallets"], equal_to([A, A, B]), label="wallets")
        reasons = read["rejects"] | beam.Map(
            lambda r: (r["wallet_address"], r["reason"], r["run_id"])
        )
        assert_that(
            reasons,
            equal_to(
                [
                    (None, "null wallet_address", "run1"),
                    ("junk", "not 0x followed by 40 hex digits", "run1"),
                ]
            ),
            label="rejects",
        )


def _checkpoint_done(db, wallet, successful, last_trade_at=None, refreshed=None):
    query(
        db,
        "INSERT INTO backfill_checkpoint (wallet_address, completed, upload_successful, "
        "last_trade_at, last_refreshed_at) VALUES "
        f"('{wallet}', true, {str(successful).lower()}, "
        f"{'NULL' if last_trade_at is None else f'to_timestamp({last_trade_at})'}, "
        f"{'NULL' if refreshed is None else f'to_timestamp({refreshed})'})",
    )


def _select(db, refresh_after_s=None, overlap_s=3600.0, max_wallets=None):
    policy = RefreshPolicy(now=time.time(), refresh_after_s=refresh_after_s, overlap_s=overlap_s)
    return SelectWallets(WarehouseRef(f"duckdb:{db}", TableNames()), policy, max_wallets)


def test_select_wallets_skips_done_and_keeps_failed(tmp_path):
    db = tmp_path / "w.duckdb"
    seed_traders(db, [])
    _checkpoint_done(db, A, True)
    _checkpoint_done(db, B, False)
    with local_pipeline() as p:
        requests = p | beam.Create([A, B, C]) | _select(db)
        assert_that(requests, equal_to([(B, None), (C, None)]))


def test_select_wallets_asks_once_for_a_wallet_listed_twice(tmp_path):
    """ReadWallets passes an address listed twice on twice: the selection makes it one request,
    with and without the cap."""
    db = tmp_path / "w.duckdb"
    seed_traders(db, [])
    _checkpoint_done(db, B, False)
    with local_pipeline() as p:
        wallets = p | beam.Create([A, B, A, C, B, A])
        assert_that(wallets | _select(db), equal_to([(A, None), (B, None), (C, None)]))
        capped = wallets | "Capped" >> _select(db, max_wallets=2)
        assert_that(capped, equal_to([(A, None), (B, None)]), label="capped")


def test_refresh_picks_stale_done_wallets_from_last_trade_minus_overlap(tmp_path):
    db = tmp_path / "w.duckdb"
    seed_traders(db, [])
    now = time.time()
    _checkpoint_done(db, A, True, last_trade_at=1_700_000_000, refreshed=now - 7200)
    _checkpoint_done(db, B, True, last_trade_at=1_700_000_000, refreshed=now - 60)
    select = _select(db, refresh_after_s=3600.0, overlap_s=600.0)
    with local_pipeline() as p:
        requests = p | beam.Create([A, B, C]) | select
        assert_that(requests, equal_to([(A, 1_700_000_000 - 600), (C, None)]))


def test_new_wallets_come_before_refreshes_within_max_wallets(tmp_path):
    db = tmp_path / "w.duckdb"
    seed_traders(db, [])
    _checkpoint_done(db, A, True, last_trade_at=1_700_000_000, refreshed=1)
    select = _select(db, refresh_after_s=3600.0, max_wallets=2)
    with local_pipeline() as p:
        requests = p | beam.Create([A, B, C]) | select
        assert_that(requests, equal_to([(B, None), (C, None)]))


def test_refreshes_within_max_wallets_go_oldest_fetch_first(tmp_path):
    # Picked by address, the same low wallets were refreshed every period and the high ones
    # never, once the cap was below the number of stale wallets.
    db = tmp_path / "w.duckdb"
    seed_traders(db, [])
    _checkpoint_done(db, A, True, last_trade_at=1_700_000_000, refreshed=3000)
    _checkpoint_done(db, B, True, last_trade_at=1_700_000_000, refreshed=1000)
    _checkpoint_done(db, C, True, last_trade_at=1_700_000_000, refreshed=2000)
    select = _select(db, refresh_after_s=3600.0, overlap_s=600.0, max_wallets=2)
    with local_pipeline() as p:
        requests = p | beam.Create([A, B, C]) | select
        assert_that(requests, equal_to([(B, 1_700_000_000 - 600), (C, 1_700_000_000 - 600)]))


@pytest.mark.parametrize(
    ("state", "refresh_after", "expected"),
    [
        (None, None, (NEW, 0.0, A, None)),
        ((A, False, None, None), None, (NEW, 0.0, A, None)),
        ((A, True, 5000.0, 100.0), None, None),
        ((A, True, 5000.0, 9000.0), 3600.0, None),
        ((A, True, 5000.0, 100.0), 3600.0, (REFRESH, 100.0, A, 5000 - 600)),
        ((A, True, None, 100.0), 3600.0, (REFRESH, 100.0, A, None)),
        ((A, True, 100.0, None), 3600.0, (REFRESH, 0.0, A, 0)),
        # A clock that ran ahead: a refresh stamped in the future is stale now, and a trade
        # stamped in the future starts the refresh from now, not from then.
        ((A, True, 5000.0, 200_000.0), 3600.0, (REFRESH, 10_000.0, A, 5000 - 600)),
        ((A, True, 4e9, 100.0), 3600.0, (REFRESH, 100.0, A, 10_000 - 600)),
    ],
)
def test_plan_fetch(state, refresh_after, expected):
    policy = RefreshPolicy(now=10_000.0, refresh_after_s=refresh_after, overlap_s=600.0)
    assert plan_fetch(A, [] if state is None else [state], policy) == expected


@pytest.mark.parametrize(
    ("wanted", "known", "refresh_after", "expected"),
    [
        (True, [], None, True),
        (False, [], 3600.0, False),
        (True, [("closed", 1.0)], 3600.0, False),
        (True, [("Resolved", 1.0)], 3600.0, False),
        (True, [("open", 1.0)], None, False),
        (False, [("open", 1.0)], 3600.0, True),
        (True, [("open", 9_000.0)], 3600.0, False),
        # Awaiting its resolution: asked again once its row is an hour old, refresh or not.
        (False, [("resolving", 10_000.0 - 3600)], None, True),
        (False, [("Resolving", 10_000.0 - 3600)], 7 * 86400.0, True),
        (True, [("resolving", 10_000.0 - 3599)], None, False),
    ],
)
def test_needs_fetch(wanted, known, refresh_after, expected):
    policy = RefreshPolicy(now=10_000.0, refresh_after_s=refresh_after, overlap_s=0.0)
    assert needs_fetch(wanted, known, policy) is expected


def test_key_plan_decides_what_the_lookups_ask_for(tmp_path):
    """The plan the trades stage's lookups read before any trade: 0xgone (missing three times,
    not held: asking again would cost a request every run for an answer already given), 0xdone
    (held closed) and 0xfresh (held open, fetched just now) are skipped whoever names them;
    0xback (missing three times but landed since: open and stale) is asked for whoever names it;
    0xtwice (missing twice only) and 0xnew (missing as an event, not as a market) are asked for
    when a trade names them."""
    db = tmp_path / "w.duckdb"
    seed_traders(db, [])
    now = time.time()
    days = {"r1": 3, "r2": 2, "r3": 1}  # runs a day apart, the last a day ago
    found_missing = [("0xgone", r) for r in ("r1", "r2", "r3")]
    found_missing += [("0xtwice", r) for r in ("r1", "r2")]
    found_missing += [("0xback", r) for r in ("r1", "r2", "r3")]
    for key, run in found_missing:
        query(
            db,
            "INSERT INTO backfill_missing (kind, key, seen_at, run_id) "
            f"VALUES ('markets', '{key}', to_timestamp({now - days[run] * 86400}), '{run}')",
        )
    for run in ("r1", "r2", "r3"):
        seen = now - days[run] * 86400
        query(
            db,
            f"INSERT INTO backfill_missing VALUES ('events', '0xnew', to_timestamp({seen}), '{run}')",
        )
    for key, status, updated in (
        ("0xback", "open", 1),
        ("0xdone", "closed", 1),
        ("0xfresh", "open", int(now)),
    ):
        query(
            db,
            "INSERT INTO markets (condition_id, status, run_id, updated_at) "
            f"VALUES ('{key}', '{status}', 'r4', to_timestamp({updated}))",
        )
    policy = RefreshPolicy(now=now + 1, refresh_after_s=3600.0, overlap_s=0.0)
    with WarehouseRef(f"duckdb:{db}", TableNames()).open() as warehouse:
        plan = KeyPlan.of(
            list(warehouse.read_known_markets()),
            list(warehouse.read_unlanded_markets()),
            list(warehouse.read_missing_markets()),
            policy,
        )
        events = KeyPlan.of(
            list(warehouse.read_known_events()),
            list(warehouse.read_unlanded_events()),
            list(warehouse.read_missing_events()),
            policy,
        )
    assert plan.skip == {"0xgone", "0xdone", "0xfresh"}
    assert plan.always == (("0xback", None),)
    assert events.skip == {"0xnew"}  # three runs found it missing as an event
    off = RefreshPolicy(now=now + 1, refresh_after_s=None, overlap_s=0.0)
    assert KeyPlan.of([("0xback", "open", 1.0)], [("0xu", "slug")], [], off).always == (
        ("0xu", "slug"),
    )


def test_max_wallets_picks_the_same_wallets_every_time(tmp_path):
    db = tmp_path / "w.duckdb"
    seed_traders(db, [])
    wallets = ["0x" + f"{i:040x}" for i in range(50)]
    for order in (wallets, list(reversed(wallets))):
        with local_pipeline() as p:
            chosen = p | beam.Create(order) | _select(db, max_wallets=5)
            assert_that(chosen, equal_to([(w, None) for w in sorted(wallets)[:5]]))


def test_claims_hand_out_each_key_once_per_kind_and_the_plan_once():
    """What keeps a market or event from being asked for twice in a process: the first to name a
    key claims it, in order; markets and events are claimed apart."""
    claims = Claims()
    assert claims.new(MARKETS, ["m1", "m2", "m1", "m3", "m2"]) == ["m1", "m2", "m3"]
    assert claims.new(MARKETS, ["m3", "m4", "m1"]) == ["m4"]
    assert claims.new(EVENTS, ["m1", "e1"]) == ["m1", "e1"]
    assert [claims.take_plan(), claims.take_plan()] == [True, False]


def _no_plan() -> None:
    """Never read here: these specs only hand out claims."""


def test_one_claims_per_process_and_run():
    """Every DoFn instance of a run (the same spec, pickled or not) shares its process's Claims;
    another run's (another tag) are its own."""
    spec = LookupSpec(50, 50, 2, "test-claims-run-1", _no_plan)
    held = spec.claims()
    held.new(MARKETS, ["m1"])
    assert spec.claims() is held
    assert pickle.loads(pickle.dumps(spec)).claims() is held
    other = LookupSpec(50, 50, 2, "test-claims-run-2", _no_plan).claims()
    assert other.new(MARKETS, ["m1"]) == ["m1"]


def _one_file(files):
    assert len(files) == 1 and files[0].endswith(".json"), files


def test_write_staging_writes_ndjson_and_returns_final_files(tmp_path):
    staging = RunStaging(str(tmp_path), "r1")
    pages = [[{"id": "1"}, {"id": "2"}], [{"id": "3"}]]
    with local_pipeline() as p:
        trade_files = (
            p | "Pages" >> beam.Create(pages) | "T" >> WriteStaging(staging, "trades", True)
        )
        outcome_files = (
            p
            | "Outcomes" >> beam.Create([{"wallet_address": A}])
            | "O" >> WriteStaging(staging, "outcomes", after=trade_files)
        )
        assert_that(outcome_files, _one_file)
    lines = [
        json.loads(line)
        for path in (tmp_path / "r1" / "trades").glob("part-*.json")
        for line in path.read_text().splitlines()
    ]
    assert sorted(row["id"] for row in lines) == ["1", "2", "3"]

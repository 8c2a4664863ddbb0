"""`python -m pipeline traders add FILE`: on DuckDB through the CLI; the warehouse method on bqemulator."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from pipeline.__main__ import main
from pipeline.warehouse import TableNames
from pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse
from tests.bq_emulator import BigQueryEmulator

A = "0x" + "a" * 40
B = "0x" + "b" * 40
C = "0x" + "c" * 40
D = "0x" + "d" * 40


def traders(db: Path, table: str = "traders") -> list[str | None]:
    with duckdb.connect(str(db)) as conn:
        return sorted(
            row[0] for row in conn.execute(f"SELECT wallet_address FROM {table}").fetchall()
        )


def add(db: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["traders", "add", *args, f"--warehouse=duckdb:{db}"])
    out = capsys.readouterr().out.strip()
    return code, out


def test_plain_lines_with_duplicates_and_invalid_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "wh.duckdb"
    file = tmp_path / "wallets.txt"
    file.write_text(
        f"{A}\n  {B.upper().replace('0X', '0x')}  \n\nnot-a-wallet\n{A}\n{'c' * 40}\n0x12\n"
    )
    code, out = add(db, str(file), capsys=capsys)
    assert code == 0
    assert out == (
        "traders add: 3 new, 1 duplicate (already in traders or repeated in the file), "
        "2 invalid (line 4: 'not-a-wallet'; line 7: '0x12')"
    )
    assert traders(db) == [A, B, C]

    code, out = add(db, str(file), capsys=capsys)  # twice: nothing new
    assert code == 0 and out.startswith("traders add: 0 new, 4 duplicate")
    assert traders(db) == [A, B, C]


def test_a_csv_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "wh.duckdb"
    file = tmp_path / "people.csv"
    file.write_text(f'name,wallet\n"Smith, J",{A}\nDoe,{D}\nRoe,\nPoe,{A.upper()[2:]}\n')
    code, out = add(db, str(file), "--column=wallet", capsys=capsys)
    assert code == 0
    assert out.startswith("traders add: 2 new, 1 duplicate") and "1 invalid (line 4: '')" in out
    assert traders(db) == [A, D]

    # The default column, a header without a comma, no .csv name.
    other = tmp_path / "list"
    other.write_text(f"wallet_address\n{B}\n")
    code, out = add(db, str(other), capsys=capsys)
    assert (code, out[:25]) == (0, "traders add: 1 new, 0 dup")
    assert traders(db) == [A, B, D]


def test_stdin_and_an_existing_table_in_another_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "wh.duckdb"
    with duckdb.connect(str(db)) as conn:  # a traders table of the users', other case, no 0x
        conn.execute("CREATE TABLE fans (wallet_address VARCHAR, note VARCHAR)")
        conn.execute(f"INSERT INTO fans VALUES ('{A.upper()}', 'x'), ('{'b' * 40}', NULL)")
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{A}\n{B}\n{C}\n"))
    code, out = add(db, "-", "--traders_table=fans", capsys=capsys)
    assert code == 0 and out.startswith("traders add: 1 new, 2 duplicate")
    assert traders(db, "fans") == sorted([A.upper(), "b" * 40, C])


def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "wh.duckdb"
    code, out = add(db, str(tmp_path / "missing.txt"), capsys=capsys)
    assert code == 2 and out == f"traders add: no such file: {tmp_path / 'missing.txt'}"
    file = tmp_path / "w.csv"
    file.write_text(f"name,wallet\nx,{A}\n")
    code, out = add(db, str(file), capsys=capsys)  # default column absent
    assert code == 2
    assert (
        out
        == "traders add: --column wallet_address: w.csv has no such column (columns: name, wallet)"
    )
    plain = tmp_path / "w.txt"
    plain.write_text(f"{A}\n")
    code, out = add(db, str(plain), "--column=wallet", capsys=capsys)
    assert code == 2 and "\n" not in out and "not a CSV" in out
    code, out = add(db, str(plain), "--traders_table=bad;name", capsys=capsys)
    assert code == 2 and "\n" not in out
    assert not db.exists()  # nothing was opened


def test_a_byte_order_mark_is_dropped_from_a_text_file_as_from_a_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "wh.duckdb"
    file = tmp_path / "wallets.txt"
    file.write_bytes(f"\ufeff{A}\r\n{B}\r\n".encode())
    code, out = add(db, str(file), capsys=capsys)
    assert code == 0 and out.startswith("traders add: 2 new, 0 duplicate")
    assert out.endswith(", 0 invalid"), out
    monkeypatch.setattr("sys.stdin", io.StringIO(f"\ufeff{C}\n"))
    code, out = add(db, "-", capsys=capsys)
    assert code == 0 and out.startswith("traders add: 1 new") and out.endswith(", 0 invalid")
    assert traders(db) == [A, B, C]


def test_a_csv_field_over_the_csv_limit_is_one_line_naming_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "wh.duckdb"
    file = tmp_path / "big.csv"
    file.write_text(f"wallet_address\n{A}\n{'a' * 200_000}\n")
    code, out = add(db, str(file), capsys=capsys)
    assert code == 2
    assert out.startswith("traders add: big.csv line 3 is not readable as CSV: field larger")
    assert "\n" not in out and len(out) < 200
    assert not db.exists()  # refused before the warehouse was opened


def test_a_very_long_invalid_line_is_cut_in_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "wh.duckdb"
    file = tmp_path / "wallets.txt"
    file.write_text(f"{A}\n{'x' * 10_000_000}\n")
    code, out = add(db, str(file), capsys=capsys)
    assert code == 0 and len(out) < 300, len(out)
    assert out.endswith(f"1 invalid (line 2: '{'x' * 64}'...)")
    assert traders(db) == [A]


def test_the_warehouse_method_refuses_unnormalised_values(tmp_path: Path) -> None:
    from pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse

    wh = DuckDBWarehouse(tmp_path / "wh.duckdb")
    with pytest.raises(ValueError, match="not normalised"):
        wh.add_traders([A.upper()])
    assert wh.add_traders([A, A, B]) == 2
    assert wh.add_traders([B, C]) == 1
    assert sorted(wh.read_traders()) == [A, B, C]


# -- BigQuery (bqemulator): the same warehouse method ---------------------------------------------


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    with BigQueryEmulator(tmp_path_factory.mktemp("gcs"), project="test-project") as emu:
        yield emu


def test_add_traders_on_bigquery(emulator: BigQueryEmulator) -> None:
    wh = BigQueryWarehouse(
        "test-project",
        f"wh_{uuid.uuid4().hex[:12]}",
        TableNames(),
        client_options=ClientOptions(api_endpoint=emulator.endpoint),
        credentials=AnonymousCredentials(),
    )
    with wh:
        assert wh.add_traders([A, B, A]) == 2  # creates the dataset and the table
        assert wh.add_traders([B, C]) == 1
        assert wh.add_traders([A, B, C]) == 0
        wh.client.query(f"INSERT INTO `{wh.dataset}.traders` VALUES ('{D.upper()}')").result()
        assert wh.add_traders([D]) == 0
        assert sorted(wh.read_traders()) == sorted([A, B, C, D.upper()])
        table = wh.client.get_table(f"{wh.dataset}.traders")
        assert [(f.name, f.field_type) for f in table.schema] == [("wallet_address", "STRING")]
        jobs = [job for job in wh.client.list_jobs() if isinstance(job, bigquery.QueryJob)]
        inserts = [
            job.query for job in jobs if "INSERT INTO" in job.query and "UNNEST" in job.query
        ]
        assert inserts and all(A not in text for text in inserts)  # values only as parameters

"""Snapshots: a consistent, read-only copy of the projection tables at one log position.

The projector's file cannot be opened by another process while it writes, so batch
jobs read snapshots instead: `DIR/seq-<N>/` holds `casetrail.duckdb` (every table and
view, `ATTACH` + `COPY FROM DATABASE`), one Parquet file per table, and
`manifest.json` (`seq`, `taken_at`, rows per table). The copy is made inside one
read transaction on a reader cursor (DuckDB's MVCC), so it is exactly the state at
checkpoint N while the projector goes on writing. It is written under a temporary
name and renamed into place, so a snapshot directory is complete or absent;
`latest(DIR)` names the newest. The oldest are removed beyond `keep`.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import duckdb
import msgspec

from projections import case_status, charges, recognitions, timeline
from projections.store import checkpoint_of

TABLES = (case_status.NAME, timeline.NAME, charges.NAME, recognitions.NAME, "checkpoint")
DATABASE = "casetrail.duckdb"
MANIFEST = "manifest.json"
PREFIX = "seq-"


class Manifest(msgspec.Struct, kw_only=True):
    seq: int
    taken_at: str
    path: str  # the snapshot's directory
    duckdb: str
    parquet: dict[str, str]
    rows: dict[str, int]


def _name(seq: int) -> str:
    return f"{PREFIX}{seq:012d}"


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def take(cur: duckdb.DuckDBPyConnection, directory: str | Path, keep: int = 3) -> Manifest:
    """Copy every table as it is at the cursor's checkpoint; a snapshot of that seq is reused."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cur.execute("BEGIN TRANSACTION")
    try:
        seq = checkpoint_of(cur)
        final = directory / _name(seq)
        if (final / MANIFEST).exists():
            cur.execute("ROLLBACK")
            return read(final)
        work = directory / f".{_name(seq)}.{os.getpid()}.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        source = cur.execute("SELECT current_database()").fetchall()[0][0]
        cur.execute(f"ATTACH {_quote(work / DATABASE)} AS casetrail_snapshot")
        cur.execute(f'COPY FROM DATABASE "{source}" TO casetrail_snapshot')
        rows = {}
        for table in TABLES:
            cur.execute(f'COPY (SELECT * FROM "{source}".{table}) TO {_quote(work / f"{table}.parquet")} '
                        "(FORMAT parquet, COMPRESSION zstd)")
            rows[table] = cur.execute(f'SELECT count(*) FROM "{source}".{table}').fetchall()[0][0]
        cur.execute("COMMIT")  # nothing written to the projection; the copy's writes are kept
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    finally:
        if "casetrail_snapshot" in {r[0] for r in cur.execute("SELECT database_name FROM duckdb_databases()").fetchall()}:
            cur.execute("DETACH casetrail_snapshot")
    manifest = Manifest(
        seq=seq,
        taken_at=dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        path=str(final),
        duckdb=str(final / DATABASE),
        parquet={t: str(final / f"{t}.parquet") for t in TABLES},
        rows=rows,
    )
    (work / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
    os.replace(work, final)
    prune(directory, keep)
    return manifest


def read(path: Path) -> Manifest:
    return msgspec.json.decode((path / MANIFEST).read_bytes(), type=Manifest)


def snapshots(directory: str | Path) -> list[Path]:
    """Complete snapshots, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith(PREFIX) and (p / MANIFEST).exists())


def latest(directory: str | Path) -> Manifest | None:
    found = snapshots(directory)
    return read(found[-1]) if found else None


def prune(directory: Path, keep: int) -> None:
    found = snapshots(directory)
    for old in found[: max(0, len(found) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)

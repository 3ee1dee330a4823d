"""The projection store: one DuckDB file with every projection and the log position it holds.

`apply(batch)` turns a batch of records, `(seq, bytes)` as the log delivers them,
into rows of every projection and commits them together with the checkpoint (the
last applied seq) in one transaction: a crash at any point loses nothing and
applies nothing twice, and a record at or below the checkpoint changes nothing.

Speed comes from not walking a case's history again for every event. Each case
keeps a compact fold (`projections.status.CaseFold`) in memory; an event that
sorts after everything its case has walked is applied to the fold in place. A case
is walked again from its stored history (its `timeline` rows hold its events)
when an event arrives out of order, when a correction or retraction arrives, or
when its fold is not in memory (after a restart). Both paths run the same walk.
The record seqs of each case are kept in memory too, so that its rows are fetched
by their seqs: DuckDB then reads only the row groups whose `record_seq` range holds
one (zone maps), rather than every stored event.

`apply` is `prepare` (decode, fold, build the rows: Python) then `commit` (the
DuckDB transaction, which releases the GIL): the projector prepares the next batch
while the one before commits. A case walked again then may have rows in a batch
not yet committed: its history is what a snapshot of the file holds, with the rows
of the batches prepared after that snapshot laid over it from memory, so the fold
never waits for a commit.

Catching up, `commit(prepared, hold=True)` turns a batch into Arrow tables and
holds them for the batches after it, until they hold a row group of new timeline
rows (`HOLD_ROWS`); then all are written in one transaction. DuckDB writes a full
row group of a transaction straight into the file, where a smaller transaction
goes through the write-ahead log first and is copied into the file again at the
next checkpoint: at 1M events, commits of 20,000 records spent 10 s of 60 in
COMMIT, those of a row group 1 s. (The timeline rows are held in memory, not
written into an open transaction: a row written in a transaction and changed in
it again, as a correction changes its state, sends the whole table's rows of that
transaction through the write-ahead log.)

Statements read the Arrow tables they write or join by the name of the local
variable that holds them (DuckDB's replacement scan of the calling frame): no
relation object or registered view is made for them. A head commit of ten
records costs ~1.8 ms less so than through `from_arrow(...).insert_into(...)`,
and registering a table and dropping it again costs ~1.2 ms (DuckDB 2.0.1).

One process writes the file; readers in the same process use `reader()` cursors.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from array import array
from collections.abc import Sequence
from operator import itemgetter
from pathlib import Path

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from projections import case_status, charges, recognitions, timeline
from projections.columns import Rows
from projections.effective import in_force, versions
from projections.status import NEUTRAL, CaseFold, walk
from projections.timeline import Stored
from schemas.dates import lower_bound
from schemas.events import (
    AMENDMENT_TYPES,
    Charged,
    ChargesAmended,
    RecognitionWithdrawn,
    Recognized,
    event_decoder,
)

log = logging.getLogger("casetrail.projections")

PROJECTIONS = (case_status, timeline, charges, recognitions)
# DuckDB's row group: a transaction holding this many new rows of a table writes
# them into the file directly (compressed), not through the write-ahead log.
HOLD_ROWS = 122_880
# Up to this many cases are deleted by a list of values; more, through a joined table.
SMALL_DELETE = 16
# Status rows of the cases committed last, kept to answer status questions without a
# statement (`recent_status`); a commit of more rows than this (catching up) keeps none.
RECENT_STATUS = 16_384
_CHARGE_EVENTS = (Charged, ChargesAmended)
_RECOGNITION_EVENTS = (Recognized, RecognitionWithdrawn)

META_DDL = [
    """CREATE TABLE IF NOT EXISTS projection_versions (
    projection VARCHAR PRIMARY KEY,
    version INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS checkpoint (
    last_seq BIGINT NOT NULL,
    updated_at TIMESTAMP
)""",
]


def checkpoint_of(cur: duckdb.DuckDBPyConnection) -> int:
    """The last applied seq, as the cursor's transaction sees it."""
    return cur.execute("SELECT last_seq FROM checkpoint").fetchall()[0][0]


class VersionMismatch(RuntimeError):
    """The file was built by another version of a projection: it must be rebuilt from the log."""


def versions_wanted() -> dict[str, int]:
    return {p.NAME: p.VERSION for p in PROJECTIONS}


class _Delivered(msgspec.Struct):
    """The envelope of a record as the log stores it; the hashes are not needed here."""

    recorded_at: str
    recorded_by: str
    case_version: int
    event: msgspec.Raw


_delivered = msgspec.json.Decoder(_Delivered)


class _Item:
    """One new record of a batch: decoded, with its event's JSON as stored."""

    __slots__ = ("case_version", "event_json", "record")

    def __init__(self, seq: int, data: bytes) -> None:
        envelope = _delivered.decode(data)
        raw = bytes(envelope.event)
        self.record = Stored(
            seq=seq,
            recorded_at=envelope.recorded_at,
            recorded_by=envelope.recorded_by,
            event=event_decoder.decode(raw),
        )
        self.case_version = envelope.case_version
        self.event_json = raw  # UTF-8 JSON: Arrow takes the bytes for a text column as they are


class ProjectionStore:
    """The projections in one DuckDB file, written by `apply`, read through `reader()`."""

    def __init__(
        self,
        path: str | Path,
        *,
        memory_limit: str = "512MB",
        threads: int | None = None,
        hold_rows: int | None = None,
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(self.path)
        self.con.execute(f"SET memory_limit = '{memory_limit}'")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        # Fewer, larger checkpoints: each rewrites and recompresses what the WAL holds.
        self.con.execute("SET checkpoint_threshold = '128MB'")
        self.con.execute("SET preserve_insertion_order = false")
        self._create_or_check()
        self.position: int = checkpoint_of(self.con)
        self.folds: dict[str, CaseFold] = {}
        self.seqs: dict[str, array] = self._load_seqs()
        self._uncommitted: list[Prepared] = []  # prepared, in log order, their commits not ended
        self._lock = threading.Lock()  # `position`, `broken` and `_uncommitted` move together
        # The first batches of `_uncommitted`, as tables, held for one transaction (the writer's own).
        self._held = _Held(self.position)
        self.hold_rows = HOLD_ROWS if hold_rows is None else hold_rows
        self._history_cursor = self.con.cursor()
        self.broken = False
        # case_id -> its case_status row as committed (under `_lock`, with `position`).
        self._recent: dict[str, tuple] = {}
        # The last seq whose status rows `recent_status` answers with: the checkpoint, or
        # beyond it, a batch prepared with `publish` and not yet committed.
        self.published: int = self.position

    def _create_or_check(self) -> None:
        con = self.con
        con.execute("BEGIN TRANSACTION")
        for statement in META_DDL:
            con.execute(statement)
        found = dict(con.execute("SELECT projection, version FROM projection_versions").fetchall())
        wanted = versions_wanted()
        if found and found != wanted:
            con.execute("ROLLBACK")
            raise VersionMismatch(
                f"{self.path} holds projection versions {found}, this code builds {wanted}: "
                "rebuild it from the log into a new file"
            )
        for projection in PROJECTIONS:
            for statement in projection.DDL:
                con.execute(statement)
        if not found:
            for name, version in wanted.items():
                con.execute("INSERT INTO projection_versions VALUES (?, ?)", [name, version])
            con.execute("INSERT INTO checkpoint VALUES (0, now())")
        con.execute("COMMIT")

    def _load_seqs(self) -> dict[str, array]:
        table = self.con.sql(
            "SELECT case_id, list(record_seq ORDER BY record_seq) AS seqs FROM timeline GROUP BY case_id"
        ).to_arrow_table()
        return {
            case_id: array("q", seqs)
            for case_id, seqs in zip(table.column("case_id").to_pylist(), table.column("seqs").to_pylist())
        }

    def reset(self) -> None:
        """Forget what memory holds and go on from what is committed (after a failure).

        Batches held (`commit(..., hold=True)`) are dropped.
        """
        self._held = _Held(self.position)
        self.folds.clear()
        self.seqs = self._load_seqs()
        self._uncommitted.clear()
        self._recent.clear()
        self.published = self.position
        self.broken = False

    def checkpoint(self) -> bool:
        """Write what the WAL holds into the file now (it would be, at a commit, later).

        Skipped (False) while another transaction writes; a later commit does it then.
        """
        try:
            self.con.execute("CHECKPOINT")
        except duckdb.TransactionException as exc:
            log.debug("checkpoint skipped: %s", exc)
            return False
        return True

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one reader thread: it sees committed batches only (MVCC)."""
        return self.con.cursor()

    def recent_status(self, case_id: str) -> tuple[int, tuple] | None:
        """`(published, row)`: the case's `case_status` row as of `published`, if a recent
        batch wrote it; None otherwise (ask the file).

        `published` is the checkpoint, or beyond it the last seq of a batch prepared
        with `publish` whose commit has not ended yet (its rows are the ones it will
        write). A commit, or a published batch, replaces or drops the rows of every
        case it changes before `published` moves, so the row is the one a reader of
        the file sees once the file reaches that seq; a case that no longer has a row
        (all its events retracted) is not kept.
        """
        with self._lock:
            row = self._recent.get(case_id)
            return None if row is None else (self.published, row)

    def case_seqs(self, case_id: str) -> list[int]:
        """The record seqs of a case's rows (committed, or about to be: readers filter)."""
        return list(self.seqs.get(case_id, ()))

    def close(self) -> None:
        """Close the file; batches held are dropped (`flush` first to keep them)."""
        self.con.close()

    # -- applying records

    def apply(self, batch: Sequence[tuple[int, bytes]]) -> int:
        """Apply the records after the checkpoint in one transaction; return the new checkpoint."""
        prepared = self.prepare(batch)
        return self.position if prepared is None else self.commit(prepared)

    def prepare(self, batch: Sequence[tuple[int, bytes]], *, publish: bool = False) -> Prepared | None:
        """Fold the new records of a batch into rows, ready for `commit`.

        It may run while batches prepared before it commit (on another thread), or
        before they do: `commit` them in the order they were prepared. After a
        failed commit, `reset` first: the folds may hold what was never committed.

        `publish` (following the head): `recent_status` answers with the batch's
        status rows at once, as of its last seq, before its commit (`published`).
        Only when every batch before it is committed or published, and it is small
        enough to be kept whole (RECENT_STATUS rows).
        """
        if self.broken:
            raise RuntimeError("a commit failed: reset the store first")
        by_case: dict[str, list[_Item]] = {}
        amended: set[str] = set()  # cases with a correction or retraction in the batch
        with self._lock:  # the last seq prepared: committed, or about to be
            last_seq = self._uncommitted[-1].last_seq if self._uncommitted else self.position
        before = last_seq
        for seq, data in batch:
            if seq <= last_seq:
                continue  # delivered again: already applied
            item = _Item(seq, data)
            event = item.record.event
            case = by_case.get(event.case_id)
            if case is None:
                by_case[event.case_id] = [item]
            else:
                case.append(item)
            if isinstance(event, AMENDMENT_TYPES):
                amended.add(event.case_id)
            last_seq = seq
        if not by_case:
            return None
        # Cases the store has never seen have no rows to replace: no deletes for them.
        new_cases = {case_id for case_id in by_case if case_id not in self.seqs}
        try:
            prepared = self._tables(last_seq, self._fold(by_case, amended), new_cases)
        except BaseException:
            # Folds may hold what was not committed: walk those cases again next time.
            for case_id in by_case:
                self.folds.pop(case_id, None)
            raise
        for case_id, items in by_case.items():
            seqs = self.seqs.get(case_id)
            if seqs is None:
                seqs = self.seqs[case_id] = array("q")
            seqs.extend([item.record.seq for item in items])
        with self._lock:
            self._uncommitted.append(prepared)
            if publish and self.published == before and len(prepared.status) <= RECENT_STATUS:
                self._remember([prepared])
                self.published = prepared.last_seq
        return prepared

    def commit(self, prepared: Prepared, *, hold: bool = False) -> int:
        """Write a prepared batch and the checkpoint in one transaction; return the checkpoint.

        `hold`: the batch may be held, as Arrow tables, and written with the
        batches after it (by their `commit`, or `flush`) once they hold `hold_rows`
        new timeline rows; the checkpoint returned is then still the one before.
        Readers see none of it until then, and a crash loses it all: the log is
        read again from the checkpoint.
        """
        with self._lock:
            held = len(self._held.batches)
            if self.broken or len(self._uncommitted) <= held or self._uncommitted[held] is not prepared:
                raise RuntimeError("not the next prepared batch (or a commit before it failed)")
        try:
            self._held.add(prepared)
        except BaseException:
            self._failed()
            raise
        if hold and self._held.rows < self.hold_rows:
            return self.position
        return self._write_held()

    @property
    def holding(self) -> bool:
        """Whether batches are held, not yet committed."""
        return bool(self._held.batches)

    def flush(self) -> int:
        """Commit the batches `commit(..., hold=True)` held; return the checkpoint."""
        return self._write_held() if self._held.batches else self.position

    def _write_held(self) -> int:
        """The batches held and the checkpoint, in one transaction; the new checkpoint."""
        try:
            self._transaction(self._held)
        except BaseException:
            self._failed()
            raise
        with self._lock:
            self.position = self._held.last_seq
            del self._uncommitted[: len(self._held.batches)]
            # Published batches are remembered already (and maybe cases of later ones
            # since): only the others.
            unpublished = [p for p in self._held.batches if p.last_seq > self.published]
            if unpublished:
                self._remember(unpublished)
            self.published = max(self.published, self.position)
        self._held = _Held(self.position)
        return self.position

    def _remember(self, batches: list[Prepared]) -> None:
        """The status rows just committed replace what `recent_status` held of their cases."""
        recent = self._recent
        if sum(len(p.status) for p in batches) > RECENT_STATUS:
            recent.clear()  # catching up: none kept (and the lock is not held for long)
            return
        for p in batches:
            for case_id in p.status_cases:  # replaced, or gone
                recent.pop(case_id, None)
            for row in p.status.rows:
                recent.pop(row[0], None)  # (re-inserted last: the newest are kept)
                recent[row[0]] = row
        while len(recent) > RECENT_STATUS:
            del recent[next(iter(recent))]

    def _failed(self) -> None:
        self._held = _Held(self.position)
        with self._lock:
            self.broken = True

    def _fold(self, by_case: dict[str, list[_Item]], amended: set[str]) -> _Changes:
        changes = _Changes()
        again: list[str] = []  # cases to walk from their history
        for case_id, items in by_case.items():
            if case_id in amended:
                again.append(case_id)
                continue
            fold = self.folds.get(case_id)
            if fold is None:
                if items[0].case_version != 1:
                    again.append(case_id)  # an older case whose fold is not in memory
                    continue
                fold = CaseFold(case_id)
            days = _in_order(fold, items)
            if days is None:
                again.append(case_id)
                continue
            self._apply_in_place(fold, items, days, changes)
        if again:
            history = self._history(again)
            for case_id in again:
                self._walk_again(case_id, history.get(case_id, []), by_case[case_id], changes)
        return changes

    def _apply_in_place(
        self, fold: CaseFold, items: list[_Item], days: list[dt.date | None], changes: _Changes
    ) -> None:
        case_id = fold.case_id
        for item, day in zip(items, days):
            record = item.record
            event = record.event
            if day is None:
                fold.count_earlier(event)  # type: ignore[arg-type]
                day = lower_bound(event.occurred_on)
            else:
                fold.apply(record.seq, event, day)  # type: ignore[arg-type]
            timeline.add_fact_row(changes.timeline, record, event, item.event_json, day)
            if isinstance(event, _CHARGE_EVENTS):
                changes.charges.add(case_id)
            elif isinstance(event, _RECOGNITION_EVENTS):
                changes.recognitions.add(case_id)
        self.folds[case_id] = fold
        changes.status[case_id] = (fold, items[-1].record.seq)

    def _walk_again(self, case_id: str, stored: list[tuple], new: list[_Item], changes: _Changes) -> None:
        records = []
        stored_state: dict[int, tuple[str, bool]] = {}
        for record_seq, recorded_at, recorded_by, event_json, state, corrected in stored:
            records.append(timeline.stored(record_seq, recorded_at, recorded_by, event_json))
            stored_state[record_seq] = (state, corrected)
        new_json = {}
        for item in new:
            records.append(item.record)
            new_json[item.record.seq] = item.event_json
        all_versions = versions(records)
        fold = walk(case_id, in_force(all_versions))
        self.folds[case_id] = fold
        changes.status[case_id] = (fold, new[-1].record.seq)
        changes.charges.add(case_id)
        changes.recognitions.add(case_id)
        for version in all_versions:
            seq = version.record.seq
            if seq in new_json:
                timeline.add_row(changes.timeline, version, new_json[seq])
            elif stored_state[seq] != (version.state.value, version.corrected):
                changes.states.add(seq, version.state.value, version.corrected)

    def _history(self, case_ids: list[str]) -> dict[str, list[tuple]]:
        """The rows of some cases, in log order, as every batch prepared so far leaves them."""
        seqs = [seq for case_id in case_ids for seq in self.seqs.get(case_id, ())]
        found: dict[str, list[tuple]] = {}
        if not seqs:
            return found
        wanted_seqs = pa.table({"seq": pa.array(seqs, pa.int64())})  # noqa: F841 (read by name)
        with self._lock:
            if self.broken:
                raise RuntimeError("the commit of a batch before failed")
            uncommitted = list(self._uncommitted)
        cur = self._history_cursor
        cur.execute("BEGIN TRANSACTION")  # the rows and the checkpoint of one snapshot
        try:
            snapshot = checkpoint_of(cur)
            rows = cur.execute(
                f"SELECT {', '.join('t.' + c for c in WALKED_COLUMNS)} FROM wanted_seqs w "
                "JOIN timeline t ON t.record_seq = w.seq ORDER BY t.record_seq"
            ).fetchall()
        finally:
            cur.execute("COMMIT")
        # Batches committed after the list was taken are in the snapshot: skipped here.
        later = [batch for batch in uncommitted if batch.last_seq > snapshot]
        if later:
            wanted_seqs = set(seqs)
            for batch in later:
                rows = _laid_over(rows, batch, wanted_seqs)
        for row in rows:
            found.setdefault(row[0], []).append(row[1:])
        return found

    def _tables(self, last_seq: int, changes: _Changes, new_cases: set[str]) -> Prepared:
        """The rows a batch writes, built from the folds as they are now (tuples: the
        writer thread turns them into Arrow tables, off the fold's critical path)."""
        changes.settle()
        return Prepared(
            last_seq=last_seq,
            records=len(changes.timeline),
            timeline=changes.timeline,
            states=changes.states,
            status_cases=[c for c in changes.status if c not in new_cases],
            status=changes.status_rows,
            charge_cases=[c for c in changes.charges if c not in new_cases],
            charges=changes.charge_rows,
            recognition_cases=[c for c in changes.recognitions if c not in new_cases],
            recognitions=changes.recognition_rows,
        )

    def _transaction(self, held: _Held) -> None:
        """Write the batches held and the checkpoint in one transaction."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            if held.updates:
                new_states = held.updates_table()  # noqa: F841 (read by name)
                con.execute(
                    "UPDATE timeline SET state = s.state, corrected = s.corrected "
                    "FROM new_states s WHERE timeline.record_seq = s.record_seq"
                )
            self._insert(timeline.NAME, held.timeline())
            for p in held.batches:
                self._delete(case_status.NAME, p.status_cases)
                self._insert(case_status.NAME, p.status.table())
                self._delete(charges.NAME, p.charge_cases)
                self._insert(charges.NAME, p.charges.table())
                self._delete(recognitions.NAME, p.recognition_cases)
                self._insert(recognitions.NAME, p.recognitions.table())
            con.execute("UPDATE checkpoint SET last_seq = ?, updated_at = now()", [held.last_seq])
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass  # the failed statement may have ended the transaction already
            raise

    def _delete(self, table: str, case_ids: list[str]) -> None:
        if not case_ids:
            return
        if len(case_ids) <= SMALL_DELETE:
            marks = ", ".join("?" * len(case_ids))
            self.con.execute(f"DELETE FROM {table} WHERE case_id IN ({marks})", case_ids)
            return
        changed_cases = pa.table({"case_id": case_ids})  # noqa: F841 (read by name)
        self.con.execute(f"DELETE FROM {table} WHERE case_id IN (SELECT case_id FROM changed_cases)")

    def _insert(self, table: str, rows: pa.Table) -> None:
        if rows.num_rows:
            self.con.execute(f"INSERT INTO {table} SELECT * FROM rows")


class Prepared(msgspec.Struct, kw_only=True):
    """One batch, folded: the rows it writes and the cases whose rows it replaces."""

    last_seq: int
    records: int  # new records: a timeline row each
    timeline: Rows
    states: Rows  # of stored timeline rows
    status_cases: list[str]  # whose stored rows the new ones replace
    status: Rows
    charge_cases: list[str]
    charges: Rows
    recognition_cases: list[str]
    recognitions: Rows
    # `timeline` as an Arrow table, once the writer has made it (its tuples are dropped then).
    timeline_table: pa.Table | None = None


class _Held:
    """Batches whose timeline rows are Arrow tables, to be written together in one transaction."""

    __slots__ = ("_committed", "_patches", "_rows_by_seq", "batches", "rows", "updates")

    def __init__(self, committed: int = 0) -> None:
        self.batches: list[Prepared] = []
        self.rows = 0  # new timeline rows
        self.updates: dict[int, tuple[str, bool]] = {}  # state changes of committed rows, by record_seq
        self._committed = committed  # the checkpoint the batches follow
        # Per batch: rows of its table whose state a later batch changed (row -> state),
        # and its rows by record_seq (made at its first change).
        self._patches: list[dict[int, tuple[str, bool]]] = []
        self._rows_by_seq: list[dict[int, int] | None] = []

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq

    def add(self, p: Prepared) -> None:
        """Hold batch `p`; the states it changes go to the rows they change."""
        for record_seq, state, corrected in p.states.rows:
            if record_seq <= self._committed:
                self.updates[record_seq] = (state, corrected)
            else:
                self._patch(record_seq, (state, corrected))
        # A fold may lay this batch over the history it reads (`_laid_over`): from the
        # table from now on, and the tuples can go.
        p.timeline_table = p.timeline.table()
        p.timeline.rows = []
        self.batches.append(p)
        self._patches.append({})
        self._rows_by_seq.append(None)
        self.rows += p.records

    def _patch(self, record_seq: int, state: tuple[str, bool]) -> None:
        """A row held in an earlier batch changes its state (a correction of it arrived since)."""
        for n, p in enumerate(self.batches):
            if record_seq <= p.last_seq:  # the batches hold the seqs after the checkpoint, in order
                rows = self._rows_by_seq[n]
                if rows is None:
                    assert p.timeline_table is not None
                    seqs = p.timeline_table.column("record_seq").to_pylist()
                    rows = self._rows_by_seq[n] = {seq: row for row, seq in enumerate(seqs)}
                self._patches[n][rows[record_seq]] = state
                return
        raise RuntimeError(f"record {record_seq} is neither committed nor held")

    def timeline(self) -> pa.Table:
        """The new timeline rows of every batch held, with the states changed since."""
        tables = []
        for p, patches in zip(self.batches, self._patches):
            table = p.timeline_table
            assert table is not None
            if patches:
                states = table.column("state").to_pylist()
                corrected = table.column("corrected").to_pylist()
                for row, (state, was_corrected) in patches.items():
                    states[row], corrected[row] = state, was_corrected
                for name, values in (("state", states), ("corrected", corrected)):
                    at = table.schema.get_field_index(name)
                    field = table.schema.field(at)
                    table = table.set_column(at, field, pa.array(values, field.type))
            tables.append(table)
        return pa.concat_tables(tables)

    def updates_table(self) -> pa.Table:
        return pa.table(
            {
                "record_seq": pa.array(list(self.updates), pa.int64()),
                "state": pa.array([state for state, _ in self.updates.values()], pa.string()),
                "corrected": pa.array([corrected for _, corrected in self.updates.values()], pa.bool_()),
            }
        )


class _Changes:
    """What one batch changes, gathered before the transaction that writes it."""

    __slots__ = (
        "charge_rows",
        "charges",
        "recognition_rows",
        "recognitions",
        "states",
        "status",
        "status_rows",
        "timeline",
    )

    def __init__(self) -> None:
        self.timeline = timeline.rows()  # new rows
        self.states = timeline.state_rows()  # stored rows whose state changes
        self.status: dict[str, tuple[CaseFold, int]] = {}  # each case once, when its folding is done
        self.charges: set[str] = set()
        self.recognitions: set[str] = set()
        self.status_rows = case_status.rows()
        self.charge_rows = charges.rows()
        self.recognition_rows = recognitions.rows()

    def settle(self) -> None:
        """Build the status, charge and recognition rows of the cases folded (once, when all are)."""
        for case_id, (fold, updated_seq) in self.status.items():
            if fold.events == 0:
                continue  # every event retracted: the case no longer exists
            case_status.add_row(self.status_rows, fold, updated_seq)
            if case_id in self.charges:
                charges.add_rows(self.charge_rows, fold)
            if case_id in self.recognitions:
                recognitions.add_rows(self.recognition_rows, fold)


# What a case walked again reads of each of its stored rows.
WALKED_COLUMNS = ("case_id", "record_seq", "recorded_at", "recorded_by", "event", "state", "corrected")


_PICK_WALKED = itemgetter(*(timeline.SCHEMA.names.index(name) for name in WALKED_COLUMNS))
_RECORD_SEQ = timeline.SCHEMA.names.index("record_seq")


def _laid_over(rows: list[tuple], batch: Prepared, wanted: set[int]) -> list[tuple]:
    """History `rows` (of `WALKED_COLUMNS`, in log order) with those `batch` adds.

    The states the batch changed in earlier rows are not laid over: a state only
    moves on (effective, superseded, retracted; `corrected` once set stays set), so
    a walk that reads an older one still finds it differs and writes its own.
    """
    # The tuples first: the writer sets `timeline_table` before it drops them.
    tuples = batch.timeline.rows
    table = batch.timeline_table
    if table is not None:
        seqs = table.column("record_seq")
        picked = table.filter(pc.is_in(seqs, value_set=pa.array(list(wanted), pa.int64())))
        picked = picked.select(WALKED_COLUMNS).sort_by("record_seq")
        added = list(zip(*(column.to_pylist() for column in picked.columns)))
    else:
        chosen = sorted((row for row in tuples if row[_RECORD_SEQ] in wanted), key=itemgetter(_RECORD_SEQ))
        added = [_PICK_WALKED(row) for row in chosen]
    return rows + added if added else rows


def _in_order(fold: CaseFold, items: list[_Item]) -> list[dt.date | None] | None:
    """How the new events can be applied in place, or None if the case must be walked again.

    Per event: its lower bound if it sorts after everything before it, None if it
    sorts earlier but is of a NEUTRAL type (it is only counted).
    """
    last = fold.last_key
    days: list[dt.date | None] = []
    for item in items:
        record = item.record
        day = lower_bound(record.event.occurred_on)
        key = (day, record.seq)
        if last is not None and key < last:
            if not isinstance(record.event, NEUTRAL):
                return None
            days.append(None)
            continue
        last = key
        days.append(day)
    return days

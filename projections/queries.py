"""Answers over the projection store: the current state from the tables, the past by walking.

A question of status or cases without `on` or `known_at` is answered from the
projection tables. With either, the case is walked again from its stored records
with the same pure derivation the projector uses (`projections.status`), keeping
only what the question allows: records recorded at or before `known_at`,
effective events on or before `on`. A timeline is always derived from the case's
stored records (`projections.effective`; `Reader._case_records` says why). Every
answer is read in one snapshot together with the checkpoint, so `as_of_seq` names
exactly the log position the answer reflects.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import duckdb
import msgspec
import pyarrow as pa

from projections import case_status, timeline
from projections.effective import in_force, versions
from projections.status import CaseFold, CaseStatus, walk
from projections.store import ProjectionStore, checkpoint_of

MAX_LIMIT = 1000
_STATUS_COLUMNS = ", ".join(f"s.{name}" for name in case_status.SCHEMA.names)
# One statement is one snapshot: the row and the checkpoint it reflects.
_STATUS_NOW = (
    f"SELECT c.last_seq, {_STATUS_COLUMNS} FROM checkpoint c LEFT JOIN case_status s ON s.case_id = ?"
)
# Cases walked per round trip when a past question covers every case.
WALK_CHUNK = 2000


def _seqs_in(seqs: list[int]) -> str:
    """`record_seq` among `seqs` (integers only: safe to inline). DuckDB skips the row
    groups outside the list's range by itself (a BETWEEN beside it was no faster)."""
    return f"record_seq IN ({', '.join(str(int(s)) for s in seqs)})"


class Filters(msgspec.Struct, kw_only=True):
    """What `query cases` narrows by; a field left None does not narrow."""

    custody: str | None = None
    stage: str | None = None
    recognized_by: str | None = None
    article: str | None = None  # `207.3`, `RU-CC 207.3`, or a display form
    jurisdiction: str | None = None
    region: str | None = None

    def sql(self) -> tuple[str, list[object]]:
        where: list[str] = []
        params: list[object] = []
        for column in ("custody", "stage", "jurisdiction", "region"):
            value = getattr(self, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if self.recognized_by is not None:
            where.append("list_contains(recognized_by, ?)")
            params.append(self.recognized_by)
        if self.article is not None:
            column, values = self._article()
            where.append(f"case_id IN (SELECT case_id FROM charges WHERE {column})")
            params += values
        return (" WHERE " + " AND ".join(where)) if where else "", params

    def _article(self) -> tuple[str, list[object]]:
        """`207.3` names an article, `RU-CC 207.3` one of a code, `RU-CC 207.3(2)(a)` a display form."""
        wanted = (self.article or "").strip()
        if "(" in wanted:
            return "display = ?", [wanted]
        if " " in wanted:
            code, article = wanted.split(None, 1)
            return "code = ? AND article = ?", [code, article]
        return "article = ?", [wanted]

    def matches(self, fold: CaseFold) -> bool:
        """The same test as `sql`, on a fold walked for a past question."""
        for column in ("custody", "stage", "jurisdiction", "region"):
            value = getattr(self, column)
            if value is not None and getattr(fold, column) != value:
                return False
        if self.recognized_by is not None and self.recognized_by not in fold.recognized_by:
            return False
        if self.article is not None:
            wanted = self.article.strip()
            if "(" in wanted:
                found = any(c.display == wanted for c in fold.charges)
            elif " " in wanted:
                code, article = wanted.split(None, 1)
                found = any((c.code, c.article) == (code, article) for c in fold.charges)
            else:
                found = any(c.article == wanted for c in fold.charges)
            if not found:
                return False
        return True


class Reader:
    """Reads for one thread at a time, on its own cursor (it sees committed batches only)."""

    def __init__(self, store: ProjectionStore) -> None:
        self.store = store
        self.cur = store.reader()
        # Parsed once: DuckDB then only binds and runs it (~0.4 ms of ~1.8 saved a status).
        self._status_now = duckdb.extract_statements(_STATUS_NOW)[0]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[int]:
        """One read transaction; yields the checkpoint it sees (the answer's `as_of_seq`)."""
        self.cur.execute("BEGIN TRANSACTION READ ONLY")
        try:
            yield checkpoint_of(self.cur)
        finally:
            self.cur.execute("ROLLBACK")

    # -- one case

    def status(
        self,
        case_id: str,
        *,
        today: dt.date,
        on: dt.date | None = None,
        known_at: dt.datetime | None = None,
    ) -> tuple[int, CaseStatus | None]:
        if on is None and known_at is None:
            as_of_seq, *stored = self.cur.execute(self._status_now, [case_id]).fetchall()[0]
            return as_of_seq, (case_status.from_row(stored, today, as_of_seq) if stored[0] is not None else None)
        as_of_seq, records = self._case_records(case_id)
        fold = self._walk(case_id, records, on or today, known_at)
        return as_of_seq, fold.status(on or today, as_of_seq) if fold.events else None

    def timeline(
        self,
        case_id: str,
        *,
        on: dt.date | None = None,
        known_at: dt.datetime | None = None,
        history: bool = False,
    ) -> tuple[int, list[timeline.Entry] | None]:
        """The case's effective events in walk order; with `history`, every version in log order."""
        as_of_seq, records = self._case_records(case_id)
        all_versions = versions(records, known_at)
        if history:
            chosen = all_versions
        else:
            chosen = [v for v in in_force(all_versions) if on is None or v.day <= on]
        return as_of_seq, [timeline.entry(v, history) for v in chosen] or None

    def _case_records(self, case_id: str) -> tuple[int, list[timeline.Stored]]:
        """A case's committed records in log order with the checkpoint they reflect, in one statement.

        Versions are derived from the records here rather than read from the stored
        columns: a case's few rows lie apart in the table, and each column read costs
        a block per row (four columns instead of thirteen halved a timeline's time).
        """
        seqs = self.store.case_seqs(case_id)
        if not seqs:
            # Not even prepared after this checkpoint was read: not in it either.
            as_of_seq = checkpoint_of(self.cur)
            seqs = self.store.case_seqs(case_id)
            if not seqs:
                return as_of_seq, []
        # Seqs prepared but not yet committed have no row yet: they are not seen.
        rows = self.cur.execute(
            "SELECT record_seq, recorded_at, recorded_by, event, c.last_seq FROM timeline, checkpoint c "
            f"WHERE {_seqs_in(seqs)}"
        ).fetchall()
        if not rows:
            # Its rows are not committed yet: say so at the checkpoint of the same snapshot.
            with self.snapshot() as as_of_seq:
                if not self.cur.execute(f"SELECT 1 FROM timeline WHERE {_seqs_in(seqs)} LIMIT 1").fetchall():
                    return as_of_seq, []
            return self._case_records(case_id)  # committed meanwhile: read them
        as_of_seq = rows[0][4]
        now = self.store.case_seqs(case_id)
        if len(now) > len(seqs) and now[len(seqs)] <= as_of_seq:
            return self._case_records(case_id)  # a batch committed meanwhile: read it too
        rows.sort()  # by record_seq: log order
        return as_of_seq, [timeline.stored(*row[:4]) for row in rows]

    @staticmethod
    def _walk(case_id: str, records, on: dt.date, known_at: dt.datetime | None) -> CaseFold:
        return walk(case_id, in_force(versions(records, known_at)), on)

    # -- many cases

    def cases(
        self,
        filters: Filters,
        *,
        today: dt.date,
        on: dt.date | None = None,
        known_at: dt.datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, int | None, list[CaseStatus]]:
        """`(as_of_seq, total, statuses)` ordered by case_id; total is None when not counted."""
        limit = max(0, min(limit, MAX_LIMIT))
        with self.snapshot() as as_of_seq:
            if on is None and known_at is None:
                where, params = filters.sql()
                # The count apart: a window count beside the page made DuckDB sort every match.
                rows = self.cur.execute(
                    f"SELECT {case_status.COLUMNS} FROM case_status{where} ORDER BY case_id LIMIT ? OFFSET ?",
                    [*params, limit, offset],
                ).fetchall()
                total = self._count(where, params)
                found = [case_status.from_row(row, today, as_of_seq) for row in rows]
                return as_of_seq, total, found
            return (as_of_seq, *self._past_cases(filters, on or today, known_at, limit, offset, as_of_seq))

    def _count(self, where: str, params: list[object]) -> int:
        return self.cur.execute(f"SELECT count(*) FROM case_status{where}", params).fetchall()[0][0]

    def _past_cases(
        self,
        filters: Filters,
        on: dt.date,
        known_at: dt.datetime | None,
        limit: int,
        offset: int,
        as_of_seq: int,
    ) -> tuple[int | None, list[CaseStatus]]:
        """Walk every case as the question allows; stop once the page is full."""
        case_ids = sorted(self.store.seqs)
        matched = 0
        page: list[CaseStatus] = []
        for start in range(0, len(case_ids), WALK_CHUNK):
            chunk = case_ids[start : start + WALK_CHUNK]
            for case_id, records in self._records_of(chunk).items():
                fold = self._walk(case_id, records, on, known_at)
                if fold.events == 0 or not filters.matches(fold):
                    continue
                matched += 1
                if matched > offset:
                    page.append(fold.status(on, as_of_seq))
                if len(page) >= limit:
                    more = start + WALK_CHUNK < len(case_ids)
                    return (None if more else matched), page
        return matched, page

    def _records_of(self, case_ids: list[str]) -> dict[str, list[timeline.Stored]]:
        seqs = [s for case_id in case_ids for s in self.store.case_seqs(case_id)]
        found: dict[str, list[timeline.Stored]] = {case_id: [] for case_id in case_ids}
        if not seqs:
            return found
        asked_seqs = pa.table({"seq": pa.array(seqs, pa.int64())})  # noqa: F841 (read by name: projections.store)
        rows = self.cur.execute(
            "SELECT t.case_id, t.record_seq, t.recorded_at, t.recorded_by, t.event "
            "FROM asked_seqs a JOIN timeline t ON t.record_seq = a.seq ORDER BY t.record_seq"
        ).fetchall()
        for case_id, *row in rows:
            found[case_id].append(timeline.stored(*row))
        return found

    # -- the whole projection

    def stats(self) -> tuple[int, dict[str, object]]:
        with self.snapshot() as as_of_seq:
            cases, events = self.cur.execute(
                "SELECT count(*), coalesce(sum(events), 0) FROM case_status"
            ).fetchall()[0]

            def counts(sql: str) -> dict[str, int]:
                return {str(k): v for k, v in self.cur.execute(sql).fetchall()}

            return as_of_seq, {
                "cases": cases,
                "events": events,
                "records": self.cur.execute("SELECT count(*) FROM timeline").fetchall()[0][0],
                "by_custody": counts(
                    "SELECT coalesce(custody, 'unknown'), count(*) FROM case_status GROUP BY 1 ORDER BY 1"
                ),
                "by_stage": counts(
                    "SELECT coalesce(stage, 'unknown'), count(*) FROM case_status GROUP BY 1 ORDER BY 1"
                ),
                "by_jurisdiction": counts(
                    "SELECT coalesce(jurisdiction, 'unknown'), count(*) FROM case_status "
                    "GROUP BY 1 ORDER BY 1"
                ),
                "recognized_by": counts(
                    "SELECT organization, count(*) FROM recognitions WHERE recognized "
                    "GROUP BY 1 ORDER BY 1"
                ),
                "in_custody_recognized": self.cur.execute(
                    "SELECT count(*) FROM case_status WHERE custody = 'in_custody' "
                    "AND len(recognized_by) > 0"
                ).fetchall()[0][0],
            }

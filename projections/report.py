"""`casetrail report summary`: the numbers monitoring groups publish, from the projection tables.

One SQL per figure, over the tables of a projection file (the live one, through a
reader, or a snapshot):

- cases by custody and stage (the derived status);
- recognised political prisoners in custody, by organisation: cases in custody
  whose organisation's latest word is a recognition with designation
  `political_prisoner` (a case recognised by two organisations counts for each,
  and once in the total);
- charges by article: cases whose current charges include the article;
- detentions and sentences per month: effective `detained` and `sentenced`
  events, by the month of their date (its lower bound);
- pre-trial custody: for each case sentenced after being taken into custody, the
  days from its first custody (a `detained`, or a `remanded` with measure
  `custody`) to its first sentence on or after that day: median and quartiles
  (linear interpolation), minimum and maximum.

`on=DATE` gives the report as it stood on that day: every case walked with only
its effective events on or before DATE (the same walk as `query status --on`), and
only events dated on or before DATE counted. Corrections recorded later are applied
(it is what we know now about that day).
"""

from __future__ import annotations

import datetime as dt

import duckdb
import msgspec

from projections import case_status, charges, recognitions
from projections.effective import in_force, versions
from projections.status import walk
from projections.store import checkpoint_of
from projections.timeline import stored

WALK_CHUNK = 20_000  # timeline rows fetched per round trip when walking every case


class CustodyStage(msgspec.Struct):
    custody: str
    stage: str
    cases: int


class OrganisationCount(msgspec.Struct):
    organization: str
    cases: int


class ArticleCount(msgspec.Struct):
    code: str
    article: str
    cases: int


class Month(msgspec.Struct):
    month: str
    detentions: int
    sentences: int


class PretrialCustody(msgspec.Struct, kw_only=True):
    cases: int
    median_days: float | None
    q1_days: float | None
    q3_days: float | None
    min_days: int | None
    max_days: int | None


class Summary(msgspec.Struct, kw_only=True):
    as_of_seq: int
    on: str
    cases: int
    by_custody_stage: list[CustodyStage]
    political_prisoners_in_custody: int
    political_prisoners_by_organization: list[OrganisationCount]
    charges_by_article: list[ArticleCount]
    per_month: list[Month]
    pretrial_custody: PretrialCustody


_CUSTODY_START = (
    "type = 'detained' OR (type = 'remanded' AND CASE WHEN kind = 'correction' "
    "THEN json_extract_string(event, '$.replacement.measure') "
    "ELSE json_extract_string(event, '$.measure') END = 'custody')"
)


def summary(cur: duckdb.DuckDBPyConnection, *, on: dt.date | None, today: dt.date) -> Summary:
    """The report over the tables `cur` sees, in one read transaction."""
    day = on or today
    cur.execute("BEGIN TRANSACTION")
    try:
        as_of_seq = checkpoint_of(cur)
        if on is None:
            status, charge, recognition = case_status.NAME, charges.NAME, recognitions.NAME
        else:
            status, charge, recognition = _walked(cur, on)
        return _figures(cur, as_of_seq, day, status, charge, recognition)
    finally:
        cur.execute("ROLLBACK")
        for name in ("_report_status", "_report_charges", "_report_recognitions"):
            try:
                cur.unregister(name)
            except duckdb.Error:
                pass


def _figures(
    cur: duckdb.DuckDBPyConnection, as_of_seq: int, day: dt.date, status: str, charge: str, recognition: str
) -> Summary:
    def rows(sql: str, params: list | None = None) -> list[tuple]:
        return cur.execute(sql, params or []).fetchall()

    prisoners = (
        f"SELECT r.organization, r.case_id FROM {recognition} r JOIN {status} s USING (case_id) "
        "WHERE r.recognized AND r.designation = 'political_prisoner' AND s.custody = 'in_custody'"
    )
    pretrial = rows(
        f"""WITH ev AS (SELECT * FROM timeline WHERE state = 'effective' AND sort_date <= ?),
        starts AS (SELECT case_id, min(sort_date) AS d FROM ev WHERE {_CUSTODY_START} GROUP BY case_id),
        verdicts AS (SELECT e.case_id, min(e.sort_date) AS d FROM ev e JOIN starts s USING (case_id)
                     WHERE e.type = 'sentenced' AND e.sort_date >= s.d GROUP BY e.case_id),
        spells AS (SELECT date_diff('day', s.d, v.d) AS days FROM starts s JOIN verdicts v USING (case_id))
        SELECT count(*), quantile_cont(days, 0.5), quantile_cont(days, 0.25), quantile_cont(days, 0.75),
               min(days), max(days) FROM spells""",
        [day],
    )[0]
    return Summary(
        as_of_seq=as_of_seq,
        on=day.isoformat(),
        cases=rows(f"SELECT count(*) FROM {status}")[0][0],
        by_custody_stage=[
            CustodyStage(*r)
            for r in rows(
                f"SELECT coalesce(custody, 'unknown'), coalesce(stage, 'unknown'), count(*) FROM {status} "
                "GROUP BY ALL ORDER BY 3 DESC, 1, 2"
            )
        ],
        political_prisoners_in_custody=rows(f"SELECT count(DISTINCT case_id) FROM ({prisoners})")[0][0],
        political_prisoners_by_organization=[
            OrganisationCount(*r)
            for r in rows(f"SELECT organization, count(DISTINCT case_id) FROM ({prisoners}) GROUP BY 1 ORDER BY 2 DESC, 1")
        ],
        charges_by_article=[
            ArticleCount(*r)
            for r in rows(
                f"SELECT code, article, count(DISTINCT case_id) FROM {charge} GROUP BY ALL ORDER BY 3 DESC, 1, 2"
            )
        ],
        per_month=[
            Month(*r)
            for r in rows(
                "SELECT strftime(sort_date, '%Y-%m'), count(*) FILTER (type = 'detained'), "
                "count(*) FILTER (type = 'sentenced') FROM timeline WHERE state = 'effective' "
                "AND type IN ('detained', 'sentenced') AND sort_date <= ? GROUP BY 1 ORDER BY 1",
                [day],
            )
        ],
        pretrial_custody=PretrialCustody(
            cases=pretrial[0],
            median_days=pretrial[1],
            q1_days=pretrial[2],
            q3_days=pretrial[3],
            min_days=pretrial[4],
            max_days=pretrial[5],
        ),
    )


def _walked(cur: duckdb.DuckDBPyConnection, on: dt.date) -> tuple[str, str, str]:
    """Every case walked as of `on`, as tables shaped like the projection's."""
    status_rows, charge_rows, recognition_rows = case_status.rows(), charges.rows(), recognitions.rows()
    result = cur.execute(
        "SELECT case_id, record_seq, recorded_at, recorded_by, event FROM timeline ORDER BY case_id, record_seq"
    )
    current: str | None = None
    records: list = []

    def flush() -> None:
        if current is None:
            return
        fold = walk(current, in_force(versions(records)), on)
        if fold.events:
            case_status.add_row(status_rows, fold, records[-1].seq)
            charges.add_rows(charge_rows, fold)
            recognitions.add_rows(recognition_rows, fold)

    while chunk := result.fetchmany(WALK_CHUNK):
        for case_id, *row in chunk:
            if case_id != current:
                flush()
                current, records = case_id, []
            records.append(stored(*row))
    flush()
    cur.register("_report_status", status_rows.table())
    cur.register("_report_charges", charge_rows.table())
    cur.register("_report_recognitions", recognition_rows.table())
    return "_report_status", "_report_charges", "_report_recognitions"

"""The `case_status` projection: one row per case, the derived status of EVENTS.md.

`days_in_custody` changes every day a person stays in custody, so the table keeps
what does not (`closed_custody_days`, `custody_since`) and the answer, or the view
`case_status_today`, adds the open spell up to the day asked about.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from projections.columns import Rows, ddl
from projections.status import CaseFold, CaseStatus, Sentence

NAME = "case_status"
VERSION = 1

SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("jurisdiction", pa.string()),
        pa.field("region", pa.string()),
        pa.field("custody", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("charges", pa.list_(pa.string()), nullable=False),
        pa.field("recognized_by", pa.list_(pa.string()), nullable=False),
        pa.field("custody_since", pa.date32()),
        pa.field("closed_custody_days", pa.int32(), nullable=False),
        pa.field("sentence_punishment", pa.string()),
        pa.field("sentence_term_months", pa.int32()),
        pa.field("sentence_regime", pa.string()),
        pa.field("last_event_on", pa.string()),
        pa.field("events", pa.int32(), nullable=False),
        pa.field("updated_seq", pa.int64(), nullable=False),  # the last record that changed it
    ]
)

DDL = [
    ddl(NAME, SCHEMA),
    # Status by case, and the deletes of each batch, are point lookups. DuckDB 2.0.1
    # reads `WHERE case_id = ?` through it (EXPLAIN: Index Scan); the status query,
    # joined with the checkpoint, scans with the filter pushed down instead, at the
    # same cost (~1.3 ms of CPU at 1M events, most of it the statement itself).
    f"CREATE INDEX IF NOT EXISTS {NAME}_case ON {NAME} (case_id)",
    f"""CREATE OR REPLACE VIEW {NAME}_today AS
    SELECT *, closed_custody_days + CASE WHEN custody = 'in_custody'
        THEN greatest(0, date_diff('day', custody_since, current_date)) ELSE 0 END
        AS days_in_custody
    FROM {NAME}""",
]

COLUMNS = ", ".join(SCHEMA.names)


def rows() -> Rows:
    return Rows(SCHEMA)


def add_row(rows: Rows, fold: CaseFold, updated_seq: int) -> None:
    sentence = fold.sentence
    rows.add(
        fold.case_id,
        fold.name,
        fold.jurisdiction,
        fold.region,
        fold.custody,
        fold.stage,
        # Copies: the fold goes on changing (the next batch is folded while this one
        # commits), and the row must stay as this batch left the case.
        list(fold.charge_forms),
        list(fold.recognized_by),
        fold.custody_since,
        fold.closed_custody_days,
        sentence.punishment if sentence else None,
        sentence.term_months if sentence else None,
        sentence.regime if sentence else None,
        fold.last_event_on,
        fold.events,
        updated_seq,
    )


def from_row(row: tuple, on: dt.date, as_of_seq: int | None = None) -> CaseStatus:
    """The status of a stored row (columns COLUMNS), counting custody up to `on`."""
    values = dict(zip(SCHEMA.names, row))
    custody_since: dt.date | None = values["custody_since"]
    days = values["closed_custody_days"]
    if values["custody"] == "in_custody" and custody_since is not None:
        days += max(0, (on - custody_since).days)
    punishment = values["sentence_punishment"]
    term, regime = values["sentence_term_months"], values["sentence_regime"]
    sentence = None
    if punishment is not None or term is not None or regime is not None:
        sentence = Sentence(punishment=punishment, term_months=term, regime=regime)
    return CaseStatus(
        case_id=values["case_id"],
        name=values["name"],
        custody=values["custody"],
        stage=values["stage"],
        charges=list(values["charges"]),
        recognized_by=list(values["recognized_by"]),
        custody_since=custody_since.isoformat() if custody_since else None,
        days_in_custody=days,
        sentence=sentence,
        last_event_on=values["last_event_on"],
        events=values["events"],
        as_of_seq=as_of_seq,
    )

"""The `recognitions` projection: one row per case and organisation, withdrawals included.

`recognized` says whether the organisation's latest word in the walk is a
recognition; the dates are the `occurred_on` of its latest recognition and of its
latest withdrawal.
"""

from __future__ import annotations

import pyarrow as pa

from projections.columns import Rows, ddl
from projections.status import CaseFold

NAME = "recognitions"
VERSION = 1

SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("organization", pa.string(), nullable=False),
        pa.field("recognized", pa.bool_(), nullable=False),
        pa.field("designation", pa.string()),
        pa.field("recognized_on", pa.string()),
        pa.field("withdrawn_on", pa.string()),
        pa.field("withdrawal_reason", pa.string()),
        pa.field("statement_url", pa.string()),
    ]
)

DDL = [ddl(NAME, SCHEMA)]


def rows() -> Rows:
    return Rows(SCHEMA)


def add_rows(rows: Rows, fold: CaseFold) -> None:
    for org in sorted(fold.recognitions):
        r = fold.recognitions[org]
        rows.add(
            fold.case_id,
            org,
            r.recognized,
            r.designation,
            r.recognized_on,
            r.withdrawn_on,
            r.reason,
            r.statement_url,
        )

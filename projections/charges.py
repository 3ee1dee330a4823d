"""The `charges` projection: one row per case and current charge, for reporting by article.

The charges are those of the derived status (`charged` adds, `charges_amended`
replaces), in the status's order.
"""

from __future__ import annotations

import pyarrow as pa

from projections.columns import Rows, ddl
from projections.status import CaseFold

NAME = "charges"
VERSION = 1

SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),  # 1-based, as the status lists them
        pa.field("display", pa.string(), nullable=False),  # RU-CC 207.3(2)(a,b,e)
        pa.field("code", pa.string(), nullable=False),
        pa.field("article", pa.string(), nullable=False),
        pa.field("part", pa.string()),
        pa.field("points", pa.list_(pa.string()), nullable=False),
        pa.field("title", pa.string()),
        pa.field("max_years", pa.float64()),
    ]
)

DDL = [ddl(NAME, SCHEMA)]


def rows() -> Rows:
    return Rows(SCHEMA)


def add_rows(rows: Rows, fold: CaseFold) -> None:
    for position, charge in enumerate(fold.charges, 1):
        rows.add(
            fold.case_id,
            position,
            charge.display,
            charge.code,
            charge.article,
            charge.part,
            list(charge.points),
            charge.title,
            charge.max_years,
        )

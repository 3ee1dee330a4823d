"""Rows of a projection table: declared once as an Arrow schema, built in bulk.

The DDL is generated from the same schema, so the table and the batches written
into it cannot drift apart. Rows are collected as tuples and turned into columns
in one go (DuckDB inserts an Arrow table in bulk; row-by-row inserts are ~600x slower).
"""

from __future__ import annotations

import pyarrow as pa

_SQL_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.bool_(): "BOOLEAN",
    pa.date32(): "DATE",
    pa.binary(): "BLOB",
    pa.float64(): "DOUBLE",
    pa.list_(pa.string()): "VARCHAR[]",
}


def ddl(table: str, schema: pa.Schema) -> str:
    columns = ",\n    ".join(
        f"{f.name} {_SQL_TYPES[f.type]}{'' if f.nullable else ' NOT NULL'}" for f in schema
    )
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    {columns}\n)"


class Rows:
    """Tuples in the order of `schema`, turned into one Arrow table."""

    __slots__ = ("schema", "rows")

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows: list[tuple] = []

    def add(self, *values: object) -> None:
        self.rows.append(values)

    def __len__(self) -> int:
        return len(self.rows)

    def table(self) -> pa.Table:
        if not self.rows:
            return self.schema.empty_table()
        columns = zip(*self.rows)
        return pa.Table.from_arrays(
            [pa.array(column, type=field.type) for column, field in zip(columns, self.schema)],
            schema=self.schema,
        )

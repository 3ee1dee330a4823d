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
    """Tuples in the order of `schema`, turned into one Arrow table by `table()`.

    `table()` only reads the tuples: one thread may build the table (the
    projector's writer, at commit) while another reads the rows (a fold laying a
    batch not yet committed over the history it reads).

    The text columns named in `utf8` take UTF-8 bytes (JSON as it was received):
    they are copied as bytes and checked as UTF-8 in one go, three times faster
    than pyarrow's conversion of bytes to text value by value.
    """

    __slots__ = ("_struct", "rows", "schema")

    def __init__(self, schema: pa.Schema, *, utf8: tuple[str, ...] = ()) -> None:
        self.schema = schema
        self.rows: list[tuple] = []
        # The tuples become one struct array (pyarrow converts them in one pass, about
        # a quarter faster than a column at a time), whose fields are the columns.
        self._struct = pa.struct(
            [pa.field(f.name, pa.binary() if f.name in utf8 else f.type, f.nullable) for f in schema]
        )

    def add(self, *values: object) -> None:
        self.rows.append(values)

    def __len__(self) -> int:
        return len(self.rows)

    def table(self) -> pa.Table:
        if not self.rows:
            return self.schema.empty_table()
        columns = pa.array(self.rows, type=self._struct).flatten()
        return pa.Table.from_arrays(
            [c if c.type == f.type else c.cast(f.type) for c, f in zip(columns, self.schema)],
            schema=self.schema,
        )

"""casetrail's services: thin adapters (NATS, DuckDB, CLI, HTTP) around `schemas` and `projections`."""

"""The projections of the log: pure derivations and the DuckDB tables they fill.

Imports no NATS: `services.projector` feeds the store with records and answers
queries over it. Modules: `effective` (which version of each event is in force),
`status` (the derived status walk), `summary` (timeline lines), one module per
table (`case_status`, `timeline`, `charges`, `recognitions`), `store` (applying
batches with the checkpoint), `queries` (reading, current and bitemporal).
"""

"""Properties of the derived status over generated case histories (hypothesis).

- it agrees with the plain reference implementation of EVENTS.md (tests/reference_status.py),
  today, on any past date, and as the log stood at any moment;
- the status and the timeline do not depend on the order the non-opening events arrived in;
- the projection the store builds batch by batch (with restarts) equals a rebuild
  in one go, and both equal the pure derivation; so do the `timeline` table's rows
  (read by SQL and reports) and the timeline queries (derived from the records).
"""

from __future__ import annotations

import datetime as dt
import random
import tempfile
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections import case_status
from projections.effective import effective
from projections.queries import Reader
from projections.status import derive_status
from projections.store import ProjectionStore, checkpoint_of
from projections.summary import summary
from tests.histories import TODAY, arrival, as_dicts, delivered, history, recorded_at, records
from tests.reference_status import reference_status

CASE = "ru-2022-test"


def ours(recs, on=TODAY, known_at=None) -> dict | None:
    status = derive_status(CASE, recs, on=on, known_at=known_at)
    if status is None:
        return None
    found = msgspec.to_builtins(status)
    del found["as_of_seq"]
    return found


def timeline_lines(recs) -> list[tuple]:
    """What a reader sees of the timeline, leaving out the log positions and times."""
    return [
        (v.event_id, v.fact.type, v.fact.occurred_on, summary(v.fact), v.corrected) for v in effective(recs)
    ]


@settings(max_examples=150, deadline=None)
@given(history())
def test_status_agrees_with_the_reference_implementation(events):
    recs = records(events)
    assert ours(recs) == reference_status(CASE, as_dicts(recs), TODAY)


@settings(max_examples=100, deadline=None)
@given(history(), st.dates(dt.date(2018, 6, 1), TODAY))
def test_status_on_a_past_date_agrees_with_the_reference(events, on):
    recs = records(events)
    assert ours(recs, on=on) == reference_status(CASE, as_dicts(recs), on)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_status_known_at_a_past_moment_agrees_with_the_reference(data):
    events = data.draw(history())
    recs = records(events)
    moment = recorded_at(data.draw(st.integers(0, len(recs) + 1)))
    known_at = dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
    assert ours(recs, known_at=known_at) == reference_status(CASE, as_dicts(recs), TODAY, moment)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_status_and_timeline_do_not_depend_on_arrival_order(data):
    events = data.draw(history())
    reordered = data.draw(arrival(events))
    first, second = records(events), records(reordered)
    assert ours(first) == ours(second)
    assert timeline_lines(first) == timeline_lines(second)


# -- the store: live, batch by batch, against a rebuild


def _tables(store: ProjectionStore) -> dict[str, list]:
    cur = store.reader()
    return {
        name: cur.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall()
        for name in ("case_status", "timeline", "charges", "recognitions")
    }


@st.composite
def interleaved(draw: st.DrawFn) -> list[dict]:
    """Up to three cases, their events interleaved as they might reach the log."""
    cases = [draw(history(case_id=f"case-{n}", max_facts=8)) for n in range(draw(st.integers(1, 3)))]
    cases = [draw(arrival(events)) for events in cases]
    order = draw(st.permutations([n for n, events in enumerate(cases) for _ in events]))
    cursors = [0] * len(cases)
    out = []
    for n in order:
        out.append(cases[n][cursors[n]])
        cursors[n] += 1
    return out


def _by_case(events: list[dict], recs) -> dict[str, list]:
    found: dict[str, list] = {}
    for record in recs:
        found.setdefault(record.event.case_id, []).append(record)
    return found


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interleaved(), st.randoms(use_true_random=False))
def test_live_projection_equals_a_rebuild_and_the_derivation(events, rng: random.Random):
    live_equals_rebuild(events, rng)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interleaved(), st.randoms(use_true_random=False))
def test_live_projection_equals_a_rebuild_over_many_histories(events, rng: random.Random):
    live_equals_rebuild(events, rng)


def recent_rows_are_the_committed_ones(store: ProjectionStore, cases: list[str]) -> None:
    """What `recent_status` answers without a statement is what the file holds at its checkpoint."""
    cur = store.reader()
    for case_id in cases:
        recent = store.recent_status(case_id)
        stored = cur.execute(
            f"SELECT {case_status.COLUMNS} FROM case_status WHERE case_id = ?", [case_id]
        ).fetchall()
        if recent is None:
            continue  # not kept: asked of the file
        checkpoint, row = recent
        assert checkpoint == store.position == checkpoint_of(cur)
        assert stored == [tuple(row)], case_id


def live_equals_rebuild(events: list[dict], rng: random.Random) -> None:
    recs = records(events)
    log = delivered(recs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "live.duckdb"

        def opened() -> ProjectionStore:
            # Transactions of a few rows: held batches, and states changed in them, are common.
            return ProjectionStore(path, hold_rows=rng.randint(1, 8))

        live = opened()
        cases = sorted({e["case_id"] for e in events})

        def commit(prepared) -> None:
            live.commit(prepared, hold=rng.random() < 0.6)
            recent_rows_are_the_committed_ones(live, cases)

        position = 0
        pending = None  # prepared, its commit not yet started (as while it waits for the writer)
        while position < len(log):
            size = rng.randint(1, 6)
            # Some records come again (a redelivery): they must change nothing.
            start = max(0, position - rng.randint(0, 2))
            if pending is not None and rng.random() < 0.5:
                commit(pending)
                pending = None
            # Else folded before the batch before it is committed, as the projector may.
            prepared = live.prepare(log[start : position + size])
            if pending is not None:
                commit(pending)
            pending = prepared
            position += size
            if rng.random() < 0.2:  # a restart: folds are gone, the file stays
                if pending is not None:
                    commit(pending)
                    pending = None
                if rng.random() < 0.7:
                    live.flush()
                    recent_rows_are_the_committed_ones(live, cases)
                live.close()  # what is still held is lost, as in a crash: read again from the file's checkpoint
                live = opened()
                position = live.position
        if pending is not None:
            commit(pending)
        live.flush()
        recent_rows_are_the_committed_ones(live, cases)
        rebuilt = ProjectionStore(":memory:")
        rebuilt.apply(log)
        assert live.position == rebuilt.position == len(log)
        assert _tables(live) == _tables(rebuilt)
        reader = Reader(live)
        for case_id, case_records in _by_case(events, recs).items():
            _, stored = reader.status(case_id, today=TODAY)
            expected = derive_status(case_id, case_records, on=TODAY)
            if expected is None:
                assert stored is None
            else:
                assert stored is not None
                expected.as_of_seq = stored.as_of_seq
                assert stored == expected
            assert_timeline_table_matches_the_query(reader, case_id)
        live.close()
        rebuilt.close()


def assert_timeline_table_matches_the_query(reader: Reader, case_id: str) -> None:
    """The stored rows say what the derived answers say: lines in force, and every version."""
    cur = reader.cur
    effective_rows = cur.execute(
        "SELECT seq, event_id, type, occurred_on, circa, summary, recorded_at, corrected FROM timeline "
        "WHERE case_id = ? AND state = 'effective' ORDER BY sort_date, seq",
        [case_id],
    ).fetchall()
    _, lines = reader.timeline(case_id)
    assert [
        (e.seq, e.event_id, e.type, e.occurred_on, e.circa, e.summary, e.recorded_at, e.corrected)
        for e in lines or []
    ] == effective_rows
    every_row = cur.execute(
        "SELECT record_seq, seq, event_id, kind, state, corrected FROM timeline WHERE case_id = ? ORDER BY record_seq",
        [case_id],
    ).fetchall()
    _, history_lines = reader.timeline(case_id, history=True)
    assert [
        (e.record_seq, e.seq, e.event_id, e.kind, e.state, e.corrected) for e in history_lines or []
    ] == every_row

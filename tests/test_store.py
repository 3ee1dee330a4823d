"""The projection store's guarantees without NATS: redelivery, pipelining, the checkpoint."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from projections.columns import Rows
from projections.queries import Reader
from projections.status import CaseStatus, derive_status
from projections.store import ProjectionStore, checkpoint_of
from tests.helpers import event, opened
from tests.histories import TODAY, delivered, records

CASE = "ru-2024-pipeline"


def sample() -> list:
    recs = records([
        opened(CASE, occurred_on="2024-01-10"),
        event("detained", CASE, "d", "2024-01-12"),
        event("transferred", CASE, "t", "2024-03-01", facility="SIZO-1"),
        event("released", CASE, "r", "2024-06-01", reason="parole"),
        # Reported late: the remand happened before the transfer, after the detention.
        event("remanded", CASE, "late", "2024-01-14", measure="house_arrest"),
    ])
    return recs


def assert_status_is_derived(store: ProjectionStore, case_id: str, recs: list) -> CaseStatus:
    """The stored status of a case is what the derivation gives from its records."""
    _, status = Reader(store).status(case_id, today=TODAY)
    expected = derive_status(case_id, [r for r in recs if r.event.case_id == case_id], on=TODAY)
    assert status is not None and expected is not None
    expected.as_of_seq = status.as_of_seq
    assert status == expected
    return status


def commit_slowly(store: ProjectionStore) -> None:
    """Commits that take long, as they do under load."""
    commit = store._transaction

    def slowly(held):
        time.sleep(0.2)
        commit(held)

    store._transaction = slowly  # type: ignore[method-assign]


def test_a_record_delivered_twice_changes_nothing(tmp_path) -> None:
    log = delivered(sample())
    store = ProjectionStore(tmp_path / "p.duckdb")
    store.apply(log[:3])
    cur = store.reader()
    before = cur.execute("SELECT * FROM case_status").fetchall()
    assert store.apply(log[:3]) == 3  # the same records again
    assert cur.execute("SELECT * FROM case_status").fetchall() == before
    store.apply(log[1:])  # overlapping: only 4 and 5 are new
    assert cur.execute("SELECT count(*) FROM timeline").fetchall() == [(5,)]
    assert cur.execute("SELECT last_seq FROM checkpoint").fetchall() == [(5,)]
    store.close()


def test_a_batch_folded_while_the_one_before_commits_walks_what_that_one_holds(tmp_path) -> None:
    recs = sample()
    log = delivered(recs)
    store = ProjectionStore(tmp_path / "p.duckdb")
    store.apply(log[:2])
    commit_slowly(store)
    writer = ThreadPoolExecutor(1)
    first = store.prepare(log[2:3])
    committing = writer.submit(store.commit, first)
    second = store.prepare(log[3:4])  # in order: folded while the first commits
    committing.result()
    committing = writer.submit(store.commit, second)
    # Out of order: walked again from the stored history, which must include seq 4.
    third = store.prepare(log[4:5])
    committing.result()
    store.commit(third)
    writer.shutdown()
    status = assert_status_is_derived(store, CASE, recs)
    assert (status.custody, status.stage, status.events) == ("at_liberty", "investigation", 5)
    store.close()


def test_a_failed_batch_leaves_the_store_at_its_checkpoint(tmp_path) -> None:
    log = delivered(sample())
    path = tmp_path / "p.duckdb"
    store = ProjectionStore(path)
    store.apply(log[:2])
    insert = store._insert

    def fails_after_the_timeline(table, rows):
        if table != "timeline":  # its rows written in the transaction, then the disk fills
            raise OSError("disk full")
        insert(table, rows)

    store._insert = fails_after_the_timeline  # type: ignore[method-assign]
    try:
        store.apply(log[2:])
    except OSError:
        pass
    store.close()
    reopened = ProjectionStore(path)
    cur = reopened.reader()
    assert reopened.position == 2
    assert cur.execute("SELECT count(*) FROM timeline").fetchall() == [(2,)]
    assert reopened.apply(log) == 5  # carries on from the checkpoint, nothing twice
    assert cur.execute("SELECT count(*) FROM timeline").fetchall() == [(5,)]
    reopened.close()


def test_a_batch_folded_over_one_whose_commit_fails_is_not_committed(tmp_path) -> None:
    recs = sample()
    log = delivered(recs)
    store = ProjectionStore(tmp_path / "p.duckdb")
    store.apply(log[:3])
    commit = store._transaction
    first = store.prepare(log[3:4])
    second = store.prepare(log[4:5])  # walked again over rows of `first`, not yet committed
    with pytest.raises(RuntimeError, match="not the next prepared batch"):
        store.commit(second)  # out of order

    def fails(held):
        raise OSError("disk full")

    store._transaction = fails  # type: ignore[method-assign]
    with pytest.raises(OSError):
        store.commit(first)
    store._transaction = commit  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        store.commit(second)  # it was folded over rows that were never written
    assert store.position == 3
    store.reset()
    assert store.apply(log) == 5
    assert_status_is_derived(store, CASE, recs)
    store.close()


def test_readers_see_whole_batches_only(tmp_path) -> None:
    recs = sample()
    log = delivered(recs)
    store = ProjectionStore(tmp_path / "p.duckdb")
    reader = Reader(store)
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            as_of_seq, status = reader.status(CASE, today=TODAY)
            seen.append((as_of_seq, status.events if status else 0))

    thread = threading.Thread(target=read)
    thread.start()
    for n in range(1, len(log) + 1):
        store.apply(log[n - 1 : n])
        time.sleep(0.01)
    done.set()
    thread.join()
    # Every answer's count of events is what the log held at its as_of_seq.
    assert all(events == as_of_seq for as_of_seq, events in seen)
    assert seen and max(a for a, _ in seen) == 5
    store.close()


def test_one_batch_of_cases_folded_in_place_and_walked_again_writes_each_once(tmp_path) -> None:
    busy, late, new = "ru-2024-busy", "ru-2024-late", "ru-2024-new"
    recs = records([
        opened(busy, occurred_on="2024-01-10"),
        opened(late, occurred_on="2024-01-10"),
        event("detained", late, "late-d", "2024-02-01"),
        # The batch below: in order for `busy`, late for `late`, a case never seen.
        event("detained", busy, "busy-d", "2024-02-01"),
        event("remanded", late, "late-r", "2024-01-20", measure="house_arrest"),
        opened(new, occurred_on="2024-03-01"),
        event("released", busy, "busy-r", "2024-04-01", reason="sentence_served"),
    ])
    log = delivered(recs)
    store = ProjectionStore(tmp_path / "p.duckdb")
    store.apply(log[:2])
    commit_slowly(store)  # still committing while the next batch is folded
    with ThreadPoolExecutor(1) as writer:
        committing = writer.submit(store.commit, store.prepare(log[2:3]))
        batch = store.prepare(log[3:])
        committing.result()
    store.commit(batch)
    cur = store.reader()
    assert cur.execute("SELECT record_seq FROM timeline ORDER BY record_seq").fetchall() == [
        (seq,) for seq in range(1, 8)
    ]
    assert sorted(cur.execute("SELECT case_id FROM case_status").fetchall()) == [(busy,), (late,), (new,)]
    for case_id in (busy, late, new):
        assert_status_is_derived(store, case_id, recs)
    store.close()


def test_rows_become_a_table_in_their_order_and_stay_readable() -> None:
    rows = Rows(pa.schema([pa.field("n", pa.int64()), pa.field("s", pa.string())]))
    assert rows.table().num_rows == 0
    rows.add(1, "a")
    assert rows.table().to_pylist() == [{"n": 1, "s": "a"}]
    rows.add(2, "b")
    rows.add(3, None)
    assert len(rows) == 3
    # Building the table reads the tuples and leaves them: a fold may still read them.
    assert rows.table().to_pylist() == [{"n": 1, "s": "a"}, {"n": 2, "s": "b"}, {"n": 3, "s": None}]
    assert rows.rows == [(1, "a"), (2, "b"), (3, None)]


def test_text_given_as_utf8_bytes_is_stored_as_text_and_checked() -> None:
    schema = pa.schema([pa.field("n", pa.int64()), pa.field("event", pa.string())])
    rows = Rows(schema, utf8=("event",))
    rows.add(1, '{"name":"Клоков"}'.encode())
    assert rows.table().schema == schema
    assert rows.table().to_pylist() == [{"n": 1, "event": '{"name":"Клоков"}'}]
    rows.add(2, b'{"name":"\xd0"}')  # cut in the middle of a character
    with pytest.raises(pa.ArrowInvalid):
        rows.table()


def test_held_batches_commit_together_once_they_fill_a_transaction(tmp_path) -> None:
    recs = sample()
    log = delivered(recs)
    path = tmp_path / "p.duckdb"
    store = ProjectionStore(path, hold_rows=3)
    cur = store.reader()
    assert store.apply(log[:1]) == 1
    assert store.commit(store.prepare(log[1:2]), hold=True) == 1  # held: one row of three
    assert store.commit(store.prepare(log[2:3]), hold=True) == 1
    assert store.holding
    # Readers see nothing of what is held.
    assert cur.execute("SELECT count(*), max(record_seq) FROM timeline").fetchall() == [(1, 1)]
    assert store.commit(store.prepare(log[3:4]), hold=True) == 4  # three rows: committed together
    assert not store.holding
    assert cur.execute("SELECT count(*) FROM timeline").fetchall() == [(4,)]
    assert cur.execute("SELECT last_seq FROM checkpoint").fetchall() == [(4,)]
    # Held, then the process ends without a flush: lost, and read again from the checkpoint.
    store.commit(store.prepare(log[4:5]), hold=True)
    store.close()
    reopened = ProjectionStore(path)
    assert reopened.position == 4
    assert reopened.apply(log) == 5
    assert_status_is_derived(reopened, CASE, recs)
    reopened.close()


def test_a_correction_of_a_held_row_changes_its_state_before_it_is_written(tmp_path) -> None:
    case = "ru-2024-held"
    recs = records([
        opened(case, occurred_on="2024-01-10"),
        event("detained", case, "d", "2024-01-12"),
        event("remanded", case, "r", "2024-01-14", measure="custody"),
        # In a later batch of the same transaction: corrects a row held, not yet written.
        event("event_corrected", case, "fix-r", "2024-01-20", target_event_id="r",
              replacement={"type": "remanded", "case_id": case, "occurred_on": "2024-01-14",
                           "measure": "house_arrest", "sources": [{"publisher": "Memorial"}]}),
        # And a retraction of a row committed before.
        event("event_retracted", case, "no-d", "2024-01-21", target_event_id="d", reason="misreported"),
    ])
    log = delivered(recs)
    store = ProjectionStore(tmp_path / "p.duckdb", hold_rows=100)
    store.apply(log[:2])
    for n in range(2, 5):
        store.commit(store.prepare(log[n : n + 1]), hold=True)
    store.flush()
    query = "SELECT record_seq, kind, state, corrected FROM timeline ORDER BY record_seq"
    rows = store.reader().execute(query).fetchall()
    assert [(seq, state) for seq, _, state, _ in rows] == [
        (1, "effective"), (2, "retracted"), (3, "superseded"), (4, "effective"), (5, "retraction")
    ]
    at_once = ProjectionStore(":memory:")
    at_once.apply(log)
    assert rows == at_once.reader().execute(query).fetchall()
    at_once.close()
    status = assert_status_is_derived(store, case, recs)
    assert (status.custody, status.events) == ("house_arrest", 2)
    store.close()


def test_recent_status_rows_follow_each_commit_and_a_case_retracted_away_is_not_kept(tmp_path) -> None:
    case, other = "ru-2024-recent", "ru-2024-other"
    recs = records([
        opened(case, occurred_on="2024-01-10"),
        event("charged", case, "c", "2024-01-12",
              charges=[{"code": "RU-CC", "article": "207.3", "part": "2"}]),
        opened(other, occurred_on="2024-01-11"),
        event("event_retracted", case, "x-c", "2024-01-20", target_event_id="c", reason="wrong case"),
        event("event_retracted", case, "x-o", "2024-01-20",
              target_event_id=f"{case}-opened", reason="wrong case"),
    ])
    log = delivered(recs)
    store = ProjectionStore(tmp_path / "p.duckdb")
    cur = store.reader()
    assert store.recent_status(case) is None  # nothing committed yet
    store.apply(log[:3])
    checkpoint, row = store.recent_status(case)
    assert checkpoint == 3
    assert cur.execute("SELECT * FROM case_status WHERE case_id = ?", [case]).fetchall() == [tuple(row)]
    assert row[6] == ["RU-CC 207.3(2)"]  # charges, as the row was committed
    store.apply(log[3:4])  # the charge retracted: the row replaced
    checkpoint, row = store.recent_status(case)
    assert (checkpoint, row[6]) == (4, [])
    store.apply(log[4:])  # every event retracted: no row in the file, none kept
    assert cur.execute("SELECT count(*) FROM case_status WHERE case_id = ?", [case]).fetchall() == [(0,)]
    assert store.recent_status(case) is None
    assert store.recent_status(other)[0] == 5  # untouched since, still its row: as of the checkpoint
    store.reset()
    assert store.recent_status(other) is None  # after a failure: asked of the file
    store.close()


def test_a_published_batch_is_answered_before_its_commit_and_forgotten_when_the_commit_fails(tmp_path) -> None:
    case = "ru-2024-published"
    recs = records([
        opened(case, occurred_on="2024-01-10"),
        event("detained", case, "d", "2024-01-11"),
        event("charged", case, "c", "2024-01-12",
              charges=[{"code": "RU-CC", "article": "207.3", "part": "2"}]),
        event("released", case, "r", "2024-01-13", reason="other"),
    ])
    log = delivered(recs)
    store = ProjectionStore(tmp_path / "p.duckdb")
    cur = store.reader()
    store.apply(log[:1])
    prepared = store.prepare(log[1:3], publish=True)
    assert (store.position, store.published) == (1, 3)
    published, row = store.recent_status(case)
    assert published == 3 and row[6] == ["RU-CC 207.3(2)"]  # charges, before the commit
    assert checkpoint_of(cur) == 1  # the file has not got it yet
    store.commit(prepared)
    assert store.recent_status(case) == (3, row)
    assert cur.execute("SELECT * FROM case_status WHERE case_id = ?", [case]).fetchall() == [tuple(row)]
    # Prepared without `publish`: answered after its commit only.
    unpublished = store.prepare(log[3:4])
    assert store.published == 3 and store.recent_status(case) == (3, row)
    store.reset()  # as after a failed commit: what was prepared is dropped
    assert store.prepare(log[3:4], publish=True) is not None and store.published == 4
    assert store.recent_status(case)[1][4] == "at_liberty"  # custody after the release
    store.reset()
    assert (store.position, store.published, store.recent_status(case)) == (3, 3, None)
    assert unpublished is not None
    store.close()


def test_recent_status_keeps_the_newest_cases_and_none_of_a_large_commit(tmp_path, monkeypatch) -> None:
    from projections import store as store_module

    monkeypatch.setattr(store_module, "RECENT_STATUS", 2)
    log = delivered(records([opened(f"ru-2024-k{n}", occurred_on="2024-01-10") for n in range(6)]))
    store = ProjectionStore(tmp_path / "p.duckdb")
    for n in range(3):
        store.apply(log[n : n + 1])
    # The oldest of three is let go; the two newest are answered at the checkpoint.
    assert store.recent_status("ru-2024-k0") is None
    assert [store.recent_status(f"ru-2024-k{n}")[0] for n in (1, 2)] == [3, 3]
    store.apply(log[3:])  # three rows, more than are kept, in one commit (as catching up): none kept
    assert all(store.recent_status(f"ru-2024-k{n}") is None for n in range(6))
    store.close()

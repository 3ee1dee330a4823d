"""Replay: build the projections from the log into a new file, then swap it in for the live one.

`build` is the whole rebuild: it reads the log (through the child reader of
`services.logfeed`) into a projection file up to a position, folding one batch
while the one before commits, and resumes from the file's own checkpoint when
the file already holds part of it. `python -m benchmarks` times it; the projector
runs it in a child process (`python -m services.replay PATH [TO_SEQ]`, progress as
JSON lines on its stdout), so the live projector's process keeps its GIL for
following the log and answering queries.

Files, beside the live file `casetrail.duckdb`:
- `casetrail.rebuild.duckdb`: a rebuild in progress. An interrupted rebuild leaves
  the live file untouched; the next replay goes on from this file's checkpoint.
- `casetrail.seq-N.duckdb`: a historical copy, built to seq N (`--to-seq N`).

The swap (`swap_in`): once the rebuild is within `MAX_TAIL` records of the log's
head, the projector pauses following (it keeps answering from the old file),
the rebuild is brought to the live position, queries wait for the moment it
takes to close the old file, move the new one into its place and open it, and
following resumes from there. Every answer comes from the old file or from the
new one, never from a mix, and none is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import msgspec

from projections.store import ProjectionStore, checkpoint_of, versions_wanted
from services.log import stream_state
from services.logfeed import SETTINGS_ENV, ChildFeed
from services.pipeline import Pipeline
from services.runtime import YOUNG_CATCHING_UP, tune_gc
from services.settings import Settings

if TYPE_CHECKING:
    from services.projector import Projector

log = logging.getLogger("casetrail.replay")

MAX_TAIL = 20_000  # records the swap may still apply while following is paused
PROGRESS_EVERY_S = 0.2


class Built(msgspec.Struct, kw_only=True):
    """A finished build: where, up to which seq, how many records it applied and how fast."""

    path: str
    position: int
    applied: int
    seconds: float
    events_per_s: float


def rebuild_path(live: Path) -> Path:
    return live.with_name(f"{live.stem}.rebuild{live.suffix}")


def historical_path(live: Path, seq: int) -> Path:
    return live.with_name(f"{live.stem}.seq-{seq}{live.suffix}")


def remove_database(path: Path) -> None:
    """A DuckDB file and its write-ahead log."""
    for p in (path, Path(f"{path}.wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def file_versions(path: Path) -> dict[str, int] | None:
    """The projection versions a file was built with (None: no such file, or not a projection)."""
    if not path.exists():
        return None
    con = duckdb.connect(str(path), read_only=True)
    try:
        return dict(con.execute("SELECT projection, version FROM projection_versions").fetchall())
    except duckdb.Error:
        return None
    finally:
        con.close()


def _open(path: Path, memory_limit: str) -> ProjectionStore:
    """The store at `path`; a partial build by other projection versions is started afresh."""
    found = file_versions(path)
    if found is not None and found != versions_wanted():
        log.warning("%s was built with projection versions %s: starting it afresh", path, found)
        remove_database(path)
    return ProjectionStore(path, memory_limit=memory_limit)


async def build(
    settings: Settings,
    path: str | Path,
    *,
    to_seq: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    memory_limit: str = "1GB",
) -> Built:
    """Build the projection file `path` from the log up to `to_seq` (default: the log's head now).

    Resumes from the file's checkpoint. `progress(position, target)` is called after
    every batch written (held for its transaction, or committed). A file already past
    `to_seq` is refused (ValueError).
    """
    path = Path(path)
    loop = asyncio.get_running_loop()
    writer = ThreadPoolExecutor(1, thread_name_prefix="replay-writer")
    folder = ThreadPoolExecutor(1, thread_name_prefix="replay-fold")
    store = await loop.run_in_executor(writer, _open, path, memory_limit)
    started, first = time.perf_counter(), store.position
    try:
        target = to_seq
        if target is None:
            from services.connection import connect

            nc = await connect(settings, "casetrail-replay-head")
            try:
                target = (await stream_state(nc)).last_seq
            finally:
                await nc.close()
        if store.position > target:
            raise ValueError(f"{path} is at seq {store.position}, past seq {target}")
        if progress is not None:
            progress(store.position, target)
        if store.position < target:
            await _apply_until(store, settings, target, writer, folder, progress)
        seconds = time.perf_counter() - started
        applied = store.position - first
        return Built(
            path=str(path),
            position=store.position,
            applied=applied,
            seconds=round(seconds, 3),
            events_per_s=round(applied / max(seconds, 1e-9)),
        )
    finally:
        await loop.run_in_executor(writer, store.close)
        writer.shutdown()
        folder.shutdown()


async def _apply_until(
    store: ProjectionStore,
    settings: Settings,
    target: int,
    writer: ThreadPoolExecutor,
    folder: ThreadPoolExecutor,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Fold batch N+1 while batch N commits, up to `target` exactly.

    Batches after the first are held in transactions of a row group
    (`ProjectionStore.commit`); the last is committed by `flush`.
    """
    # Progress is what is written (the held batches too): a transaction holds three batches.
    written = None if progress is None else (lambda position: progress(position, target))
    pipeline = Pipeline(store, folder, writer, written=written)
    try:
        first = True
        async with ChildFeed(settings, store.position + 1) as feed:
            async for batch in feed.batches():
                if batch[-1][0] > target:
                    batch = [item for item in batch if item[0] <= target]
                if batch:
                    await pipeline.add(batch, hold=not first)
                    first = False
                if not batch or batch[-1][0] >= target:
                    break
        await pipeline.flush()
    finally:
        await pipeline.close()


async def build_in_child(
    settings: Settings,
    path: Path,
    to_seq: int | None,
    progress: Callable[[int, int], None] | None = None,
    started: Callable[[asyncio.subprocess.Process], None] | None = None,
) -> int:
    """`build` in a child process (`python -m services.replay`); returns the position it reached."""
    env = {**os.environ, SETTINGS_ENV: msgspec.json.encode(settings).decode()}
    args = [str(path)] + ([str(to_seq)] if to_seq is not None else [])
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.replay", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    if started is not None:
        started(child)
    position = -1
    try:
        assert child.stdout is not None and child.stderr is not None
        async for line in child.stdout:
            report = msgspec.json.decode(line)
            position = report["position"]
            if progress is not None:
                progress(position, report["target"])
        problem = (await child.stderr.read()).decode(errors="replace").strip()
        code = await child.wait()
    finally:
        if child.returncode is None:
            child.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(child.wait(), 10)
            if child.returncode is None:
                child.kill()
                await child.wait()
    if code != 0:
        last = problem.splitlines()[-1] if problem else ""
        raise RuntimeError(f"the rebuild of {path} failed (exit {code}): {last}")
    return position


async def rebuild_if_outdated(settings: Settings, live: Path, memory_limit: str = "1GB") -> bool:
    """On start: a file whose projection versions differ from this code's is rebuilt, then swapped in."""
    found = file_versions(live)
    if found is None or found == versions_wanted():
        return False
    new = rebuild_path(live)
    log.warning(
        "%s holds projection versions %s, this code builds %s: rebuilding it into %s",
        live, found, versions_wanted(), new,
    )
    built = await build(settings, new, memory_limit=memory_limit, progress=_log_progress())
    os.replace(new, live)
    with contextlib.suppress(FileNotFoundError):
        Path(f"{live}.wal").unlink()  # the old file's log, if it left one: never the new file's
    log.info("rebuilt %s to seq %d (%d records/s) and swapped it in", live, built.position, built.events_per_s)
    return True


def _log_progress() -> Callable[[int, int], None]:
    last = [0.0]

    def report(position: int, target: int) -> None:
        if time.monotonic() - last[0] > 5 or position >= target:
            last[0] = time.monotonic()
            log.info("rebuild at seq %d of %d", position, target)

    return report


async def swap_in(projector: Projector, new: Path, settings: Settings) -> int:
    """Make the rebuilt file `new` the projector's live file; returns the position it goes on from."""
    live = projector.db_path

    def replace_file() -> None:
        os.replace(new, live)
        with contextlib.suppress(FileNotFoundError):
            Path(f"{live}.wal").unlink()  # closed cleanly it has none; never replay it into the new file

    await projector.pause()
    try:
        # Following is paused: bring the new file to the live position (a short tail).
        await build_in_child(settings, new, max(projector.position, _position_of(new)))
        await projector.swap_file(replace_file)
    finally:
        await projector.resume()
    return projector.position


def _position_of(path: Path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return checkpoint_of(con)
    finally:
        con.close()


def main(argv: list[str] | None = None) -> None:
    """The child: build PATH up to TO_SEQ (default the log's head); progress as JSON lines."""
    import signal

    args = argv if argv is not None else sys.argv[1:]
    path, to_seq = Path(args[0]), (int(args[1]) if len(args) > 1 else None)
    settings = msgspec.json.decode(os.environ[SETTINGS_ENV], type=Settings)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the projector (or the CLI) decides when to stop
    tune_gc(YOUNG_CATCHING_UP)  # a replay does nothing but catch up
    out = sys.stdout.buffer
    last = [0.0]

    def report(position: int, target: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or position >= target:
            last[0] = now
            out.write(msgspec.json.encode({"position": position, "target": target}) + b"\n")
            out.flush()

    async def run() -> None:
        parent = os.getppid()
        building = asyncio.create_task(build(settings, path, to_seq=to_seq, progress=report))

        async def orphaned() -> None:
            while os.getppid() == parent:
                await asyncio.sleep(0.5)

        watching = asyncio.create_task(orphaned())
        done, _ = await asyncio.wait({building, watching}, return_when=asyncio.FIRST_COMPLETED)
        for task in (building, watching):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await building
        for task in done:
            if task is building:
                task.result()

    try:
        asyncio.run(run())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

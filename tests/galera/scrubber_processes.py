"""Scrubber processes attached to Galera nodes (recording_scrubber.py), released together, watched as they go."""

import json
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHILD = str(Path(__file__).with_name("recording_scrubber.py"))
# A bound on a whole run of scrubbers; reaching it is a failure, never a synchronisation.
RUN_DEADLINE = 120


@dataclass
class ScrubberRun:
    """What one scrubber process did: its worker id, its batches, its outcome counts (none if it failed)."""

    worker: str = ""
    batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    finished: bool = False
    returncode: int | None = None
    stderr: str = ""


def deletions_by_worker(log: Path) -> list[tuple[str, str]]:
    """(worker, url) of every delete the store was asked for, in order."""
    if not log.exists():
        return []
    return [(worker, url) for worker, url in (line.split(" ", 1) for line in log.read_text().splitlines())]


class _Fleet:
    """The processes, one stdout pump thread each feeding one queue of (process number, line or None at its end)."""

    def __init__(self, inis: list[Path], deletions: Path, workdir: Path) -> None:
        self.runs = [ScrubberRun() for _ in inis]
        self.lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self.stderr_paths = [workdir / f"scrubber-{n}.stderr" for n in range(len(inis))]
        self.processes: list[subprocess.Popen[str]] = []
        self.pumps: list[threading.Thread] = []
        self.deadline = time.monotonic() + RUN_DEADLINE
        for ini, stderr_path in zip(inis, self.stderr_paths, strict=True):
            with stderr_path.open("w") as stderr:
                command = [sys.executable, CHILD, str(ini), str(deletions)]
                process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
                )
            self.processes.append(process)
            self.pumps.append(threading.Thread(target=_pump, args=(len(self.pumps), process, self.lines), daemon=True))
            self.pumps[-1].start()

    def next_line(self) -> tuple[int, str | None]:
        try:
            return self.lines.get(timeout=max(self.deadline - time.monotonic(), 0))
        except queue.Empty:
            pytest.fail(f"the scrubbers did not finish within {RUN_DEADLINE} s: {self.runs}")

    def release(self) -> None:
        """Every scrubber is built: let them all go at once."""
        for process in self.processes:
            process.stdin.write("go\n")
            process.stdin.close()

    def end(self) -> None:
        """Close what is open, reap every process (killed past the deadline) and read their stderr."""
        for process in self.processes:
            if not process.stdin.closed:  # one not released yet reads the end of its stdin and exits
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(timeout=max(self.deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pump in self.pumps:
            pump.join(timeout=RUN_DEADLINE)
        for run, process, stderr_path in zip(self.runs, self.processes, self.stderr_paths, strict=True):
            run.returncode, run.stderr = process.returncode, stderr_path.read_text()
            process.stdout.close()


def run_scrubbers(
    inis: list[Path],
    deletions: Path,
    workdir: Path,
    *,
    after_batches: int | None = None,
    action: Callable[[], None] | None = None,
) -> list[ScrubberRun]:
    """One scrubber process per .ini, released at once; once `after_batches` batches are recorded, action()."""
    fleet = _Fleet(inis, deletions, workdir)
    try:
        ready = ended = batches = 0
        while ended < len(inis):
            n, line = fleet.next_line()
            if line is None:
                ended += 1
                if ready < len(inis):
                    pytest.fail(f"scrubber {n} exited before its release: {fleet.stderr_paths[n].read_text()[-3000:]}")
                continue
            word, _, rest = line.rstrip("\n").partition(" ")
            run = fleet.runs[n]
            if word == "ready":
                run.worker, ready = rest, ready + 1
                if ready == len(inis):
                    fleet.release()
            elif word == "batch":
                run.batches, batches = run.batches + 1, batches + 1
                if action is not None and batches == after_batches:
                    action()
            elif word == "outcomes":
                run.outcomes, run.finished = Counter(json.loads(rest)), True
    finally:
        fleet.end()
    return fleet.runs


def _pump(n: int, process: subprocess.Popen[str], lines: "queue.Queue[tuple[int, str | None]]") -> None:
    """Move a child's stdout lines to the shared queue, then None at its end.

    A thread, not select() on the pipes: two lines that arrive in one read sit in the file object's buffer,
    where select() cannot see the second (test_scrubber_processes.pump_lines).
    """
    for line in process.stdout:
        lines.put((n, line))
    lines.put((n, None))

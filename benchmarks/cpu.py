"""Where the CPU went during a run: the whole machine, the PostgreSQL server, and everything else.

A throughput ratio means little if the machine ran out of CPUs, or if something else was using them: these
readings say which. Linux only (/proc); elsewhere they read as zero and the columns say nothing.
"""

import os
import resource
from dataclasses import dataclass
from pathlib import Path

import psycopg

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds consumed so far (user + system)."""

    machine: float  # every CPU's busy time since boot
    postgresql: float  # the server: the postmaster, its live children, and its reaped children
    benchmark: float  # this process


@dataclass(frozen=True)
class Split:
    """Average busy CPUs over an interval, by whom."""

    machine: float
    postgresql: float
    benchmark: float

    def other(self, measured: float) -> float:
        """Busy CPUs that were neither PostgreSQL, this process, nor the `measured` processes."""
        return self.machine - self.postgresql - self.benchmark - measured


def postmaster_pid(admin_url: str) -> int | None:
    """The PostgreSQL server's pid, from postmaster.pid in its data directory (needs superuser)."""
    try:
        with psycopg.connect(admin_url + "/postgres", autocommit=True) as connection:
            data_directory = str(connection.execute("SHOW data_directory").fetchone()[0])
        return int((Path(data_directory) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError, psycopg.Error):
        return None


def snapshot(postmaster: int | None) -> Snapshot:
    """Read the counters now."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return Snapshot(_machine_busy(), server_cpu(postmaster), own.ru_utime + own.ru_stime)


def split(before: Snapshot, after: Snapshot, wall_seconds: float) -> Split:
    """The average busy CPUs between two snapshots `wall_seconds` apart."""
    return Split(
        (after.machine - before.machine) / wall_seconds,
        (after.postgresql - before.postgresql) / wall_seconds,
        (after.benchmark - before.benchmark) / wall_seconds,
    )


def _machine_busy() -> float:
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS  # guest time is already counted in user


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name: [state, ppid, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def server_cpu(postmaster: int | None) -> float:
    if postmaster is None:
        return 0.0
    own = _stat(postmaster)
    if own is None:
        return 0.0
    # utime, stime, cutime, cstime: the exited backends' time is in the postmaster's children's time.
    ticks = sum(int(value) for value in own[11:15])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None and fields[1] == str(postmaster):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICKS

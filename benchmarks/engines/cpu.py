"""Where the CPU went during an engines run: the machine, the database servers, the processes measured, this one.

On 2 CPUs a rate means little without it: three mariadbd processes, the API servers and the client threads
all compete for the same two CPUs, and "rest" shows what else ran on the machine meanwhile.
"""

import time
from dataclasses import dataclass

from benchmarks import cpu


def cpu_seconds(pids: list[int]) -> float:
    """User + system seconds of these server processes so far: themselves, their live and their reaped children."""
    return sum(cpu.server_cpu(pid) for pid in pids)  # cpu's reading of a server process


@dataclass(frozen=True)
class Busy:
    """Average busy CPUs over a run, by whom."""

    machine: float
    database: float  # the database server processes (every Galera node)
    measured: float  # the API servers or the scrubbers
    benchmark: float  # this process: the client threads

    @property
    def rest(self) -> float:
        """Anything else on the machine (clock ticks are 10 ms: a short run can read slightly negative)."""
        return max(0.0, self.machine - self.database - self.measured - self.benchmark)

    def shown(self) -> str:
        """`machine = database + measured + benchmark + rest`, as the tables print it."""
        return (
            f"{self.machine:.2f} = {self.database:.2f} + {self.measured:.2f} + {self.benchmark:.2f} + {self.rest:.2f}"
        )


class CpuWatch:
    """Counters read at construction; busy() turns the difference to now into average busy CPUs."""

    def __init__(self, database: list[int], measured: list[int]) -> None:
        self._database, self._measured = database, measured
        self._before = self._read()

    def _read(self) -> tuple[float, float, float, float, float]:
        snapshot = cpu.snapshot(None)
        return (
            time.perf_counter(),
            snapshot.machine,
            cpu_seconds(self._database),
            cpu_seconds(self._measured),
            snapshot.benchmark,
        )

    def busy(self, extra_measured_seconds: float = 0.0) -> Busy:
        """Busy CPUs since construction; extra_measured_seconds: CPU of measured children this process reaped."""
        after = self._read()
        wall = after[0] - self._before[0]
        machine, database, measured, benchmark = (after[i] - self._before[i] for i in range(1, 5))
        return Busy(machine / wall, database / wall, (measured + extra_measured_seconds) / wall, benchmark / wall)

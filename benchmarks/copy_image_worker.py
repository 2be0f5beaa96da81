"""The API process the copy-image benchmark drives: gunicorn as shipped, one worker, and that worker's counters.

gunicorn runs deploy/gunicorn.conf.py (gthread) with one worker, on a socket bound here and handed over
(fd://): connections wait in the backlog until the worker accepts them, so starting needs no polling. With
one worker, every request and every import task (they run on the worker's own threads) is that process's,
so its /proc counters are the copy's: VmHWM and VmRSS from /proc/<pid>/status, CPU from /proc/<pid>/stat,
bytes written from /proc/<pid>/io. The peak is read from the worker itself, never from the benchmark
process (wait4's ru_maxrss of a child carries over the parent's high-water mark; see benchmarks/README.md).
Writing 5 to /proc/<pid>/clear_refs resets VmHWM to the current RSS, so a peak can be one copy's alone.
"""

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
GUNICORN_CONFIG = REPOSITORY / "deploy" / "gunicorn.conf.py"
STOP_SECONDS = 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Counters:
    """One reading of the worker: memory in KiB, CPU seconds (user + system), bytes passed to write()."""

    peak_kib: int
    rss_kib: int
    cpu_seconds: float
    written_bytes: int

    def since(self, earlier: "Counters") -> "Counters":
        """Memory as now; CPU and bytes written since the earlier reading."""
        return Counters(
            self.peak_kib,
            self.rss_kib,
            self.cpu_seconds - earlier.cpu_seconds,
            self.written_bytes - earlier.written_bytes,
        )


@dataclass(frozen=True, slots=True)
class ApiProcess:
    """The gunicorn master serving on 127.0.0.1:port, and its one worker."""

    port: int
    master_pid: int
    worker_pid: int

    def counters(self) -> Counters:
        """The worker's VmHWM, VmRSS, CPU and wchar now."""
        proc = Path(f"/proc/{self.worker_pid}")
        status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
        # /proc/<pid>/stat: the name in parentheses may hold spaces; utime and stime are fields 14 and 15.
        fields = (proc / "stat").read_text().rpartition(")")[2].split()
        io = dict(line.split(": ", 1) for line in (proc / "io").read_text().splitlines())
        return Counters(
            peak_kib=int(status["VmHWM"].split()[0]),
            rss_kib=int(status["VmRSS"].split()[0]),
            cpu_seconds=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            written_bytes=int(io["wchar"]),
        )

    def reset_peak(self) -> bool:
        """Set the worker's VmHWM to its current RSS; False where the kernel does not allow it."""
        try:
            Path(f"/proc/{self.worker_pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def still_the_same_worker(self) -> bool:
        """Whether the worker read at the start still serves (gunicorn replaces a worker that died or hung)."""
        return _children(self.master_pid) == [self.worker_pid]


@contextmanager
def serving(ini: Path, workdir: Path, answered: Callable[[int], None]) -> Iterator[ApiProcess]:
    """gunicorn --paste ini with one worker; `answered(port)` must complete one request before the worker is read.

    The socket is bound here and handed over (fd://), so the request waits in the backlog until the worker
    accepts it: no polling for readiness.

    The log goes to workdir/gunicorn.log; it is shown when the server fails to start.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    # The shipped config's multiprocess directory, inside the run's workdir. Not named `metrics`: gunicorn puts
    # its working directory on sys.path, and a directory of that name would shadow the `metrics` package.
    metrics_dir = workdir / "prometheus-multiproc"
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "LOCQUOTA_WORKERS": "1"}
    command = [
        GUNICORN, "--paste", str(ini), "--config", str(GUNICORN_CONFIG),
        "--bind", f"fd://{listener.fileno()}", "--workers", "1",
    ]  # fmt: skip
    log_path = workdir / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=environment, pass_fds=(listener.fileno(),), stdout=log, stderr=subprocess.STDOUT
        )
    # gunicorn holds the socket now; with this copy closed, a gunicorn that dies takes the socket with it, and
    # a request waiting in the backlog is refused at once instead of waiting for a worker that never comes.
    listener.close()
    try:
        try:
            answered(port)
            worker = _the_worker(process)
        except Exception as exc:
            log_tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"gunicorn did not serve: {exc}\n{log_tail}") from exc
        yield ApiProcess(port, process.pid, worker)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_SECONDS)


def _the_worker(master: subprocess.Popen[bytes]) -> int:
    """The master's one child process (it has answered a request, so it exists)."""
    children = _children(master.pid)
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {children}")
    return children[0]


def _children(pid: int) -> list[int]:
    """The pids whose parent is pid, from /proc/<n>/stat (field 4)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone while we looked
        if parent == pid:
            found.append(int(entry.name))
    return sorted(found)

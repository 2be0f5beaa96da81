"""What the reader needs to trust and compare the numbers: machine facts, the table, the targets."""

import os
import platform
import shlex
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from benchmarks.timing import Summary

# The targets (SPEC section 10): page loads do not grow with the tenant, and stay close to the framework's floor.
FLAT_TARGET = 1.5
CONSTANT_TARGET = 3.0
BASELINE = "constant"


@dataclass(frozen=True)
class SizeResult:
    """Every endpoint's summary at one tenant size."""

    tenant_images: int
    summaries: dict[str, Summary]


def command_line() -> str:
    """The command as typed, so the run can be repeated."""
    return shlex.join(sys.orig_argv)


def machine_facts(postgresql_version: str) -> list[tuple[str, str]]:
    """What decides absolute numbers; ratios should travel between machines, absolute times will not."""
    return [
        ("command", command_line()),
        ("nproc", f"{len(os.sched_getaffinity(0))} (cpu_count {os.cpu_count()})"),
        ("cpu", _cpu_model()),
        ("platform", platform.platform()),
        ("python", sys.version.split()[0]),
        ("postgresql", postgresql_version),
        ("load avg", load_average()),
        (
            "libraries",
            ", ".join(f"{name} {version(name)}" for name in ("pyramid", "SQLAlchemy", "psycopg", "waitress")),
        ),
    ]


def load_average() -> str:
    """Other work on the machine skews every number; printed at the start and the end of the run."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_facts(facts: list[tuple[str, str]]) -> None:
    """One fact per line, aligned."""
    width = max(len(name) for name, _ in facts)
    for name, value in facts:
        print(f"{name:<{width}}  {value}")


def print_rows(
    headers: tuple[str, ...], rows: list[tuple[str, ...]], left_aligned: set[int], group: int | None = None
) -> None:
    """A plain-text table: columns padded to their widest cell, a blank line where column `group` changes."""
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i in left_aligned else cell.rjust(widths[i]) for i, cell in enumerate(cells)
        ).rstrip()

    print(line(headers))
    print("  ".join("-" * width for width in widths))
    previous = None
    for row in rows:
        if group is not None and previous is not None and row[group] != previous:
            print()
        previous = row[group] if group is not None else None
        print(line(row))


def _verdict(ratio: float, target: float, *, inclusive: bool) -> str:
    met = ratio <= target if inclusive else ratio < target
    return "ok" if met else "MISS"


def print_table(results: list[SizeResult], endpoint_labels: dict[str, str], targeted: set[str]) -> None:
    """One row per size and endpoint: latency, throughput, and both ratios next to the targets of `targeted`."""
    smallest = results[0]
    headers = (
        "images",
        "endpoint",
        "median ms",
        "p95 ms",
        "req/s",
        "x constant",
        f"<={CONSTANT_TARGET:g}",
        f"x @{smallest.tenant_images}",
        f"<{FLAT_TARGET:g}",
        "stmts",
        "commits",
    )
    rows: list[tuple[str, ...]] = []
    for result in results:
        constant = result.summaries[BASELINE].median
        for name, summary in result.summaries.items():
            vs_constant = summary.median / constant
            vs_smallest = summary.median / smallest.summaries[name].median
            is_target = name in targeted
            rows.append(
                (
                    f"{result.tenant_images}",
                    endpoint_labels[name],
                    f"{summary.median * 1000:.2f}",
                    f"{summary.p95 * 1000:.2f}",
                    f"{summary.requests_per_second:.0f}",
                    f"{vs_constant:.2f}",
                    _verdict(vs_constant, CONSTANT_TARGET, inclusive=True) if is_target else "-",
                    f"{vs_smallest:.2f}",
                    _verdict(vs_smallest, FLAT_TARGET, inclusive=False) if is_target else "-",
                    _count(summary.statements),
                    _count(summary.commits),
                )
            )
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    left_aligned = {1}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i in left_aligned else cell.rjust(widths[i]) for i, cell in enumerate(cells)
        )

    print(line(headers))
    print("  ".join("-" * width for width in widths))
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            print()
        previous = row[0]
        print(line(row))
    print()
    _print_counts_legend()


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _print_counts_legend() -> None:
    """What the two count columns mean (tests/statement_counter.py counts them)."""
    print(
        "stmts, commits: what one more (untimed) request of each endpoint sent to the database: statements the"
        " driver executed, and COMMITs (a read ends in ROLLBACK or runs in autocommit: 0 commits)"
    )


def print_targets(results: list[SizeResult], endpoint_labels: dict[str, str], targeted: set[str]) -> None:
    """The verdicts in words: flatness from the smallest to the largest size, and the worst ratio to constant."""
    smallest, largest = results[0], results[-1]
    print("targets (reported, not asserted; medians, ratios from this run):")
    for name, label in endpoint_labels.items():
        if name not in targeted:
            continue
        if len(results) > 1:
            growth = largest.summaries[name].median / smallest.summaries[name].median
            print(
                f"  {label}: flat as the tenant grows: time@{largest.tenant_images} / time@{smallest.tenant_images}"
                f" = {growth:.2f} (target < {FLAT_TARGET:g}) {_verdict(growth, FLAT_TARGET, inclusive=False)}"
            )
            # The same growth with each size's time divided by that size's constant view: machine drift
            # between the sizes (another process, CPU frequency) cancels out.
            normalized = growth / (largest.summaries[BASELINE].median / smallest.summaries[BASELINE].median)
            print(
                f"  {label}: flat, drift-corrected: (time / constant)@{largest.tenant_images} over"
                f" @{smallest.tenant_images} = {normalized:.2f} (target < {FLAT_TARGET:g})"
                f" {_verdict(normalized, FLAT_TARGET, inclusive=False)}"
            )
        worst = max(result.summaries[name].median / result.summaries[BASELINE].median for result in results)
        print(
            f"  {label}: within {CONSTANT_TARGET:g}x the constant view at every size: worst {worst:.2f}x"
            f" {_verdict(worst, CONSTANT_TARGET, inclusive=True)}"
        )

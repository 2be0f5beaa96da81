"""Counts what an operation sends to the database: statements and committed transactions, per engine.

The write path's budget (issue 18: an upload in at most two transactions and eight statements) is
pinned by tests and printed by the benchmarks with this one hook, so both count the same things:
every statement SQLAlchemy executes through the engine, and every COMMIT. The pool's pre-ping and
SQLite's connect pragmas go to the driver below the hook and are not counted.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine, event


@dataclass
class Counts:
    """What one counted stretch sent: statements (their SQL, in order) and commits."""

    statements: list[str] = field(default_factory=list)
    commits: int = 0

    def __str__(self) -> str:
        return f"{len(self.statements)} statements, {self.commits} transactions"

    def show(self) -> str:
        """The statements one per line, for an assertion message that says what was sent."""
        return "\n".join(f"{number:3}. {' '.join(sql.split())[:160]}" for number, sql in enumerate(self.statements, 1))


@contextmanager
def counting(engine: Engine) -> Iterator[Counts]:
    """Count the statements and commits sent through engine while the block runs (every thread)."""
    counts = Counts()

    def on_statement(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        counts.statements.append(statement)

    def on_commit(_conn: object) -> None:
        counts.commits += 1

    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "commit", on_commit)
    try:
        yield counts
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "commit", on_commit)

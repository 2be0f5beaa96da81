"""API tokens for the `tokens` identity strategy: issued once by the CLI, stored only as a SHA-256 hash."""

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from locquota.clock import Clock
from locquota.db import Base

TOKEN_PREFIX = "lq_"  # noqa: S105  (a public marker, not a secret)


class Token(Base):
    """One issued token. The token itself is never stored: 256 random bits make a plain hash enough."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(String(255))
    roles: Mapped[str] = mapped_column(String(1024), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class TokenService:
    """Issues and checks tokens."""

    def __init__(self, db: Session, clock: Clock) -> None:
        self._db, self._clock = db, clock

    def issue(
        self, project_id: str, roles: list[str], description: str = "", expires_at: datetime | None = None
    ) -> str:
        """Store a new token's hash and return the token, which cannot be recovered later."""
        # The prefix keeps a token from starting with "-" (a CLI would read it as an option) and lets
        # secret scanners recognise a leaked one.
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._db.add(
            Token(
                token_hash=hash_token(token),
                project_id=project_id,
                roles=",".join(roles),
                description=description,
                created_at=self._clock.now(),
                expires_at=expires_at,
            )
        )
        self._db.flush()
        return token

    def find(self, token: str) -> Token | None:
        """The unexpired token with this value, or None."""
        found = self._db.scalar(select(Token).where(Token.token_hash == hash_token(token)))
        if found is None or (found.expires_at is not None and found.expires_at <= self._clock.now()):
            return None
        return found

    def listed(self, project_id: str | None = None) -> list[Token]:
        """Every token (of one project), oldest first: what the CLI shows, never a secret or its hash."""
        query = select(Token).order_by(Token.id)
        if project_id is not None:
            query = query.where(Token.project_id == project_id)
        return list(self._db.scalars(query))

    def revoke(self, token_ids: list[int]) -> list[int]:
        """Delete these tokens (the next request with one gets 401); the ids that existed."""
        removed = self._db.execute(delete(Token).where(Token.id.in_(token_ids)).returning(Token.id))
        return sorted(removed.scalars())

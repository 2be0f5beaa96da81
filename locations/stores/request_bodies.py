"""Request bodies for a store's uploads over HTTP: bytes in memory sent without a copy, and chunks streamed.

A store that PUTs data (swift) sends a small image from memory (ViewReader, rewindable for a retry) and a
large one as it arrives (Incoming, pulled by the HTTP library while it sends). Both keep memory bounded.
"""

from collections.abc import Iterator


class ViewReader:
    """A file-like view of bytes already in memory, so a segment is sent without a second copy."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._offset = view, 0

    def read(self, size: int = -1) -> bytes:
        """The next size bytes (all that is left when size < 0)."""
        end = len(self._view) if size < 0 else min(len(self._view), self._offset + size)
        piece = self._view[self._offset : end].tobytes()
        self._offset = end
        return piece

    def tell(self) -> int:
        """How far the body has been read (swiftclient asks before it sends)."""
        return self._offset

    def seek(self, offset: int) -> None:
        """Swiftclient rewinds a body it sends again (swift_store_retries = 1)."""
        self._offset = offset


class Incoming:
    """The upload's chunks, taken in pieces of a bounded size; what the chunks raise is kept in `failure`.

    A segment's body is pulled by the HTTP library while it sends: the client's own error must still reach the
    caller unchanged, whatever the library wraps it in.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._held = chunks, bytearray()
        self.failure: BaseException | None = None

    def take(self, most: int) -> bytes:
        """Up to `most` bytes; fewer only at the end (b"" once everything was taken)."""
        while len(self._held) < most:
            try:
                chunk = next(self._chunks, None)
            except BaseException as exc:
                self.failure = exc
                raise
            if chunk is None:
                break
            self._held += chunk
        piece = bytes(self._held[:most])
        del self._held[:most]
        return piece

    def give_back(self, piece: bytes) -> None:
        """Put bytes taken back in front (they are sent first)."""
        self._held[:0] = piece

    def has_more(self) -> bool:
        """Whether any byte is left (pulls at most one more chunk)."""
        piece = self.take(1)
        self.give_back(piece)
        return bool(piece)

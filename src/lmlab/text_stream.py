"""One generated sequence as text, token by token: stop strings and incremental printing.

``TextStream.push(id)`` returns the text that may be printed now: complete characters only (a
character split over two byte-level tokens waits for its second half) and never the start of a
stop string (``"\\n\\n"`` waits for the next token to tell whether it is one). Once the text
contains a stop string, the sequence is ``stopped`` and its ``text`` is cut before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

INCOMPLETE = "\ufffd"  # what a byte-level decoder writes for a cut UTF-8 sequence


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in ``text``, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def pending_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()):
        self.decode = decode
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.printed = 0  # characters handed out by push/finish
        self.stopped = False

    @property
    def text(self) -> str:
        """The text so far, cut before the first stop string."""
        full = self.decode(self.ids)
        cut = first_stop(full, self.stops)
        return full if cut is None else full[:cut]

    def push(self, token: int) -> str:
        """Add one token; return the newly printable text."""
        self.ids.append(token)
        full = self.decode(self.ids)
        cut = first_stop(full, self.stops)
        if cut is not None:
            self.stopped = True
            ready = full[:cut]
        else:
            ready = full.rstrip(INCOMPLETE)
            ready = ready[: len(ready) - pending_stop(ready, self.stops)]
        return self._hand_out(ready)

    def finish(self) -> str:
        """The text held back so far, once the sequence has ended."""
        return self._hand_out(self.text)

    def _hand_out(self, ready: str) -> str:
        piece = ready[self.printed :]
        self.printed = max(self.printed, len(ready))
        return piece

"""The codec's one error type."""

from __future__ import annotations


class TauqError(ValueError):
    """Text that is not a Tauq document, or a value that Tauq (and JSON) cannot hold.

    A ``ValueError`` so that callers who already catch JSON errors catch this too. Decoding
    errors carry the position (``pos``: 0-based character offset; ``line`` and ``column``:
    1-based); encoding errors have ``pos`` None.
    """

    def __init__(self, msg: str, text: str | None = None, pos: int | None = None) -> None:
        self.msg = msg
        self.pos = pos
        self.line: int | None = None
        self.column: int | None = None
        if text is not None and pos is not None:
            self.line = text.count("\n", 0, pos) + 1
            self.column = pos - (text.rfind("\n", 0, pos) + 1) + 1
            super().__init__(f"{msg} (line {self.line}, column {self.column})")
        else:
            super().__init__(msg)

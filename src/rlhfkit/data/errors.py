"""The one error type for bad user data: names the file, the line (or record index) and the field.

``str(err)`` reads like a compiler message::

    data/train.jsonl:12: field 'chosen': expected a non-empty string, got int
    data/train.json[3]: field 'messages[1].role': expected one of ...   (JSON list / dataset index)

Line numbers are 1-based (line-oriented files); record indices of JSON lists, lists of dicts and
Hugging Face datasets are 0-based (``dataset[i]``) and written in brackets.
"""

from __future__ import annotations

from os import PathLike

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad user data.

    Attributes:
        path: file name (str) or a label such as ``"<dataset>"``; None when unknown.
        line: 1-based line number for line-oriented files, or the 0-based record index for JSON
            lists and datasets (then ``index`` is set too); None when the error concerns the file.
        field: the offending field (dotted / indexed, e.g. ``"messages[2].content"``) or None.
        message: what is wrong, without the location.
        reason: a short machine-readable category used to count skipped records
            (``malformed_json``, ``invalid_utf8``, ``not_object``, ``missing_field``,
            ``wrong_type``, ``empty_text``, ``too_long``, ``invalid_value``).
        index: 0-based record index for list-like sources, else None.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike | None = None,
        line: int | None = None,
        field: str | None = None,
        reason: str = "invalid_value",
        index: int | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.index = index
        self.line = line if line is not None else index
        self.field = field
        self.message = message
        self.reason = reason
        super().__init__(self._format())

    def _format(self) -> str:
        loc = self.path if self.path is not None else ""
        if self.index is not None:
            loc = f"{loc or '<records>'}[{self.index}]"
        elif self.line is not None:
            loc = f"{loc or '<input>'}:{self.line}"
        parts = [loc] if loc else []
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)

    def __str__(self) -> str:  # attributes may be updated by ``located``
        return self._format()

    def located(self, path=None, line: int | None = None, index: int | None = None) -> "DataError":
        """A copy of this error with the location filled in (the field and message are kept)."""
        return DataError(
            self.message,
            path=path if path is not None else self.path,
            line=line if line is not None else (None if index is not None else self.line),
            field=self.field,
            reason=self.reason,
            index=index if index is not None else self.index,
        )

    def __reduce__(self):  # picklable (datasets.map / multiprocessing)
        return (_rebuild, (self.message, self.path, self.line, self.field, self.reason, self.index))


def _rebuild(message, path, line, field, reason, index):
    err = DataError(
        message, path=path, line=None if index is not None else line, field=field, reason=reason, index=index
    )
    return err

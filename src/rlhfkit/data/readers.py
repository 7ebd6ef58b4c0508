"""Read and validate user data; write JSONL.

Sources accepted by :func:`read_records`:
- a path to ``.jsonl`` / ``.jsonl.gz`` (one JSON object a line; gzip is detected by its magic
  bytes, so any suffix works), or ``.json`` / ``.json.gz`` holding a JSON list of objects (a
  ``.json`` file whose first non-blank character is not ``[`` is one record when it holds one
  object, pretty-printed or not, refused naming the field when that object wraps the records in a
  list, ``{"data": [...]}``, and read as JSON lines otherwise); a JSON-lines
  file that holds one JSON array is refused with the hint to rename it ``.json`` (the name is a
  promise other tools keep too: streaming readers, ``wc -l``, ``split``);
- a folder written by ``datasets.Dataset.save_to_disk`` (``rlhfkit feedback export --format hf``),
  read with ``datasets.load_from_disk``; a ``DatasetDict`` folder is refused naming its splits;
- a ``datasets.Dataset`` (one split; a ``DatasetDict`` is refused with a hint) or any list /
  iterable of dicts.

Every problem becomes a :class:`DataError` naming the file, the 1-based line (JSON lines) or the
0-based record index (JSON lists, datasets: written ``file[3]``) and the field; with
``on_error="skip"`` bad records are dropped and counted in ``ReadResult.skipped`` by reason.
Problems with the file as a whole (missing, not a JSON list, truncated gzip) always raise.
JSON-lines files are read as bytes and decoded line by line so invalid UTF-8 gets its exact line;
blank lines are ignored; a UTF-8 byte-order mark on the first line is accepted.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import zlib
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import DataError
from .records import (
    CompletionRecord,
    ConversationRecord,
    PreferencePair,
    PromptRecord,
    RankingRecord,
    RatingRecord,
    RewriteRecord,
    ThumbsRecord,
    record_texts,
)

__all__ = ["KINDS", "ReadResult", "read_records", "iter_raw", "parse_record", "write_jsonl"]

KINDS = {
    "prompts": PromptRecord,
    "sft": None,  # CompletionRecord or ConversationRecord, by the presence of "messages"
    "conversations": ConversationRecord,
    "pairs": PreferencePair,
    "rankings": RankingRecord,
    "ratings": RatingRecord,
    "thumbs": ThumbsRecord,
    "rewrites": RewriteRecord,
}


@dataclass
class ReadResult:
    """What :func:`read_records` returns: the valid ``records``, the ``skipped`` counts by reason
    (empty unless ``on_error="skip"``) and the source ``path`` (or a label like ``<dataset>``)."""

    records: list
    skipped: collections.Counter = field(default_factory=collections.Counter)
    path: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator:
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]


def parse_record(d: Any, kind: str):
    """Validate one dict as a record of ``kind`` (no location in errors)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "sft":
        if isinstance(d, dict) and "messages" in d:
            return ConversationRecord.from_dict(d)
        return CompletionRecord.from_dict(d)
    return KINDS[kind].from_dict(d)


# ----------------------------------------------------------------------------- raw readers
# Each yields (location kwargs, value or DataError). Location kwargs: {"line": n} or {"index": i}.
def _read_all(path: Path) -> bytes:
    with open(path, "rb") as raw:
        data = raw.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"cannot decompress gzip file: {e}", path=path, reason="malformed_json") from None
    return data


def _is_json_name(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".json", ".json.gz"))


def _is_json_list(path: Path, data: bytes) -> bool:
    return _is_json_name(path) and data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"["


def _whole_json_object(path: Path, data: bytes) -> dict | None:
    """The one JSON object a ``.json`` file holds (pretty-printed over many lines or not), or None
    when it holds something else (JSON lines, which such a file may also hold: read line by line).
    An object that wraps the records in a list (``{"data": [{...}, ...]}``) is a DataError naming
    the key, rather than one record missing every field."""
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError):  # several lines of JSON, or bad JSON: the line reader says where
        return None
    if not isinstance(value, dict):
        return None
    wrapped = [
        k
        for k, v in value.items()
        if k != "messages" and isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
    ]
    if wrapped:
        raise DataError(
            f"this file holds one JSON object with the records in its field {wrapped[0]!r}; give "
            f"a JSON list of objects (that field's value) or JSON Lines, one object a line",
            path=path,
            reason="not_object",
        )
    return value


def _decode_line(raw: bytes, lineno: int, path: Path) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"invalid UTF-8 at byte {e.start} of the line ({e.reason})", path=path, line=lineno, reason="invalid_utf8"
        ) from None
    if lineno == 1 and text.startswith("\ufeff"):
        text = text[1:]
    return text


def _parse_json(text: str, path, loc: dict) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"malformed JSON: {e.msg} at column {e.colno}", path=path, reason="malformed_json", **loc
        ) from None
    except RecursionError:
        raise DataError("malformed JSON: nested too deeply", path=path, reason="malformed_json", **loc) from None
    except ValueError as e:  # Python's limit on integer digits (4300): a ValueError, not a JSONDecodeError
        raise DataError(f"malformed JSON: {str(e).split(';')[0]}", path=path, reason="malformed_json", **loc) from None


def line_limit(max_chars: int | None) -> int | None:
    """The longest JSON line (bytes) read for a record within ``max_chars`` characters of text:
    6 bytes a character (the ``\\uXXXX`` escape) and 16 MB for keys, numbers and extra columns
    (datasets carry some). A longer line is refused before it is parsed: parsing a 300 MB line
    took 6 s and 1.4 GB of memory, to refuse it after."""
    return None if max_chars is None else 6 * max_chars + 16_000_000


def _iter_jsonl(path: Path, data: bytes, max_line_bytes: int | None = None) -> Iterator[tuple[dict, Any]]:
    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[":  # a problem of the whole file: always raised
        raise DataError(
            "this file holds a JSON array; JSON Lines needs one object per line (rename it .json "
            "to read it as a JSON list)",
            path=path,
            line=1,
            reason="malformed_json",
        )
    start, lineno = 0, 0
    while start <= len(data):  # line by line without copying them all (a giant line is not copied at all)
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        lineno, length, raw_start, start = lineno + 1, end - start, start, end + 1
        loc = {"line": lineno}
        if max_line_bytes is not None and length > max_line_bytes:
            yield (
                loc,
                DataError(
                    f"sample too long: a line of {length} bytes, more than any record within "
                    f"max_chars holds ({max_line_bytes})",
                    path=path,
                    reason="too_long",
                    **loc,
                ),
            )
            continue
        raw = data[raw_start:end]
        if not raw.strip():
            continue
        try:
            text = _decode_line(raw, lineno, path)
            yield loc, _parse_json(text, path, loc)
        except DataError as e:
            yield loc, e


def _iter_json_list(path: Path, data: bytes) -> Iterator[tuple[dict, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"invalid UTF-8 ({e.reason})", path=path, line=line, reason="invalid_utf8") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"malformed JSON: {e.msg} at column {e.colno}", path=path, line=e.lineno, reason="malformed_json"
        ) from None
    except RecursionError:
        raise DataError("malformed JSON: nested too deeply", path=path, reason="malformed_json") from None
    except ValueError as e:  # Python's limit on integer digits (4300)
        raise DataError(f"malformed JSON: {str(e).split(';')[0]}", path=path, reason="malformed_json") from None
    if not isinstance(value, list):
        raise DataError(f"expected a JSON list of objects, got {type(value).__name__}", path=path, reason="not_object")
    for i, v in enumerate(value):
        yield {"index": i}, v


def _iter_objects(source: Iterable, label: str) -> Iterator[tuple[dict, Any]]:
    for i, v in enumerate(source):
        yield {"index": i}, v


DATASET_FOLDER_FILES = ("state.json", "dataset_info.json")  # what Dataset.save_to_disk writes


def load_dataset_folder(path: Path):
    """The ``datasets.Dataset`` saved in folder ``path`` (``save_to_disk``), or a :class:`DataError`
    saying why the folder is not one."""
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataError(
            f"this folder holds a DatasetDict with splits {splits}; give one split's folder, "
            f"e.g. {path / (splits[0] if splits else 'train')}",
            path=path,
            reason="not_object",
        )
    if not all((path / name).is_file() for name in DATASET_FOLDER_FILES):
        raise DataError(
            f"a folder, but not one written by datasets' save_to_disk (no "
            f"{' / '.join(DATASET_FOLDER_FILES)}); give a .jsonl / .json file or such a folder",
            path=path,
            reason="not_object",
        )
    try:
        import datasets
    except ImportError:
        raise DataError(
            "reading a datasets folder needs the `datasets` package", path=path, reason="not_object"
        ) from None
    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged folder: say so with the file named
        raise DataError(f"cannot read the datasets folder: {e}", path=path, reason="malformed_json") from None


def iter_raw(source, max_line_bytes: int | None = None) -> tuple[str, Iterator[tuple[dict, Any]]]:
    """(label, iterator of (location, raw value or DataError)) for any supported source; a JSON
    line longer than ``max_line_bytes`` is a ``too_long`` DataError, not parsed."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return str(path), _iter_objects(load_dataset_folder(path), str(path))
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} does not exist")
        data = _read_all(path)
        if _is_json_list(path, data):
            return str(path), _iter_json_list(path, data)
        if _is_json_name(path):
            whole = _whole_json_object(path, data)
            if whole is not None:  # one object, perhaps over many lines: a record, or records wrapped in one
                return str(path), _iter_objects([whole], str(path))
        return str(path), _iter_jsonl(path, data, max_line_bytes)
    if type(source).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise TypeError(f"got a {type(source).__name__} with splits {list(source)}; pass one split, e.g. ds['train']")
    if isinstance(source, dict):
        raise TypeError("got a dict; pass a list of dicts, a datasets.Dataset or a path")
    label = "<dataset>" if type(source).__module__.startswith("datasets") else "<records>"
    try:
        it = iter(source)
    except TypeError:
        raise TypeError(f"cannot read records from {type(source).__name__}") from None
    return label, _iter_objects(it, label)


# ----------------------------------------------------------------------------- public
def read_records(source, kind: str, on_error: str = "raise", max_chars: int = 100_000) -> ReadResult:
    """Read and validate records of ``kind`` from a file, a ``datasets.Dataset`` or a list of dicts.

    Args:
        source: path (``.jsonl``, ``.jsonl.gz``, ``.json`` list) or Dataset / list of dicts.
        kind: one of ``prompts, sft, conversations, pairs, rankings, ratings, thumbs, rewrites``;
            ``sft`` gives :class:`CompletionRecord` or, for ``messages`` records,
            :class:`ConversationRecord`.
        on_error: ``"raise"`` (first bad record raises :class:`DataError`) or ``"skip"`` (dropped
            and counted by reason in ``result.skipped``).
        max_chars: a record whose texts total more than this many characters is bad
            (``too_long``; the field named is its longest text). None disables the check.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    label, items = iter_raw(source, line_limit(max_chars))
    records: list = []
    skipped: collections.Counter = collections.Counter()
    for loc, value in items:
        try:
            if isinstance(value, DataError):
                raise value
            try:
                rec = parse_record(value, kind)
            except DataError as e:
                raise e.located(path=label, **loc) from None
            if max_chars is not None:
                texts = record_texts(rec)
                total = sum(len(t) for _, t in texts)
                if total > max_chars:
                    longest = max(texts, key=lambda ft: len(ft[1]))[0]
                    raise DataError(
                        f"sample too long: {total} characters > max_chars={max_chars}",
                        path=label,
                        field=longest,
                        reason="too_long",
                        **loc,
                    )
        except DataError as e:
            if on_error == "raise":
                raise e.with_traceback(None) from None
            skipped[e.reason] += 1
            continue
        records.append(rec)
    return ReadResult(records=records, skipped=skipped, path=label)


def _as_dict(r: Any) -> dict:
    if hasattr(r, "to_dict"):
        return r.to_dict()
    if is_dataclass(r) and not isinstance(r, type):
        from dataclasses import asdict

        return asdict(r)
    if isinstance(r, dict):
        return r
    raise TypeError(f"cannot write {type(r).__name__} as a JSON object")


def write_jsonl(path, records: Iterable) -> int:
    """Write records (dataclasses with ``to_dict`` or dicts) as JSON lines, UTF-8, one object a
    line (gzip when the name ends in ``.gz``). Written to a temporary file then renamed, so a
    crash never leaves half a file. Returns the number of records written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(tmp, "wt", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(_as_dict(r), ensure_ascii=False))
            f.write("\n")
            n += 1
    os.replace(tmp, path)
    return n

"""The JSONL file import's upload: its multipart body is read only by the route itself, after the
admin check (as a ``File(...)`` parameter FastAPI would read and spool the whole upload before any
dependency runs, so an anonymous client could make the server write ``max_import_bytes`` to disk
per request), and a gzip is decompressed in steps up to the same limit."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import tempfile
import zlib
from pathlib import Path

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from ..http_hardening import escape_surrogates
from .actions import get_project, import_items
from .context import AppContext

__all__ = ["UPLOAD_BODY", "GZIP_MAGIC", "gunzip_upload", "upload_error", "upload_name", "import_upload"]

_SUFFIXES = (".jsonl", ".json", ".gz")
# the import's multipart body, for the OpenAPI document (the route reads it itself: see uploaded_file)
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JSON lines (or a .json list); gzip-compressed or not",
                        }
                    },
                }
            }
        },
    }
}
GZIP_MAGIC = b"\x1f\x8b"


def upload_error(status: int, message: str, name: str | None) -> HTTPException:
    """An import error in the shape of the import's own (file, line, field, imported)."""
    return HTTPException(status, {"error": message, "file": name, "line": None, "field": "file", "imported": 0})


def upload_name(filename: str | None) -> str:
    """The client's name of an uploaded file, for messages only: its last path part (either
    separator). A name that is no file name (``.``, ``..``, control characters) is a 422 naming
    the field ``file``."""
    name = (filename or "upload.jsonl").replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or any(ord(ch) < 32 or ch == "\x7f" for ch in name) or len(name) > 255:
        raise upload_error(
            422, f"field 'file': the upload's name {escape_surrogates(filename)!r} is not a file name", None
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise upload_error(422, "field 'file': the upload's name is not valid text", None) from None
    return name


def gunzip_upload(path: Path, limit: int, name: str) -> Path:
    """``path`` itself when it is not gzip (by its first bytes, as the reader tells), else the
    path of its decompressed copy beside it -- decompressed in 1 MB steps and abandoned as soon
    as it passes ``limit`` bytes (413 naming the limit): a 50 MB gzip of one repeated byte
    expands to 50 GB, which the reader would otherwise decompress whole in memory. A gzip
    inside the gzip is refused (422) rather than expanded again."""
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            return path
    out = path.with_name("plain" + "".join(s for s in path.suffixes if s != ".gz"))
    total = 0
    try:
        with gzip.open(path, "rb") as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):  # GzipFile.read(n) never inflates more than n bytes
                total += len(chunk)
                if total > limit:
                    raise upload_error(
                        413,
                        f"field 'file': {name} decompresses to more than the import limit of "
                        f"{limit / 1e6:g} MB (--max_import_mb)",
                        name,
                    )
                dst.write(chunk)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise upload_error(422, f"field 'file': {name} is not a readable gzip file ({e})", name) from None
    with open(out, "rb") as f:
        if f.read(2) == GZIP_MAGIC:
            raise upload_error(422, f"field 'file': {name} is a gzip file inside a gzip file; compress it once", name)
    return out


async def uploaded_file(request: Request) -> UploadFile:
    """The multipart field ``file``; call it only after the admin check."""
    f = (await request.form(max_files=1)).get("file")
    if not isinstance(f, UploadFile):
        raise upload_error(422, "field 'file': send the JSONL file as the multipart field 'file'", None)
    return f


async def import_upload(ctx: AppContext, request: Request, project_id: int, redact: bool) -> dict:
    """The upload of ``request`` imported into the project (see ``actions.import_items``); a
    missing project answers 404 before the upload is read."""
    await asyncio.to_thread(get_project, ctx, project_id)
    file = await uploaded_file(request)
    name = upload_name(file.filename)
    with tempfile.TemporaryDirectory() as d:
        # the saved file's name is ours (the reader only looks at its ending: .gz, .json);
        # the client's name is only the label in messages
        path = Path(d) / ("upload" + "".join(s for s in Path(name).suffixes[-2:] if s in _SUFFIXES))

        def save():  # the upload is already spooled to disk past 1 MB: copy in chunks
            with open(path, "wb") as out:
                shutil.copyfileobj(file.file, out, 1 << 20)

        await asyncio.to_thread(save)
        path = await asyncio.to_thread(gunzip_upload, path, ctx.max_import_bytes, name)
        return await asyncio.to_thread(import_items, ctx, project_id, path, name, redact)

"""Streaming a multipart upload to disk with the size limits enforced as the bytes arrive.

Starlette's ``request.form()`` would spool every file before the handler sees it; here the body is
fed chunk by chunk to python-multipart's push parser, each photo part goes straight into a file on
the data volume (``uploads/{uuid}/0001.part``, a server-chosen name: the client's file name is kept
in memory for messages and never touches a path), and a part over the per-file limit or a body over
the per-set limit stops the transfer with 413 at once. Memory stays at one chunk per upload.

Part headers are read as bytes and parsed by :mod:`sharpml_api.headers`, which cannot fail: whatever
a client writes there (UTF-8, bytes that are not UTF-8, broken quoting) is a 4xx or an accepted name.

The spool directory is removed in every case once intake has run (see :func:`spool`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from sharpml.config import MB, IntakeLimits
from sharpml.intake import Upload, display_name
from sharpml.layout import DataDir, create_file, make_dir, open_dir
from sharpml_api.headers import client_field_name, client_file_name, parse_header
from sharpml_api.problems import ApiProblem, field_problem, file_problem

FILES_FIELD = "files"
#: The spool folder of the data directory: ``uploads/{job id}/`` per upload in transit.
UPLOADS = "uploads"
#: Option fields are short strings; anything longer is not an option.
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32
#: Multipart framing (boundaries, part headers) on top of the photo bytes, per part; also the most
#: header bytes one part may have.
PART_OVERHEAD = 16 * 1024
MAX_BOUNDARY = 200


def body_ceiling(limits: IntakeLimits) -> int:
    """The largest request body an upload within ``limits`` can need: photos, fields and framing."""
    return (
        limits.max_set_bytes + (limits.max_images + MAX_FIELDS) * PART_OVERHEAD + MAX_FIELDS * MAX_FIELD_BYTES
    )


def check_declared_length(length: str | None, limits: IntakeLimits) -> None:
    """413 before reading a body whose declared ``Content-Length`` is over :func:`body_ceiling`.

    Only plain ASCII digits are a length (``"²".isdigit()`` is true); more than 18 of them is over
    any ceiling (and over Python's int-from-text limit). Anything else is left to the HTTP server."""
    if not length or not (length.isascii() and length.isdigit()):
        return
    size = int(length) if len(length) <= 18 else 10**18
    if size > body_ceiling(limits):
        raise body_too_large(size, limits)


def body_too_large(size: int, limits: IntakeLimits) -> ApiProblem:
    return ApiProblem(
        413,
        "too-large",
        "Upload too large",
        f"the request is {size / MB:.1f} MB; "
        f"uploads are limited to {limits.max_set_bytes / MB:.0f} MB of photos",
    )


class ClientGone(Exception):
    """The client went away before its body had arrived (the web layer raises it from the stream)."""


def _too_large(kind_rule: str, file: str | None, message: str) -> ApiProblem:
    return file_problem(413, "too-large", "Upload too large", file, kind_rule, message)


def _bad(rule: str, message: str, field: str | None = None) -> ApiProblem:
    return field_problem(400, "malformed-upload", "Malformed upload", field or "body", rule, message)


@dataclass
class ParsedUpload:
    """What the body held: photo files on disk (client name -> path) and the option fields."""

    files: list[Upload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    bytes_received: int = 0


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary, or 415/400: the body is only ever read as multipart/form-data."""
    header = parse_header(content_type)
    if header.value != "multipart/form-data":
        shown = header.value[:100] or "none"
        raise ApiProblem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"Content-Type is {shown}; photos are uploaded as multipart/form-data",
        )
    boundary = header.params.get("boundary", "")
    # RFC 2046 boundaries are short and ASCII; anything else cannot be matched in the body.
    if not boundary or len(boundary) > MAX_BOUNDARY or not (boundary.isascii() and boundary.isprintable()):
        raise _bad("boundary", "multipart/form-data Content-Type has no valid boundary parameter")
    return boundary.encode("ascii")


class _Receiver:
    """python-multipart callbacks writing photo parts to files (runs in a worker thread)."""

    def __init__(self, spool_fd: int, spool_dir: Path, limits: IntakeLimits) -> None:
        self.spool_fd = spool_fd
        self.spool_dir = spool_dir
        self.limits = limits
        self.result = ParsedUpload()
        self.ended = False
        self._headers: dict[str, bytes] = {}
        self._header_bytes = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._out = None
        self._name: str | None = None  # form field name of the current part
        self._file: str | None = None  # client file name of the current file part
        self._size = 0
        self._value = bytearray()
        self._photo_bytes = 0

    # header callbacks
    def on_part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0
        self._size = 0
        self._value = bytearray()

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > PART_OVERHEAD:
            raise _bad("part-headers", f"a part's headers are longer than {PART_OVERHEAD} bytes")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        # Raw bytes: only headers.parse_header reads them (it cannot fail on any byte).
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        disposition = parse_header(self._headers.get("content-disposition"))
        if disposition.value != "form-data" or "name" not in disposition.params:
            raise _bad("part-headers", "every part needs 'Content-Disposition: form-data; name=...'")
        self._name = client_field_name(disposition.params["name"])
        filename = disposition.params.get("filename")
        if self._name != FILES_FIELD:
            if filename is not None:
                raise _bad(
                    "field", f"file sent in field {self._name!r}; photos go in {FILES_FIELD!r}", self._name
                )
            if len(self.result.fields) >= MAX_FIELDS:
                raise _bad("field-count", f"more than {MAX_FIELDS} form fields")
            self._file = None
            return
        if filename is None:
            raise _bad(
                "not-a-file", f"parts of {FILES_FIELD!r} must be files (a filename is missing)", FILES_FIELD
            )
        if len(self.result.files) >= self.limits.max_images:
            # Intake's own count rule and status, decided without reading the rest of the body.
            n = self.limits.max_images
            raise file_problem(
                422,
                "photos-rejected",
                "Photos rejected",
                None,
                "count",
                f"more than {n} photos uploaded; at most {n} are accepted",
            )
        self._file = client_file_name(filename)
        index = len(self.result.files) + 1
        part = f"{index:04d}.part"
        self._out = os.fdopen(create_file(self.spool_fd, part), "wb")
        self.result.files.append(Upload(self._file, self.spool_dir / part))

    # body callbacks
    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        self._size += n
        if self._file is None:
            if self._size > MAX_FIELD_BYTES:
                raise _bad(
                    "field-size",
                    f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes",
                    self._name,
                )
            self._value += data[start:end]
            return
        shown = display_name(self._file)
        if self._size > self.limits.max_file_bytes:
            raise _too_large(
                "file-size",
                shown,
                f"{shown}: over the {self.limits.max_file_bytes / MB:.1f} MB per-file limit",
            )
        self._photo_bytes += n
        if self._photo_bytes > self.limits.max_set_bytes:
            raise _too_large(
                "set-size", None, f"the photos total over the {self.limits.max_set_bytes / MB:.1f} MB limit"
            )
        assert self._out is not None
        self._out.write(data[start:end])

    def on_part_end(self) -> None:
        if self._file is not None:
            assert self._out is not None
            self._out.close()
            self._out = None
            return
        assert self._name is not None
        if self._name in self.result.fields:
            raise _bad("duplicate-field", f"form field {self._name!r} appears more than once", self._name)
        try:
            self.result.fields[self._name] = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("encoding", f"form field {self._name!r} is not UTF-8", self._name) from None

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def callbacks(self) -> dict:
        names = ["part_begin", "header_field", "header_value", "header_end", "headers_finished"]
        names += ["part_data", "part_end", "end"]
        return {f"on_{n}": getattr(self, f"on_{n}") for n in names}


@contextlib.contextmanager
def spool(data_dir: DataDir, job_id: str) -> Iterator[Path]:
    """A fresh ``uploads/{job id}/`` on the data volume (same filesystem as jobs/), removed afterwards.

    While the upload and its intake (into ``jobs/.incoming-{job id}``) run, the spool directory holds
    an exclusive ``flock``: the leftovers sweep (:mod:`sharpml_api.sweep`) never removes a spool or a
    staging directory whose lock is held, by this process or another replica. A crash releases it."""
    data_dir.ensure()
    root = data_dir.root / UPLOADS
    with open_dir(data_dir.root) as fd:
        make_dir(fd, UPLOADS, exist_ok=True)
    name = str(uuid.UUID(job_id))
    with open_dir(root) as fd:
        make_dir(fd, name, mode=0o700)
    path = root / name
    try:
        with open_dir(path) as lock_fd:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def receive(
    chunks: AsyncIterator[bytes], boundary: bytes, spool_dir: Path, limits: IntakeLimits
) -> ParsedUpload:
    """Parse the body into ``spool_dir``; raises :class:`ApiProblem` (400/413) as soon as it can."""
    ceiling = body_ceiling(limits)
    with open_dir(spool_dir) as spool_fd:
        receiver = _Receiver(spool_fd, spool_dir, limits)
        parser = MultipartParser(boundary, receiver.callbacks())
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                receiver.result.bytes_received += len(chunk)
                if receiver.result.bytes_received > ceiling:  # e.g. an endless epilogue
                    raise body_too_large(receiver.result.bytes_received, limits)
                if receiver.ended:
                    continue  # epilogue after the closing boundary is ignored, as RFC 2046 says
                # Parsing and the file writes happen off the event loop, one chunk at a time.
                await anyio.to_thread.run_sync(parser.write, chunk)
        except MultipartParseError as exc:
            raise _bad("multipart", f"malformed multipart body ({exc})") from None
        finally:
            receiver.close()
    if not receiver.ended:
        raise _bad("multipart", "multipart body ended before its closing boundary (truncated upload?)")
    return receiver.result

"""Header parameters and client-supplied names, read from bytes by a parser that cannot fail.

Why our own parser and not python-multipart's ``parse_options_header``: that function takes text
and encodes the values back to latin-1, so a part header holding any character outside latin-1 —
what every browser sends for a file name such as ``写真.jpg`` or ``📷.jpg`` (the HTML standard sends
names as UTF-8), or a decomposed ``café.jpg`` (macOS) — raised ``UnicodeEncodeError`` in the middle
of the upload: a 500 for input any client may send. A wrapper catching the error would have to
guess what to answer and would still lose the name. Here instead:

* **bytes in, text out, never an exception**: header bytes are decoded as UTF-8, and bytes that are
  not UTF-8 become U+FFFD (a name is display data: it is shown in messages and kept in
  ``intake.json``, never used as a path or a key, so a replacement character is the honest reading).
  Every input, however broken, parses into *something*; the caller decides whether that something is
  a valid part header and answers 400 when it is not.
* **the grammar of RFC 9110 parameters**, leniently: ``value *( ";" name "=" (token / quoted-string) )``
  with ``;`` inside quotes kept, ``\\"`` and ``\\\\`` unescaped in quoted strings and any other
  backslash kept as it is (browsers and old Windows clients send ``C:\\dir\\photo.jpg`` unescaped), an
  unterminated quote read to the end; parameter names are case-insensitive. ``name*=`` (RFC 8187)
  parameters are ignored, as RFC 7578 §4.2 says for form-data and as python-multipart did.
* **names normalised once**: :func:`client_file_name` keeps the last path component, in Unicode NFC
  (so a decomposed and a composed ``café.jpg`` are the same name, for the duplicate check too), at
  most :data:`MAX_NAME_CHARS` characters with the extension kept.

The request's own ``Content-Type`` goes through the same function (:func:`parse_header` takes the
text Starlette decoded as latin-1 as well), so there is one parser for every header we read params from.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field

#: Longest client file name kept (the common file system limit); longer ones are shortened.
MAX_NAME_CHARS = 255
#: Longest form field name kept for messages (known fields are far shorter).
MAX_FIELD_NAME_CHARS = 128
_MAX_EXTENSION_CHARS = 16
ELLIPSIS = "\u2026"


@dataclass(frozen=True)
class Header:
    """A parameterised header value: ``value`` lower-cased, parameter names lower-cased."""

    value: str
    params: dict[str, str] = field(default_factory=dict)


def _split(text: str) -> list[str]:
    """``text`` split at every ``;`` that is not inside a quoted string."""
    pieces, start, quoted, i = [], 0, False, 0
    while i < len(text):
        c = text[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ";" and not quoted:
            pieces.append(text[start:i])
            start = i + 1
        i += 1
    pieces.append(text[start:])
    return pieces


def _unquote(value: str) -> str:
    """A quoted string's content (``value`` starts with the quote); unterminated: to the end."""
    out, i = [], 1
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value) and value[i + 1] in '"\\':
            out.append(value[i + 1])
            i += 2
            continue
        if c == '"':
            break
        out.append(c)
        i += 1
    return "".join(out)


def parse_header(raw: bytes | str | None) -> Header:
    """``form-data; name="files"; filename="a.jpg"`` → ``Header("form-data", {"name": ..., ...})``.

    Bytes are decoded as UTF-8 (invalid bytes: U+FFFD); text is taken as it is. Never raises."""
    if raw is None:
        return Header("")
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else raw
    first, *rest = _split(text)
    params: dict[str, str] = {}
    for piece in rest:
        name, _, value = piece.partition("=")
        name = name.strip(" \t").lower()
        if not name or "*" in name:
            continue
        value = value.strip(" \t")
        params[name] = _unquote(value) if value.startswith('"') else value
    return Header(first.strip(" \t").lower(), params)


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def client_field_name(raw: str) -> str:
    """A form field's name as sent, in NFC and bounded (it is matched against known names and shown)."""
    return _bounded(unicodedata.normalize("NFC", raw), MAX_FIELD_NAME_CHARS)


def client_file_name(raw: str) -> str:
    """The name a client gave a file, as display data: the last component of whatever path it sent
    (``/`` or ``\\``), without NUL, in NFC, at most :data:`MAX_NAME_CHARS` characters with the
    extension kept (intake judges the extension). ``.`` and ``..`` become empty (shown "(unnamed)")."""
    name = unicodedata.normalize("NFC", raw.replace("\\", "/").rsplit("/", 1)[-1].replace("\0", ""))
    if name in (".", ".."):
        return ""
    if len(name) <= MAX_NAME_CHARS:
        return name
    stem, ext = os.path.splitext(name)
    if len(ext) > _MAX_EXTENSION_CHARS:
        stem, ext = name, ""
    return stem[: MAX_NAME_CHARS - len(ext) - 1] + ELLIPSIS + ext

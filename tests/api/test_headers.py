"""The header-parameter parser and the name normalisation, on their own (no cluster): every input
parses, nothing raises."""

from __future__ import annotations

import unicodedata

import pytest
from sharpml_api.headers import MAX_NAME_CHARS, Header, client_file_name, parse_header


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b'form-data; name="files"; filename="a.jpg"',
            Header("form-data", {"name": "files", "filename": "a.jpg"}),
        ),
        (
            'form-data; name="files"; filename="写真.jpg"'.encode(),
            Header("form-data", {"name": "files", "filename": "写真.jpg"}),
        ),
        (
            b'Form-Data; NAME=files; filename="a;b.jpg"',
            Header("form-data", {"name": "files", "filename": "a;b.jpg"}),
        ),
        (b'form-data; filename="say \\"hi\\".jpg"', Header("form-data", {"filename": 'say "hi".jpg'})),
        (b'form-data; filename="C:\\dir\\a.jpg"', Header("form-data", {"filename": "C:\\dir\\a.jpg"})),
        (b'form-data; filename="open.jpg', Header("form-data", {"filename": "open.jpg"})),
        (b"form-data; filename*=UTF-8''a.jpg; name=x", Header("form-data", {"name": "x"})),
        (b"form-data; \xff\xfe=\xff; ;=; name", Header("form-data", {"\ufffd\ufffd": "\ufffd", "name": ""})),
        (b'form-data; filename="a\\', Header("form-data", {"filename": "a\\"})),
        (b"", Header("")),
        (None, Header("")),
        ("multipart/form-data; boundary=abc", Header("multipart/form-data", {"boundary": "abc"})),
    ],
)
def test_parse_header(raw, expected):
    assert parse_header(raw) == expected


def test_parse_header_never_raises_on_any_byte():
    for b in range(256):
        for raw in (bytes([b]), b'form-data; name="' + bytes([b]) + b'"', b"a;" + bytes([b]) * 3 + b'="\\'):
            assert isinstance(parse_header(raw), Header)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("IMG_0001.jpg", "IMG_0001.jpg"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\a.jpg", "a.jpg"),
        ("..", ""),
        ("a\0b.jpg", "ab.jpg"),
        (unicodedata.normalize("NFD", "café.jpg"), "café.jpg"),
        ("y" * 300 + ".heic", "y" * (MAX_NAME_CHARS - 6) + "\u2026.heic"),
        ("z" * 300 + "." + "e" * 40, "z" * (MAX_NAME_CHARS - 1) + "\u2026"),
    ],
)
def test_client_file_name(raw, expected):
    name = client_file_name(raw)
    assert name == expected and len(name) <= MAX_NAME_CHARS

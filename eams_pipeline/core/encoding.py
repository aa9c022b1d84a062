"""The district's file encoding: an upload's bytes turned into the UTF-8 that
:func:`eams_pipeline.core.reading.read_upload` reads. Pure, applied before reading.

- A UTF-8 byte-order mark: the file is UTF-8, whatever the district's setting.
- A UTF-16 byte-order mark (Excel's "Unicode text", some SIS exports): rejected with
  FILE_ENCODING on line 1 and a message that says how to save the file instead (SPEC §2:
  anything that is not UTF-8 text rejects the file; the district settings only open
  Windows-1252 and Latin-1, the single-byte encodings real exports use).
- Otherwise the district's ``encoding`` (master data: ``utf-8`` by default,
  ``windows-1252``, ``latin-1``). A district set to windows-1252 or latin-1 whose file is
  valid UTF-8 (with non-ASCII characters) gets it read as UTF-8: such bytes are practically
  never meant as Windows-1252, and the SIS may have switched to UTF-8.

A file that cannot be decoded is rejected with FILE_ENCODING naming the line, the bytes
and the setting that would read it.
"""

from __future__ import annotations

import codecs

from eams_pipeline.core.errors import ErrorCode
from eams_pipeline.core.reading import FileRejected

UTF8_BOM = codecs.BOM_UTF8
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
SUPPORTED = ("utf-8", "windows-1252", "latin-1")
_CODEC = {"utf-8": "utf-8", "windows-1252": "cp1252", "latin-1": "latin-1"}


def decode_upload(data: bytes, encoding: str = "utf-8") -> bytes:
    """The upload as UTF-8 bytes (line breaks and so line numbers unchanged).

    Raises :class:`FileRejected` (FILE_ENCODING) when the bytes are not text in the
    district's encoding.
    """
    if encoding not in _CODEC:
        raise ValueError(f"unsupported encoding {encoding!r}; one of {', '.join(SUPPORTED)}")
    if data.startswith(UTF8_BOM):
        return data  # read_upload skips the mark and checks the UTF-8
    if data.startswith(UTF16_BOMS):
        raise FileRejected(
            ErrorCode.FILE_ENCODING,
            1,
            "The file is UTF-16 text (it starts with a UTF-16 byte-order mark, as Excel's "
            '"Unicode Text" does), not UTF-8. Export the file as "CSV UTF-8".',
        )
    if data.isascii():
        return data
    if encoding == "utf-8":
        _check_utf8(data)
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return data  # valid UTF-8: read as UTF-8 (see the module docstring)
    try:
        return data.decode(_CODEC[encoding]).encode("utf-8")
    except UnicodeDecodeError as exc:
        line = _line(data, exc.start)
        raise FileRejected(
            ErrorCode.FILE_ENCODING,
            line,
            f"The file is not valid {encoding} text: byte {_hex(data[exc.start : exc.end])} "
            f"on line {line} has no meaning in {encoding}. Export the file as CSV UTF-8, "
            "or ask eAMS support which encoding your district is set to.",
        ) from None


def _check_utf8(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = _line(data, exc.start)
        bad = data[exc.start : exc.end]
        hint = ""
        try:
            # what the byte would be in Windows-1252, when it is a letter (no row data)
            char = bad.decode("cp1252")
            if len(char) == 1 and char.isalpha():
                hint = f" (in Windows-1252: {char!r})"
        except UnicodeDecodeError:
            pass
        raise FileRejected(
            ErrorCode.FILE_ENCODING,
            line,
            f"The file is not valid UTF-8 text: byte {_hex(bad)}{hint} on line {line} cannot "
            'be decoded. The file was probably saved as Windows-1252 (Excel\'s "CSV", many '
            'SIS exports). Export it as "CSV UTF-8", or ask eAMS support to set '
            "`encoding: windows-1252` for your district.",
        ) from None


def _line(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _hex(raw: bytes) -> str:
    return " ".join(f"0x{b:02X}" for b in raw[:4])

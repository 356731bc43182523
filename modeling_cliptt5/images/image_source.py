"""What every image reader shares: the error that names a file and why it cannot be read, the bytes of a source
(path or bytes) with clear errors, and how a DICOM file is recognised. (image_io opens any file; dicom decodes
DICOM; both build on this.)"""

from __future__ import annotations

import os
from pathlib import Path

# Pillow's own decompression-bomb threshold (about 89.5 M pixels, e.g. 9459 x 9459); a chest film is ~3000 x 3000.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageReadError(ValueError):
    """A file that cannot be used as an image; `str()` gives "FILE: REASON" for one-line error reports."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


class ImageRefused(ImageReadError):
    """A file read correctly that is not what the model reads (a CT slice, a cine loop: dicom.check_radiograph):
    refused on purpose, where a plain ImageReadError is a file that could not be read (failed)."""


def is_dicom(data: bytes, name: str = "") -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble; raw datasets are known only by their suffix."""
    return data[128:132] == b"DICM" or name.lower().endswith(".dcm")


def read_source_bytes(source: str | os.PathLike | bytes | bytearray | memoryview, name: str) -> bytes:
    """The file's bytes, with a clear error for a missing, unreadable, folder or empty source."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageReadError(name, "file not found")
        if path.is_dir():
            raise ImageReadError(name, "is a folder, not an image file")
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageReadError(name, f"cannot read the file ({error.strerror or error})") from error
    if not data:
        raise ImageReadError(name, "empty file (0 bytes)")
    return data

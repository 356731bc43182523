"""Tiny good and bad image files for the converter tests (made here, nothing downloaded)."""

import io
import struct
import zlib

from PIL import Image


def jpeg_bytes(shade=128, size=(16, 16)):
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, shade // 2, 255 - shade)).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bytes(shade=128, size=(12, 10)):
    buffer = io.BytesIO()
    Image.new("L", size, shade).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_jpeg_bytes():
    """A real JPEG cut in half: the header reads, the pixels do not."""
    data = jpeg_bytes(size=(64, 64))
    return data[: len(data) // 2]


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png_bytes(width=40000, height=40000):
    """A valid PNG header claiming width x height grey pixels (1.6 G pixels) with almost no data behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def stored_image_bytes(dataset_dict):
    """{study id: [bytes of each stored view]} of a converted DatasetDict, without decoding the images."""
    import datasets

    stored = {}
    for split in dataset_dict.values():
        raw = split.cast_column("images", datasets.List(datasets.Image(decode=False)))
        for row in raw:
            stored[row["id"]] = [image["bytes"] for image in row["images"]]
    return stored

"""open_image: every supported format decodes, every bad file fails with the file's name and a clear reason."""

import io

import numpy as np
import pytest
from PIL import Image

from modeling_cliptt5.images.image_io import ImageReadError, open_image


def encoded(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise(size=(48, 40), dtype=np.uint8, high=255, seed=0):
    return np.random.default_rng(seed).integers(0, high, size=size[::-1], dtype=dtype)


def test_png_and_jpeg_paths_decode_with_pixels_and_size_kept(tmp_path):
    pixels = noise()
    png = tmp_path / "a.png"
    png.write_bytes(encoded(Image.fromarray(pixels)))
    image = open_image(png)
    assert image.mode == "L" and image.size == (48, 40)
    assert np.array_equal(np.array(image), pixels)  # PNG is lossless: no resizing, no value change

    jpeg = tmp_path / "b.jpg"
    jpeg.write_bytes(encoded(Image.new("RGB", (30, 20), (200, 10, 10)), "JPEG"))
    image = open_image(str(jpeg))
    assert image.mode == "RGB" and image.size == (30, 20)
    red, green, _ = np.array(image).reshape(-1, 3).mean(axis=0)
    assert red > 150 and green < 60


def test_sixteen_bit_png_keeps_its_depth():
    pixels = (np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16)  # values up to ~57,000
    image = open_image(encoded(Image.fromarray(pixels)))
    assert image.mode in ("I;16", "I")
    assert np.array_equal(np.array(image).astype(np.int64), pixels.astype(np.int64))


@pytest.mark.parametrize("mode,expected", [("RGBA", "RGB"), ("P", "RGB"), ("LA", "L"), ("1", "L")])
def test_equivalent_modes_are_converted(mode, expected):
    assert open_image(encoded(Image.new(mode, (8, 8)))).mode == expected


def test_bytes_default_name_and_explicit_name():
    with pytest.raises(ImageReadError) as error:
        open_image(b"not an image at all")
    assert error.value.file == "<bytes>"
    with pytest.raises(ImageReadError, match=r"^upload\.png: not an image"):
        open_image(b"not an image at all", name="upload.png")


def reason_for(source, **kwargs):
    with pytest.raises(ImageReadError) as error:
        open_image(source, **kwargs)
    assert str(error.value) == f"{error.value.file}: {error.value.reason}"
    assert isinstance(error.value, ValueError)
    return error.value


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    error = reason_for(empty)
    assert error.file == str(empty) and "empty file (0 bytes)" in error.reason


def test_missing_file_and_folder(tmp_path):
    assert "not found" in reason_for(tmp_path / "nope.png").reason
    assert "folder" in reason_for(tmp_path).reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_fails_on_full_decode(fmt):
    data = encoded(Image.fromarray(noise(size=(64, 64))), fmt)
    error = reason_for(data[: len(data) // 2], name=f"half.{fmt.lower()}")
    assert "truncated" in error.reason and error.file == f"half.{fmt.lower()}"


def test_corrupt_pixel_data_fails():
    data = bytearray(encoded(Image.fromarray(noise(size=(64, 64)))))
    idat = data.index(b"IDAT")
    data[idat + 20: idat + 60] = b"\x00" * 40  # zlib stream damaged: the header still parses
    assert "corrupt" in reason_for(bytes(data), name="bad.png").reason


def test_text_file_is_not_an_image(tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("FINDINGS: normal.")
    assert "not an image" in reason_for(notes).reason


def test_oversized_image_refused_before_decoding():
    error = reason_for(encoded(Image.new("L", (100, 60))), name="big.png", max_pixels=5_000)
    assert "too large" in error.reason and "100 x 60" in error.reason
    assert open_image(encoded(Image.new("L", (100, 60))), max_pixels=6_000).size == (100, 60)


def test_pillow_decompression_bomb_refused():
    # A 20000 x 20000 PNG header (400 M pixels, over twice Pillow's limit), with almost no data behind it.
    header = encoded(Image.new("L", (1, 1)))
    ihdr = header.index(b"IHDR")
    import struct
    import zlib

    body = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    bomb = header[: ihdr + 4] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + header[ihdr + 4 + 13 + 4:]
    assert "too large" in reason_for(bomb, name="bomb.png").reason


def test_unsupported_mode_named():
    error = reason_for(encoded(Image.new("F", (4, 4)), "TIFF"), name="float.tif")
    assert "unsupported image mode 'F'" in error.reason

"""Open one chest X-ray file (PNG, JPEG, DICOM, ...) as a PIL image, or say clearly why it cannot be read."""

from __future__ import annotations

import io
import os
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from modeling_cliptt5.images.image_source import DEFAULT_MAX_PIXELS, ImageReadError, is_dicom, read_source_bytes

__all__ = ["DEFAULT_MAX_PIXELS", "ImageReadError", "is_dicom", "open_image", "read_source_bytes"]


# Modes returned unchanged: the model's processor converts them to RGB. 16-bit grayscale keeps its depth.
KEPT_MODES = ("L", "RGB", "I;16", "I")
# Modes that carry the same picture in another layout: converted once here so callers see only KEPT_MODES.
CONVERTED_MODES = {
    "1": "L",
    "LA": "L",
    "P": "RGB",
    "PA": "RGB",
    "RGBA": "RGB",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "I;16B": "I;16",
    "I;16L": "I;16",
}


def open_image(
    source: str | os.PathLike | bytes | bytearray | memoryview,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    any_modality: bool = False,
    on_doubt=None,
) -> Image.Image:
    """Decode `source` (a path or the file's bytes) fully, without resizing; DICOM goes through `dicom.read_dicom`.

    Returns mode "L", "RGB", "I;16" or "I". Raises `ImageReadError` naming `name` (default: the path) and the
    problem: empty, not an image, truncated or corrupt, larger than `max_pixels`, an unsupported mode, or a DICOM
    object that is not a projection radiograph (unless `any_modality`: dicom.check_radiograph). `on_doubt(message)`
    hears about a DICOM read that may not be a chest radiograph (default: a warning).
    """
    if name is None:
        name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    data = read_source_bytes(source, name)
    if is_dicom(data, name):
        from modeling_cliptt5.images.dicom import read_dicom  # pydicom is an optional extra: needed only when a DICOM file shows up

        return read_dicom(data, name=name, max_pixels=max_pixels, any_modality=any_modality,
                          on_doubt=on_doubt)
    return decode_pil(data, name, max_pixels)


def decode_pil(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Pillow formats: check the header's size before decoding, then force a full decode to catch truncation."""
    with warnings.catch_warnings():
        # We apply our own size limit below; Pillow's warning at its default limit would only repeat it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageReadError(name, "not an image (Pillow cannot identify its format; expected PNG, JPEG or DICOM)")
        except Image.DecompressionBombError as error:
            raise ImageReadError(name, f"image too large to decode safely ({error})") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageReadError(name, f"truncated or corrupt image (header unreadable: {error})") from error
        pixels = image.width * image.height
        if pixels > max_pixels:
            raise ImageReadError(
                name,
                f"image too large: {image.width} x {image.height} = {pixels:,} pixels, over the limit of "
                f"{max_pixels:,} (a guard against decompression bombs; raise max_pixels if the file is genuine)",
            )
        try:
            image.load()  # Image.open only reads the header: truncated or corrupt data shows up here
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ImageReadError(name, f"truncated or corrupt {image.format} image data ({error})") from error
    return normalise_mode(ImageOps.exif_transpose(image), name)


def normalise_mode(image: Image.Image, name: str) -> Image.Image:
    """Keep grayscale (8 or 16 bit) and RGB; convert equivalent layouts; refuse the rest with the mode's name."""
    if image.mode in KEPT_MODES:
        return image
    if image.mode in CONVERTED_MODES:
        return image.convert(CONVERTED_MODES[image.mode])
    raise ImageReadError(
        name,
        f"unsupported image mode {image.mode!r} (expected 8/16-bit grayscale or RGB; "
        f"save the image as an 8- or 16-bit grayscale or RGB PNG)",
    )

"""What the viewer shows of an image: its values at full resolution in the modality's units, the header's windows,
and window presets for chest radiographs. The model reads the same decode (`open_for_display` returns both)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from modeling_cliptt5.images.image_io import decode_pil, is_dicom, read_source_bytes
from modeling_cliptt5.images.image_source import DEFAULT_MAX_PIXELS

# Larger images are shown block-averaged to at most this many pixels (a 3000 x 3000 film is 9 M): the browser holds
# the values and a canvas of this size per image.
MAX_VIEW_PIXELS = 16_000_000

# Projection radiographs have no standard units (unlike CT's Hounsfield units), so the presets are ranges of the
# image's own values: (low, high) percentiles in display brightness, dark lungs at the low end, bone at the top.
# Measured on a subsample that leaves out the exact minimum and maximum (collimation and burned-in borders).
PRESETS = {"lung": ("Lung", 2.0, 70.0), "mediastinum": ("Mediastinum", 40.0, 99.5), "bone": ("Bone", 65.0, 99.9)}
PRESET_SAMPLE_STRIDE = 4


@dataclass
class DisplayImage:
    """An image's values for the viewer: modality value = offset + slope * values (uint8 or uint16)."""

    values: np.ndarray
    offset: float = 0.0
    slope: float = 1.0
    monochrome1: bool = False  # the lowest value is displayed white (PS3.3 C.7.6.3.1.2)
    units: str = ""
    header_windows: list = field(default_factory=list)  # [(explanation, center, width)] in modality units
    downscale: int = 1  # shown at 1/downscale of the stored resolution (over MAX_VIEW_PIXELS)

    @property
    def value_range(self):
        low, high = float(self.values.min()), float(self.values.max())
        return self.offset + self.slope * low, self.offset + self.slope * high

    def windows(self):
        """{key: (label, center, width)}: the header's windows, the presets and the full range, in modality units."""
        low, high = self.value_range
        windows = {f"header{index}": (f"Header: {explanation}" if explanation else "Header", center, width)
                   for index, (explanation, center, width) in enumerate(self.header_windows)}
        sample = self.values[::PRESET_SAMPLE_STRIDE, ::PRESET_SAMPLE_STRIDE].ravel()
        inner = sample[(sample > sample.min()) & (sample < sample.max())]
        sample = inner if inner.size else sample
        for key, (label, low_percent, high_percent) in PRESETS.items():
            if self.monochrome1:  # bright is low: brightness percentile p is value percentile 100 - p
                low_percent, high_percent = 100.0 - high_percent, 100.0 - low_percent
            low_value, high_value = (self.offset + self.slope * float(value)
                                     for value in np.percentile(sample, [low_percent, high_percent]))
            windows[key] = (label, (low_value + high_value) / 2, max(high_value - low_value, self.slope, 1e-6))
        windows["full"] = ("Full range", (low + high) / 2, max(high - low, self.slope, 1e-6))
        return windows

    def default_window(self):
        """The header's first window, else the full range (an 8-bit PNG was windowed when it was made)."""
        return "header0" if self.header_windows else "full"


def open_for_display(source: str | os.PathLike | bytes, name: str | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS, any_modality: bool = False, on_doubt=None):
    """(the image as the model reads it, as image_io.open_image returns it; its DisplayImage), decoded once."""
    if name is None:
        name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    data = read_source_bytes(source, name)
    if not is_dicom(data, name):
        image = decode_pil(data, name, max_pixels)
        return image, image_display(image)
    from modeling_cliptt5.images.dicom import dataset_image, decode_dicom, is_grayscale

    dataset, pixels = decode_dicom(data, name, max_pixels, any_modality, on_doubt)
    image = dataset_image(dataset, pixels, name)
    return image, (dicom_display(dataset, pixels) if is_grayscale(dataset, pixels) else image_display(image))


def image_display(image: Image.Image) -> DisplayImage:
    """A PNG/JPEG (or a colour DICOM) as it is stored: grey values, 8 or 16 bits; colour as its luminance."""
    if image.mode == "RGB":
        red, green, blue = image.split()
        image = red if red.tobytes() == green.tobytes() == blue.tobytes() else image.convert("L")
    return array_display(np.asarray(image))


def dicom_display(dataset, pixels: np.ndarray) -> DisplayImage:
    """Stored values with the rescale that turns them into modality units, and the header's windows."""
    import pydicom.pixels

    if dataset.get("ModalityLUTSequence"):  # a lookup table rather than a rescale: send its output
        display = array_display(pydicom.pixels.apply_modality_lut(pixels, dataset))
    else:
        slope = float(dataset.get("RescaleSlope", 1) or 1)
        intercept = float(dataset.get("RescaleIntercept", 0) or 0)
        display = array_display(pixels)
        display.offset, display.slope = intercept + slope * display.offset, slope * display.slope
    display.monochrome1 = str(dataset.PhotometricInterpretation).upper() == "MONOCHROME1"
    units = str(dataset.get("RescaleType", "") or "").strip()
    display.units = "" if units == "US" else units  # US: unspecified
    display.header_windows = header_windows(dataset)
    return display


def array_display(values: np.ndarray) -> DisplayImage:
    """Integer values as uint8/uint16 with the offset (and, past 16 bits, the step) that restores them."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        values = np.round(values)
    low, high = float(values.min()), float(values.max())
    slope = 1.0 if high - low <= 65535 else (high - low) / 65535
    dtype = np.uint8 if low >= 0 and high <= 255 and slope == 1.0 else np.uint16
    if dtype is np.uint8:
        shown, offset = values.astype(np.uint8), 0.0
    else:
        shown, offset = np.round((values.astype(np.float64) - low) / slope).astype(np.uint16), low
    shown, downscale = reduce_to(shown, MAX_VIEW_PIXELS)
    return DisplayImage(shown, offset=offset, slope=slope, downscale=downscale)


def reduce_to(values: np.ndarray, max_pixels: int):
    """(values block-averaged by the smallest whole factor that fits max_pixels, that factor)."""
    factor = max(1, math.ceil(math.sqrt(values.size / max_pixels)))
    if factor == 1:
        return values, 1
    rows, columns = (values.shape[0] // factor) * factor, (values.shape[1] // factor) * factor
    blocks = values[:rows, :columns].reshape(rows // factor, factor, columns // factor, factor)
    return np.round(blocks.mean(axis=(1, 3))).astype(values.dtype), factor


def header_windows(dataset) -> list:
    """[(explanation, center, width)] of the header's windows (modality units); a VOI LUT as the linear window
    spanning its rise from 2% to 98% of its output, which is how far a linear window can follow it."""
    from pydicom.multival import MultiValue

    def as_list(value):  # one value is a number (or a string), several a MultiValue
        return list(value) if isinstance(value, MultiValue) else [] if value is None else [value]

    centers, widths = as_list(dataset.get("WindowCenter")), as_list(dataset.get("WindowWidth"))
    if centers and widths:
        explanations = as_list(dataset.get("WindowCenterWidthExplanation"))
        explanations += [""] * (len(centers) - len(explanations))
        return [(str(explanation).strip(), float(center), max(float(width), 1.0))
                for explanation, center, width in zip(explanations, centers, widths)]
    if dataset.get("VOILUTSequence"):
        import pydicom.pixels

        item = dataset.VOILUTSequence[0]
        entries, first, _ = (int(value) for value in item.LUTDescriptor)
        # pydicom reads the table (US or OW, 8 or 16 bits): apply it to each of its inputs
        table = pydicom.pixels.apply_voi_lut(np.arange(first, first + (entries or 65536)), dataset, index=0)
        table = np.asarray(table, dtype=np.float64)
        if table.size > 1 and table.max() > table.min():
            rise = (table - table.min()) / (table.max() - table.min())
            low, high = first + int(np.argmax(rise >= 0.02)), first + int(np.argmax(rise >= 0.98))
            explanation = str(item.get("LUTExplanation", "") or "VOI LUT").strip()
            return [(f"{explanation} (as a linear window)", (low + high) / 2, max(high - low, 1.0))]
    return []

"""Read a DICOM radiograph as a display-ready PIL image (modality LUT, VOI window, MONOCHROME1 inverted)."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image

from modeling_cliptt5.images.image_source import (
    DEFAULT_MAX_PIXELS, ImageReadError, ImageRefused, read_source_bytes,
)

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")

# What the model was trained on: projection radiographs (Modality defined terms, DICOM PS3.3 C.7.3.1.1.1).
# RG is a digitised film/screen radiograph. Mammography (MG) and fluoroscopy (RF, XA) are projection images too,
# but not of the chest as a report is written for it: refused like CT and MR.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")
# Objects that may well hold a radiograph but do not say what they are: Modality OT (other; secondary captures such
# as a scanned film or an exported screenshot mostly say that) and files without Modality. Accepted with a warning.
UNSTATED_MODALITIES = ("", "OT", "SC")
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SOP classes 1.2.840.10008.5.1.4.1.1.7[.n]
MODALITY_NAMES = {
    "CT": "computed tomography", "MR": "magnetic resonance", "NM": "nuclear medicine", "PT": "PET",
    "US": "ultrasound", "MG": "mammography", "XA": "X-ray angiography", "RF": "fluoroscopy",
    "IO": "intra-oral radiography", "PX": "panoramic dental radiography", "DG": "diaphanography",
    "ES": "endoscopy", "XC": "external camera photograph", "OP": "ophthalmic photograph", "SM": "slide microscopy",
    "SEG": "segmentation", "RTDOSE": "radiotherapy dose", "RTPLAN": "radiotherapy plan", "RTSTRUCT": "radiotherapy "
    "structure set", "RTIMAGE": "radiotherapy image", "SR": "structured report", "ECG": "electrocardiogram",
    "KO": "key object selection", "PR": "presentation state", "DOC": "document",
}
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
ANY_MODALITY_HINT = "pass --any-modality (any_modality=True) to draft it anyway"


class DicomWarning(UserWarning):
    """A DICOM file that is read, but whose header says it may not be what the model was trained on."""


def import_pydicom():
    """pydicom is the optional `dicom` extra: import it only when a DICOM file is read."""
    try:
        import pydicom
        import pydicom.pixels
    except ImportError as error:
        raise ImportError(
            "Reading DICOM files needs pydicom: pip install 'cliptt5[dicom]' (or pip install pydicom)"
        ) from error
    return pydicom


def read_dicom(
    source: str | os.PathLike | bytes,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    bits: int = 8,
    any_modality: bool = False,
    on_doubt=None,
) -> Image.Image:
    """Decode the first frame of a DICOM image as grayscale ("L" for bits=8, "I;16" for bits=16) or RGB.

    Grayscale follows the display pipeline of DICOM PS3.4 N.2: stored values -> modality LUT (rescale slope /
    intercept) -> VOI LUT or window (first one in the header) -> MONOCHROME1 inverted so that bone is white.
    Without a VOI LUT or window, the image's own minimum and maximum span the output range.
    Raises `ImageReadError` for non-DICOM data, objects without pixels (e.g. a structured report), truncated
    pixel data, and compressed transfer syntaxes that no installed pydicom plugin can decode; also, unless
    `any_modality`, for objects that are not a single projection radiograph (`check_radiograph`).
    `on_doubt(message)` hears what is read but may not be a chest radiograph (default: a `DicomWarning`).
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if name is None:
        name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    dataset, pixels = decode_dicom(source, name, max_pixels, any_modality, on_doubt)
    return dataset_image(dataset, pixels, name, bits)


def decode_dicom(source, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, any_modality: bool = False,
                 on_doubt=None):
    """(dataset, first frame's stored values) of a DICOM image, after read_dicom's checks: the viewer windows the
    stored values itself (images/display.py), the model reads `dataset_image` of them."""
    pydicom = import_pydicom()
    data = read_source_bytes(source, name)
    dataset = parse_dataset(pydicom, data, name)
    check_has_pixels(dataset, name)
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    if rows * columns > max_pixels:
        raise ImageReadError(
            name, f"image too large: {columns} x {rows} = {rows * columns:,} pixels, over the limit of {max_pixels:,}"
        )
    check_radiograph(dataset, name, any_modality, on_doubt or warn_doubt)
    return dataset, decode_first_frame(pydicom, dataset, name)


def is_grayscale(dataset, pixels: np.ndarray) -> bool:
    return str(dataset.get("PhotometricInterpretation", "")).upper() in GRAYSCALE and pixels.ndim == 2


def dataset_image(dataset, pixels: np.ndarray, name: str, bits: int = 8) -> Image.Image:
    """decode_dicom's pixels as the model reads them: grayscale through the display pipeline, or RGB."""
    pydicom = import_pydicom()
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    if is_grayscale(dataset, pixels):
        return grayscale_image(pydicom, dataset, pixels, bits)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        # pydicom converts YCbCr to RGB while decoding (as_rgb=True), so any 3-sample image is RGB here.
        return Image.fromarray(to_uint8(pixels, bit_depth(dataset)))
    if photometric == "PALETTE COLOR":
        rgb = pydicom.pixels.apply_color_lut(pixels, dataset)
        return Image.fromarray(to_uint8(rgb, 16 if rgb.dtype == np.uint16 else 8))
    raise ImageReadError(name, f"unsupported DICOM photometric interpretation {photometric!r} with shape {pixels.shape}")


def read_header(source):
    """The header (no pixel data) of a DICOM file (path) or its bytes; None for a PNG or JPEG, or a header that
    cannot be read (the image reader names that problem when the image is opened)."""
    from modeling_cliptt5.images.image_source import is_dicom

    in_memory = isinstance(source, (bytes, bytearray, memoryview))
    try:
        if in_memory:
            start, name = bytes(source[:132]), ""
        else:
            with open(source, "rb") as handle:
                start, name = handle.read(132), str(source)
    except OSError:
        return None
    if not is_dicom(start, name):
        return None
    pydicom = import_pydicom()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return pydicom.dcmread(io.BytesIO(bytes(source)) if in_memory else source, stop_before_pixels=True,
                                   force=start[128:132] != b"DICM")
    except Exception:  # noqa: BLE001 - a damaged header
        return None


def parse_dataset(pydicom, data: bytes, name: str):
    """Parse the header; "force" only without the DICM preamble, where a .dcm suffix is all we have to go on."""
    has_preamble = data[128:132] == b"DICM"
    try:
        with warnings.catch_warnings():
            # Forced parsing of a non-DICOM file warns about VRs before it fails; the error below says it all.
            warnings.simplefilter("ignore", UserWarning)
            dataset = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except pydicom.errors.InvalidDicomError as error:
        raise ImageReadError(name, f"not a DICOM file ({error})") from error
    except Exception as error:  # pydicom raises many types on a damaged header (EOFError, ValueError, ...)
        raise ImageReadError(name, f"truncated or corrupt DICOM header ({type(error).__name__}: {error})") from error
    if not has_preamble and "SOPClassUID" not in dataset and "Rows" not in dataset:
        raise ImageReadError(name, "not a DICOM file (no DICM preamble and no DICOM image attributes)")
    return dataset


def warn_doubt(message: str) -> None:
    warnings.warn(message, DicomWarning, stacklevel=4)


def check_radiograph(dataset, name: str, any_modality: bool = False, on_doubt=warn_doubt) -> None:
    """Refuse what is not one chest projection radiograph, naming the file and what it is; warn where unsure.

    Refused: a Modality other than CR, DX or RG (a CT slice, an MR, a nuclear-medicine image...) and multi-frame
    objects (a cine loop or volume). Warned: secondary captures and files without Modality, a body part other
    than the chest (`on_doubt(message)`). `any_modality` turns the refusals into doubts (the first frame is then
    read).
    """
    modality = str(dataset.get("Modality", "") or "").strip().upper()
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    if modality in RADIOGRAPH_MODALITIES:
        pass
    elif modality in UNSTATED_MODALITIES:
        # A secondary capture's Modality still says what was captured: an NM screenshot is refused below.
        capture = " (a secondary capture)" if sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or modality == "SC" else ""
        what = f"no Modality{capture}" if not modality else f"Modality {modality}{capture}"
        on_doubt(f"{name}: DICOM with {what}: read as a chest radiograph; check that it is one")
    else:
        described = f"{modality} ({MODALITY_NAMES[modality]})" if modality in MODALITY_NAMES else modality
        message = f"modality {described} is not a projection radiograph (the model reads CR, DX or RG)"
        if not any_modality:
            raise ImageRefused(name, f"{message}; {ANY_MODALITY_HINT}")
        on_doubt(f"{name}: {message}; read anyway (--any-modality)")
    body_part = str(dataset.get("BodyPartExamined", "") or "").strip().upper()
    if body_part and not any(part in body_part for part in CHEST_BODY_PARTS):
        on_doubt(f"{name}: body part examined is {body_part}, not the chest")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        message = f"DICOM holds {frames} frames (a cine loop or a volume), not a single radiograph"
        if not any_modality:
            raise ImageRefused(name, f"{message}; {ANY_MODALITY_HINT} (its first frame is then read)")
        on_doubt(f"{name}: {message}; using the first frame (--any-modality)")


def check_has_pixels(dataset, name: str) -> None:
    """Refuse objects that hold no image, naming what they are (a structured report, a presentation state...)."""
    if any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return
    sop_class = dataset.get("SOPClassUID")
    if sop_class is None:
        raise ImageReadError(name, "truncated or incomplete DICOM file (no pixel data and no SOP class)")
    what = getattr(sop_class, "name", None) or str(sop_class)
    modality = dataset.get("Modality", "not given")
    raise ImageReadError(name, f"DICOM object has no pixel data (SOP class {what}, modality {modality}): not an image")


def decode_first_frame(pydicom, dataset, name: str) -> np.ndarray:
    """Decode frame 0; for compressed data nobody can decode, name the transfer syntax and the missing plugins."""
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    try:
        return pydicom.pixels.pixel_array(dataset, index=0)
    except Exception as error:
        if transfer_syntax is not None and transfer_syntax.is_compressed:
            decoder = pydicom.pixels.get_decoder(transfer_syntax)
            if not decoder.is_available:
                raise ImageReadError(
                    name,
                    f"cannot decode transfer syntax {transfer_syntax.name} ({transfer_syntax}): no installed "
                    f"pydicom plugin can; {decoder_hint(transfer_syntax)}",
                ) from error
            reason = f"cannot decode {transfer_syntax.name} pixel data"
        else:
            reason = "truncated or corrupt DICOM pixel data"
        detail = " ".join(str(error).split())
        raise ImageReadError(name, f"{reason} ({detail})") from error


def decoder_hint(transfer_syntax) -> str:
    """Which packages decode this syntax: the `dicom` extra installs them (pylibjpeg and its plugins)."""
    name = transfer_syntax.name
    if "2000" in name:  # JPEG 2000 and High-Throughput JPEG 2000
        packages = "pylibjpeg pylibjpeg-openjpeg"
    elif "RLE" in name:
        packages = "pylibjpeg pylibjpeg-rle"
    elif "JPEG" in name:  # Baseline, Extended (12-bit), Lossless, JPEG-LS
        packages = "pylibjpeg pylibjpeg-libjpeg"
    else:
        packages = "python-gdcm"
    return f"pip install 'cliptt5[dicom]' (or: pip install {packages})"


def grayscale_image(pydicom, dataset, pixels: np.ndarray, bits: int) -> Image.Image:
    """Modality LUT, then VOI, then scale to [0, 1] over the VOI output range, inverting MONOCHROME1."""
    values = pydicom.pixels.apply_modality_lut(pixels, dataset)
    low, high = voi_output_range(dataset)
    if low is None:
        low, high = float(values.min()), float(values.max())
    else:
        if dataset.get("VOILUTSequence") and np.array_equal(values, np.round(values)):
            values = values.astype(np.int64)  # a lookup table is indexed by whole values
        values = pydicom.pixels.apply_voi_lut(values, dataset, index=0)
    values = values.astype(np.float64)
    unit = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    if str(dataset.PhotometricInterpretation).upper() == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1: the lowest value is displayed white (PS3.3 C.7.6.3.1.2)
    if bits == 8:
        return Image.fromarray(np.round(unit * 255).astype(np.uint8))  # mode "L"
    return Image.fromarray(np.round(unit * 65535).astype(np.uint16))  # uint16 -> mode "I;16"


def voi_output_range(dataset) -> tuple[float | None, float | None]:
    """The range pydicom's apply_voi_lut maps onto, or (None, None) when the header has no VOI LUT or window.

    Mirrors pydicom.pixels.processing (apply_voi / apply_windowing): a VOI LUT outputs 0..2**bits-1 (bits from
    its LUT Descriptor); a window outputs the stored-value range passed through the rescale, PS3.3 C.11.2.1.2.
    """
    if dataset.get("VOILUTSequence"):
        lut_bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**lut_bits - 1)
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return None, None
    stored_bits = int(dataset.BitsStored)
    if dataset.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(dataset.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(dataset.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**stored_bits - 1)
    else:
        low, high = float(-(2 ** (stored_bits - 1))), float(2 ** (stored_bits - 1) - 1)
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return low, high


def bit_depth(dataset) -> int:
    return int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)))


def to_uint8(pixels: np.ndarray, stored_bits: int) -> np.ndarray:
    """Colour samples to 8 bits by their declared depth (not by the image's own range, which would shift hues)."""
    if pixels.dtype == np.uint8 or stored_bits <= 8:
        return pixels.astype(np.uint8)
    return np.round(pixels.astype(np.float64) * (255.0 / (2**stored_bits - 1))).astype(np.uint8)

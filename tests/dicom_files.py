"""Tiny DICOM files built with pydicom for the image-reading tests (nothing downloaded)."""

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def dicom_dataset(sop_class=DIGITAL_XRAY, transfer_syntax=ExplicitVRLittleEndian):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    return dataset


def grayscale_dicom(pixels, path, photometric="MONOCHROME2", bits_stored=None, signed=False,
                    window=None, rescale=None, frames=1, modality="DX", body_part=None, header=None):
    """Write `pixels` (2-D, or 3-D frames first when frames > 1) as an uncompressed grayscale DICOM file
    (`modality` None: no Modality attribute); `header`: more attributes by keyword (PatientID="123", ...)."""
    pixels = np.asarray(pixels)
    dataset = dicom_dataset()
    for keyword, value in (header or {}).items():
        setattr(dataset, keyword, value)
    if modality is None:
        del dataset.Modality
    else:
        dataset.Modality = modality
    if body_part is not None:
        dataset.BodyPartExamined = body_part
    dataset.Rows, dataset.Columns = pixels.shape[-2:]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    allocated = 8 if pixels.dtype.itemsize == 1 else 16
    dataset.BitsAllocated = allocated
    dataset.BitsStored = bits_stored or allocated
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
    dataset.PixelData = pixels.astype(f"{'<i' if signed else '<u'}{allocated // 8}").tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def rgb_dicom(pixels, path):
    """Write an 8-bit RGB (H, W, 3) array as an uncompressed DICOM file."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    dataset = dicom_dataset()
    dataset.Rows, dataset.Columns = pixels.shape[:2]
    dataset.SamplesPerPixel = 3
    dataset.PlanarConfiguration = 0
    dataset.PhotometricInterpretation = "RGB"
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def structured_report_dicom(path):
    """A Basic Text SR: a valid DICOM object with no pixels."""
    dataset = dicom_dataset(sop_class=BASIC_TEXT_SR)
    dataset.Modality = "SR"
    dataset.ValueType = "CONTAINER"
    dataset.save_as(path, enforce_file_format=True)
    return path


def jpeg_ls_dicom(path):
    """A grayscale file declaring JPEG-LS compression whose codestream is damaged (a marker, then zeros)."""
    dataset = dicom_dataset(transfer_syntax=pydicom.uid.JPEGLSLossless)
    dataset.Rows = dataset.Columns = 8
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 60])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def block_image(dtype=np.uint16, low=100, high=3000, size=(16, 20)):
    """Dark image with a bright block in the top-left corner: shows flips and intensity order at a glance."""
    pixels = np.full(size, low, dtype=dtype)
    pixels[: size[0] // 4, : size[1] // 4] = high
    return pixels

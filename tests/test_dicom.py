"""read_dicom: orientation, intensity order, LUTs and windows applied as a viewer would; bad objects refused."""

import warnings

import numpy as np
import pydicom
import pytest

from dicom_files import block_image, grayscale_dicom, jpeg_ls_dicom, rgb_dicom, structured_report_dicom
from modeling_cliptt5.dicom import read_dicom
from modeling_cliptt5.image_io import ImageReadError, open_image


def corner_and_background(image):
    pixels = np.array(image).astype(np.int64)
    return pixels[0, 0], pixels[-1, -1]


@pytest.mark.parametrize("dtype,bits_stored,high", [(np.uint8, 8, 200), (np.uint16, 12, 4000), (np.uint16, 16, 60000)])
def test_monochrome2_bright_block_stays_bright_top_left(tmp_path, dtype, bits_stored, high):
    pixels = block_image(dtype=dtype, low=10, high=high)
    image = open_image(grayscale_dicom(pixels, tmp_path / "x.dcm", bits_stored=bits_stored))
    assert image.mode == "L" and image.size == (pixels.shape[1], pixels.shape[0])
    assert corner_and_background(image) == (255, 0)  # no window: the image's own range spans 0..255
    bright = np.array(image) == 255
    assert bright[:4, :5].all() and bright.sum() == 4 * 5  # exactly the top-left block, not flipped or transposed


def test_monochrome1_is_inverted_so_high_stored_values_are_dark(tmp_path):
    image = read_dicom(grayscale_dicom(block_image(), tmp_path / "m1.dcm", photometric="MONOCHROME1", bits_stored=12))
    corner, background = corner_and_background(image)
    assert corner == 0 and background == 255


def test_window_maps_center_to_mid_grey_and_clips_outside(tmp_path):
    # 12-bit values 0..4000 in a ramp; window center 1000 width 400 shows only 800..1200.
    ramp = np.linspace(0, 4000, 20 * 16).reshape(16, 20).astype(np.uint16)
    image = read_dicom(grayscale_dicom(ramp, tmp_path / "w.dcm", bits_stored=12, window=(1000, 400)))
    out = np.array(image).astype(np.int64)
    assert (out[ramp < 790] == 0).all() and (out[ramp > 1210] == 255).all()
    inside = (ramp > 850) & (ramp < 1150)
    assert inside.any()
    expected = (ramp[inside] - 800) / 400 * 255  # linear inside the window (PS3.3 C.11.2.1.2)
    assert np.abs(out[inside] - expected).max() <= 2
    assert np.all(np.diff(out.ravel()) >= 0)  # monotone: the ramp order survives


def test_rescale_slope_intercept_applied_before_window(tmp_path):
    # Stored 0..1000 ramp, rescale to HU-like values (slope 2, intercept -1000): -1000..1000.
    ramp = np.linspace(0, 1000, 16 * 20).reshape(16, 20).astype(np.uint16)
    path = grayscale_dicom(ramp, tmp_path / "r.dcm", bits_stored=12, rescale=(2, -1000), window=(0, 200))
    out = np.array(read_dicom(path)).astype(np.int64)
    rescaled = ramp * 2.0 - 1000
    assert (out[rescaled < -110] == 0).all() and (out[rescaled > 110] == 255).all()
    # Without the rescale, every stored value (0..1000) would be above center 0 + 100: all white.
    assert ((out > 0) & (out < 255)).any()
    middle = np.abs(rescaled) < 5
    assert np.abs(out[middle] - 127.5).max() <= 8


def test_signed_pixels_order_kept(tmp_path):
    pixels = block_image(dtype=np.int16, low=-500, high=700)
    image = read_dicom(grayscale_dicom(pixels, tmp_path / "s.dcm", signed=True))
    assert corner_and_background(image) == (255, 0)


def test_sixteen_bit_output_keeps_fine_steps(tmp_path):
    ramp = np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) * 10
    image = read_dicom(grayscale_dicom(ramp, tmp_path / "b.dcm"), bits=16)
    out = np.array(image).astype(np.int64)
    assert image.mode == "I;16" and out.min() == 0 and out.max() == 65535
    assert len(np.unique(out)) == ramp.size  # 320 distinct levels, more than 8 bits could keep in order


def test_rgb_dicom(tmp_path):
    pixels = np.zeros((6, 8, 3), dtype=np.uint8)
    pixels[:2, :2] = (250, 20, 30)
    image = open_image(rgb_dicom(pixels, tmp_path / "c.dcm"))
    assert image.mode == "RGB" and tuple(np.array(image)[0, 0]) == (250, 20, 30) and np.array(image)[-1, -1].sum() == 0


def test_multiframe_takes_first_frame_with_warning(tmp_path):
    frames = np.stack([block_image(), np.flipud(block_image()), block_image()])
    path = grayscale_dicom(frames, tmp_path / "multi.dcm", frames=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_dicom(path)
    assert any("3 frames" in str(w.message) and "first" in str(w.message) for w in caught)
    assert corner_and_background(image) == (255, 0)  # frame 0 has the block top-left; frame 1 would not


def test_dicom_found_by_magic_without_suffix_and_from_bytes(tmp_path):
    path = grayscale_dicom(block_image(), tmp_path / "IM0001", bits_stored=12)
    assert corner_and_background(open_image(path)) == (255, 0)
    assert corner_and_background(open_image(path.read_bytes(), name="upload")) == (255, 0)


def reason_for(source, **kwargs):
    with pytest.raises(ImageReadError) as error:
        open_image(source, **kwargs)
    return error.value


def test_structured_report_refused(tmp_path):
    error = reason_for(structured_report_dicom(tmp_path / "sr.dcm"))
    assert error.file.endswith("sr.dcm") and "no pixel data" in error.reason and "Basic Text SR" in error.reason


def test_zero_byte_dcm(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert "empty file" in reason_for(tmp_path / "empty.dcm").reason


def test_truncated_pixel_data(tmp_path):
    data = grayscale_dicom(block_image(), tmp_path / "t.dcm", bits_stored=12).read_bytes()
    error = reason_for(data[:-60], name="t.dcm")
    assert "truncated" in error.reason and "pixel data" in error.reason


def test_truncated_header(tmp_path):
    data = grayscale_dicom(block_image(), tmp_path / "t.dcm").read_bytes()
    assert "truncated" in reason_for(data[:200], name="t.dcm").reason


def test_text_with_dcm_suffix_is_not_dicom(tmp_path):
    (tmp_path / "notes.dcm").write_text("FINDINGS: normal heart size. " * 20)
    assert "not a DICOM file" in reason_for(tmp_path / "notes.dcm").reason


def test_oversized_dicom_refused_before_decoding(tmp_path):
    error = reason_for(grayscale_dicom(block_image(), tmp_path / "big.dcm"), max_pixels=100)
    assert "too large" in error.reason and "20 x 16" in error.reason


def test_missing_decoder_names_transfer_syntax_and_plugins(tmp_path):
    if pydicom.pixels.get_decoder(pydicom.uid.JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS plugin is installed here")
    error = reason_for(jpeg_ls_dicom(tmp_path / "ls.dcm"))
    assert "JPEG-LS Lossless" in error.reason and "1.2.840.10008.1.2.4.80" in error.reason
    assert "pylibjpeg" in error.reason

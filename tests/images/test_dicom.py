"""read_dicom: orientation, intensity order, LUTs and windows applied as a viewer would; bad objects refused."""

import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import subprocess_env
from dicom_files import block_image, grayscale_dicom, jpeg_ls_dicom, rgb_dicom, structured_report_dicom
from modeling_cliptt5.images.dicom import DicomWarning, read_dicom
from modeling_cliptt5.images.image_io import ImageReadError, open_image


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


def test_multiframe_is_refused_naming_its_frames_unless_any_modality(tmp_path):
    frames = np.stack([block_image(), np.flipud(block_image()), block_image()])
    path = grayscale_dicom(frames, tmp_path / "multi.dcm", frames=3)
    error = reason_for(path)
    assert error.file.endswith("multi.dcm") and "3 frames" in error.reason and "--any-modality" in error.reason
    doubts = []
    image = read_dicom(path, any_modality=True, on_doubt=doubts.append)
    assert len(doubts) == 1 and "3 frames" in doubts[0] and "first frame" in doubts[0]
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


def test_missing_decoder_names_the_syntax_and_the_package_that_decodes_it(tmp_path):
    # The plugins are installed here (the dicom extra): a child process that cannot import them is a machine
    # without them. (JPEG 2000 would still decode there: Pillow reads it.)
    script = (
        "import sys\n"
        "for module in ('libjpeg', 'pylibjpeg', 'openjpeg', 'rle'): sys.modules[module] = None\n"
        "from pydicom.data import get_testdata_file\n"
        "from modeling_cliptt5.images.image_io import ImageReadError, open_image\n"
        "try:\n"
        "    open_image(get_testdata_file(sys.argv[1]), any_modality=True, on_doubt=lambda message: None)\n"
        "except ImageReadError as error:\n"
        "    print(error.reason)\n"
    )
    for name, syntax, packages in (("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless", "pylibjpeg-libjpeg"),
                                   ("SC_rgb_jpeg_gdcm.dcm", "JPEG Lossless", "pylibjpeg-libjpeg")):
        reason = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True,
                                env=subprocess_env(), check=True).stdout
        assert syntax in reason and "no installed pydicom plugin" in reason, reason
        assert "cliptt5[dicom]" in reason and packages in reason, reason


# pydicom's own test files, read from the installed package: a CT slice, an MR, a nuclear-medicine image.
@pytest.mark.parametrize("name, modality", [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR"), ("JPEG2000.dcm", "NM")])
def test_other_modalities_are_refused_naming_file_and_modality(name, modality):
    path = get_testdata_file(name)
    error = reason_for(path)
    assert error.file == path and f"modality {modality} (" in error.reason and "not a projection radiograph" in error.reason
    assert "--any-modality" in error.reason
    doubts = []
    image = open_image(path, any_modality=True, on_doubt=doubts.append)
    assert image.size[0] > 0 and any(f"modality {modality}" in doubt for doubt in doubts)


def test_radiographs_pass_secondary_captures_and_unlabelled_files_pass_with_a_doubt(tmp_path):
    for modality in ("CR", "DX", "RG"):
        path = grayscale_dicom(block_image(), tmp_path / f"{modality}.dcm", modality=modality)
        doubts = []
        open_image(path, on_doubt=doubts.append)
        assert doubts == [], modality
    doubts = []
    open_image(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"), on_doubt=doubts.append)  # a secondary capture, OT
    assert len(doubts) == 1 and "secondary capture" in doubts[0]
    doubts = []
    open_image(grayscale_dicom(block_image(), tmp_path / "none.dcm", modality=None), on_doubt=doubts.append)
    assert len(doubts) == 1 and "none.dcm" in doubts[0] and "no Modality" in doubts[0]
    doubts = []
    open_image(grayscale_dicom(block_image(), tmp_path / "abdomen.dcm", body_part="ABDOMEN"), on_doubt=doubts.append)
    assert len(doubts) == 1 and "ABDOMEN" in doubts[0]
    doubts = []
    open_image(grayscale_dicom(block_image(), tmp_path / "chest.dcm", body_part="CHEST"), on_doubt=doubts.append)
    assert doubts == []


def test_a_doubt_is_a_warning_when_nobody_listens(tmp_path):
    with pytest.warns(DicomWarning, match="no Modality"):
        open_image(grayscale_dicom(block_image(), tmp_path / "none.dcm", modality=None))


def decoded(name, bits=8):
    return np.asarray(read_dicom(get_testdata_file(name), bits=bits, any_modality=True,
                                 on_doubt=lambda message: None)).astype(np.float64)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
def test_lossless_syntaxes_give_the_uncompressed_pixels(name):
    # JPEG-LS, JPEG 2000 and RLE copies of pydicom's uncompressed MR_small.dcm, through the whole display path.
    assert np.array_equal(decoded(name, bits=16), decoded("MR_small.dcm", bits=16))


def test_jpeg_lossless_process_14_gives_the_rle_copys_pixels():
    assert np.array_equal(decoded("SC_rgb_jpeg_gdcm.dcm"), decoded("SC_rgb_rle.dcm"))


def test_jpeg_baseline_is_within_a_few_grey_levels_of_the_lossless_copy():
    difference = np.abs(decoded("SC_rgb_jpeg_dcmtk.dcm") - decoded("SC_rgb_rle.dcm"))
    assert difference.mean() < 2 and difference.max() <= 16


def test_12_bit_jpeg_extended_keeps_its_depth_and_shows_the_same_scan_as_its_jpeg_2000_copy():
    dataset = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    stored = pydicom.pixels.pixel_array(dataset)
    assert dataset.BitsStored == 12 and stored.max() > 255  # 12-bit values, not cut to 8
    extended, jpeg_2000 = decoded("JPGExtended.dcm", bits=16), decoded("JPEG2000.dcm", bits=16)
    assert np.corrcoef(extended.ravel(), jpeg_2000.ravel())[0, 1] > 0.9


def test_jpeg_ls_near_lossless_decodes():
    image = decoded("JPEGLSNearLossless_08.dcm")
    assert image.shape == (45, 10) and image.std() > 10


def test_damaged_compressed_data_names_the_syntax(tmp_path):
    error = reason_for(jpeg_ls_dicom(tmp_path / "ls.dcm"))
    assert error.file.endswith("ls.dcm") and "cannot decode JPEG-LS Lossless" in error.reason

"""What the viewer is given of an image (images/display.py): the stored values at full depth with the rescale to
modality units, the header's windows, presets from the image's own values, and one decode for model and viewer."""

import numpy as np
import pytest
from PIL import Image

from dicom_files import grayscale_dicom
from modeling_cliptt5.images.display import MAX_VIEW_PIXELS, array_display, open_for_display
from modeling_cliptt5.images.image_io import open_image

pytest.importorskip("pydicom")


def modality(display):
    return display.offset + display.slope * display.values.astype(np.float64)


def test_a_dicom_keeps_its_stored_values_in_modality_units_and_its_header_windows(tmp_path):
    stored = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 30 + 7  # 7 .. 3577: 12 bits
    path = grayscale_dicom(stored, tmp_path / "a.dcm", bits_stored=12, window=([600, 2000], [300, 1500]),
                           rescale=(0.5, -100), header={"WindowCenterWidthExplanation": ["LUNG", "WIDE"],
                                                        "RescaleType": "OD"})
    image, display = open_for_display(path, "a.dcm")
    assert np.array_equal(modality(display), stored * 0.5 - 100)
    assert display.header_windows == [("LUNG", 600.0, 300.0), ("WIDE", 2000.0, 1500.0)]
    assert display.units == "OD" and display.default_window() == "header0"
    assert display.windows()["full"][1:] == (0.5 * (7 + 3577) / 2 - 100, 0.5 * (3577 - 7))
    # the model's image is the one open_image gives, from the same decode
    assert np.array_equal(np.asarray(image), np.asarray(open_image(path, "a.dcm")))


def test_a_single_window_and_no_window(tmp_path):
    stored = np.full((8, 8), 1000, dtype=np.uint16)
    stored[0, 0] = 3000
    one = grayscale_dicom(stored, tmp_path / "one.dcm", bits_stored=12, window=(1024, 512))
    none = grayscale_dicom(stored, tmp_path / "none.dcm", bits_stored=12)
    assert open_for_display(one, "one.dcm")[1].header_windows == [("", 1024.0, 512.0)]
    display = open_for_display(none, "none.dcm")[1]
    assert display.header_windows == [] and display.default_window() == "full"


def test_a_voi_lut_becomes_the_linear_window_across_its_rise(tmp_path):
    from pydicom.dataset import Dataset

    path = grayscale_dicom(np.arange(64, dtype=np.uint16).reshape(8, 8) * 64, tmp_path / "lut.dcm", bits_stored=12)
    import pydicom

    dataset = pydicom.dcmread(path)
    item = Dataset()
    table = np.clip((np.arange(4096) - 1000) * 4, 0, 4095).astype(np.uint16)  # rises from 1000 to 2023
    item.LUTDescriptor, item.LUTExplanation = [4096, 0, 12], "NORMAL"
    item.LUTData = table.astype("<u2").tobytes()
    dataset.VOILUTSequence = [item]
    dataset.save_as(path)
    ((name, center, width),) = open_for_display(path, "lut.dcm")[1].header_windows
    low, high = 1000 + np.ceil(0.02 * 4095 / 4), 1000 + np.ceil(0.98 * 4095 / 4)  # 2% and 98% of its output
    assert name == "NORMAL (as a linear window)"
    assert (center, width) == ((low + high) / 2, high - low)


def test_presets_follow_brightness_so_monochrome1_takes_them_from_the_other_end(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, (200, 200)).astype(np.uint16)
    normal = open_for_display(grayscale_dicom(stored, tmp_path / "n.dcm", bits_stored=12), "n.dcm")[1].windows()
    inverted = open_for_display(grayscale_dicom(stored, tmp_path / "i.dcm", bits_stored=12,
                                                photometric="MONOCHROME1"), "i.dcm")[1].windows()
    # MONOCHROME2: the lung preset is low values; MONOCHROME1 displays low values bright, so its lung preset sits
    # at the high values, mirrored about the middle of the (uniform) range.
    assert normal["lung"][1] < 2048 < inverted["lung"][1]
    assert normal["lung"][1] + inverted["lung"][1] == pytest.approx(4095, rel=0.02)
    assert normal["bone"][1] > normal["mediastinum"][1] > normal["lung"][1]


def test_png_values_as_stored_8_and_16_bit_and_grey_rgb_as_one_channel(tmp_path):
    eight = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(eight).save(tmp_path / "8.png")
    Image.fromarray(np.stack([eight] * 3, axis=-1)).save(tmp_path / "rgb.png")
    sixteen = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 200 + 5)
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    for name, expected in (("8.png", eight), ("rgb.png", eight), ("16.png", sixteen)):
        display = open_for_display(tmp_path / name)[1]
        assert np.array_equal(modality(display), expected), name
    assert open_for_display(tmp_path / "8.png")[1].values.dtype == np.uint8  # half the bytes to the browser


def test_very_large_images_are_block_averaged_to_fit():
    side = int(np.sqrt(MAX_VIEW_PIXELS)) + 10
    values = np.zeros((side, side), dtype=np.uint16)
    values[:, 1::2] = 1000
    display = array_display(values)
    assert display.downscale == 2 and display.values.size <= MAX_VIEW_PIXELS
    assert np.all(modality(display) == 500)  # each 2 x 2 block averaged

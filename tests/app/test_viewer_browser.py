"""The full-depth viewer in a real browser (headless Debian Chromium via Playwright) against `python app.py`: a 12-bit
DICOM with a rescale and two header windows is shown at its own resolution, windowed in the modality's units (the
grey on screen of a known stored value and window, as DICOM's LINEAR window function gives it), with the header's
windows and the presets one key away, drag for window/level, the wheel zooming about the pointer, drag to pan,
1:1 and reset, and the reader's window kept through a draft; then a study whose lateral is dropped first stands, and is
drafted, frontal first by the views its headers name."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from app_harness import browser_missing_reason, draft, open_browser, serve_app, upload_study
from dicom_files import block_image, grayscale_dicom

MISSING = browser_missing_reason()
IN_CI = os.environ.get("CI") == "true"
pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=f"browser test skipped: {MISSING}")

ROWS, COLUMNS = 1300, 1100  # larger than a 1024 px preview: the viewer must keep the stored resolution
SLOPE, INTERCEPT = 2.0, -1000.0  # modality value = 2 * stored - 1000
CALIBRATION = (slice(100, 300), slice(100, 400)), 1200  # a uniform block of stored value 1200 (modality 1400)
HEADER_WINDOWS = ((1400.0, 800.0, "CALIBRATION"), (3000.0, 2000.0, "SOFT"))
# Bands of the image, dark to bright (MONOCHROME2): (rows, stored low, stored high); modality 0-800, 2000-3400,
# 4600-5400.
BANDS = {"lung": (slice(0, 520), 500, 900), "mediastinum": (slice(520, 1040), 1500, 2200),
         "bone": (slice(1040, 1300), 2800, 3200)}


def dicom_linear(x, center, width):
    """DICOM PS3.3 C.11.2.1.2.1, the LINEAR VOI function onto 0..255, written here from the standard."""
    if x <= center - 0.5 - (width - 1) / 2:
        return 0
    if x > center - 0.5 + (width - 1) / 2:
        return 255
    return ((x - (center - 0.5)) / (width - 1) + 0.5) * 255


def viewer_test_dicom(path):
    rng = np.random.default_rng(0)
    stored = np.zeros((ROWS, COLUMNS), dtype=np.uint16)
    for rows, low, high in BANDS.values():
        stored[rows] = rng.integers(low, high + 1, (rows.stop - rows.start, COLUMNS))
    stored[CALIBRATION[0]] = CALIBRATION[1]
    header = {"WindowCenterWidthExplanation": [name for *_, name in HEADER_WINDOWS]}
    window = ([center for center, *_ in HEADER_WINDOWS], [width for _, width, _ in HEADER_WINDOWS])
    return grayscale_dicom(stored, path, bits_stored=12, window=window, rescale=(SLOPE, INTERCEPT), header=header)


class Viewer:
    """The page's first image: where it is on screen, what grey it shows, and the viewer's fields and keys."""

    def __init__(self, page):
        self.page = page
        self.canvas = page.locator("#study-viewer canvas.cxr-canvas").first
        self.frame = page.locator("#study-viewer .cxr-frame").first

    def box(self):
        return self.canvas.evaluate("c => { const b = c.getBoundingClientRect(); return [b.left, b.top, b.width, "
                                    "b.height, c.width, c.height]; }")

    def to_screen(self, column, row):
        left, top, width, height, columns, rows = self.box()
        return left + (column + 0.5) * width / columns, top + (row + 0.5) * height / rows

    def to_image(self, x, y):
        left, top, width, height, columns, rows = self.box()
        return (x - left) * columns / width - 0.5, (y - top) * rows / height - 0.5

    def screen(self):
        self.page.wait_for_timeout(100)  # one frame for a scheduled render to land
        return np.array(Image.open(io.BytesIO(self.page.screenshot())).convert("L"), dtype=float)

    def grey_at(self, column, row):
        x, y = self.to_screen(column, row)
        return self.screen()[int(y), int(x)]

    def band_mean(self, rows):
        """Mean screen grey over a band's rows (its inner part, where no neighbour blends in)."""
        screen = self.screen()
        (_, top), (_, bottom) = self.to_screen(0, rows.start + 20), self.to_screen(0, rows.stop - 20)
        (left, _), (right, _) = self.to_screen(450, 0), self.to_screen(COLUMNS - 20, 0)
        return screen[int(top):int(bottom), int(left):int(right)].mean()

    def window(self):
        values = [self.page.locator(f"#study-viewer [data-control={name}]").input_value() for name in ("level",
                                                                                                   "width")]
        return tuple(float(value) for value in values)

    def key(self, key):
        self.frame.focus()
        self.page.keyboard.press(key)


def test_the_viewer_windows_the_stored_values_in_modality_units(tiny_release_dir, tmp_path):
    if MISSING:
        pytest.fail(f"the browser test must run in CI: {MISSING}", pytrace=False)
    from playwright.sync_api import sync_playwright

    dicom = viewer_test_dicom(tmp_path / "frontal.dcm")
    (block_rows, block_columns), block_stored = CALIBRATION
    block = ((block_columns.start + block_columns.stop) // 2, (block_rows.start + block_rows.stop) // 2)
    block_value = SLOPE * block_stored + INTERCEPT
    with (serve_app(tiny_release_dir, threads=1) as url, sync_playwright() as playwright,
          open_browser(playwright, viewport=(1440, 900)) as browser):
        page = browser.new_page()
        page.goto(url)
        upload_study(page, [dicom])
        viewer = Viewer(page)
        assert viewer.box()[4:] == [COLUMNS, ROWS]  # the stored resolution

        # The header's first window, in modality units: the block's grey is the LINEAR function's.
        center, width, _ = HEADER_WINDOWS[0]
        assert viewer.window() == (center, width)
        assert viewer.grey_at(*block) == pytest.approx(dicom_linear(block_value, center, width), abs=1)

        # A typed window.
        viewer.frame.hover()
        page.locator("#study-viewer [data-control=level]").fill("1600")
        page.locator("#study-viewer [data-control=width]").fill("1000")
        assert viewer.grey_at(*block) == pytest.approx(dicom_linear(block_value, 1600, 1000), abs=1)

        # Presets: each shows its band unclipped (mid greys), the bands beyond it clipped.
        for key, shown, black, white in (("l", "lung", (), ("bone",)), ("m", "mediastinum", ("lung",), ()),
                                         ("b", "bone", ("lung",), ())):
            viewer.key(key)
            assert 20 < viewer.band_mean(BANDS[shown][0]) < 235, key
            for band in black:
                assert viewer.band_mean(BANDS[band][0]) < 10, (key, band)
            for band in white:
                assert viewer.band_mean(BANDS[band][0]) > 245, (key, band)
        page.locator("#study-viewer [data-window=full]").click()
        assert viewer.window() == (2700.0, 5400.0)  # modality 0 .. 5400 (stored 500 .. 3200)
        viewer.key("h")  # back to the header's window
        assert viewer.window() == (center, width)

        # Drag right and down: a wider window and a higher level, shown as the LINEAR function gives them.
        x, y = viewer.to_screen(*block)
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 60, y + 40, steps=6)
        page.mouse.up()
        level, dragged_width = viewer.window()
        assert dragged_width > width and level > center
        assert viewer.grey_at(*block) == pytest.approx(dicom_linear(block_value, level, dragged_width), abs=1)

        # The wheel zooms about the pointer: the image point under it stays under it.
        x, y = viewer.to_screen(800, 900)
        page.mouse.move(x, y)
        scale = viewer.box()[2] / COLUMNS
        page.mouse.wheel(0, -300)
        page.wait_for_timeout(100)
        assert viewer.box()[2] / COLUMNS == pytest.approx(scale * np.exp(0.6), rel=0.01)
        assert viewer.to_image(x, y) == pytest.approx((800, 900), abs=1)

        # Shift+drag pans by the pointer's move.
        left, top = viewer.box()[:2]
        page.keyboard.down("Shift")
        page.mouse.down()
        page.mouse.move(x + 50, y + 30, steps=5)
        page.mouse.up()
        page.keyboard.up("Shift")
        assert viewer.box()[:2] == pytest.approx([left + 50, top + 30], abs=0.5)
        assert viewer.window() == (level, dragged_width)  # panning leaves the window alone

        # 1:1: one stored pixel per screen pixel.
        viewer.key("1")
        assert viewer.box()[2:4] == pytest.approx([COLUMNS, ROWS], abs=0.5)

        # The reader's window survives a draft, which re-renders the viewer without sending the values again: the
        # page shows them from what it holds.
        page.evaluate("document.querySelector('#study-viewer canvas').dataset.before = '1'")
        draft(page)
        page.wait_for_function("() => { const c = document.querySelector('#study-viewer canvas.cxr-canvas');"
                               " return c && !c.dataset.before && c.dataset.ready; }")  # re-rendered, drawn
        assert viewer.window() == (level, dragged_width)
        page.locator("#study-viewer [data-action=fit]").click()
        assert viewer.grey_at(*block) == pytest.approx(dicom_linear(block_value, level, dragged_width), abs=1)

        # Reset: the header's window, the whole image in its frame.
        page.locator("#study-viewer [data-action=reset]").click()
        assert viewer.window() == (center, width)
        frame = viewer.frame.bounding_box()
        left, top, shown_width, shown_height = viewer.box()[:4]
        assert left >= frame["x"] - 0.5 and top >= frame["y"] - 0.5
        assert max(shown_width - frame["width"], shown_height - frame["height"]) < 0.5
        assert min(frame["width"] - shown_width, frame["height"] - shown_height) < 0.5  # fills one side

        # Views by their header: a lateral dropped first still stands second, and the one-view model reads the frontal.
        page.locator('#study-files button[aria-label="Clear"]').click()
        page.wait_for_function("!document.querySelector('#study-viewer canvas.cxr-canvas')")
        lateral = grayscale_dicom(block_image(size=(64, 80)), tmp_path / "side.dcm", header={"ViewPosition": "LL"})
        frontal = grayscale_dicom(block_image(size=(80, 64)), tmp_path / "front.dcm", header={"ViewPosition": "PA"})
        upload_study(page, [lateral, frontal])
        captions = page.locator("#study-viewer figcaption").all_inner_texts()
        assert captions[0].startswith("Image 1: front.dcm (PA)") and captions[1].startswith("Image 2: side.dcm (LL)")
        draft(page)
        assert "not read by the model: side.dcm" in page.locator("#study-messages").inner_text()

        # PNGs name no view: the reader chooses the frontal, and the viewer and the model follow the choice.
        page.locator('#study-files button[aria-label="Clear"]').click()
        page.wait_for_function("!document.querySelector('#study-viewer canvas.cxr-canvas')")
        lateral, frontal = tmp_path / "lateral.png", tmp_path / "frontal.png"
        Image.fromarray(block_image(size=(64, 80))).save(lateral)
        Image.fromarray(block_image(size=(80, 64))).save(frontal)
        upload_study(page, [lateral, frontal])
        assert page.locator("#frontal-choice input").input_value() == "lateral.png"  # dropped first: taken first
        page.locator("#frontal-choice input").click()
        page.get_by_role("option", name="frontal.png").click()
        page.wait_for_function("document.querySelector('#study-viewer figcaption').innerText"
                               ".startsWith('Image 1: frontal.png')")
        draft(page)
        assert "not read by the model: lateral.png" in page.locator("#study-messages").inner_text()

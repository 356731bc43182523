"""The prior study beside the study in a real browser (headless Debian Chromium via Playwright) against `python
app.py` with a release that reads priors: another patient's prior is refused with both named and never shown; an
earlier study of the patient stands beside the study's image, linked: a drag on one image moves both windows (each by
the same share of its own values' range), a pan or the wheel on one moves both views; the draft reads the prior and
the export names it."""

import os

import numpy as np
import pytest

from app_harness import browser_missing_reason, draft, export, open_browser, serve_app, upload_study
from dicom_files import grayscale_dicom

MISSING = browser_missing_reason()
IN_CI = os.environ.get("CI") == "true"
pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=f"browser test skipped: {MISSING}")

PATIENT = {"PatientID": "P-1001", "StudyTime": "101500", "ViewPosition": "PA"}


def radiograph(path, seed, bits, accession, date, study_uid, **header):
    """A DICOM film of PATIENT of `bits` stored bits: a prior and a study of other ranges, as on other machines."""
    high = 2 ** bits - 1
    pixels = np.random.default_rng(seed).integers(0, high + 1, (300, 240)).astype(np.uint16 if bits > 8 else np.uint8)
    return grayscale_dicom(pixels, path, bits_stored=bits, header={
        **PATIENT, "AccessionNumber": accession, "StudyDate": date, "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": f"{study_uid}.1", **header})


STATE = """c => ({center: Number(c.dataset.center), width: Number(c.dataset.width), scale: Number(c.dataset.scale),
                 transform: c.parentElement.style.transform,
                 range: JSON.parse(c.dataset.windows).full[2]})"""


def test_the_prior_stands_linked_beside_the_study_and_the_draft_reads_it(prior_release_dir, tmp_path):
    if MISSING:
        pytest.fail(f"the browser test must run in CI: {MISSING}", pytrace=False)
    from playwright.sync_api import sync_playwright

    study = radiograph(tmp_path / "now.dcm", 1, 12, "ACC-NOW", "20240301", "1.2.826.0.1.3680043.8.498.81")
    prior = radiograph(tmp_path / "before.dcm", 2, 8, "ACC-BEFORE", "20230105", "1.2.826.0.1.3680043.8.498.82")
    other = radiograph(tmp_path / "other.dcm", 3, 8, "ACC-OTHER", "20230105", "1.2.826.0.1.3680043.8.498.83",
                       PatientID="P-9999")
    with (serve_app(prior_release_dir, threads=1) as url, sync_playwright() as playwright,
          open_browser(playwright, viewport=(1440, 1000)) as browser):
        page = browser.new_page()
        page.goto(url)
        upload_study(page, [study])
        page.locator("#prior-study").get_by_text("Prior study of this patient").click()  # closed until wanted
        prior_input = page.locator("#prior-files input[type=file]")

        # another patient's study: refused, both named, never beside the study
        prior_input.set_input_files([str(other)])
        refusal = page.locator("#prior-messages .problem")
        refusal.wait_for()
        assert "the prior ACC-OTHER is of patient 'P-9999', the study ACC-NOW of patient 'P-1001'" in \
            refusal.inner_text()
        assert page.locator("#study-viewer canvas.cxr-canvas").count() == 1
        page.locator('#prior-files button[aria-label="Clear"]').click()
        page.wait_for_function("!document.querySelector('#prior-messages .problem')")

        # the patient's earlier study: beside the study's image, framed as the prior
        prior_input.set_input_files([str(prior)])
        shown = page.locator("#study-viewer .cxr-prior canvas.cxr-canvas[data-ready]")
        shown.wait_for()
        caption = page.locator("#study-viewer .cxr-prior figcaption").inner_text()
        assert "Prior 1: before.dcm (PA), 2023-01-05" in caption
        images = [page.locator("#study-viewer canvas.cxr-canvas").first, shown]
        page.locator("#study-viewer .cxr-images").scroll_into_view_if_needed()

        def states():
            page.wait_for_timeout(150)  # a frame for the scheduled renders
            return [image.evaluate(STATE) for image in images]

        # a window/level drag on the study's image: both windows widen and rise, each by the same share of its range
        before = states()
        box = images[0].bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 64, y + 32, steps=4)
        page.mouse.up()
        after = states()
        for old, new in zip(before, after):
            assert new["width"] - old["width"] == pytest.approx(64 * old["range"] / 512, rel=1e-3)
            assert new["center"] - old["center"] == pytest.approx(32 * old["range"] / 512, rel=1e-3)
        assert before[0]["range"] > 10 * before[1]["range"]  # 12 bits beside 8: not the same values

        # Shift+drag on the prior pans both views; the wheel on the study's image zooms both
        box = images[1].bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.keyboard.down("Shift")
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 40, y + 25, steps=4)
        page.mouse.up()
        page.keyboard.up("Shift")
        panned = states()
        assert all(new["transform"] != old["transform"] for old, new in zip(after, panned))
        assert [new["center"] for new in panned] == [old["center"] for old in after]  # a pan leaves the windows
        box = images[0].bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -300)
        zoomed = states()
        for old, new in zip(panned, zoomed):
            assert new["scale"] == pytest.approx(old["scale"] * np.exp(0.6), rel=0.01)

        # the prior's report, then the draft against the prior, and the export names it
        page.locator("#prior-report textarea").fill("FINDINGS: Small left pleural effusion. IMPRESSION: Effusion.")
        page.locator("#prior-report textarea").blur()
        page.wait_for_timeout(500)  # the report reaches the study before the draft reads it
        draft(page)
        assert "and the prior ACC-BEFORE" in page.locator("#draft-info").inner_text()
        text = export(page, kinds=("txt",))["txt"][1]
        assert "Comparison: ACC-BEFORE (2023-01-05), images and report read" in text.splitlines()

"""The page as a radiologist uses it across patients, in a real browser (headless Debian Chromium via Playwright)
against `python app.py`: whose study is shown, what joins it, a new study after Clear starts from nothing, a
redraft keeps the reader's edit, exports are named by study and time and refused when empty or stale; and under
load: a refused draft says "busy, try again" and the page stays usable, a draft of a replaced study never lands,
the server listens on 127.0.0.1 only."""

import json
import os
import re
import time

import numpy as np
import pytest
from PIL import Image

from app_harness import (
    WATCH_DRAFT_INFO, browser_missing_reason, draft, export, listening_addresses, open_browser, serve_app,
    slow_release, speaking_release, upload_study,
)
from dicom_files import block_image, grayscale_dicom

MISSING = browser_missing_reason()
IN_CI = os.environ.get("CI") == "true"
pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=f"browser test skipped: {MISSING}")

PATIENT = {"PatientID": "P-1001", "PatientName": "Doe^Jane", "AccessionNumber": "ACC-1", "StudyDate": "20261130",
           "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.11"}
NEXT_PATIENT = {"PatientID": "P-2002", "PatientName": "Roe^Richard", "AccessionNumber": "ACC-2",
                "StudyDate": "20261201", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.22"}


def require_browser():
    if MISSING:
        pytest.fail(f"the browser test must run in CI: {MISSING}", pytrace=False)


def radiograph(path, patient, view, seed):
    pixels = block_image(size=(64, 80)) if seed == 0 else np.random.default_rng(seed).integers(
        0, 256, (64, 80), dtype=np.uint8)
    return grayscale_dicom(pixels, path, header={**patient, "ViewPosition": view})


def png(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (96, 80), dtype=np.uint8)).save(path)
    return path


def add_files(page, paths):
    """The reader adds files to the current study (the file list's upload button)."""
    page.locator("#study-files input[type=file]").set_input_files([str(path) for path in paths])


def clear_study(page):
    page.locator('#study-files button[aria-label="Clear"]').click()
    page.wait_for_function("!document.querySelector('#study-viewer canvas.cxr-canvas')")


def text_of(page, selector):
    return page.locator(selector).inner_text().strip()


def wait_for_text(page, selector, pattern, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while not re.search(pattern, text_of(page, selector)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} never matched {pattern!r}: {text_of(page, selector)!r}")
        time.sleep(0.1)
    return text_of(page, selector)


def wait_for_log(path, text, timeout_s=60):
    """Waits until the server's log holds `text` (the server flushes each line)."""
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text():
        assert time.monotonic() < deadline, \
            f"{text!r} not in the server's log after {timeout_s} s:\n{path.read_text()[-2000:]}"
        time.sleep(0.05)


def test_a_new_study_starts_from_nothing_and_another_patients_file_never_joins_it(tiny_release_dir, tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    release = speaking_release(tiny_release_dir, tmp_path / "release")
    frontal = radiograph(tmp_path / "pa.dcm", PATIENT, "PA", 0)
    lateral = radiograph(tmp_path / "ll.dcm", PATIENT, "LL", 1)
    stranger = radiograph(tmp_path / "stranger.dcm", NEXT_PATIENT, "PA", 2)
    next_frontal = radiograph(tmp_path / "next.dcm", NEXT_PATIENT, "AP", 3)
    server_log = tmp_path / "server.log"
    with (serve_app(release, threads=1, log_path=server_log) as url, sync_playwright() as playwright,
          open_browser(playwright) as browser):
        page = browser.new_page()
        page.goto(url)

        # The study's identity from its header stands above the image; the name only with --show-patient-name.
        upload_study(page, [frontal])
        identity = text_of(page, "#study-identity")
        for expected in ("Patient ID P-1001", "Accession ACC-1", "Study date 2026-11-30", "Views 1: PA"):
            assert expected in identity, identity
        assert "Doe" not in page.content()
        assert "(PA)" in text_of(page, "#study-viewer")

        findings = draft(page)
        assert findings
        page.locator("#findings textarea").fill("Large right pneumothorax.")
        page.locator("#critical .critical-alert").wait_for()
        files = export(page)
        (text_name, text), (json_name, record) = files["txt"], files["json"]
        assert re.fullmatch(r"cxr_report_ACC-1_20\d{6}-\d{6}\.txt", text_name), text_name
        assert json_name == text_name.replace(".txt", ".json")
        assert re.match(r"DRAFT - NOT SIGNED: for review only, not a final report.\nPatient ID: P-1001\n"
                        r"Accession: ACC-1\nStudy date: 2026-11-30\nViews: PA\n"
                        r"Drafted by: release \(revision sha256:[0-9a-f]{16}\)\n"
                        # this test's file names no series: no UIDs to cite, so the file by its content hash
                        r"Images read by the model: 1: PA \(file SHA-1 [0-9a-f]{40}\)\nExported: ", text), text
        assert "FINDINGS: Large right pneumothorax." in text
        assert json.loads(record)["study"]["patient_id"] == "P-1001"

        # Another patient's file is not added; the reader's lateral of the same study is, and says so.
        add_files(page, [stranger])
        messages = wait_for_text(page, "#study-messages", r"Not added")
        assert "stranger.dcm is of another patient or study, patient ID P-2002 (this study: P-1001)" in messages
        assert page.locator("#study-viewer canvas.cxr-canvas").count() == 1
        add_files(page, [lateral])
        assert "Added ll.dcm to this study." in wait_for_text(page, "#study-messages", r"Added ll\.dcm")
        assert page.locator("#study-viewer canvas.cxr-canvas").count() == 2
        assert "Views 1: PA, 2: LL" in text_of(page, "#study-identity")
        # The draft was made from one image: exporting it now is refused, and the page says why.
        assert "The images changed after this draft" in text_of(page, "#draft-info")
        page.click("#export-button")
        assert "Nothing exported: The images changed after this draft" in wait_for_text(
            page, "#export-status", r"Nothing exported")

        # Drafting again over the reader's edit keeps the edit as a version to go back to.
        page.locator("#findings textarea").fill("Edited by the reader: large right pneumothorax.")
        redrafted = draft(page)
        assert redrafted != "Edited by the reader: large right pneumothorax."
        assert "Earlier text is kept" in text_of(page, "#draft-info")
        assert page.locator("#report-versions input").input_value().startswith("Your text before the draft at")
        page.click("#restore-button")
        page.wait_for_function("document.querySelector('#findings textarea').value.startsWith('Edited by the reader')")

        # Clear, then the next patient: nothing of the previous study survives.
        page.locator("#findings textarea").fill("Large right pneumothorax.")
        page.locator("#critical .critical-alert").wait_for()
        clear_study(page)
        upload_study(page, [next_frontal])
        identity = wait_for_text(page, "#study-identity", r"P-2002")
        assert "Accession ACC-2" in identity and "P-1001" not in identity
        assert page.locator("#findings textarea").input_value() == ""
        assert page.locator("#impression textarea").input_value() == ""
        assert text_of(page, "#draft-info") == "" and page.locator("#critical .critical-alert").count() == 0
        assert page.locator("#exported-files a").count() == 0 and text_of(page, "#export-status") == ""
        assert page.locator("#report-versions").is_hidden()
        assert "pneumothorax" not in text_of(page, "#sentence-tags").lower()
        assert page.locator("#study-viewer canvas.cxr-canvas").count() == 1

        # An empty report is not exported silently.
        page.click("#export-button")
        assert "Nothing exported: the report is empty" in wait_for_text(page, "#export-status", r"Nothing exported")
        assert page.locator("#exported-files a").count() == 0

        # Uploads leave no empty temporary files behind (gradio's File makes one per event that reads the list).
        (folder,) = re.findall(r"kept in (\S+) \(this user only\)", server_log.read_text())
        sizes = {name: os.path.getsize(os.path.join(parent, name))
                 for parent, _, names in os.walk(folder) for name in names}
        assert sizes and all(size > 0 for size in sizes.values()), sizes
        page.screenshot(path=tmp_path / "study.png", full_page=True)


def test_under_load_a_refused_draft_says_busy_and_a_replaced_studys_draft_never_lands(tiny_release_dir,
                                                                                        tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    release = slow_release(tiny_release_dir, tmp_path / "release")  # ~12 s a draft
    images = [png(tmp_path / f"study{index}.png", index) for index in range(4)]
    server_log = tmp_path / "server.log"
    with (serve_app(release, threads=1, log_path=server_log, app_args=["--max-waiting", "1"]) as url,
          sync_playwright() as playwright, open_browser(playwright) as browser):
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}  # this computer only

        first, second, third = (browser.new_page() for _ in range(3))
        for page, image in ((first, images[0]), (second, images[1]), (third, images[2])):
            page.goto(url)
            upload_study(page, [image])

        # The first reader asks for a draft and clears the study before it is done (then opens the next patient's);
        # the second waits its turn; the third finds one drafting and one waiting: refused at once.
        first.click("#draft-button")
        wait_for_text(first, "#draft-info", r"Drafting")
        wait_for_log(server_log, "A draft is being drafted.")  # the model has the first's study, not an empty one
        first.locator('#study-files button[aria-label="Clear"]').click()
        second.evaluate(WATCH_DRAFT_INFO)
        second.click("#draft-button")
        wait_for_log(server_log, "A draft waits for the model")  # the second is in line behind the first
        third.click("#draft-button")
        refused = wait_for_text(third, "#draft-info", r"busy")
        assert "The server is busy: try again in a moment." in refused
        assert "Error" not in third.locator("body").inner_text()
        assert third.locator("#findings textarea").input_value() == ""

        first.wait_for_function("!document.querySelector('#study-viewer canvas.cxr-canvas')")
        upload_study(first, [images[3]])
        second.wait_for_function("window.cliptt5DraftDone === true", timeout=120_000)
        assert second.locator("#findings textarea").input_value()
        # The first reader's old draft ran before the second's (one at a time) and was dropped: the next
        # patient's page shows no draft.
        assert first.locator("#findings textarea").input_value() == ""
        assert "Drafted in" not in text_of(first, "#draft-info")

        assert draft(third)  # the refused reader tries again and gets a draft
        assert "Error" not in third.locator("body").inner_text()
    log = server_log.read_text()
    assert "Stopped after 3 draft(s)" in log  # the first's old draft, the second's, the third's
    assert log.count("A draft was refused: the server is busy.") == 1

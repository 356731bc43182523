"""The report page in a real browser (headless Debian Chromium via Playwright) against `python app.py`:
upload a PNG and a MONOCHROME1 DICOM, window/level and zoom in the page, draft, edit, export, no outbound request."""

import io
import time
import json
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from app_harness import (
    WATCH_DRAFT_INFO, browser_missing_reason, draft, export, open_browser, serve_app, speaking_release,
    upload_study,
)
from dicom_files import block_image, grayscale_dicom

MISSING = browser_missing_reason()
IN_CI = os.environ.get("CI") == "true"  # CI must run it: there a missing browser fails the test, not skips it
pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=f"browser test skipped: {MISSING}")

# The displayed pixels of an image, read back from its canvas.
READ_PIXELS = """([index, points]) => {
  const canvas = document.querySelectorAll('#study-viewer canvas.cxr-canvas')[index];
  const context = canvas.getContext('2d');
  return points.map(([x, y]) => context.getImageData(x * (canvas.width - 1), y * (canvas.height - 1), 1, 1).data[0]);
}"""


# Visible elements with text of their own drawn under 14 px: [font size, tag, text].
SMALL_TEXT = """() => [...document.querySelectorAll('.gradio-container *')].filter(element => {
  const style = getComputedStyle(element), box = element.getBoundingClientRect();
  return [...element.childNodes].some(node => node.nodeType === 3 && node.textContent.trim())
    && box.width > 0 && box.height > 0 && style.visibility !== 'hidden' && parseFloat(style.fontSize) < 14;
}).map(element => [getComputedStyle(element).fontSize, element.tagName, element.textContent.trim().slice(0, 40)])"""
# A line of bold capitals in the page's font, added beside the critical-finding banner.
BOLD_CAPITALS = """(text) => { const line = document.createElement('div'); line.className = 'capitals-probe';
  line.style.cssText = 'font-size: 40px; font-weight: 700; display: inline-block; color: black; background: white';
  line.textContent = text; document.querySelector('#critical').append(line); }"""


def ink_height(locator):
    """Rows of the element's screenshot that hold dark (ink) pixels."""
    rows = np.nonzero((screenshot_gray(locator) < 128).any(axis=1))[0]
    return rows[-1] - rows[0] + 1


def screenshot_gray(locator):
    return np.array(Image.open(io.BytesIO(locator.screenshot())).convert("L"), dtype=float)


def stable_screenshot_gray(locator, seconds=5.0):
    """The element's grey pixels once two screenshots 0.2 s apart agree (or the last after `seconds`): the browser
    paints a freshly shown image and its SVG filter some frames later, and a screenshot may catch a frame before."""
    deadline = time.monotonic() + seconds
    previous = screenshot_gray(locator)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        pixels = screenshot_gray(locator)
        if np.array_equal(pixels, previous):
            break
        previous = pixels
    return previous


def image_width(page, index):
    return page.evaluate(f"document.querySelectorAll('#study-viewer canvas.cxr-canvas')[{index}]"
                         ".getBoundingClientRect().width")


def test_review_a_study_in_the_browser(tiny_release_dir, tmp_path):
    if MISSING:
        pytest.fail(f"the browser test must run in CI: {MISSING}", pytrace=False)
    from playwright.sync_api import sync_playwright

    release = speaking_release(tiny_release_dir, tmp_path / "release")
    png = tmp_path / "frontal.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 80), dtype=np.uint8)).save(png)
    # MONOCHROME1 stores bone as LOW values: the bright stored block must display dark, the rest white.
    dicom = grayscale_dicom(block_image(size=(64, 80)), tmp_path / "lateral.dcm", photometric="MONOCHROME1")

    server_log = tmp_path / "server.log"
    with (serve_app(release, threads=1, log_path=server_log) as url, sync_playwright() as playwright,
          open_browser(playwright) as browser):
        page = browser.new_page()
        requested = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(url)
        assert "not a medical device" in page.locator("#notice").inner_text()

        upload_study(page, [png, dicom])
        block, background = page.evaluate(READ_PIXELS, [1, [[0, 0], [1, 1]]])
        assert block < 10 and background > 245, "MONOCHROME1 must show high stored values dark (bone white)"

        # Window/level and zoom happen in the page: the pixels on screen change, and no request is made.
        viewed = page.locator("#study-viewer .cxr-frame").first
        before, width_before, requests_before = stable_screenshot_gray(viewed), image_width(page, 0), len(requested)
        viewed.hover()
        page.locator("#study-viewer [data-control=width]").fill("40")
        page.locator("#study-viewer [data-control=level]").fill("200")
        assert screenshot_gray(viewed).mean() < before.mean() - 30  # level raised: the image darkens
        page.mouse.wheel(0, -500)  # zoom in by e (the wheel's rate: e ** (0.002 per unit))
        assert image_width(page, 0) == pytest.approx(np.e * width_before, rel=0.02)
        assert len(requested) == requests_before
        page.locator("#study-viewer [data-action=reset]").click()
        assert np.abs(stable_screenshot_gray(viewed) - before).mean() < 1

        findings = draft(page)
        assert findings, "the draft fills the FINDINGS box"
        assert "from 1 image(s)" in page.locator("#draft-info").inner_text()
        assert "lateral.dcm" in page.locator("#study-messages").inner_text()  # the 1-view model left it out

        edited = "Large right pneumothorax. Edited by the reader."
        page.locator("#findings textarea").fill(edited)
        page.locator("#impression textarea").fill("Right pneumothorax.")
        page.locator("#critical .critical-alert").wait_for()
        assert "Pneumothorax (right)" in page.locator("#critical").inner_text()
        assert "Pneumothorax: present" in page.locator("#sentence-tags").inner_text()  # as written, not upper-cased
        assert page.evaluate(SMALL_TEXT) == []  # readable type: nothing under 14 px
        # Bold capitals in one font: gradio's own semi-bold web font drew "A" from a smaller one ("CRITICᴀL").
        for text in ("AAAA", "HHHH"):
            page.evaluate(BOLD_CAPITALS, text)
        probes = page.locator("#critical .capitals-probe")
        assert ink_height(probes.nth(0)) >= 0.95 * ink_height(probes.nth(1))
        page.evaluate("() => document.querySelectorAll('.capitals-probe').forEach(probe => probe.remove())")

        exported = {suffix: text for suffix, (_, text) in export(page).items()}
        header, text = exported["txt"].split("\n\n", 1)
        assert text.startswith(f"FINDINGS: {edited}\n\nIMPRESSION: Right pneumothorax.\n\n")
        # unsigned: marked a draft; neither file's header names the patient
        assert header.startswith("DRAFT - NOT SIGNED") and "\nPatient ID: not in the files" in header
        record = json.loads(exported["json"])
        assert record["findings"] == edited and record["edited_by_reader"] is True
        assert record["model_draft"]["findings"] == findings

        page.screenshot(path=tmp_path / "app.png", full_page=True)
        hosts = {urlparse(address).netloc for address in requested if not address.startswith(("data:", "blob:"))}
        assert hosts == {urlparse(url).netloc}, f"the page called out: {hosts}"
    assert Image.open(tmp_path / "app.png").size[0] >= 1000

    # Stopped with SIGTERM, the server deleted its private folder, and never logged what was uploaded.
    log = server_log.read_text()
    (folder,) = re.findall(r"kept in (\S+) \(this user only\)", log)
    assert not Path(folder).exists()
    assert "Stopped after 1 draft(s)" in log
    assert "frontal.png" not in log and "lateral.dcm" not in log and edited not in log


def test_the_findings_checklist_heatmaps_and_a_redraft_in_the_browser(head_release_dir, tmp_path):
    """With a finding head: the checklist shows each finding's probability, a finding's heatmap is laid over the
    image at the chosen opacity, an unchecked finding redrafts the report, and an edit that contradicts the
    checklist is marked."""
    if MISSING:
        pytest.fail(f"the browser test must run in CI: {MISSING}", pytrace=False)
    from playwright.sync_api import sync_playwright

    from conftest import noise_image

    png = tmp_path / "study.png"
    noise_image(1).save(png)  # the head release calls Cardiomegaly on it
    with (serve_app(head_release_dir, threads=1) as url, sync_playwright() as playwright,
          open_browser(playwright) as browser):
        page = browser.new_page()
        page.goto(url)
        upload_study(page, [png])
        findings = draft(page)
        assert "heart is enlarged" in findings
        checklist = page.locator("#finding-checklist")
        assert re.search(r"Cardiomegaly\s+[01]\.\d\d", checklist.inner_text())
        assert checklist.locator("input[type=checkbox]").nth(0).is_checked()  # Cardiomegaly, as the draft says

        # the heatmap: hidden until chosen, then shown over the image at the slider's opacity
        overlay = page.locator('#study-viewer img.cxr-heatmap[data-finding="Cardiomegaly"]')
        assert overlay.is_hidden()
        page.locator("#study-viewer [data-control=heatmap]").select_option("Cardiomegaly")
        overlay.wait_for(state="visible")
        page.locator("#study-viewer [data-control=opacity]").fill("25")
        assert float(overlay.evaluate("img => getComputedStyle(img).opacity")) == pytest.approx(0.25)
        image_box = page.locator("#study-viewer canvas.cxr-canvas").first.bounding_box()
        assert overlay.bounding_box() == pytest.approx(image_box)  # laid exactly over the image

        # an edit the checklist does not hold is marked
        page.locator("#findings textarea").fill("The heart is enlarged. Small left pleural effusion.")
        marked = page.locator("#draft-check mark.disagree", has_text="Small left pleural effusion.")
        marked.wait_for()
        assert "Pleural Effusion" in marked.get_attribute("title")

        # the reader unchecks Cardiomegaly and redrafts: the report follows the checklist
        checklist.locator("input[type=checkbox]").nth(0).uncheck()
        page.evaluate(WATCH_DRAFT_INFO)
        page.click("#redraft-button")
        page.wait_for_function("window.cliptt5DraftDone === true", timeout=120_000)
        assert "heart is normal" in page.locator("#findings textarea").input_value()
        assert "following the findings you checked" in page.locator("#draft-info").inner_text()
        page.screenshot(path=tmp_path / "checklist.png", full_page=True)

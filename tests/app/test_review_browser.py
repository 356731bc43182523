"""The review workflow in a real browser (headless Debian Chromium via Playwright) against `python app.py`: Ctrl+Enter
drafts, sentences are accepted and edited from the keyboard, a section reverts to the model's draft, signing needs
every sentence and a name (and, with the text and the checklist disagreeing, the reader's deliberate override) and
then locks the report, and each export format is read back: the unsigned export marked a draft, the signed one
carrying the reader and the override (text, JSON, FHIR DiagnosticReport validated with fhir.resources,
DICOM Basic Text SR read with pydicom, citing the study's image)."""

import json
import os

import numpy as np
import pytest

from app_harness import WATCH_DRAFT_INFO, browser_missing_reason, export, open_browser, serve_app, upload_study
from dicom_files import grayscale_dicom

MISSING = browser_missing_reason()
IN_CI = os.environ.get("CI") == "true"
pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=f"browser test skipped: {MISSING}")

STUDY = {"PatientID": "P-2002", "AccessionNumber": "ACC-9", "StudyDate": "20261201",
         "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.77", "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.77.1",
         "ViewPosition": "PA"}
ALL_FORMATS = ("txt", "json", "fhir", "sr")


def review_state(page):
    """[(sentence label, checked)] of the sentence review."""
    return page.evaluate("""() => [...document.querySelectorAll('#sentence-review input[type=checkbox]')]
      .map(box => [box.closest('label').innerText.trim(), box.checked])""")


def wait_review(page, predicate_js):
    page.wait_for_function(f"""() => {{ const s = [...document.querySelectorAll(
      '#sentence-review input[type=checkbox]')].map(box => [box.closest('label').innerText.trim(), box.checked]);
      return ({predicate_js})(s); }}""", timeout=30_000)


def read_exports(exported, tmp_path, name):
    import pydicom
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    text, record, fhir = exported["txt"][1], json.loads(exported["json"][1]), json.loads(exported["fhir"][1])
    DiagnosticReport.model_validate(fhir)  # a valid FHIR DiagnosticReport, or this raises
    sr_path = tmp_path / f"{name}.dcm"
    sr_path.write_bytes(exported["sr"][1])
    return text, record, fhir, pydicom.dcmread(sr_path)


def test_accept_edit_revert_sign_and_export_every_format(head_release_dir, tmp_path):
    if MISSING:
        pytest.fail(f"the browser test must run in CI: {MISSING}", pytrace=False)
    import pydicom
    from playwright.sync_api import sync_playwright

    from conftest import noise_image

    dicom = grayscale_dicom(np.asarray(noise_image(1)), tmp_path / "pa.dcm", header=STUDY)
    image_uid = pydicom.dcmread(dicom).SOPInstanceUID
    with (serve_app(head_release_dir, threads=1) as url, sync_playwright() as playwright,
          open_browser(playwright, viewport=(1440, 900)) as browser):
        page = browser.new_page()
        page.goto(url)
        upload_study(page, [dicom])

        # Ctrl+Enter drafts.
        page.evaluate(WATCH_DRAFT_INFO)
        page.locator("#indication textarea").focus()
        page.keyboard.press("Control+Enter")
        page.wait_for_function("window.cliptt5DraftDone === true", timeout=120_000)
        model_findings = page.locator("#findings textarea").input_value()
        model_impression = page.locator("#impression textarea").input_value()
        wait_review(page, "s => s.length >= 3")
        # The findings checklist and the disagreements are on a 1440 x 900 screen without scrolling.
        page.locator("#draft-check p").first.wait_for()
        assert page.evaluate("window.scrollY") == 0
        for element in ("#finding-checklist", "#draft-check"):
            box = page.locator(element).bounding_box()
            assert box["height"] > 0 and box["y"] >= 0 and box["y"] + box["height"] <= 900, (element, box)
        # Nobody types: the page makes no calls (two handlers on one textbox once made gradio call on and on).
        calls = []
        page.on("request", lambda request: calls.append(request.url) if "/queue/join" in request.url else None)
        page.wait_for_timeout(3000)
        assert calls == []
        sentences = review_state(page)
        assert all(not checked for _, checked in sentences)
        assert [label for label, _ in sentences if label.startswith("Impression: ")] == \
            [f"Impression: {model_impression}"]

        # Signing is refused until every sentence is accepted and a name is given.
        page.locator("#reader-name textarea, #reader-name input").first.fill("Reader, Dr Ada")
        page.click("#sign-button")
        page.locator("#sign-status .refused").wait_for()
        assert "accept every sentence first" in page.locator("#sign-status").inner_text()

        # Alt+A accepts the first sentence and moves on; Alt+E selects the next one in its box.
        page.locator("#findings textarea").focus()
        page.keyboard.press("Alt+A")
        wait_review(page, "s => s[0][1] && !s[1][1]")
        page.keyboard.press("Alt+E")
        second = sentences[1][0].split(": ", 1)[1]
        assert page.evaluate("() => { const a = document.activeElement; return a.value.slice(a.selectionStart, "
                             "a.selectionEnd); }") == second

        # An edited sentence is the reader's own; revert brings the model's FINDINGS back (and their review state).
        edited = model_findings.replace(second, "Edited by the reader.")
        page.locator("#findings textarea").fill(edited)
        wait_review(page, "s => s.some(([label, checked]) => label === 'Findings: Edited by the reader.' && checked)")
        page.click("#revert-findings")
        page.wait_for_function(f"document.querySelector('#findings textarea').value === {json.dumps(model_findings)}")
        wait_review(page, f"s => s.length === {len(sentences)} && s[0][1] && !s[1][1]")
        # The edited text is kept as a version: the versions panel shows (it can arrive after the review's update).
        page.wait_for_selector("#report-versions", state="visible", timeout=15000)

        # A sentence written twice is two items, the copy marked; Alt+E selects that copy, not the first.
        page.locator("#impression textarea").fill(f"{model_impression} {model_impression}")
        repeat = f"Impression: {model_impression} [repeat 2]"
        wait_review(page, f"s => s.some(([label]) => label === {json.dumps(repeat)})")
        boxes = page.locator("#sentence-review input[type=checkbox]")
        boxes.nth([label for label, _ in review_state(page)].index(repeat)).focus()
        page.keyboard.press("Alt+E")
        assert page.evaluate("() => document.activeElement.selectionStart") == len(model_impression) + 1
        page.locator("#impression textarea").fill(model_impression)
        wait_review(page, f"s => s.length === {len(sentences)}")

        # The unsigned export is marked a draft in every format.
        exported = export(page, ALL_FORMATS)
        text, record, fhir, sr = read_exports(exported, tmp_path, "draft")
        assert text.startswith("DRAFT - NOT SIGNED") and record["signature"] is None
        assert fhir["status"] == "preliminary" and "resultsInterpreter" not in fhir
        assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("PARTIAL", "UNVERIFIED", "PRELIMINARY")
        assert "as a DRAFT" in page.locator("#export-status").inner_text()

        # Accept the rest from the keyboard, then sign. The head's release writes the effusion its checklist leaves
        # unchecked: signing asks to resolve that, or to sign over it on purpose. Then the report locks.
        page.locator("#sentence-review input[type=checkbox]").first.focus()
        for _ in range(len(sentences)):
            page.keyboard.press("Alt+A")
        wait_review(page, "s => s.every(([, checked]) => checked)")
        page.click("#sign-button")
        page.wait_for_function("document.querySelector('#sign-status').innerText.includes('disagreement(s) open')")
        assert "Pleural Effusion: stated in the text, not checked" in page.locator("#sign-status").inner_text()
        page.locator("#sign-anyway input").check()
        page.click("#sign-button")
        page.locator("#sign-status .signed").wait_for()
        assert "Signed by Dr Ada Reader" in page.locator("#sign-status").inner_text()
        for locked in ("#findings textarea", "#impression textarea", "#draft-button", "#revert-findings"):
            assert page.locator(locked).is_disabled(), locked

        exported = export(page, ALL_FORMATS)
        text, record, fhir, sr = read_exports(exported, tmp_path, "signed")
        assert "DRAFT" not in text and "Signed by Dr Ada Reader on " in text
        assert f"FINDINGS: {model_findings}\n\nIMPRESSION: {model_impression}" in text
        assert record["signature"]["reader"] == "Reader, Dr Ada"
        assert "Pleural Effusion: stated in the text, not checked" in record["signature"]["override"]
        assert "Signed despite " in text
        assert fhir["status"] == "final" and fhir["conclusion"] == model_impression
        assert fhir["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{STUDY['StudyInstanceUID']}"
        assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "VERIFIED")
        assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Reader^Ada^^Dr"
        (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
        assert evidence.StudyInstanceUID == STUDY["StudyInstanceUID"]
        assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image_uid
        assert sr.AccessionNumber == STUDY["AccessionNumber"] and sr.PatientID == STUDY["PatientID"]
        # the signed SR supersedes the draft SR exported before it, in the same report series
        (superseded,) = sr.PredecessorDocumentsSequence
        assert superseded.ReferencedSeriesSequence[0].SeriesInstanceUID == sr.SeriesInstanceUID

        # Clear: the next study starts unlocked and unsigned.
        page.locator("#study-files button[aria-label='Clear']").first.click()
        page.wait_for_function("!document.querySelector('#findings textarea').disabled", timeout=30_000)
        assert page.locator("#sign-status").inner_text().strip() == ""
        assert page.locator("#findings textarea").input_value() == "" and review_state(page) == []

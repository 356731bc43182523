"""The reader's side of the node, with a real node and a real Orthanc: the page started with the node's settings
lists the node's studies (drafted, refused with the reason) from its database, opens a drafted one with its images
and the node's draft, and its signature puts a FINAL SR that supersedes the node's preliminary SR in the node's
outbox, which the running node delivers to Orthanc, where dciodvfy finds no error in it."""

import sqlite3
import subprocess
from types import SimpleNamespace

import pydicom
import pytest

from node_harness import (  # noqa: F401 - dicom_tools and node_release are fixtures
    dcmtk_tool, dicom_tools, node_release, radiograph, running_node, running_orthanc, sent_ok, storescu, study_files,
    wait_for,
)
from app_harness import free_port

gr = pytest.importorskip("gradio")
from modeling_cliptt5.app.page_layout import lay_out_page, lay_out_worklist  # noqa: E402
from modeling_cliptt5.app.page_server import DraftTurns  # noqa: E402
from modeling_cliptt5.app.report_review import reviewed_sentences  # noqa: E402
from modeling_cliptt5.app.web_app import PageHandlers, ReportDrafter, make_private_upload_folder  # noqa: E402
from modeling_cliptt5.app.worklist import WORKLIST_HEADERS, NodeWorklist  # noqa: E402

pytestmark = pytest.mark.usefixtures("dicom_tools")
SR_SECONDS = 120  # from the last instance to the SR in Orthanc (2 busy cores)


@pytest.fixture(scope="module")
def pacs(node_release, tmp_path_factory):
    """(Orthanc, node, a study the node drafted and sent, a study it refused)."""
    folder = tmp_path_factory.mktemp("worklist")
    node_port = free_port()
    with running_orthanc(folder / "orthanc", node_port) as orthanc:
        with running_node(folder / "node", node_release, orthanc.dicom_port, port=node_port) as node:
            drafted_uid, files = study_files(folder / "study", count=2, seed=1)
            refused_uid = "1.2.826.0.1.3680043.8.498.777"
            ct = radiograph(folder / "ct.dcm", refused_uid, seed=2, modality="CT")
            assert sent_ok(storescu(node.port, files)) and sent_ok(storescu(node.port, [ct]))
            wait_for(lambda: orthanc.srs(drafted_uid), SR_SECONDS, "the node's draft SR in Orthanc")
            wait_for(lambda: node.status()["studies"].get("refused"), SR_SECONDS, "the CT study refused")
            yield orthanc, node, drafted_uid, files, refused_uid


@pytest.fixture(scope="module")
def handlers(pacs, node_release):
    """The page's handlers for the node (as cliptt5-app --node-config builds them), with the release that drafts."""
    _, node, *_ = pacs
    make_private_upload_folder()
    drafter = ReportDrafter.from_pretrained(node_release)
    worklist = NodeWorklist.from_config(node.config)
    with gr.Blocks():
        panel = lay_out_worklist(WORKLIST_HEADERS)
        page = lay_out_page(drafter)
    return PageHandlers(page, drafter, 16_000_000, False, False, DraftTurns(4), worklist, panel)


def test_the_worklist_lists_the_nodes_studies_with_their_state_and_reason(pacs, handlers):
    _, _, drafted_uid, _, refused_uid = pacs
    shown = handlers.worklist_refreshed()
    rows = {row[0]: row for row in shown[handlers.panel.table]}
    assert rows[drafted_uid][1:3] == ["drafted", 2]
    assert rows[refused_uid][1] == "refused" and "modality CT" in rows[refused_uid][4]
    assert shown[handlers.panel.status] == ""


def test_the_worklist_never_writes_to_the_nodes_database(pacs):
    _, node, *_ = pacs
    database = NodeWorklist.from_config(node.config).layout.database
    read_only = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)
    before = read_only.execute("SELECT COUNT(*) FROM outbox").fetchone()
    NodeWorklist.from_config(node.config).studies()
    assert read_only.execute("SELECT COUNT(*) FROM outbox").fetchone() == before
    read_only.close()


def test_opening_a_drafted_study_shows_its_images_and_the_nodes_draft_and_signing_sends_a_final_sr(pacs, handlers,
                                                                                                   tmp_path):
    orthanc, node, study_uid, files, _ = pacs
    page, request = handlers.page, SimpleNamespace(session_hash="reader")
    (prelim_id, prelim_uid), = orthanc.srs(study_uid)
    preliminary = pydicom.dcmread(orthanc.instance_file(prelim_id, tmp_path / "preliminary.dcm"))
    node_findings = next(item.TextValue for section in preliminary.ContentSequence
                         if section.ConceptNameCodeSequence[0].CodeMeaning == "Findings"
                         for item in section.ContentSequence if item.ValueType == "TEXT")

    opened = handlers.node_study_opened(study_uid, request)
    study, draft = opened[page.study], opened[page.draft]
    # its images, as if dropped: both instances, frontal first, shown in the viewer, with their identity
    assert sorted(image.reference["sop_instance_uid"] for image in study.images) == sorted(
        pydicom.dcmread(file).SOPInstanceUID for file in files)
    assert study.views == ["PA", "LL"] and opened[page.viewer].count("<canvas") == 2
    assert "ACC-0001" in opened[page.identity]
    # the node's draft, not a new one: the SR's text, and the model read the frontal image
    assert opened[page.findings] == node_findings and draft["node_sr"]["sop_instance_uid"] == prelim_uid
    assert draft["read"] == [study.images[0].name]
    assert "Drafted by the DICOM node" in opened[page.draft_info]

    items, _ = reviewed_sentences(draft["findings"], draft["impression"], [], draft)
    signed = handlers.sign("Reader, Ada", draft["findings"], draft["impression"], items, draft, study, [], False)
    assert "Queued in the node's outbox" in signed[page.sign_status], signed[page.sign_status]
    final_uid = signed[page.report_sr]["sop_instance_uid"]

    # in the node's outbox for the node's destination, written into its results
    outbox = NodeWorklist.from_config(node.config).read("rows", "SELECT * FROM outbox WHERE result_uid = ?",
                                                        (final_uid,))
    assert [(row["ae_title"], row["port"]) for row in outbox] == [("ORTHANC", orthanc.dicom_port)]

    # the running node delivers it to Orthanc: FINAL / VERIFIED, superseding the preliminary SR, in its series
    wait_for(lambda: final_uid in {uid for _, uid in orthanc.srs(study_uid)}, SR_SECONDS, "the final SR in Orthanc")
    final_id = next(instance for instance, uid in orthanc.srs(study_uid) if uid == final_uid)
    path = orthanc.instance_file(final_id, tmp_path / "final.dcm")
    final = pydicom.dcmread(path)
    assert (final.PreliminaryFlag, final.VerificationFlag, final.CompletionFlag) == ("FINAL", "VERIFIED", "COMPLETE")
    (predecessor,) = final.PredecessorDocumentsSequence
    assert predecessor.StudyInstanceUID == study_uid == final.StudyInstanceUID
    (series,) = predecessor.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == preliminary.SeriesInstanceUID == final.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == prelim_uid
    assert str(final.VerifyingObserverSequence[0].VerifyingObserverName) == "Reader^Ada"
    output = subprocess.run([dcmtk_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    assert [line for line in (output.stdout + output.stderr).splitlines() if line.startswith("Error")] == []


def test_the_page_built_with_the_node_lists_and_opens_its_studies_over_http(pacs, handlers, tmp_path):
    """The same through the served page (build_app's wiring, FastAPI TestClient): the worklist's refresh and the
    study opened, with the node's draft in the findings box and its images in the viewer."""
    import json

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modeling_cliptt5.app.web_app import build_app, serve_options

    _, node, study_uid, _, refused_uid = pacs
    app = build_app(handlers.drafter, node=NodeWorklist.from_config(node.config))

    def call(client, api_name, *data):
        event = client.post(f"/gradio_api/call/{api_name}", json={"data": list(data)})
        assert event.status_code == 200, event.text
        stream = client.get(f"/gradio_api/call/{api_name}/{event.json()['event_id']}").text
        assert "event: complete" in stream, stream
        return json.loads(stream.split("event: complete\ndata: ", 1)[1].splitlines()[0])

    with TestClient(gr.mount_gradio_app(FastAPI(), app, path="/", **serve_options())) as client:
        table, *_ = call(client, "node_worklist")
        assert {study_uid, refused_uid} <= {row[0] for row in table["data"]}
        opened = json.dumps(call(client, "open_node_study", study_uid))
        draft = handlers.node.open(study_uid, tmp_path)[1]
        assert f"Opened {study_uid} with the node" in opened
        assert json.dumps(draft["findings"])[1:-1] in opened and opened.count("<canvas") == 2


def test_in_a_browser_the_reader_opens_the_nodes_study_signs_it_and_the_final_sr_is_queued(pacs, node_release):
    """cliptt5-app --node-config in headless Chromium: the worklist shows the node's study, opening it shows its two
    images and keeps the node's draft (the file list the page fills in does not start another study), and signing
    queues the final SR."""
    from app_harness import browser_missing_reason, open_browser, serve_app

    if browser_missing_reason():
        pytest.skip(browser_missing_reason())
    from playwright.sync_api import sync_playwright

    orthanc, node, study_uid, _, _ = pacs
    before = {uid for _, uid in orthanc.srs(study_uid)}
    assert NodeWorklist.from_config(node.config).study(study_uid)["state"] == "drafted"
    with (serve_app(node_release, threads=1, app_args=("--node-config", str(node.config))) as url,
          sync_playwright() as playwright, open_browser(playwright) as browser):
        page = browser.new_page()
        page.goto(url)
        page.locator("#node-worklist-table", has_text=study_uid).wait_for(timeout=30_000)
        page.locator("#node-study-choice input").fill(study_uid)
        page.keyboard.press("Enter")
        page.click("#node-study-open")
        page.locator("#study-viewer canvas.cxr-canvas[data-ready]").nth(1).wait_for(timeout=60_000)
        page.wait_for_function("document.querySelector('#findings textarea').value.length > 0", timeout=30_000)
        findings = page.locator("#findings textarea").input_value()
        page.wait_for_timeout(3000)  # the file list's change event has run: the draft is still the node's
        assert page.locator("#findings textarea").input_value() == findings
        assert "Drafted by the DICOM node" in page.locator("#draft-info").inner_text()

        boxes = page.locator("#sentence-review input[type=checkbox]")
        boxes.first.wait_for(timeout=30_000)
        for index in range(boxes.count()):
            boxes.nth(index).check()
        page.locator("#reader-name textarea, #reader-name input").first.fill("Reader, Ada")
        page.click("#sign-button")
        page.locator("#sign-status", has_text="Queued in the node's outbox").wait_for(timeout=60_000)
    wait_for(lambda: len({uid for _, uid in orthanc.srs(study_uid)} - before) == 1, SR_SECONDS,
             "the final SR signed in the browser, in Orthanc")

"""The report page through its HTTP API, in-process (FastAPI TestClient, no port, no browser): upload, draft,
review, export, bad files, queueing, privacy settings."""

import base64
import html
import io
import json
import os
import re
import stat
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_harness import REPO_ROOT, speaking_release
from dicom_files import block_image, grayscale_dicom, structured_report_dicom

gr = pytest.importorskip("gradio")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from modeling_cliptt5.evaluation.labeler import POSITIVE  # noqa: E402
from modeling_cliptt5.app.report_review import NOTICE  # noqa: E402
from modeling_cliptt5.app.web_app import ReportDrafter, build_app, serve_options, show_study  # noqa: E402
from modeling_cliptt5.inference.drafting import TRUNCATED_WARNING  # noqa: E402


# The speaking release's random model writes 16 tokens and never its end token: each draft stopped at the token
# limit, and the page says so above it.
TRUNCATED = f"**WARNING: {TRUNCATED_WARNING}**\n\n"


@pytest.fixture(scope="module")
def release_dir(tiny_release_dir, tmp_path_factory):
    return speaking_release(tiny_release_dir, tmp_path_factory.mktemp("app") / "release")


@pytest.fixture(scope="module")
def drafter(release_dir):
    return ReportDrafter.from_pretrained(release_dir)


@pytest.fixture(scope="module")
def page(drafter):
    return build_app(drafter)


@pytest.fixture(scope="module")
def client(page):
    with TestClient(gr.mount_gradio_app(FastAPI(), page, path="/", **serve_options())) as test_client:
        yield test_client


def upload(client, path):
    """Send a file as the browser does; returns the FileData the page's functions receive."""
    with open(path, "rb") as handle:
        response = client.post("/gradio_api/upload", files=[("files", (Path(path).name, handle))])
    assert response.status_code == 200, response.text
    return {"path": response.json()[0], "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


def submit(client, api_name, *data):
    response = client.post(f"/gradio_api/call/{api_name}", json={"data": list(data)})
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def result(client, api_name, event_id):
    """The outputs of a queued call (the server-sent "complete" event)."""
    stream = client.get(f"/gradio_api/call/{api_name}/{event_id}").text
    assert "event: complete" in stream, stream
    return json.loads(stream.split("event: complete\ndata: ", 1)[1].splitlines()[0])


def call(client, api_name, *data):
    return result(client, api_name, submit(client, api_name, *data))


def model_draft(drafter, image):
    """What the model itself writes for an image, without the page: processor, generate, decode."""
    inputs = drafter.processor(images=[image])
    return drafter.processor.batch_decode_reports(drafter.model.generate(**inputs))[0]


def shown_images(viewer_html):
    """[(values, attributes)] of each image the viewer shows: the values the browser windows (decoded from their
    zlib + base64 data attribute) and the canvas's other data attributes."""
    shown = []
    for canvas in re.findall(r"<canvas [^>]*>", viewer_html):
        attributes = {name: html.unescape(value) for name, value in re.findall(r'data-([a-z0-9]+)="([^"]*)"', canvas)}
        rows, columns = int(re.search(r'height="(\d+)"', canvas)[1]), int(re.search(r'width="(\d+)"', canvas)[1])
        raw = zlib.decompress(base64.b64decode(attributes.pop("pixels")))
        dtype = "<u2" if attributes["dtype"] == "u2" else "u1"
        shown.append((np.frombuffer(raw, dtype=dtype).reshape(rows, columns), attributes))
    return shown


@pytest.fixture(scope="module")
def png_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "frontal.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48), dtype=np.uint8)).save(path)
    return path


def test_png_draft_is_the_models_draft_of_that_image(client, drafter, png_path):
    findings, impression, info, messages, *_ = call(client, "draft_report", [upload(client, png_path)], "")
    expected = model_draft(drafter, Image.open(png_path))
    assert expected["findings"], "the speaking release should write text"
    assert (findings, impression or None) == (expected["findings"], expected["impression"])
    assert re.search(r"Drafted in \*\*\d+\.\d\d s\*\* from 1 image", info)
    assert messages == ""


def test_monochrome1_dicom_is_shown_and_drafted_with_bone_white(client, drafter, tmp_path):
    # MONOCHROME1: high stored values display dark. The bright block of stored values must come out black, the
    # low background white, both on the page and in what the model reads.
    stored = block_image(size=(32, 40))
    dicom = grayscale_dicom(stored, tmp_path / "inverted.dcm", photometric="MONOCHROME1")
    displayed = np.where(stored == stored.max(), 0, 255).astype(np.uint8)
    not_inverted = 255 - displayed

    # The viewer gets the stored values themselves at full depth, marked MONOCHROME1: the browser windows and
    # inverts them (the browser test checks the pixels it shows).
    viewer, messages = show_study([upload(client, dicom)["path"]])
    ((values, attributes),) = shown_images(viewer)
    assert messages == ""
    modality = float(attributes["offset"]) + float(attributes["slope"]) * values.astype(float)
    assert np.array_equal(modality, stored) and attributes["mono1"] == "1"

    findings, *_ = call(client, "draft_report", [upload(client, dicom)], "")
    assert findings == model_draft(drafter, Image.fromarray(displayed))["findings"]
    # The check above tells inversion apart only if the model writes something else for the uninverted image.
    assert findings != model_draft(drafter, Image.fromarray(not_inverted))["findings"]


def test_a_draft_of_images_the_page_shows_does_not_send_their_values_again(drafter, png_path):
    from modeling_cliptt5.app.web_app import draft_report

    first = draft_report(drafter, [str(png_path)], "")[-1]
    again = draft_report(drafter, [str(png_path)], "", shown=True)[-1]
    ((values, attributes),) = shown_images(first)
    assert np.array_equal(values, np.asarray(Image.open(png_path)))
    assert 'data-pixels=""' in again and f'data-key="{attributes["key"]}"' in again
    assert len(again) < len(first) - values.size  # the values (compressed) are what the second leaves out


def test_bad_files_get_a_message_naming_them_and_the_page_keeps_serving(client, drafter, png_path, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    report = structured_report_dicom(tmp_path / "report.dcm")
    huge = tmp_path / "huge.png"
    Image.new("1", (10_000, 9_000)).save(huge)  # 90 M pixels, just over the decompression-bomb guard
    bad = [upload(client, path) for path in (corrupt, report, huge)]

    viewer, messages = show_study([file["path"] for file in bad] + [upload(client, png_path)["path"]])
    assert len(shown_images(viewer)) == 1
    for name, reason in (("corrupt.png", "corrupt"), ("report.dcm", "no pixel data"), ("huge.png", "too large")):
        assert re.search(rf"{re.escape(name)}: [^<]*{reason}", messages), messages

    findings, impression, info, messages, *_ = call(client, "draft_report", bad, "")
    assert (findings, impression, info) == ("", "", "")
    assert "Drop at least one readable" in messages and "huge.png" in messages

    findings, *_ = call(client, "draft_report", [upload(client, png_path)], "")
    assert findings == model_draft(drafter, Image.open(png_path))["findings"]


def test_a_ct_slice_is_not_drafted_and_an_unlabelled_dicom_is_drafted_with_a_note_to_check(client, drafter,
                                                                                             tmp_path):
    from pydicom.data import get_testdata_file

    ct_slice = upload(client, get_testdata_file("CT_small.dcm"))  # pydicom's own CT test file
    findings, impression, info, messages, *_ = call(client, "draft_report", [ct_slice], "")
    assert (findings, impression, info) == ("", "", "")
    assert re.search(r"Not used: CT_small\.dcm: modality CT \([^<]*not a projection radiograph", messages), messages

    unlabelled = grayscale_dicom(block_image(), tmp_path / "unlabelled.dcm", modality=None)
    findings, impression, info, messages, *_ = call(client, "draft_report", [upload(client, unlabelled)], "")
    assert info.startswith(TRUNCATED + "Drafted in")
    assert re.search(r'class="doubt">Check: unlabelled\.dcm: DICOM with no Modality', messages), messages


def test_any_modality_lets_the_page_draft_a_ct_slice(drafter):
    from pydicom.data import get_testdata_file

    from modeling_cliptt5.app.web_app import draft_report

    findings, impression, info, messages, *_ = draft_report(drafter, [get_testdata_file("CT_small.dcm")], "",
                                                           any_modality=True)
    assert info.startswith(TRUNCATED + "Drafted in") and "modality CT" in messages and "Not used" not in messages


def test_the_model_drafts_from_the_frontal_when_the_lateral_is_dropped_first(drafter, tmp_path):
    from modeling_cliptt5.app.web_app import draft_report

    lateral = grayscale_dicom(block_image(), tmp_path / "ll.dcm", header={"ViewPosition": "LL"})
    frontal = grayscale_dicom(block_image(), tmp_path / "pa.dcm", header={"ViewPosition": "PA"})
    assert drafter.num_views == 1
    _, _, info, messages, _, _, viewer = draft_report(drafter, [str(lateral), str(frontal)], "")
    assert info.startswith(TRUNCATED + "Drafted in") and "from 1 image(s)" in info
    assert "drafted from pa.dcm; shown for review only, not read by the model: ll.dcm" in messages, messages
    assert viewer.index("Image 1: pa.dcm (PA)") < viewer.index("Image 2: ll.dcm (LL)")


def test_review_tags_each_sentence_and_sets_critical_findings_apart(client):
    findings = "Large right pneumothorax. Small left pleural effusion. Heart size is normal."
    _, tags, claims, critical, report, *_ = call(client, "review_report", findings, "No pneumonia.", [], [])
    tagged = {piece["token"].strip(): piece["class_or_confidence"] for piece in tags["value"]}
    assert tagged["Large right pneumothorax."] == "Pneumothorax: present"
    assert tagged["Heart size is normal."] == "Cardiomegaly: absent"
    assert tagged["No pneumonia."] == "Pneumonia: absent"
    colors = tags["color_map"]
    assert len({colors["Pneumothorax: present"], colors["Pleural Effusion: present"], colors["Pneumonia: absent"]}) == 3
    assert "Pneumothorax (right), present" in critical
    assert "Pleural Effusion (left), present" in claims and "Pneumothorax" not in claims
    assert report == f"FINDINGS: {findings}\n\nIMPRESSION: No pneumonia."

    _, _, claims, critical, *_ = call(client, "review_report", "No pneumothorax. Possible left lower lobe pneumonia.",
                                      "", [], [])
    assert critical == ""  # a negated pneumothorax is no alarm
    assert "Pneumonia (left), possible" in claims


def test_export_holds_the_edited_text_and_the_labels_of_that_text(client):
    findings, impression = "Large right pneumothorax, edited by the reader.", "Right pneumothorax."
    (text_file, json_file, fhir_file), status, _ = call(client, "export_report", findings, impression,
                                                        "chest pain", [])
    text = client.get(f"/gradio_api/file={text_file['path']}").text
    record = client.get(f"/gradio_api/file={json_file['path']}").json()
    header, report, notice = text.split("\n\n", 2)
    assert re.fullmatch(r"DRAFT - NOT SIGNED: for review only, not a final report.\n"
                        r"Patient ID: not in the files \(no DICOM header names one\)\n"
                        r"Drafted by: release \(revision sha256:[0-9a-f]{16}\)\nExported: 20\d\d-\S+\n"
                        r"Comparison: none", header)  # no prior read: a first study
    assert report + "\n\n" + notice == f"FINDINGS: {findings}\n\nIMPRESSION: {impression}\n\n{NOTICE}\n"
    assert client.get(f"/gradio_api/file={fhir_file['path']}").json()["status"] == "preliminary"
    assert "as a DRAFT" in status and "No DICOM SR" in status  # a PNG study has no DICOM UIDs to cite
    assert (record["findings"], record["impression"], record["indication"]) == (findings, impression, "chest pain")
    assert record["labels"]["Pneumothorax"] == POSITIVE
    assert {"observation": "Pneumothorax", "status": "present", "side": "right", "critical": True} in \
        record["claimed_findings"]
    # no study was shown: no study id for the file name, only the time
    assert re.fullmatch(r"cxr_report_unidentified_20\d{6}-\d{6}\.txt", Path(text_file["path"]).name)
    assert "Exported cxr_report_unidentified_" in status


def test_two_users_drafting_at_once_are_queued_and_both_served(client, drafter, png_path):
    first = submit(client, "draft_report", [upload(client, png_path)], "")
    second = submit(client, "draft_report", [upload(client, png_path)], "")
    expected = model_draft(drafter, Image.open(png_path))["findings"]
    assert result(client, "draft_report", first)[0] == expected
    assert result(client, "draft_report", second)[0] == expected


def test_config_is_reachable_and_the_page_keeps_nothing_outside_its_private_folder(client, page, png_path):
    config = client.get("/config").json()
    assert any(NOTICE in str(component.get("props", {}).get("value")) for component in config["components"])
    assert config["analytics_enabled"] is False and config["run_history"] is False

    folder = Path(gr.utils.get_upload_folder())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert Path(upload(client, png_path)["path"]).is_relative_to(folder)


def test_cli_explains_itself_and_says_what_to_do_without_a_model(tmp_path):
    app = str(REPO_ROOT / "app.py")
    shown = subprocess.run([sys.executable, app, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0 and "--model" in shown.stdout and "127.0.0.1" in shown.stdout
    missing = subprocess.run([sys.executable, app], capture_output=True, text=True, cwd=tmp_path)
    # a usage error naming the option: an installed page has no `make demo` to point to
    assert missing.returncode == 2 and "the following arguments are required: --model" in missing.stderr
    assert "make demo" not in shown.stdout + missing.stderr


# --- a release with a finding head: checklist, heatmaps, disagreements, redraft ----------------------------------

@pytest.fixture(scope="module")
def head_drafter(head_release_dir):
    return ReportDrafter.from_pretrained(head_release_dir)


@pytest.fixture(scope="module")
def enlarged_heart_png(tmp_path_factory):
    from conftest import noise_image

    path = tmp_path_factory.mktemp("head_images") / "study.png"
    noise_image(1).save(path)  # the head release calls Cardiomegaly on this image
    return path


def test_the_checklist_shows_each_findings_probability_and_a_corrected_finding_redrafts(head_drafter,
                                                                                          enlarged_heart_png):
    from conftest import HEAD_FINDINGS
    from modeling_cliptt5.app.web_app import draft_report

    findings, impression, info, _, draft, checklist, viewer = draft_report(head_drafter, [str(enlarged_heart_png)], "")
    head = head_drafter.model.predict_findings(**head_drafter.processor(images=[Image.open(enlarged_heart_png)]))
    assert checklist["choices"] == [(f"{name}  {float(p):.2f}", name)
                                    for name, p in zip(HEAD_FINDINGS, head.probabilities[0])]
    assert "Cardiomegaly" in checklist["value"] and "heart is enlarged" in findings
    assert "following its findings" in info
    assert draft["predicted_findings"] == checklist["value"]
    # one heatmap per finding over the image, and the viewer's choice of which to show
    assert viewer.count('class="cxr-heatmap"') == len(HEAD_FINDINGS)
    assert all(f'<option value="{name}">' in viewer for name in HEAD_FINDINGS)
    # the reader unchecks Cardiomegaly and redrafts: the draft follows the correction
    findings, _, info, _, draft, checklist, _ = draft_report(head_drafter, [str(enlarged_heart_png)], "",
                                                             findings=[])
    assert "heart is normal" in findings and "following the findings you checked" in info
    assert checklist["value"] == [] and draft["guidance"] == []


def test_sentences_that_disagree_with_the_checklist_are_marked_and_missing_findings_listed(head_drafter):
    from conftest import HEAD_FINDINGS
    from modeling_cliptt5.app.web_app import check_draft

    draft = {"findings": "x"}
    text = "The heart is enlarged. Small left pleural effusion."
    agreed = check_draft(HEAD_FINDINGS, text, "", ["Cardiomegaly", "Pleural Effusion"], draft)
    assert "agree" in agreed and "<mark" not in agreed
    marked = check_draft(HEAD_FINDINGS, text, "", ["Pleural Effusion", "Lung Lesion"], draft)
    assert '<mark class="disagree" title="not in the findings checklist: Cardiomegaly">The heart is enlarged.</mark>' \
        in marked
    assert "Checked but not stated in the text: Lung Lesion" in marked
    assert check_draft(HEAD_FINDINGS, text, "", [], {}) == ""  # nothing drafted yet


def test_a_heatmap_covers_the_square_the_model_read_and_is_strongest_where_the_map_is():
    from modeling_cliptt5.app.study_viewer import heatmap_data_uri

    finding_map = np.zeros((4, 4))  # of a wide image (200 x 100): the model read the centre 100 x 100 square
    finding_map[0, 3] = 1.0  # top-right patch
    uri = heatmap_data_uri((200, 100), finding_map)
    overlay = np.array(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    alpha = overlay[..., 3].astype(float)
    assert overlay.shape[:2] == (100, 200)
    assert alpha[:, :50].max() == 0 and alpha[:, 150:].max() == 0  # outside the square: transparent
    row, column = np.unravel_index(alpha.argmax(), alpha.shape)
    assert row < 25 and 125 <= column < 150  # the top-right quarter-cell of the square


def test_the_export_keeps_the_readers_checklist_beside_the_models_probabilities(head_drafter, enlarged_heart_png):
    from modeling_cliptt5.app.web_app import draft_report, export_report

    findings, impression, _, _, draft, _, _ = draft_report(head_drafter, [str(enlarged_heart_png)], "")
    paths, _, _ = export_report("model", findings, impression, "", draft, ["Lung Lesion"])
    record = json.loads(Path(paths["json"]).read_text())
    assert record["findings_checklist"] == {"checked_by_reader": ["Lung Lesion"],
                                            "model_findings": draft["predicted_findings"],
                                            "model_probabilities": draft["finding_probabilities"]}


def test_uploads_are_deleted_on_schedule_and_leave_no_empty_temporary_files(drafter, png_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", os.environ.get("GRADIO_TEMP_DIR", ""))  # restored after this test
    short = build_app(drafter, delete_after=2)  # swept every second
    folder = Path(os.environ["GRADIO_TEMP_DIR"])
    with TestClient(gr.mount_gradio_app(FastAPI(), short, path="/", **serve_options())) as short_client:
        uploaded = upload(short_client, png_path)
        assert Path(uploaded["path"]).is_relative_to(folder)
        findings, *_ = call(short_client, "draft_report", [uploaded], "")
        assert findings
        files = [path for path in folder.rglob("*") if path.is_file()]
        assert files and all(path.stat().st_size > 0 for path in files), files  # no empty file per event
        deadline = time.monotonic() + 15
        while Path(uploaded["path"]).exists() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not Path(uploaded["path"]).exists(), "an upload older than the schedule's age was not deleted"
        assert time.monotonic() < deadline
    assert folder.is_dir()  # the folder itself stays until the server exits

"""The page's study bookkeeping without a browser: whose study it is (headers), what joins it, what a redraft
keeps, what an export refuses and how it is named, the bounded draft queue, and the upload sweeper."""

import json
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_files import block_image, grayscale_dicom

pytest.importorskip("gradio")
from modeling_cliptt5.app.page_server import DraftTurns, ServerBusy, UploadSweeper  # noqa: E402
from modeling_cliptt5.app.web_app import (  # noqa: E402
    ExportRefused, export_report, keep_version, show_study, stale_note, update_study,
)

PATIENT = {"PatientID": "P-1001", "PatientName": "Doe^Jane", "AccessionNumber": "ACC 77/1", "StudyDate": "20261130",
           "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1"}


def dicom(path, view, **changes):
    return str(grayscale_dicom(block_image(size=(24, 20)), path, header={**PATIENT, "ViewPosition": view, **changes}))


def png(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24), dtype=np.uint8)).save(path)
    return str(path)


def test_a_study_takes_its_identity_from_the_headers_and_refuses_another_patients_file(tmp_path):
    frontal, lateral = dicom(tmp_path / "pa.dcm", "PA"), dicom(tmp_path / "ll.dcm", "LL")
    study, refused, notes, is_new = update_study([frontal], {})
    assert is_new and refused == [] and notes == []
    assert study["identity"] == {"patient_id": "P-1001", "patient_name": "Doe^Jane", "accession_number": "ACC 77/1",
                                 "study_date": "2026-11-30", "study_instance_uid": PATIENT["StudyInstanceUID"]}
    assert study["views"] == ["PA"]

    other_patient = dicom(tmp_path / "other.dcm", "PA", PatientID="P-2002", StudyInstanceUID="1.2.3.4")
    added, refused, notes, is_new = update_study([frontal, lateral, other_patient], study)
    assert not is_new and added["token"] == study["token"]  # the same study, grown by one file
    assert added["files"] == [frontal, lateral] and added["views"] == ["PA", "LL"]
    assert notes == ["Added ll.dcm to this study."]
    assert len(refused) == 1 and refused[0].startswith("other.dcm is of another patient or study, patient ID P-2002 "
                                                       "(this study: P-1001)")

    photo = png(tmp_path / "photo.png")
    joined, _, notes, _ = update_study([frontal, lateral, photo], added)
    assert joined["files"][-1] == photo
    assert "photo.png has no DICOM header: check that it is of patient ID P-1001." in notes

    removed, _, notes, _ = update_study([frontal], joined)
    assert removed["files"] == [frontal] and "Removed ll.dcm from this study." in notes


def test_the_frontal_leads_the_study_whatever_order_the_files_came_in(tmp_path):
    lateral, frontal = dicom(tmp_path / "ll.dcm", "LL"), dicom(tmp_path / "pa.dcm", "PA")
    study, *_ = update_study([lateral, frontal], {})
    assert study["files"] == [frontal, lateral] and study["views"] == ["PA", "LL"]
    viewer, messages = show_study(study["files"], views=study["views"])
    assert viewer.index("Image 1: pa.dcm (PA)") < viewer.index("Image 2: ll.dcm (LL)")
    assert "Views:" not in messages

    # a header with only a view code: the page's views and the model's order read it alike
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10214", "SRT", "postero-anterior"
    coded = str(grayscale_dicom(block_image(size=(24, 20)), tmp_path / "coded.dcm",
                                header={**PATIENT, "ViewCodeSequence": [code]}))
    study, *_ = update_study([lateral, coded], {})
    assert study["files"] == [coded, lateral] and study["views"] == ["postero-anterior", "LL"]

    second, first = png(tmp_path / "b.png", 1), png(tmp_path / "a.png", 2)
    photos, *_ = update_study([second, first], {})
    assert photos["files"] == [second, first]  # no header names a view: the order they were dropped in
    _, messages = show_study(photos["files"], views=photos["views"])
    assert "Views: No header names a frontal view: b.png is taken as the frontal." in messages


def test_files_that_share_nothing_with_the_study_start_a_new_one(tmp_path):
    first, _, _, _ = update_study([dicom(tmp_path / "a.dcm", "PA")], {})
    second, refused, _, is_new = update_study(
        [dicom(tmp_path / "b.dcm", "AP", PatientID="P-2002", StudyInstanceUID="1.2.3.4")], first)
    assert is_new and refused == [] and second["token"] != first["token"]
    assert second["identity"]["patient_id"] == "P-2002"
    cleared, _, _, is_new = update_study([], second)
    assert is_new and cleared["files"] == [] and cleared["identity"] == {}


def test_a_new_drop_of_two_patients_keeps_the_first_and_refuses_the_second(tmp_path):
    mine = dicom(tmp_path / "mine.dcm", "PA")
    theirs = dicom(tmp_path / "theirs.dcm", "PA", PatientID="P-3003")
    study, refused, _, _ = update_study([mine, theirs], {})
    assert study["files"] == [mine] and "theirs.dcm is of another patient or study, patient ID P-3003" in refused[0]


def draft_of(study, **values):
    return {"findings": "Lungs clear.", "impression": "Normal.", "images": len(study["files"]),
            "keys": study["keys"], **values}


def test_the_export_carries_the_study_its_id_and_time_and_the_name_only_when_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    study, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA"), dicom(tmp_path / "ll.dcm", "LL")], {})
    when = datetime(2026, 12, 1, 9, 30, 5)
    text_path, json_path = export_report("model", "Edited findings.", "Normal.", "", draft_of(study), study=study,
                                         when=when)
    assert Path(text_path).name == "cxr_report_ACC-77-1_20261201-093005.txt"
    assert Path(json_path).name == "cxr_report_ACC-77-1_20261201-093005.json"
    text = Path(text_path).read_text()
    assert text.startswith("Patient ID: P-1001\nAccession: ACC 77/1\nStudy date: 2026-11-30\nViews: PA, LL\n"
                           "Exported: 2026-12-01 09:30:05\n\nFINDINGS: Edited findings.")
    record = json.loads(Path(json_path).read_text())
    assert record["study"] == {"patient_id": "P-1001", "accession_number": "ACC 77/1", "study_date": "2026-11-30",
                               "study_instance_uid": PATIENT["StudyInstanceUID"], "view_positions": ["PA", "LL"]}
    assert "Doe" not in text and "Doe" not in Path(json_path).read_text()

    text_path, json_path = export_report("model", "Edited.", "", "", draft_of(study), study=study, show_name=True)
    assert Path(text_path).read_text().startswith("Patient: Doe^Jane\nPatient ID: P-1001")
    assert json.loads(Path(json_path).read_text())["study"]["patient_name"] == "Doe^Jane"


def test_an_empty_report_or_a_draft_of_other_images_is_not_exported(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    study, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA")], {})
    draft = draft_of(study)
    with pytest.raises(ExportRefused, match=r"the report is empty"):
        export_report("model", "  ", "", "", draft, study=study)
    grown, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA"), dicom(tmp_path / "ll.dcm", "LL")], study)
    assert stale_note(draft, grown) == ("The images changed after this draft (drafted from 1 image(s); the study "
                                        "now has 2): draft again before exporting.")
    with pytest.raises(ExportRefused, match=r"images changed after this draft"):
        export_report("model", "Lungs clear.", "Normal.", "", draft, study=grown)
    assert not list(tmp_path.glob("export-*/*"))  # nothing written for a refused export
    assert stale_note(draft_of(grown), grown) is None


def test_a_redraft_keeps_text_the_model_did_not_write():
    draft = {"findings": "Lungs clear.", "impression": "Normal."}
    assert keep_version([], "Lungs clear.", "Normal.", draft, "x") == []  # the model's own text: nothing to keep
    kept = keep_version([], "Edited: small effusion.", "Normal.", draft, "Your text before the draft")
    assert kept == [{"label": "Your text before the draft", "findings": "Edited: small effusion.",
                     "impression": "Normal."}]
    assert keep_version(kept, "Edited: small effusion.", "Normal.", draft, "again") == kept  # kept once
    assert keep_version([], "Typed without a draft.", "", {}, "typed")[0]["findings"] == "Typed without a draft."
    assert keep_version([], "", "", {}, "empty") == []


def test_the_draft_queue_runs_one_lets_a_bounded_number_wait_and_refuses_the_rest():
    turns = DraftTurns(max_waiting=1)
    release, started, order = threading.Event(), threading.Event(), []

    def first():
        with turns.turn():
            started.set()
            order.append("first")
            release.wait(10)

    def second():
        with turns.turn():
            order.append("second")

    running = threading.Thread(target=first)
    running.start()
    assert started.wait(10)
    waiting = threading.Thread(target=second)
    waiting.start()
    time.sleep(0.2)
    with pytest.raises(ServerBusy, match="1 draft"):  # one runs, one waits: the third is refused at once
        with turns.turn():
            pass
    assert order == ["first"]  # the waiting one has not run while the first holds the model
    release.set()
    running.join(10)
    waiting.join(10)
    assert order == ["first", "second"]
    with turns.turn():  # and the queue is free again
        pass


def test_the_sweeper_deletes_what_is_older_than_its_age_and_keeps_the_rest(tmp_path):
    old_upload = tmp_path / "hash1" / "old.png"
    old_upload.parent.mkdir()
    old_upload.write_bytes(b"x")
    time.sleep(1.5)
    new_upload = tmp_path / "hash2" / "new.png"
    new_upload.parent.mkdir()
    new_upload.write_bytes(b"y")
    sweeper = UploadSweeper(tmp_path, age=1.0, every=0.5)
    assert sweeper.sweep() == 1
    assert not old_upload.exists() and new_upload.read_bytes() == b"y"
    time.sleep(1.5)
    assert sweeper.sweep() == 1 and not new_upload.exists()
    time.sleep(0.6)
    sweeper.sweep()
    assert list(tmp_path.iterdir()) == []  # the emptied upload folders go one interval later


def test_app_py_defaults_are_the_pages():
    from modeling_cliptt5.cli import app  # keeps its own copy so that --help answers without importing gradio
    from modeling_cliptt5.app import web_app

    assert app.MAX_WAITING_DRAFTS == web_app.MAX_WAITING_DRAFTS
    assert app.DELETE_AFTER_SECONDS == web_app.DELETE_AFTER_SECONDS
    arguments = app.parse_args([])
    assert (arguments.max_waiting, arguments.delete_uploads_after * 60) == (16, 3600)


def test_the_identity_line_shows_the_name_only_when_asked_and_says_when_there_is_none(tmp_path):
    from modeling_cliptt5.app.study_identity import identity_html

    study, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA")], {})
    shown = identity_html(study["identity"], study["views"])
    assert "Patient ID</b> P-1001" in shown and "Accession</b> ACC 77/1" in shown and "Views</b> 1: PA" in shown
    assert "Doe" not in shown
    assert "Patient</b> Doe^Jane" in identity_html(study["identity"], study["views"], show_name=True)
    unnamed, _, _, _ = update_study([png(tmp_path / "a.png")], {})
    assert "No patient identity" in identity_html(unnamed["identity"], unnamed["views"])

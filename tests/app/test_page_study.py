"""The page's study bookkeeping without a browser: whose study it is (headers), what joins it, what a redraft
keeps, what an export refuses and how it is named, the prior that goes with the study, the bounded draft queue, and
the upload sweeper."""

import json
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_files import block_image, grayscale_dicom

pytest.importorskip("gradio")
from modeling_cliptt5.app.page_server import DraftTurns, ServerBusy, UploadSweeper  # noqa: E402
from modeling_cliptt5.app.page_study import Study, choose_frontal, stale_note, update_study  # noqa: E402
from modeling_cliptt5.app.web_app import (  # noqa: E402
    ExportRefused, SignRefused, export_report, keep_version, show_study, sign_report,
)
from modeling_cliptt5.app.report_review import reviewed_sentences  # noqa: E402

PATIENT = {"PatientID": "P-1001", "PatientName": "Doe^Jane", "AccessionNumber": "ACC 77/1", "StudyDate": "20261130",
           "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1"}


def dicom(path, view, **changes):
    series = {"PA": 1, "AP": 2, "LL": 3}.get(view, 9)  # one series per view, as a modality writes them
    header = {**PATIENT, "SeriesInstanceUID": f"{PATIENT['StudyInstanceUID']}.{series}", "ViewPosition": view}
    return str(grayscale_dicom(block_image(size=(24, 20)), path, header={**header, **changes}))


def png(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24), dtype=np.uint8)).save(path)
    return str(path)


def test_a_study_takes_its_identity_from_the_headers_and_refuses_another_patients_file(tmp_path):
    frontal, lateral = dicom(tmp_path / "pa.dcm", "PA"), dicom(tmp_path / "ll.dcm", "LL")
    study, refused, notes, is_new = update_study([frontal], None)
    assert is_new and refused == [] and notes == []
    assert study.identity == {"patient_id": "P-1001", "patient_name": "Doe^Jane", "accession_number": "ACC 77/1",
                                 "study_date": "2026-11-30", "study_instance_uid": PATIENT["StudyInstanceUID"]}
    assert study.views == ["PA"]

    other_patient = dicom(tmp_path / "other.dcm", "PA", PatientID="P-2002", StudyInstanceUID="1.2.3.4")
    added, refused, notes, is_new = update_study([frontal, lateral, other_patient], study)
    assert not is_new and added.token == study.token  # the same study, grown by one file
    assert added.files == [frontal, lateral] and added.views == ["PA", "LL"]
    assert notes == ["Added ll.dcm to this study."]
    assert len(refused) == 1 and refused[0].startswith("other.dcm is of another patient or study, patient ID P-2002 "
                                                       "(this study: P-1001)")

    photo = png(tmp_path / "photo.png")
    joined, _, notes, _ = update_study([frontal, lateral, photo], added)
    assert joined.files[-1] == photo
    assert "photo.png has no DICOM header: check that it is of patient ID P-1001." in notes

    removed, _, notes, _ = update_study([frontal], joined)
    assert removed.files == [frontal] and "Removed ll.dcm from this study." in notes


def test_the_frontal_leads_the_study_whatever_order_the_files_came_in(tmp_path):
    lateral, frontal = dicom(tmp_path / "ll.dcm", "LL"), dicom(tmp_path / "pa.dcm", "PA")
    study, *_ = update_study([lateral, frontal], None)
    assert study.files == [frontal, lateral] and study.views == ["PA", "LL"]
    viewer, messages = show_study(study.files, views=study.views)
    assert viewer.index("Image 1: pa.dcm (PA)") < viewer.index("Image 2: ll.dcm (LL)")
    assert "Views:" not in messages

    # a header with only a view code: the page's views and the model's order read it alike
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10214", "SRT", "postero-anterior"
    coded = str(grayscale_dicom(block_image(size=(24, 20)), tmp_path / "coded.dcm",
                                header={**PATIENT, "ViewCodeSequence": [code]}))
    study, *_ = update_study([lateral, coded], None)
    assert study.files == [coded, lateral] and study.views == ["postero-anterior", "LL"]

    second, first = png(tmp_path / "b.png", 1), png(tmp_path / "a.png", 2)
    photos, *_ = update_study([second, first], None)
    assert photos.files == [second, first]  # no header names a view: the order they were dropped in
    _, messages = show_study(photos.files, views=photos.views)
    assert "Views: No header names a frontal view: b.png is taken as the frontal." in messages


def test_files_that_share_nothing_with_the_study_start_a_new_one(tmp_path):
    first, _, _, _ = update_study([dicom(tmp_path / "a.dcm", "PA")], None)
    second, refused, _, is_new = update_study(
        [dicom(tmp_path / "b.dcm", "AP", PatientID="P-2002", StudyInstanceUID="1.2.3.4")], first)
    assert is_new and refused == [] and second.token != first.token
    assert second.identity["patient_id"] == "P-2002"
    cleared, _, _, is_new = update_study([], second)
    assert is_new and cleared.files == [] and cleared.identity == {}


def test_a_new_drop_of_two_patients_keeps_the_first_and_refuses_the_second(tmp_path):
    mine = dicom(tmp_path / "mine.dcm", "PA")
    theirs = dicom(tmp_path / "theirs.dcm", "PA", PatientID="P-3003")
    study, refused, _, _ = update_study([mine, theirs], None)
    assert study.files == [mine] and "theirs.dcm is of another patient or study, patient ID P-3003" in refused[0]


def draft_of(study, **values):
    return {"findings": "Lungs clear.", "impression": "Normal.", "images": len(study.files),
            "keys": study.keys, **values}


def test_the_export_carries_the_study_its_id_and_time_and_the_name_only_when_shown(tmp_path, monkeypatch):
    import pydicom

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    study, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA"), dicom(tmp_path / "ll.dcm", "LL")], None)
    when = datetime(2026, 12, 1, 9, 30, 5)
    paths, no_sr, _ = export_report("model", "Edited findings.", "Normal.", "", draft_of(study), study=study,
                                    when=when)
    assert no_sr is None
    assert {kind: Path(path).name for kind, path in paths.items()} == {
        kind: f"cxr_report_ACC-77-1_20261201-093005{suffix}"
        for kind, suffix in (("txt", ".txt"), ("json", ".json"), ("fhir", "_fhir.json"), ("sr", "_sr.dcm"))}
    text = Path(paths["txt"]).read_text()
    assert text.startswith("DRAFT - NOT SIGNED: for review only, not a final report.\nPatient ID: P-1001\n"
                           "Accession: ACC 77/1\nStudy date: 2026-11-30\nViews: PA, LL\nExported: 20")
    assert "\n\nFINDINGS: Edited findings." in text
    record = json.loads(Path(paths["json"]).read_text())
    assert record["study"] == {"patient_id": "P-1001", "accession_number": "ACC 77/1", "study_date": "2026-11-30",
                               "study_instance_uid": PATIENT["StudyInstanceUID"], "view_positions": ["PA", "LL"]}
    assert record["signature"] is None
    # The SR belongs to the images' study and cites both images, frontal first.
    sr = pydicom.dcmread(paths["sr"])
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    cited = [item.ReferencedSOPInstanceUID for series in evidence.ReferencedSeriesSequence
             for item in series.ReferencedSOPSequence]
    assert evidence.StudyInstanceUID == sr.StudyInstanceUID == PATIENT["StudyInstanceUID"]
    assert cited == [pydicom.dcmread(tmp_path / name).SOPInstanceUID for name in ("pa.dcm", "ll.dcm")]
    assert sr.VerificationFlag == "UNVERIFIED"
    # The name stays off the text, JSON and FHIR exports unless the page shows it; the SR goes back into the study
    # that holds the images, and repeats their Patient module as it is (a PACS flags an SR that differs).
    assert str(sr.PatientName) == "Doe^Jane"
    for kind in ("txt", "json", "fhir"):
        assert b"Doe" not in Path(paths[kind]).read_bytes(), kind

    paths, _, _ = export_report("model", "Edited.", "", "", draft_of(study), study=study, show_name=True)
    assert Path(paths["txt"]).read_text().startswith("DRAFT - NOT SIGNED: for review only, not a final report.\n"
                                                     "Patient: Doe^Jane\nPatient ID: P-1001")
    assert json.loads(Path(paths["json"]).read_text())["study"]["patient_name"] == "Doe^Jane"
    assert str(pydicom.dcmread(paths["sr"]).PatientName) == "Doe^Jane"


def test_a_png_study_exports_without_a_dicom_sr_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    study, _, _, _ = update_study([png(tmp_path / "a.png")], None)
    paths, no_sr, sr = export_report("model", "Lungs clear.", "Normal.", "", draft_of(study), study=study)
    assert sorted(paths) == ["fhir", "json", "txt"] and "this study has none (PNG/JPEG only)" in no_sr
    assert sr is None
    assert not list(tmp_path.glob("export-*/*.dcm"))


def test_signing_needs_every_sentence_accepted_and_a_name_and_the_export_then_says_who_signed(tmp_path,
                                                                                              monkeypatch):
    import pydicom

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    study, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA")], None)
    draft = draft_of(study, findings="Lungs clear. No effusion.", impression="Normal.")
    model_text = ("Lungs clear. No effusion.", "Normal.")
    with pytest.raises(SignRefused, match=r'2 not yet accepted, the first: "Findings: No effusion."'):
        sign_report("Reader, Dr Ada", *model_text, ["Findings: Lungs clear.", "Impression: Normal."][:1], draft,
                    study)
    everything = ["Findings: Lungs clear.", "Findings: No effusion.", "Impression: Normal."]
    with pytest.raises(SignRefused, match="reader's name"):
        sign_report("  ", *model_text, everything, draft, study)
    # DICOM and FHIR keep family and given names apart: the reader says which is which
    with pytest.raises(SignRefused, match=r"Type the reader's name as Family, Given \(for example: Reader, Ada\)"):
        sign_report("Dr Ada Reader", *model_text, everything, draft, study)
    # A sentence the reader rewrote is the reader's own: it needs no separate acceptance.
    when = datetime(2026, 12, 1, 10, 15, tzinfo=timezone.utc)
    signed = sign_report(" Reader ,  Dr Ada ", "Lungs clear. Small left effusion.", "Normal.",
                         ["Findings: Lungs clear.", "Impression: Normal."], draft, study, when=when)
    assert signed == {"reader": "Reader, Dr Ada", "signed_at": "2026-12-01T10:15:00+00:00"}

    paths, _, _ = export_report("model", "Lungs clear. Small left effusion.", "Normal.", "", draft, study=study,
                                signature=signed)
    text = Path(paths["txt"]).read_text()
    assert "DRAFT" not in text and "Signed by Dr Ada Reader on 2026-12-01 10:15 +00:00" in text
    assert json.loads(Path(paths["json"]).read_text())["signature"] == signed
    assert json.loads(Path(paths["fhir"]).read_text())["status"] == "final"
    sr = pydicom.dcmread(paths["sr"])
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "VERIFIED")
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Reader^Ada^^Dr"
    practitioner = next(resource for resource in json.loads(Path(paths["fhir"]).read_text())["contained"]
                        if resource["resourceType"] == "Practitioner")
    assert practitioner["name"] == [{"text": "Dr Ada Reader", "family": "Reader", "given": ["Ada"], "prefix": ["Dr"]}]


def test_the_review_keeps_accepted_sentences_while_their_text_stands():
    draft = {"findings": "Lungs clear. No effusion.", "impression": "Normal."}
    items, done = reviewed_sentences("Lungs clear. No effusion.", "Normal.", ["Findings: No effusion."], draft)
    assert items == ["Findings: Lungs clear.", "Findings: No effusion.", "Impression: Normal."]
    assert done == ["Findings: No effusion."]
    # the reader edits the accepted sentence: the new one is the reader's; the untouched ones wait as before
    items, done = reviewed_sentences("Lungs clear. No large effusion.", "Normal.", done, draft)
    assert done == ["Findings: No large effusion."]


def test_an_empty_report_or_a_draft_of_other_images_is_not_exported(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    study, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA")], None)
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


def test_the_draft_queue_runs_one_lets_a_bounded_number_wait_and_refuses_the_rest(capsys):
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
    log, deadline = "", time.monotonic() + 10
    while "A draft waits for the model" not in log and time.monotonic() < deadline:  # the server's log says so
        log += capsys.readouterr().err
        time.sleep(0.01)
    assert "A draft waits for the model" in log
    assert log.index("A draft is being drafted.") < log.index("A draft waits for the model")  # the first's, then
    with pytest.raises(ServerBusy, match="1 draft"):  # one runs, one waits: the third is refused at once
        with turns.turn():
            pass
    assert capsys.readouterr().err == "A draft was refused: the server is busy.\n"
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
    arguments = app.parse_args(["--model", "any"])
    assert (arguments.max_waiting, arguments.delete_uploads_after * 60) == (16, 3600)


def test_the_identity_line_shows_the_name_only_when_asked_and_says_when_there_is_none(tmp_path):
    from modeling_cliptt5.app.study_identity import identity_html

    study, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA")], None)
    shown = identity_html(study.identity, study.views)
    assert "Patient ID</b> P-1001" in shown and "Accession</b> ACC 77/1" in shown and "Views</b> 1: PA" in shown
    assert "Doe" not in shown
    assert "Patient</b> Doe^Jane" in identity_html(study.identity, study.views, show_name=True)
    unnamed, _, _, _ = update_study([png(tmp_path / "a.png")], None)
    assert "No patient identity" in identity_html(unnamed.identity, unnamed.views)


# The SR a PACS receives: the images' Patient and General Study modules, a series of its own, a signed SR that
# supersedes the draft, names in person-name form; and every export saying how the draft was made.

FULL_HEADER = {"PatientBirthDate": "19800214", "PatientSex": "F", "StudyTime": "101530", "StudyID": "S-77",
               "ReferringPhysicianName": "Referrer^Rita"}
SR_MODULES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
              "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def dciodvfy_findings(path):
    """dicom3tools' validator on a file: its Error lines and Warning lines."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dicom3tools (dciodvfy) not installed: apt-get install -y dicom3tools")
    output = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (output.stdout + output.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")]


def test_the_sr_files_into_the_images_study_supersedes_its_draft_and_validates(tmp_path, monkeypatch):
    import pydicom

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    files = [dicom(tmp_path / "pa.dcm", "PA", SeriesNumber=3, **FULL_HEADER),
             dicom(tmp_path / "ll.dcm", "LL", SeriesNumber=4, **FULL_HEADER)]
    study, _, _, _ = update_study(files, None)
    draft = draft_of(study, findings="Right pneumothorax. No pleural effusion.", impression="Right pneumothorax.")
    paths, _, earlier = export_report("model", draft["findings"], draft["impression"], "", draft, study=study)
    signed = sign_report("Reader, Dr Ada", draft["findings"], draft["impression"],
                         ["Findings: Right pneumothorax.", "Findings: No pleural effusion.",
                          "Impression: Right pneumothorax."], draft, study)
    signed_paths, _, _ = export_report("model", draft["findings"], draft["impression"], "", draft, study=study,
                                       signature=signed, earlier_sr=earlier)
    source = pydicom.dcmread(files[0])
    draft_sr, signed_sr = pydicom.dcmread(paths["sr"]), pydicom.dcmread(signed_paths["sr"])
    for sr in (draft_sr, signed_sr):
        # what the images' headers say, attribute for attribute (the name too: the SR goes back to their study)
        assert [str(sr.get(keyword, "")) for keyword in SR_MODULES] == [
            str(source.get(keyword, "")) for keyword in SR_MODULES]
        assert sr.SeriesNumber == 5  # after the images' series 3 and 4, its own
    # the signed SR continues the draft's series and cites it as the document it supersedes
    assert signed_sr.SeriesInstanceUID == draft_sr.SeriesInstanceUID
    assert (draft_sr.InstanceNumber, signed_sr.InstanceNumber) == (1, 2)
    (study_item,) = signed_sr.PredecessorDocumentsSequence
    (series_item,) = study_item.ReferencedSeriesSequence
    (sop,) = series_item.ReferencedSOPSequence
    assert (study_item.StudyInstanceUID, series_item.SeriesInstanceUID, sop.ReferencedSOPInstanceUID) == (
        draft_sr.StudyInstanceUID, draft_sr.SeriesInstanceUID, draft_sr.SOPInstanceUID)
    assert "PredecessorDocumentsSequence" not in draft_sr
    # the findings also coded, with their laterality (the codes of the FHIR export)
    findings = next(item for item in signed_sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121070")
    (coded,) = [item for item in findings.ContentSequence if item.ValueType == "CODE"]
    assert coded.ConceptCodeSequence[0].CodeValue == "36118008"  # Pneumothorax
    assert coded.ContentSequence[0].ConceptCodeSequence[0].CodeValue == "24028007"  # right
    for path in (paths["sr"], signed_paths["sr"]):
        errors, warnings = dciodvfy_findings(path)
        assert errors == [], errors
        assert not [line for line in warnings if "Study Time" in line or "Study ID" in line
                    or "Person Name" in line], warnings


def test_every_export_says_which_release_drafted_from_which_images_and_the_unfamiliar_image_check(tmp_path,
                                                                                                    monkeypatch):
    import pydicom
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    files = [dicom(tmp_path / "pa.dcm", "PA"), dicom(tmp_path / "ll.dcm", "LL"), png(tmp_path / "photo.png")]
    study, _, _, _ = update_study(files, None)
    # the model read the frontal and the photo (two views), not the lateral
    draft = draft_of(study, images=2, read=["pa.dcm", "photo.png"], ood_score=4.25, ood_flag=True,
                     ood_threshold=3.12)
    release = {"name": "cliptt5-iu-xray", "revision": "sha256:0123456789abcdef"}
    paths, _, _ = export_report("model", "Lungs clear.", "Normal.", "", draft, study=study, release=release)
    frontal = pydicom.dcmread(files[0]).SOPInstanceUID
    record = json.loads(Path(paths["json"]).read_text())
    assert record["release"] == release
    assert record["images_read"] == [{"view": "PA", "sop_instance_uid": frontal},
                                     {"view": "", "sha1": study.keys[study.files.index(files[2])]}]
    assert record["ood"] == {"score": 4.25, "flag": True, "threshold": 3.12}
    text = Path(paths["txt"]).read_text()
    assert "Drafted by: cliptt5-iu-xray (revision sha256:0123456789abcdef)" in text
    assert f"Images read by the model: 1: PA (SOP Instance UID {frontal}); 2: view not stated (file SHA-1 " in text
    assert ("Unfamiliar-image check: FLAGGED: unlike the model's training images, the draft may be meaningless "
            "(score 4.25, flagged beyond 3.12)") in text
    fhir = json.loads(Path(paths["fhir"]).read_text())
    DiagnosticReport.model_validate(fhir)
    resources = {resource["id"]: resource for resource in fhir["contained"]}
    assert resources["drafting-model"]["deviceName"] == [{"name": "cliptt5-iu-xray", "type": "model-name"}]
    check = resources["unfamiliar-image-check"]
    assert check["valueBoolean"] is True and check["device"] == {"reference": "#drafting-model"}
    assert frontal in check["note"][0]["text"]
    sr = pydicom.dcmread(paths["sr"])
    texts = {(item.ConceptNameCodeSequence[0].CodeValue, item.TextValue) for item in sr.ContentSequence
             if item.ValueType == "TEXT"}
    assert {("111001", "cliptt5-iu-xray"), ("111003", "sha256:0123456789abcdef")} <= texts
    assert any(code == "121106" and value.startswith("Unfamiliar-image check: FLAGGED") for code, value in texts)


# Review and sign: every copy of a repeated sentence, and no silent contradiction

NODULE = "Right upper lobe pulmonary nodule; CT recommended."


def test_a_repeated_sentence_is_reviewed_as_often_as_it_is_written(tmp_path):
    study, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA")], None)
    impression = " ".join([NODULE] * 10)
    draft = draft_of(study, findings="Lungs otherwise clear. No effusion. Heart normal. Mediastinum normal. No "
                                     "fracture.", impression=impression)
    items, done = reviewed_sentences(draft["findings"], impression, [], draft)
    assert len(items) == 15  # 5 findings sentences and all 10 copies of the impression's one
    assert items[5:7] == [f"Impression: {NODULE}", f"Impression: {NODULE} [repeat 2]"]
    assert items[-1] == f"Impression: {NODULE} [repeat 10]"
    accepted = items[:6]  # one tick for the sentence no longer covers its nine copies
    with pytest.raises(SignRefused, match=r"9 not yet accepted, the first: \"Impression: .* \[repeat 2\]\""):
        sign_report("Reader, Ada", draft["findings"], impression, accepted, draft, study)
    # the reader deletes the copies: what is left is reviewed
    assert reviewed_sentences(draft["findings"], NODULE, accepted, draft)[1] == items[:6]


def test_signing_over_a_contradiction_or_the_checklist_needs_an_override_that_every_export_records(tmp_path,
                                                                                                    monkeypatch):
    import pydicom

    from modeling_cliptt5.app.web_app import check_draft

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    study, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA")], None)
    findings, impression = "No pleural effusion or pneumothorax.", "Right pneumothorax."
    draft = draft_of(study, findings=findings, impression=impression)
    every = [f"Findings: {findings}", f"Impression: {impression}"]
    assert ("The text says both: Pneumothorax: &quot;Right pneumothorax.&quot; but &quot;No pleural effusion or "
            "pneumothorax.&quot;") in check_draft([], findings, impression, [], draft)
    with pytest.raises(SignRefused, match=r"1 disagreement\(s\) open \(the text says both: Pneumothorax: "
                                          r"\"Right pneumothorax.\" but \"No pleural effusion or pneumothorax.\"\)"):
        sign_report("Reader, Ada", findings, impression, every, draft, study)
    # a finding head's checklist the text does not follow is a disagreement too
    names = ["Pneumothorax", "Pleural Effusion"]
    with pytest.raises(SignRefused, match=r"2 disagreement\(s\) open \(Pneumothorax: stated in the text, not checked"):
        sign_report("Reader, Ada", findings, impression, every, draft, study, names=names, checked=[])
    # "No left effusion" does not contradict a right one; the checklist agreeing, nothing is open
    agreed = sign_report("Reader, Ada", "No left pleural effusion.", "Small right pleural effusion.",
                         ["Findings: No left pleural effusion.", "Impression: Small right pleural effusion."],
                         draft_of(study, findings="No left pleural effusion.",
                                  impression="Small right pleural effusion."), study,
                         names=names, checked=["Pleural Effusion"])
    assert "override" not in agreed

    signed = sign_report("Reader, Ada", findings, impression, every, draft, study, override=True)
    assert signed["override"] == ['the text says both: Pneumothorax: "Right pneumothorax." but "No pleural effusion or '
                                  'pneumothorax."']
    paths, _, _ = export_report("model", findings, impression, "", draft, study=study, signature=signed)
    line = f"Signed despite 1 open disagreement(s): {signed['override'][0]}"
    assert line in Path(paths["txt"]).read_text().splitlines()
    assert json.loads(Path(paths["json"]).read_text())["signature"]["override"] == signed["override"]
    fhir = json.loads(Path(paths["fhir"]).read_text())
    import base64
    assert line in base64.b64decode(fhir["presentedForm"][0]["data"]).decode()
    sr = pydicom.dcmread(paths["sr"])
    assert line in [item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"]


def test_the_reader_chooses_the_frontal_and_the_draft_follows(tmp_path):
    # PNGs carry no view: dropped lateral first, the lateral would be read as the frontal
    lateral, frontal = png(tmp_path / "lateral.png", seed=1), png(tmp_path / "frontal.png", seed=2)
    study, _, notes, _ = update_study([lateral, frontal], None)
    assert study.names == ["lateral.png", "frontal.png"]
    drafted = draft_of(study)
    chosen, note = choose_frontal(study, "frontal.png")
    assert chosen.names == ["frontal.png", "lateral.png"] and chosen.files == [frontal, lateral]
    assert chosen.keys == study.keys[::-1] and chosen.frontal == "frontal.png" and note is None
    assert stale_note(drafted, chosen) == ("Another image was chosen as the frontal after this draft: draft again "
                                           "before exporting.")
    # the choice holds when another file joins the study
    grown, _, _, _ = update_study([lateral, frontal, png(tmp_path / "third.png", seed=3)], chosen)
    assert grown.names[0] == "frontal.png"
    # named against a header: the note says which header disagrees
    headed, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA"), dicom(tmp_path / "ll.dcm", "LL")], None)
    _, note = choose_frontal(headed, "ll.dcm")
    assert note == "ll.dcm was named the frontal image, but its header names a lateral view (LL)"


def test_the_draft_reads_the_frontal_the_reader_chose(head_release_dir, tmp_path):
    from modeling_cliptt5.app.web_app import ReportDrafter, draft_report

    drafter = ReportDrafter.from_pretrained(head_release_dir)
    lateral, frontal = png(tmp_path / "lateral.png", seed=1), png(tmp_path / "frontal.png", seed=2)
    _, _, info, messages, *_ = draft_report(drafter, [lateral, frontal], "", frontal="frontal.png")
    assert "drafted from frontal.png; shown for review only, not read by the model: lateral.png" in messages


# The prior study: it stays with its study, goes with a new one, a change of it makes a draft stale, and every export
# of a draft against it names it (the SR citing its images and validating).

PRIOR = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.2", "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.2.1",
         "AccessionNumber": "ACC 11", "StudyDate": "20250101"}


def test_the_prior_stays_with_its_study_and_a_changed_prior_makes_the_draft_stale(tmp_path):
    frontal = dicom(tmp_path / "pa.dcm", "PA")
    prior, _, _, _ = update_study([dicom(tmp_path / "prior.dcm", "PA", **PRIOR)], None)
    study = replace(update_study([frontal], None)[0], prior=prior, prior_report="Small left effusion.")
    drafted = {**draft_of(study), "prior_key": study.prior_key}
    assert stale_note(drafted, study) is None
    assert stale_note(drafted, replace(study, prior_report="No effusion.")) == (
        "The prior study changed after this draft: draft again before exporting.")
    assert stale_note(drafted, replace(study, prior=None)) is not None
    assert stale_note(drafted, replace(study, prior_report=" Small  left effusion. ")) is None  # spacing only

    grown, _, _, _ = update_study([frontal, dicom(tmp_path / "ll.dcm", "LL")], study)
    assert grown.prior is prior and grown.prior_report == "Small left effusion."  # the same study: its prior stays
    other, _, _, _ = update_study([dicom(tmp_path / "b.dcm", "PA", PatientID="P-2", StudyInstanceUID="1.2.3.4")],
                                  grown)
    assert other.prior is None and other.prior_report == ""  # a new study: the prior went with the old one
    cleared, _, _, _ = update_study([], grown)
    assert cleared.prior is None
    # a prior dropped before the study's own files is the prior of that study
    waiting = Study(prior=prior, prior_report="Small left effusion.")
    assert update_study([frontal], waiting)[0].prior is prior


def test_every_export_of_a_draft_against_a_prior_names_it_and_the_sr_cites_it_and_validates(tmp_path, monkeypatch):
    import pydicom

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    prior_file = dicom(tmp_path / "prior.dcm", "PA", **PRIOR, **FULL_HEADER)
    prior, _, _, _ = update_study([prior_file], None)
    study, _, _, _ = update_study([dicom(tmp_path / "pa.dcm", "PA", SeriesNumber=3, **FULL_HEADER)], None)
    study = replace(study, prior=prior, prior_report="Small left pleural effusion.")
    draft = draft_of(study, findings="Increased left pleural effusion.", impression="Left pleural effusion.",
                     prior_id="ACC 11")
    paths, _, _ = export_report("model", draft["findings"], draft["impression"], "", draft, study=study)
    line = "Comparison: ACC 11 (2025-01-01), images and report read"
    assert line in Path(paths["txt"]).read_text().splitlines()
    record = json.loads(Path(paths["json"]).read_text())
    assert record["comparison"]["study_instance_uid"] == PRIOR["StudyInstanceUID"]
    assert record["sentences"][0]["change"] == "increased"
    fhir = json.loads(Path(paths["fhir"]).read_text())
    assert fhir["extension"][0]["valueReference"]["identifier"]["value"] == f"urn:oid:{PRIOR['StudyInstanceUID']}"
    sr = pydicom.dcmread(paths["sr"])
    (evidence,) = sr.PertinentOtherEvidenceSequence
    assert evidence.StudyInstanceUID == PRIOR["StudyInstanceUID"]
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        pydicom.dcmread(prior_file).SOPInstanceUID
    assert dciodvfy_findings(paths["sr"]) == ([], [])  # no error, no warning

    # the same study drafted as a first study: "none", and nothing cited
    first, _, _ = export_report("model", "Left pleural effusion.", "", "", draft_of(study, prior_id=""), study=study)
    assert "Comparison: none" in Path(first["txt"]).read_text().splitlines()
    assert "PertinentOtherEvidenceSequence" not in pydicom.dcmread(first["sr"])
    assert dciodvfy_findings(first["sr"]) == ([], [])

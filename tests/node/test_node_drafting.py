"""The draft queue in-process, with a real release and database (no network): a complete study is drafted once and
its result queued for every destination in the same transaction; a study that got a new instance while it was
drafted is drafted again, not answered twice; --refuse-ood and the modality guard refuse a study with the reason;
a result written but never queued is removed at the next start, and the study drafted again; with a release that
reads priors, a follow-up is drafted against the patient's latest earlier drafted study (its signed report too, once
a reader signed it), a patient's studies sent together are drafted in date order, and the page opens a follow-up
with that prior."""

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from modeling_cliptt5.app.worklist import NodeWorklist
from modeling_cliptt5.inference.drafting import load_release
from modeling_cliptt5.node.database import NodeDatabase
from modeling_cliptt5.node.drafter import StudyDrafter
from modeling_cliptt5.node.instances import checked_instance
from modeling_cliptt5.node.service import open_storage
from modeling_cliptt5.node.settings import Caller, Destination, NodeSettings
from modeling_cliptt5.node.storage import StorageLayout, write_durably
from node_harness import (  # noqa: F401 - node_release is a fixture
    SECONDARY_CAPTURE, gradient_radiograph, node_release, study_files,
)

DESTINATIONS = [Destination("PACS", "127.0.0.1", 104), Destination("ARCHIVE", "127.0.0.1", 105)]


@pytest.fixture(scope="module")
def release(node_release):
    return load_release(node_release)


def node(tmp_path, release, **settings):
    settings = NodeSettings(release=str(release.folder), storage=str(tmp_path / "storage"), accept=[Caller("A")],
                            destinations=DESTINATIONS, study_complete_seconds=0.01, max_new_tokens=8, **settings)
    layout, database = open_storage(settings)
    return layout, database, StudyDrafter(settings, layout, database, release)


def receive(layout, database, files):
    """What the SCP does with each file: check, write durably, record."""
    for path in files:
        data = Path(path).read_bytes()
        dataset = pydicom.dcmread(path)
        instance = checked_instance(data, dataset.SOPClassUID, dataset.SOPInstanceUID, 1 << 30)
        write_durably(layout.instance_path(instance.study_instance_uid, instance.sop_instance_uid), data)
        database.add_instance(instance, layout.instance_path(instance.study_instance_uid, instance.sop_instance_uid),
                              len(data), "A", time.time())


def state_of(database, study_uid):
    (row,) = database.rows("SELECT * FROM studies WHERE study_instance_uid = ?", (study_uid,))
    return row


def test_a_complete_study_is_drafted_once_and_queued_for_every_destination(release, tmp_path):
    layout, database, drafter = node(tmp_path, release)
    study_uid, files = study_files(tmp_path / "in", count=2, seed=1)
    receive(layout, database, files)
    time.sleep(0.05)
    assert drafter.draft_complete_studies() == 1
    row = state_of(database, study_uid)
    assert row["state"] == "drafted"
    outbox = database.due_results(time.time())
    assert [(item["ae_title"], item["port"], item["result_uid"]) for item in outbox] == [
        ("PACS", 104, row["result_uid"]), ("ARCHIVE", 105, row["result_uid"])]
    assert Path(outbox[0]["path"]) == layout.result_path(row["result_uid"]) and Path(outbox[0]["path"]).is_file()
    assert drafter.draft_complete_studies() == 0  # nothing left: drafted once

    # an instance of a finished study is kept and counted, not drafted
    _, late = study_files(tmp_path / "late", count=1, seed=3, study_uid=study_uid)
    receive(layout, database, late)
    assert state_of(database, study_uid)["late_instances"] == 1 and drafter.draft_complete_studies() == 0


def test_a_study_that_grew_while_it_was_drafted_is_drafted_again(release, tmp_path):
    layout, database, drafter = node(tmp_path, release)
    study_uid, files = study_files(tmp_path / "in", count=2, seed=1)
    receive(layout, database, files[:1])
    ((uid, quiet_since),) = database.complete_studies(time.time(), 4)
    receive(layout, database, files[1:])  # arrives while the first instance is being drafted
    assert not database.finish_study(uid, quiet_since, "drafted", time.time(), result={"uid": "1.2.3", "path": "x"},
                                     destinations=DESTINATIONS)
    assert state_of(database, study_uid)["state"] == "receiving" and database.due_results(time.time()) == []
    time.sleep(0.05)
    assert drafter.draft_complete_studies() == 1
    assert len(database.due_results(time.time())) == len(DESTINATIONS)


def test_refused_studies_get_no_result_and_their_reason(release, tmp_path):
    layout, database, drafter = node(tmp_path, release, refuse_ood=True)
    unfamiliar = pydicom.uid.generate_uid()
    receive(layout, database, [gradient_radiograph(tmp_path / "ramp.dcm", unfamiliar)])
    ct_study, ct_capture = study_files(tmp_path / "ct", count=1, seed=5, sop_class=SECONDARY_CAPTURE, modality="CT")
    receive(layout, database, ct_capture)
    familiar, files = study_files(tmp_path / "in", count=1, seed=1)
    receive(layout, database, files)
    time.sleep(0.05)
    assert drafter.draft_complete_studies() == 3
    assert state_of(database, unfamiliar)["state"] == "refused"
    assert state_of(database, unfamiliar)["reason"].startswith("not drafted: unlike this model's training images")
    ct = state_of(database, ct_study)
    instance = pydicom.dcmread(ct_capture[0]).SOPInstanceUID
    assert ct["state"] == "refused" and ct["reason"] == (
        f"instance {instance}: modality CT (computed tomography) is not a projection radiograph (the model reads CR, "
        "DX or RG)")
    assert {row["study_instance_uid"] for row in database.due_results(time.time())} == {familiar}


def test_a_result_written_but_never_queued_is_removed_and_its_study_drafted_again(release, tmp_path):
    layout, database, drafter = node(tmp_path, release)
    study_uid, files = study_files(tmp_path / "in", count=1, seed=1)
    receive(layout, database, files)
    orphan = write_durably(layout.result_path("1.2.3.4"), b"half of a story")  # killed before finish_study
    database.close()
    layout, database, drafter = node(tmp_path, release)
    assert not orphan.exists() and state_of(database, study_uid)["state"] == "receiving"
    database.restart_clocks(time.time())
    time.sleep(0.05)
    assert drafter.draft_complete_studies() == 1


def test_the_database_survives_reopening_in_wal_mode(tmp_path):
    database = NodeDatabase(tmp_path / "node.sqlite3")
    assert database.rows("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    assert database.rows("PRAGMA synchronous")[0]["synchronous"] == 2  # FULL
    database.add_refusal(1.0, "association", "calling AE title not accepted", "X", "10.0.0.1")
    database.close()
    reader = NodeDatabase(tmp_path / "node.sqlite3", read_only=True)
    assert reader.status(2.0)["refusals"][0]["reason"] == "calling AE title not accepted"
    assert StorageLayout(tmp_path).database == tmp_path / "node.sqlite3"


def sr_parts(path):
    """(the findings text, the comparison's text and Study Instance UID, the UIDs of the other pertinent evidence)
    of a result the node wrote."""
    sr = pydicom.dcmread(path)
    sections = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in sr.ContentSequence}
    findings = next((item.TextValue for item in sections["Findings"].ContentSequence if item.ValueType == "TEXT"),
                    None) if "Findings" in sections else None
    prior = sections["Prior Procedure Descriptions"].ContentSequence
    comparison = next(item.TextValue for item in prior if item.ValueType == "TEXT")
    prior_uid = next((item.UID for item in prior if item.ValueType == "UIDREF"), None)
    evidence = {(study.StudyInstanceUID, item.ReferencedSOPInstanceUID)
                for study in sr.get("PertinentOtherEvidenceSequence", [])
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    return findings, comparison, prior_uid, evidence


def test_a_follow_up_is_drafted_against_the_patients_latest_earlier_study_the_node_drafted(prior_release_dir,
                                                                                          tmp_path):
    drafted_follow_ups(prior_release_dir, tmp_path)


def drafted_follow_ups(prior_release_dir, tmp_path):
    """A node with a release that reads priors drafts five studies of two patients (checked here) and a reader signs
    the second; returns (the drafter, that study's UID, its files, the report text its signature gives)."""
    from conftest import model_draft_against

    release = load_release(prior_release_dir)
    layout, database, drafter = node(tmp_path, release)

    def arrives(name, seed, patient, date):
        uid, files = study_files(tmp_path / name, count=2, seed=seed, PatientID=patient, StudyDate=date,
                                 AccessionNumber=f"ACC-{name}")
        receive(layout, database, files)
        time.sleep(0.05)
        assert drafter.draft_complete_studies() == 1
        row = state_of(database, uid)
        assert row["state"] == "drafted", row
        return uid, files, sr_parts(layout.result_path(row["result_uid"]))

    def expected(files, prior_files=None, prior_report=None):
        decoded = model_draft_against(prior_release_dir, files[0], None if prior_files is None else prior_files[0],
                                      prior_report, max_new_tokens=8)
        return decoded["findings"] or decoded["text"]

    first, first_files, (text, comparison, prior_uid, evidence) = arrives("first", 1, "PAT-7", "20240301")
    assert (comparison, prior_uid, evidence) == ("Comparison: none", None, set())
    assert text == expected(first_files)

    # the same patient six weeks later: drafted against the first study's images, which the SR cites
    later, later_files, (text, comparison, prior_uid, evidence) = arrives("later", 2, "PAT-7", "20240415")
    assert prior_uid == first and comparison.startswith("Comparison: ACC-first (2024-03-01)")
    assert comparison.endswith("images read")  # its draft is not a report: only a signed one is read
    assert evidence == {(first, pydicom.dcmread(path).SOPInstanceUID) for path in first_files}
    assert text == expected(later_files, first_files) != expected(later_files)

    # another patient, later still, and this patient's study from before the first: neither has a prior here
    for name, patient, date in (("other", "PAT-8", "20240501"), ("earliest", "PAT-7", "20240101")):
        _, _, (_, comparison, prior_uid, _) = arrives(name, 3, patient, date)
        assert (comparison, prior_uid) == ("Comparison: none", None), name

    # a reader signs the follow-up on the page (its FINAL SR queued in the node's outbox, as the worklist does)
    (row,) = database.rows("SELECT result_uid FROM studies WHERE study_instance_uid = ?", (later,))
    signed = pydicom.dcmread(layout.result_path(row["result_uid"]))
    signed.SOPInstanceUID = signed.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    signed.VerificationFlag, signed.CompletionFlag, signed.PreliminaryFlag = "VERIFIED", "COMPLETE", "FINAL"
    findings = next(item for item in signed.ContentSequence
                    if item.ConceptNameCodeSequence[0].CodeMeaning == "Findings")
    next(item for item in findings.ContentSequence if item.ValueType == "TEXT").TextValue = "Small right effusion."
    signed.save_as(tmp_path / "signed.dcm", enforce_file_format=True)
    NodeWorklist(drafter.settings).queue_signed_sr(tmp_path / "signed.dcm")

    # the next follow-up compares with the latest earlier study, not the first, and reads its signed report
    _, third_files, (text, comparison, prior_uid, _) = arrives("third", 4, "PAT-7", "20240601")
    assert prior_uid == later and comparison.endswith("images and report read")
    report = "FINDINGS: Small right effusion."  # the signed findings (this draft has no impression)
    assert text == expected(third_files, later_files, report) != expected(third_files, later_files)
    return drafter, later, later_files, report


def test_the_page_opens_a_follow_up_with_the_prior_the_node_compared_with_and_signs_it_so(prior_release_dir,
                                                                                         tmp_path):
    from types import SimpleNamespace

    gr = pytest.importorskip("gradio")
    from modeling_cliptt5.app.page_layout import lay_out_page, lay_out_worklist
    from modeling_cliptt5.app.page_server import DraftTurns
    from modeling_cliptt5.app.report_review import drafted_without_prior, reviewed_sentences
    from modeling_cliptt5.app.web_app import PageHandlers, ReportDrafter, make_private_upload_folder
    from modeling_cliptt5.app.worklist import WORKLIST_HEADERS
    from modeling_cliptt5.node.study_report import sr_comparison

    drafter, later, later_files, report = drafted_follow_ups(prior_release_dir, tmp_path)
    (third,) = [row["study_instance_uid"] for row in drafter.database.rows(
        "SELECT study_instance_uid FROM studies WHERE study_datetime LIKE '2024-06-01%'")]
    make_private_upload_folder()
    page_drafter = ReportDrafter.from_pretrained(prior_release_dir)
    with gr.Blocks():
        panel = lay_out_worklist(WORKLIST_HEADERS)
        page = lay_out_page(page_drafter)
    handlers = PageHandlers(page, page_drafter, 16_000_000, False, False, DraftTurns(4),
                            NodeWorklist(drafter.settings), panel)

    opened = handlers.node_study_opened(third, SimpleNamespace(session_hash="reader"))
    study, draft = opened[page.study], opened[page.draft]
    # the prior in its slot: the earlier study's images (shown beside) and the signed report the node read
    assert sorted(image.reference["sop_instance_uid"] for image in study.prior.images) == sorted(
        pydicom.dcmread(path).SOPInstanceUID for path in later_files)
    assert study.prior_report == report and opened[page.prior_report]["value"] == report
    assert opened[page.viewer].count("<canvas") == 4  # two views of the study, two of its prior
    # the draft is one that compared with it: its comparison sentences are not flagged as invented
    assert draft["prior_id"] == "ACC-later" and not drafted_without_prior(draft)

    items, _ = reviewed_sentences(draft["findings"], draft["impression"], [], draft)
    signed = handlers.sign("Reader, Ada", draft["findings"], draft["impression"], items, draft, study, [], False)
    final = pydicom.dcmread(drafter.layout.result_path(signed[page.report_sr]["sop_instance_uid"]))
    assert final.VerificationFlag == "VERIFIED"
    assert sr_comparison(final) == {"study_instance_uid": later, "report_read": True}


def test_a_database_made_before_patients_were_recorded_gains_the_columns(tmp_path):
    import sqlite3

    path = tmp_path / "node.sqlite"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE studies (study_instance_uid TEXT PRIMARY KEY, state TEXT NOT NULL, "
                      "first_instance_at REAL NOT NULL, last_instance_at REAL NOT NULL, quiet_since REAL NOT NULL, "
                      "late_instances INTEGER NOT NULL DEFAULT 0, finished_at REAL, reason TEXT, result_uid TEXT);"
                      "INSERT INTO studies (study_instance_uid, state, first_instance_at, last_instance_at, "
                      "quiet_since) VALUES ('1.2.3', 'drafted', 1, 1, 1);")
    old.commit()
    old.close()
    database = NodeDatabase(path)
    (row,) = database.rows("SELECT * FROM studies")
    assert (row["patient_id"], row["study_datetime"]) == ("", "")
    assert database.prior_study("1.2.3") is None  # no patient: no one's prior and no prior


def test_a_patients_studies_sent_together_are_drafted_in_date_order_each_against_the_one_before(prior_release_dir,
                                                                                               tmp_path):
    release = load_release(prior_release_dir)
    layout, database, drafter = node(tmp_path, release, batch_size=1)
    studies = {}
    # newest first, as a PACS may send a patient's history: the longest quiet study is the latest
    for name, seed, patient, date in (("march", 1, "PAT-9", "20240301"), ("february", 2, "PAT-9", "20240201"),
                                      ("january", 3, "PAT-9", "20240101"), ("other", 4, "PAT-10", "20240301")):
        studies[name], files = study_files(tmp_path / name, count=1, seed=seed, PatientID=patient, StudyDate=date)
        receive(layout, database, files)
        time.sleep(0.02)
    time.sleep(0.05)
    drafted = []
    for _ in range(4):  # one study a pass
        assert drafter.draft_complete_studies() == 1
        drafted += [name for name, uid in studies.items()
                    if name not in drafted and state_of(database, uid)["state"] == "drafted"]
    assert drafted == ["january", "february", "march", "other"]
    for name, prior in (("january", None), ("february", "january"), ("march", "february"), ("other", None)):
        _, _, prior_uid, _ = sr_parts(layout.result_path(state_of(database, studies[name])["result_uid"]))
        assert prior_uid == (studies[prior] if prior else None), name

"""The node against real DICOM software: studies sent by dcmtk's storescu and by an Orthanc PACS come back to
Orthanc as a preliminary SR in their own study, which dicom3tools' dciodvfy validates and dcmtk's dsrdump reads;
what the node must refuse (an unknown AE title, a CT image, a CT secondary capture, a truncated instance, invalid
UIDs, an oversized instance) is refused with a logged reason while the node keeps serving; no patient name is
logged; with a release that reads priors, a follow-up's SR names the patient's earlier study as its comparison."""

import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_files import grayscale_dicom
from node_harness import (  # noqa: F401 - dicom_tools and node_release are fixtures
    ORTHANC_AE, SECONDARY_CAPTURE, dcmtk_tool, dicom_tools, gradient_radiograph, node_release, running_node, running_orthanc,
    sent_ok, storescu, study_files, wait_for, with_ood_summary,
)
from app_harness import free_port

pytestmark = pytest.mark.usefixtures("dicom_tools")
SR_SECONDS = 120  # from the last instance to the SR in Orthanc: 1 s to complete, a draft, a C-STORE (2 busy cores)
MAX_INSTANCE_MB = 0.05  # 52 KB: the test radiographs are 1.5 KB, the oversized one 250 KB


@pytest.fixture(scope="module")
def pacs(node_release, tmp_path_factory):
    """(Orthanc, node): the node sends its results to Orthanc, Orthanc knows the node as the modality "cliptt5"."""
    folder = tmp_path_factory.mktemp("pacs")
    node_port = free_port()
    with running_orthanc(folder / "orthanc", node_port) as orthanc:
        with running_node(folder / "node", node_release, orthanc.dicom_port, port=node_port,
                          max_instance_mb=MAX_INSTANCE_MB) as node:
            yield orthanc, node


def dsrdump(path):
    return subprocess.run([dcmtk_tool("dsrdump"), "+Pl", "+Pc", str(path)], capture_output=True, text=True,
                          timeout=60).stdout


def dciodvfy_errors(path):
    output = subprocess.run([dcmtk_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (output.stdout + output.stderr).splitlines() if line.startswith("Error")]


def the_sr(orthanc, study_uid, path):
    (sr,) = wait_for(lambda: orthanc.srs(study_uid), SR_SECONDS, f"the SR of study {study_uid} in Orthanc")
    return pydicom.dcmread(orthanc.instance_file(sr[0], path)), path


def content(dataset):
    """{concept name: [items]} of an SR's top-level content."""
    items = {}
    for item in dataset.ContentSequence:
        items.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item)
    return items


def test_a_study_sent_with_storescu_comes_back_as_a_preliminary_sr_in_its_study(pacs, node_release, tmp_path):
    orthanc, node = pacs
    study_uid, files = study_files(tmp_path / "study", count=2, seed=1)  # the head calls Cardiomegaly on seed 1
    assert sent_ok(storescu(node.port, files))
    sr, path = the_sr(orthanc, study_uid, tmp_path / "sr.dcm")
    images = [pydicom.dcmread(file) for file in files]

    # in the images' study, patient and study modules copied from them, in a new series after theirs
    assert sr.StudyInstanceUID == study_uid and sr.Modality == "SR"
    assert sr.SeriesInstanceUID != images[0].SeriesInstanceUID and sr.SeriesNumber == 2
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate", "StudyID"):
        assert str(sr[keyword].value) == str(images[0][keyword].value), keyword
    assert (sr.PreliminaryFlag, sr.VerificationFlag, sr.CompletionFlag) == ("PRELIMINARY", "UNVERIFIED", "PARTIAL")
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    referenced = {item.ReferencedSOPInstanceUID for series in evidence.ReferencedSeriesSequence
                  for item in series.ReferencedSOPSequence}
    assert referenced == {image.SOPInstanceUID for image in images}

    # text, the head's finding coded (SNOMED CT 8186001 Cardiomegaly), the OOD check, the algorithm
    items = content(sr)
    (findings,) = items["Findings"]
    text = next(item.TextValue for item in findings.ContentSequence if item.ValueType == "TEXT")
    assert "heart is enlarged" in text
    codes = [item.ConceptCodeSequence[0].CodeValue for item in findings.ContentSequence if item.ValueType == "CODE"]
    assert "8186001" in codes
    assert items["Algorithm Name"][0].TextValue and items["Algorithm Version"][0].TextValue.startswith("sha256:")
    comments = [item.TextValue for item in items["Comment"]]
    assert comments[0].startswith("DRAFT - NOT SIGNED")
    assert any(comment.startswith("Unfamiliar-image check: like the model's training images") for comment in comments)

    # dicom3tools finds no error; dcmtk reads the text back
    assert dciodvfy_errors(path) == []
    dumped = dsrdump(path)
    assert "PRELIMINARY" in dumped and "heart is enlarged" in dumped and "Cardiomegaly" in dumped

    # the log names studies and instances, never the patient
    log = node.log_text()
    assert study_uid in log and "Doe" not in log and "Jane" not in log


def comparison(dataset):
    """{value type: text or UID} of an SR's Prior Procedure Descriptions."""
    (section,) = content(dataset)["Prior Procedure Descriptions"]
    return {item.ValueType: item.get("TextValue") or item.get("UID") for item in section.ContentSequence}


def test_a_follow_up_comes_back_into_orthanc_compared_with_the_patients_earlier_study(prior_release_dir, tmp_path):
    # A node whose release reads priors, its own Orthanc: the patient's first study, then a follow-up
    release = with_ood_summary(prior_release_dir, tmp_path / "release")
    node_port = free_port()
    with running_orthanc(tmp_path / "orthanc", node_port) as orthanc:
        with running_node(tmp_path / "node", release, orthanc.dicom_port, port=node_port) as node:
            first, first_files = study_files(tmp_path / "first", count=1, seed=1, StudyDate="20240301",
                                             AccessionNumber="ACC-1")
            assert sent_ok(storescu(node.port, first_files))
            first_sr, _ = the_sr(orthanc, first, tmp_path / "first_sr.dcm")  # drafted before the follow-up arrives
            later, later_files = study_files(tmp_path / "later", count=1, seed=2, StudyDate="20240415",
                                             AccessionNumber="ACC-2")
            assert sent_ok(storescu(node.port, later_files))
            sr, path = the_sr(orthanc, later, tmp_path / "later_sr.dcm")

    assert comparison(first_sr) == {"TEXT": "Comparison: none"}
    assert comparison(sr) == {"TEXT": "Comparison: ACC-1 (2024-03-01), images read", "UIDREF": first}
    (evidence,) = sr.PertinentOtherEvidenceSequence
    assert evidence.StudyInstanceUID == first
    assert [item.ReferencedSOPInstanceUID for series in evidence.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence] == [pydicom.dcmread(first_files[0]).SOPInstanceUID]
    assert dciodvfy_errors(path) == []
    assert "Comparison: ACC-1" in dsrdump(path)


def test_a_study_the_pacs_sends_by_c_store_gets_its_sr_in_the_pacs(pacs, tmp_path):
    orthanc, node = pacs
    study_uid, files = study_files(tmp_path / "study", count=2, seed=3)
    orthanc_study = [orthanc.upload(file) for file in files][0]
    answer = orthanc.post("/modalities/cliptt5/store", {"Resources": [orthanc_study], "Synchronous": True})
    assert answer["InstancesCount"] == 2 and answer["FailedInstancesCount"] == 0
    sr, _ = the_sr(orthanc, study_uid, tmp_path / "sr.dcm")
    assert sr.StudyInstanceUID == study_uid and orthanc.study_id(study_uid) == orthanc_study
    assert f"stored instance {pydicom.dcmread(files[0]).SOPInstanceUID} of study {study_uid} from ORTHANC" in \
        node.log_text()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, writing the invalid UIDs on purpose
def test_what_the_node_must_not_take_is_refused_and_it_keeps_serving(pacs, node_release, tmp_path):
    orthanc, node = pacs

    # an AE title the node does not know: the association is rejected
    study_uid, files = study_files(tmp_path / "unknown", count=1, seed=5)
    assert storescu(node.port, files, calling="STRANGER").returncode != 0
    # a CT image: its SOP class is not negotiated
    ct = storescu(node.port, [get_testdata_file("CT_small.dcm")])
    assert ct.returncode != 0 and "No presentation context" in ct.stderr
    # a truncated instance: its pixel data end early
    _, (truncated,) = study_files(tmp_path / "truncated", count=1, seed=5)
    dataset = pydicom.dcmread(truncated)
    dataset.PixelData = dataset.PixelData[:100]
    dataset.save_as(truncated, enforce_file_format=True)
    # UIDs that are not DICOM UIDs, one of them a path out of the storage folder
    _, (traversal,) = study_files(tmp_path / "traversal", count=1, seed=5, StudyInstanceUID="1.2.3/../../../outside")
    _, (letters,) = study_files(tmp_path / "letters", count=1, seed=5)
    dataset = pydicom.dcmread(letters)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.03.abc"
    dataset.save_as(letters, enforce_file_format=True)
    # larger than the node's limit
    oversized = grayscale_dicom(np.zeros((500, 500), np.uint8), tmp_path / "large.dcm", header={
        "StudyInstanceUID": pydicom.uid.generate_uid(), "SeriesInstanceUID": pydicom.uid.generate_uid()})
    for refused in (truncated, traversal, letters, oversized):
        assert storescu(node.port, [refused]).returncode != 0, refused

    # a secondary capture of a CT slice is taken, but its study is refused by the modality guard: no SR
    ct_study, ct_capture = study_files(tmp_path / "ct_capture", count=1, seed=7, sop_class=SECONDARY_CAPTURE,
                                       modality="CT")
    assert sent_ok(storescu(node.port, ct_capture))
    # and a study unlike the training images is drafted, flagged in its SR (this node does not --refuse-ood)
    flagged_study = pydicom.uid.generate_uid()
    assert sent_ok(storescu(node.port, [gradient_radiograph(tmp_path / "ramp.dcm", flagged_study)]))

    # the node still serves: a good study gets its SR
    good_study, good = study_files(tmp_path / "good", count=1, seed=9)
    assert sent_ok(storescu(node.port, good))
    the_sr(orthanc, good_study, tmp_path / "good_sr.dcm")
    flagged, _ = the_sr(orthanc, flagged_study, tmp_path / "flagged_sr.dcm")
    assert any(item.TextValue.startswith("Unfamiliar-image check: FLAGGED") for item in content(flagged)["Comment"])
    refusal = wait_for(lambda: [row for row in node.status()["refused_studies"]
                                if row["study_instance_uid"] == ct_study], 60, "the CT capture's study refused")
    assert "modality CT (computed tomography) is not a projection radiograph" in refusal[0]["reason"]
    assert orthanc.srs(ct_study) == []

    log = node.log_text()
    assert "association rejected: calling AE title not accepted (calling AE 'STRANGER'" in log
    assert "truncated or corrupt DICOM pixel data" in log
    assert "StudyInstanceUID '1.2.3/../../../outside' is not a valid DICOM UID" in log
    assert "SOP Instance UID '1.2.03.abc' is not a valid DICOM UID" in log
    assert "over the node's limit of 52,428 bytes" in log
    assert f"study {ct_study} refused: instance" in log and "no result is sent" in log
    assert not [path for path in node.folder.parent.rglob("*outside*")]  # nothing written outside the storage
    stored = {path.parent.name for path in (node.folder / "storage" / "instances").glob("*/*.dcm")}
    assert study_uid not in stored and "1.2.03.abc" not in str(list((node.folder / "storage").rglob("*")))
    status = node.status()
    assert [row["what"] for row in status["refusals"]][:5] == ["instance"] * 4 + ["association"]
    assert "Doe" not in log and "Jane" not in log


def test_a_follow_up_whose_prior_is_only_in_the_pacs_is_compared_with_the_study_the_node_fetches(prior_release_dir,
                                                                                                  tmp_path):
    # The patient's earlier studies are in Orthanc only, as a modality sent them there, beside another patient's
    # study and one of this patient dated after the follow-up; the node, asked for none of them, draws the prior
    # from Orthanc (C-FIND, C-MOVE) when the follow-up comes
    from modeling_cliptt5.node.database import NodeDatabase

    release = with_ood_summary(prior_release_dir, tmp_path / "release")
    node_port = free_port()
    with running_orthanc(tmp_path / "orthanc", node_port) as orthanc:
        in_pacs = {}
        for name, seed, header in (("oldest", 3, {"StudyDate": "20231101", "AccessionNumber": "ACC-0"}),
                                   ("first", 1, {"StudyDate": "20240301", "AccessionNumber": "ACC-1"}),
                                   ("after", 4, {"StudyDate": "20240601", "AccessionNumber": "ACC-3"}),
                                   ("other patient", 5, {"StudyDate": "20240410", "PatientID": "PAT-0002"})):
            in_pacs[name], files = study_files(tmp_path / name, count=1, seed=seed, **header)
            orthanc.upload(files[0])
        with running_node(tmp_path / "node", release, orthanc.dicom_port, port=node_port,
                          prior_source=f"{ORTHANC_AE}@127.0.0.1:{orthanc.dicom_port}") as node:
            later, later_files = study_files(tmp_path / "later", count=1, seed=2, StudyDate="20240415",
                                             AccessionNumber="ACC-2")
            orthanc.upload(later_files[0])  # the PACS holds the follow-up too, as when it routes it to the node
            assert sent_ok(storescu(node.port, later_files))
            sr, path = the_sr(orthanc, later, tmp_path / "later_sr.dcm")
            states = {row["study_instance_uid"]: row["state"] for row in NodeDatabase(
                node.folder / "storage" / "node.sqlite3", read_only=True).rows("SELECT * FROM studies")}
            log = node.log_path.read_text()
        assert all(orthanc.srs(uid) == [] for uid in in_pacs.values())  # no SR for a study fetched as a prior

    assert comparison(sr) == {"TEXT": "Comparison: ACC-1 (2024-03-01), images read", "UIDREF": in_pacs["first"]}
    assert states == {later: "drafted", in_pacs["first"]: "prior"}  # only the latest earlier one was fetched
    (evidence,) = sr.PertinentOtherEvidenceSequence
    assert evidence.StudyInstanceUID == in_pacs["first"]
    assert dciodvfy_errors(path) == []
    assert f"prior study {in_pacs['first']} fetched from {ORTHANC_AE}@127.0.0.1" in log

"""Nothing lost: a node killed (SIGKILL) in the middle of a study keeps every instance it acknowledged and drafts the
study once after the rest arrives; a result waits in the outbox while the PACS is down (status lists it) and
arrives when the PACS is back; a node killed between drafting and sending sends that result after its restart,
once."""

import pydicom
import pytest

from app_harness import free_port
from node_harness import (  # noqa: F401 - dicom_tools and node_release are fixtures
    Node, Orthanc, dicom_tools, node_release, running_orthanc, sent_ok, storescu, study_files, wait_for,
)

pytestmark = pytest.mark.usefixtures("dicom_tools")
SR_SECONDS = 120


def referenced_instances(sr):
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    return {item.ReferencedSOPInstanceUID for series in evidence.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence}


def test_a_node_killed_mid_study_keeps_what_it_acknowledged_and_drafts_the_study_once(node_release, tmp_path):
    node_port = free_port()
    with running_orthanc(tmp_path / "orthanc", node_port) as orthanc:
        # 3 s to complete: long enough to kill the node before it drafts, and to send the rest after the restart
        node = Node(tmp_path / "node", node_release, orthanc.dicom_port, port=node_port, study_complete_seconds=3)
        try:
            node.start()
            study_uid, files = study_files(tmp_path / "study", count=4, seed=1)
            assert sent_ok(storescu(node.port, files[:2]))  # acknowledged: Success answered for these two
            node.kill()
            stored = sorted((node.folder / "storage" / "instances" / study_uid).glob("*.dcm"))
            assert [pydicom.dcmread(path).SOPInstanceUID for path in stored] == sorted(
                pydicom.dcmread(path).SOPInstanceUID for path in files[:2])
            # what a kill can leave besides: a half-written instance (hidden temporary file) and a result written
            # but never queued
            half_written = stored[0].parent / f".{stored[0].name}.1234-abcd.tmp"
            half_written.write_bytes(stored[0].read_bytes()[:300])
            unqueued = node.folder / "storage" / "results" / "1.2.3.4.5.dcm"
            unqueued.parent.mkdir(parents=True, exist_ok=True)
            unqueued.write_bytes(stored[0].read_bytes())

            node.start()
            assert sent_ok(storescu(node.port, files[2:]))  # the sender sends the rest once the node is back
            (sr,) = wait_for(lambda: orthanc.srs(study_uid), SR_SECONDS, "the study's SR")
            sr = pydicom.dcmread(orthanc.instance_file(sr[0], tmp_path / "sr.dcm"))
            assert referenced_instances(sr) == {pydicom.dcmread(path).SOPInstanceUID for path in files}
            assert not half_written.exists() and not unqueued.exists()
            wait_for(lambda: node.status()["results_sent"] == 1, 30, "the outbox to record the delivery")
            status = node.status()
            assert status["studies"] == {"drafted": 1} and status["outbox"] == [] and status["queue"] == []
            assert len(orthanc.srs(study_uid)) == 1
            assert node.log_text().count(f"study {study_uid} drafted") == 1
        finally:
            node.stop()


def test_a_result_waits_in_the_outbox_while_the_pacs_is_down_and_arrives_when_it_is_back(node_release, tmp_path):
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port)  # its ports chosen; not running yet
    node = Node(tmp_path / "node", node_release, orthanc.dicom_port, port=node_port)
    try:
        node.start()
        study_uid, files = study_files(tmp_path / "study", count=1, seed=3)
        assert sent_ok(storescu(node.port, files))
        waiting = wait_for(lambda: [row for row in node.status()["outbox"] if row["attempts"] >= 2], SR_SECONDS,
                           "the result to fail twice in the outbox")
        assert waiting[0]["study_instance_uid"] == study_uid and waiting[0]["last_error"].startswith("no association")
        listed = node.status_text()
        assert "outbox (1 result(s) not yet taken by their destination)" in listed
        assert f"SR {waiting[0]['result_uid']} of study {study_uid} -> ORTHANC@127.0.0.1:{orthanc.dicom_port}" in listed

        orthanc.start()
        (sr,) = wait_for(lambda: orthanc.srs(study_uid), SR_SECONDS, "the SR once the PACS is back")
        assert sr[1] == waiting[0]["result_uid"]
        wait_for(lambda: node.status()["outbox"] == [], 30, "the outbox to empty")
        assert node.status()["results_sent"] == 1
    finally:
        node.stop()
        orthanc.stop()


def test_a_node_killed_between_draft_and_send_sends_the_result_after_its_restart_once(node_release, tmp_path):
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port)
    node = Node(tmp_path / "node", node_release, orthanc.dicom_port, port=node_port)
    try:
        node.start()
        study_uid, files = study_files(tmp_path / "study", count=2, seed=5)
        assert sent_ok(storescu(node.port, files))
        (queued,) = wait_for(lambda: node.status()["outbox"], SR_SECONDS, "the drafted result in the outbox")
        node.kill()  # drafted, not sent: the PACS is not running

        orthanc.start()
        node.start()
        (sr,) = wait_for(lambda: orthanc.srs(study_uid), SR_SECONDS, "the SR after the restart")
        assert sr[1] == queued["result_uid"]  # the result drafted before the kill, not a second draft
        wait_for(lambda: node.status()["results_sent"] == 1, 30, "the outbox to record the delivery")
        status = node.status()
        assert status["studies"] == {"drafted": 1} and status["outbox"] == []
        assert node.log_text().count(f"study {study_uid} drafted") == 1
        assert node.log_text(since_start=True).count(f"SR {queued['result_uid']} of study {study_uid} sent") == 1
    finally:
        node.stop()
        orthanc.stop()

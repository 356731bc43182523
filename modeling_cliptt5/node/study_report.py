"""The result the node sends back for a drafted study: a preliminary, unverified Basic Text SR in the images' study
(report_formats.basic_text_sr, as the page exports it): findings and impression text, each finding the head says
present coded where the export's table has a code, the unfamiliar-image check, the release's name and revision."""

from __future__ import annotations

import io

from modeling_cliptt5.app.report_formats import basic_text_sr
from modeling_cliptt5.app.study_identity import file_identity, file_reference, study_identity


def draft_record(draft, release_identity, num_views):
    """The export record (report_formats' input) of a DraftedReport whose `files` are the study's instances, frontal
    first: the model read the first `num_views` of them."""
    findings, impression = draft.findings, draft.impression
    if findings is None and impression is None:  # a draft without section headings: its whole text is the findings
        findings = draft.report
    identities = [file_identity(path) for path in draft.files]
    record = {
        "study": {"study_instance_uid": identities[0].get("study_instance_uid", "")} if identities else {},
        "findings": findings,
        "impression": impression,
        "claimed_findings": [{"observation": name, "status": "present", "side": name.partition(":")[2] or None}
                             for name in draft.predicted_findings or []],
        "release": release_identity or None,
        "images_read": [{"view": identity.get("view_position", ""), "sop_instance_uid": identity["sop_instance_uid"]}
                        for identity in identities[:num_views]],
    }
    if draft.ood_score is not None:
        record["ood"] = {"score": draft.ood_score, "flag": bool(draft.ood_flag), "threshold": draft.ood_threshold}
    return record, identities


def study_sr(draft, release_identity, num_views, when=None):
    """The SR (pydicom Dataset) of a drafted study, referencing every instance it was drafted from."""
    record, identities = draft_record(draft, release_identity, num_views)
    references = [reference for reference in map(file_reference, identities) if reference]
    return basic_text_sr(record, references, when=when, identity=study_identity(identities))


def encoded(dataset) -> bytes:
    """The dataset in the DICOM file format, as it is stored and sent."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

"""The result the node sends back for a drafted study: a preliminary, unverified Basic Text SR in the images' study
(report_formats.basic_text_sr, as the page exports it): findings and impression text, each finding the head says
present coded where the export's table has a code, the unfamiliar-image check, the release's name and revision."""

from __future__ import annotations

import io

from modeling_cliptt5.app.report_formats import basic_text_sr
from modeling_cliptt5.app.study_identity import file_identity, file_reference, study_identity


def draft_record(draft, release_identity, num_views, prior_files=None):
    """The export record (report_formats' input) of a DraftedReport whose `files` are the study's instances, frontal
    first: the model read the first `num_views` of them. `prior_files`: the instances of the prior study the draft
    compared with (None: written as a first study, "Comparison: none")."""
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
    record["comparison"] = None if prior_files is None else comparison_record(prior_files)
    if draft.ood_score is not None:
        record["ood"] = {"score": draft.ood_score, "flag": bool(draft.ood_flag), "threshold": draft.ood_threshold}
    return record, identities


def comparison_record(prior_files):
    """What the SR says of the prior study a draft compared with (report_formats' "comparison"): its Study Instance
    UID, accession number and date, its images, which the SR cites as other pertinent evidence; never a report (the
    node holds none)."""
    identities = [file_identity(path) for path in prior_files]
    first = identities[0] if identities else {}
    record = {"id": first.get("study_instance_uid", ""), "report_read": False,
              **{field: first[field] for field in ("study_instance_uid", "accession_number", "study_date")
                 if first.get(field)},
              "images": [{"view": identity.get("view_position", ""), "sop_instance_uid": identity["sop_instance_uid"]}
                         for identity in identities if identity.get("sop_instance_uid")]}
    references = [reference for reference in map(file_reference, identities) if reference]
    if references:
        record["references"] = references
    return record


def study_sr(draft, release_identity, num_views, when=None, prior_files=None):
    """The SR (pydicom Dataset) of a drafted study, referencing every instance it was drafted from, and the prior
    study's instances where it compared with one (`prior_files`)."""
    record, identities = draft_record(draft, release_identity, num_views, prior_files)
    references = [reference for reference in map(file_reference, identities) if reference]
    return basic_text_sr(record, references, when=when, identity=study_identity(identities))


def encoded(dataset) -> bytes:
    """The dataset in the DICOM file format, as it is stored and sent."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

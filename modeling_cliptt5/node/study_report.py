"""The result the node sends back for a drafted study: a preliminary, unverified Basic Text SR in the images' study
(report_formats.basic_text_sr, as the page exports it): findings and impression text, each finding the head says
present coded where the export's table has a code, the unfamiliar-image check, the release's name and revision."""

from __future__ import annotations

import io

from modeling_cliptt5.app.report_formats import (
    SR_FINDING, SR_IMPRESSION, SR_PRIOR_PROCEDURES, SR_PROCEDURE, SR_STUDY_UID, basic_text_sr,
)
from modeling_cliptt5.app.page_study import UNNAMED_PRIOR, study_name
from modeling_cliptt5.app.study_identity import file_identity, file_reference, study_identity


def draft_record(draft, release_identity, num_views, comparison=None):
    """The export record (report_formats' input) of a DraftedReport whose `files` are the study's instances, frontal
    first: the model read the first `num_views` of them. `comparison`: comparison_record of the prior study the
    draft compared with (None: written as a first study, "Comparison: none")."""
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
    record["comparison"] = comparison
    if draft.ood_score is not None:
        record["ood"] = {"score": draft.ood_score, "flag": bool(draft.ood_flag), "threshold": draft.ood_threshold}
    return record, identities


def comparison_record(prior_files, report_read=False):
    """What the SR says of the prior study a draft compared with (report_formats' "comparison"): its Study Instance
    UID, accession number and date, its images, which the SR cites as other pertinent evidence, and whether its
    (signed) report was read."""
    identities = [file_identity(path) for path in prior_files]
    first = identities[0] if identities else {}
    record = {"id": study_name(first, UNNAMED_PRIOR), "report_read": report_read,  # named as the page names it
              **{field: first[field] for field in ("study_instance_uid", "accession_number", "study_date")
                 if first.get(field)},
              "images": [{"view": identity.get("view_position", ""), "sop_instance_uid": identity["sop_instance_uid"]}
                         for identity in identities if identity.get("sop_instance_uid")]}
    references = [reference for reference in map(file_reference, identities) if reference]
    if references:
        record["references"] = references
    return record


def study_sr(draft, release_identity, num_views, when=None, comparison=None):
    """The SR (pydicom Dataset) of a drafted study, referencing every instance it was drafted from, and the prior
    study's instances where it compared with one (`comparison`, as draft_record takes it)."""
    record, identities = draft_record(draft, release_identity, num_views, comparison)
    references = [reference for reference in map(file_reference, identities) if reference]
    return basic_text_sr(record, references, when=when, identity=study_identity(identities))


def encoded(dataset) -> bytes:
    """The dataset in the DICOM file format, as it is stored and sent."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def content_items(dataset):
    """Every content item of an SR, depth first."""
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def sr_texts(dataset):
    """[(concept code value, text)] of an SR's TEXT content items, depth first: the findings (SR_FINDING's code),
    the impression (SR_IMPRESSION's) and the comments, as basic_text_sr writes them."""
    return [(item.ConceptNameCodeSequence[0].CodeValue, item.TextValue) for item in content_items(dataset)
            if item.get("ValueType") == "TEXT"]


def sr_sections(texts):
    """(findings, impression) of an SR from its sr_texts: the first text of each of the two concepts, "" where
    absent."""
    first = dict(reversed(texts))  # reversed: the first text of a concept is the one kept
    return first.get(SR_FINDING[0], ""), first.get(SR_IMPRESSION[0], "")


def sr_comparison(dataset):
    """The prior study an SR says its draft compared with: {"study_instance_uid", "report_read"} from its Prior
    Procedure Descriptions (comparison_record as basic_text_sr writes it), or None ("Comparison: none", or no
    such section)."""
    for section in dataset.get("ContentSequence", []):
        if section.ConceptNameCodeSequence[0].CodeValue != SR_PRIOR_PROCEDURES[0]:
            continue
        items = section.get("ContentSequence", [])
        uid = next((item.UID for item in items if item.get("ValueType") == "UIDREF"
                    and item.ConceptNameCodeSequence[0].CodeValue == SR_STUDY_UID[0]), None)
        text = next((item.TextValue for item in items if item.get("ValueType") == "TEXT"
                     and item.ConceptNameCodeSequence[0].CodeValue == SR_PROCEDURE[0]), "")
        if uid:
            return {"study_instance_uid": str(uid), "report_read": text.endswith("report read")}
    return None


def signed_report(paths):
    """The report text (processing_cliptt5.format_report: findings and impression) of the newest signed (VERIFIED)
    SR among `paths` (a study's results, newest first), or None when none is signed. A preliminary draft is never
    read as a report."""
    import pydicom

    from modeling_cliptt5.processing_cliptt5 import format_report

    for path in paths:
        try:
            dataset = pydicom.dcmread(path)
        except (OSError, ValueError):  # a result file that went missing or is damaged is no report
            continue
        if dataset.get("VerificationFlag") == "VERIFIED":
            return format_report(*sr_sections(sr_texts(dataset))) or None
    return None

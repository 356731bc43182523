"""The report's structured exports, built from an export record (web_app.export_report's `record`: the study's
identity plus report_review.export_record) and an optional reader's signature.

Exports:
- `report_document(record, signature=None)`: the plain-text report (a DRAFT banner first when unsigned, the
  "Signed by" line when signed, the research-prototype notice last), with a "Comparison:" line;
- `fhir_diagnostic_report(record, signature=None)`: a FHIR R4 DiagnosticReport as a plain JSON dict, with one
  contained Observation per claimed finding, pertinent negative and findings-checklist entry, and the comparison
  study in IHE IDR's comparison extension;
- `basic_text_sr(record, references, signature=None, when=None, identity=None, series=None, predecessor=None)`: a
  DICOM Basic Text SR (pydicom Dataset) in the study of the referenced DICOM images, in a report series of its own,
  with the images' Patient and General Study values; a signed SR cites the draft SR it supersedes, and the
  comparison study's images are its Pertinent Other Evidence; and `write_basic_text_sr(path, ...)`, which writes it
  whole or not at all;
- `NoDicomReferences`: why there is no SR for a PNG/JPEG-only study.

A record's "comparison" (web_app.comparison_record) is the prior study the draft compared with, None for a
draft written as a first study; a record without the key says nothing of a comparison in the FHIR report and the SR.

A `signature` is None (an unsigned draft) or {"reader": "Reader, Ada", "signed_at": <timezone-aware datetime>}
(optionally "organization", the SR's Verifying Organization). The reader's name is "Family, Given" (a title such as
"Dr" may lead the given names): the SR stores it in DICOM's person-name form ("Reader^Ada^^Dr"), FHIR as a
HumanName with family and given names (`person_name`).

Terminology codes (SNOMED CT, LOINC, DICOM) are given only where known, from one table for FHIR and the SR
(`finding_concept`); a finding without a code we are sure of is named in text only. No identity is invented: what
the study's headers did not say is left out (FHIR) or empty (DICOM type 2 attributes).
"""

import base64
import copy
import io
import re
from datetime import datetime
from pathlib import Path

from modeling_cliptt5.app.report_review import NOTICE
from modeling_cliptt5.app.study_identity import identity_lines
from modeling_cliptt5.data.atomic_writes import atomic_file
from modeling_cliptt5.evaluation.labeler import FINDINGS, NEGATIVE
from modeling_cliptt5.images.dicom import import_pydicom

DRAFT_BANNER = "DRAFT - NOT SIGNED: for review only, not a final report."

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
DICOM_UID_SYSTEM = "urn:dicom:uid"
# SNOMED CT concepts for the labeler's findings. Codes are given only where we are sure of them; the others
# (Enlarged Cardiomediastinum, Lung Opacity, Lung Lesion, Pleural Other, Support Devices) get code.text only.
FINDING_CODES = {
    "Pneumothorax": ("36118008", "Pneumothorax"),
    "Pleural Effusion": ("60046008", "Pleural effusion"),
    "Cardiomegaly": ("8186001", "Cardiomegaly"),
    "Atelectasis": ("46621007", "Atelectasis"),
    "Edema": ("19242006", "Pulmonary edema"),
    "Pneumonia": ("233604007", "Pneumonia"),
    "Consolidation": ("95436008", "Lung consolidation"),
    "Fracture": ("125605004", "Fracture of bone"),
}
# The findings of the phantom label set ("pleural_effusion:right") that have one of the codes above; nodule, mass and
# support device are named in text only.
PHANTOM_FINDINGS = {"cardiomegaly": "Cardiomegaly", "pleural_effusion": "Pleural Effusion",
                    "pneumothorax": "Pneumothorax", "consolidation": "Consolidation"}
LATERALITY_CODES = {"right": ("24028007", "Right"), "left": ("7771000", "Left"),
                    "bilateral": ("51440002", "Right and left")}
PRESENT = {"coding": [{"system": SNOMED, "code": "52101004", "display": "Present"}], "text": "present"}
ABSENT = {"coding": [{"system": SNOMED, "code": "2667000", "display": "Absent"}], "text": "absent"}
POSSIBLE = {"text": "possible"}  # SNOMED has no plain "possible" qualifier we are sure of: text only
REPORT_CODE = {"coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
               "text": "Chest X-ray report"}
RADIOLOGY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                         "display": "Radiology"}]}
IMAGING = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
                       "display": "Imaging"}]}
ACCESSION_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN",
                              "display": "Accession ID"}]}
CHECKLIST_METHOD = {"text": "reader-confirmed finding checklist"}
# IHE Imaging Diagnostic Report (IDR) profile's extension for "prior imaging studies that were considered relevant to
# the current study" (R4's DiagnosticReport has no element for them; imagingStudy is the study reported): a
# Reference(ImagingStudy)
COMPARISON_EXTENSION = "https://profiles.ihe.net/RAD/IDR/StructureDefinition/idrComparisonStudy"

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
# (code value, coding scheme designator, code meaning) of the SR's concept names
SR_REPORT = ("18748-4", "LN", "Diagnostic Imaging Report")
SR_FINDINGS, SR_FINDING = ("121070", "DCM", "Findings"), ("121071", "DCM", "Finding")
SR_IMPRESSIONS, SR_IMPRESSION = ("121072", "DCM", "Impressions"), ("121073", "DCM", "Impression")
SR_COMMENT = ("121106", "DCM", "Comment")
SR_LATERALITY = ("272741003", "SCT", "Laterality")
SR_ALGORITHM_NAME, SR_ALGORITHM_VERSION = ("111001", "DCM", "Algorithm Name"), ("111003", "DCM", "Algorithm Version")
# The comparison: TID 2000's section of prior procedures (CID 7001) holding its description (CID 7002) and its UID
SR_PRIOR_PROCEDURES, SR_PROCEDURE = ("121066", "DCM", "Prior Procedure Descriptions"), ("121065", "DCM",
                                                                                        "Procedure Description")
SR_STUDY_UID = ("121018", "DCM", "Procedure Study Instance UID")
UT_MAX_BYTES = 2 ** 32 - 2  # the longest value the VR UT allows
REFERENCE_KEYS = ("study_instance_uid", "series_instance_uid", "sop_class_uid", "sop_instance_uid")


class NoDicomReferences(ValueError):
    """A DICOM SR was asked for a study without DICOM images to reference."""

    def __init__(self):
        super().__init__("A DICOM SR references the study's DICOM images; this study has none (PNG/JPEG only): "
                         "export the text or FHIR report instead.")


TITLES = ("Dr", "Dr.", "Prof", "Prof.", "Professor")


def person_name(text):
    """"Reader, Dr Ada" -> {"family": "Reader", "given": ["Ada"], "prefix": "Dr"}; ValueError unless the text is
    "Family, Given" (family and given names are the reader's to say: no rule splits "Ada van der Berg" reliably)."""
    family, comma, given = str(text or "").partition(",")
    words = given.split()
    prefix = words.pop(0) if words and words[0] in TITLES else ""
    if not comma or not family.strip() or not words or "^" in text or "," in given:
        raise ValueError(f"Type the reader's name as Family, Given (for example: Reader, Ada), not {text!r}.")
    return {"family": " ".join(family.split()), "given": words, "prefix": prefix}


def display_name(name):
    """"Dr Ada Reader": the name as the text report and the page show it."""
    return " ".join([name["prefix"], *name["given"], name["family"]]).strip()


def dicom_person_name(name):
    """DICOM PN: family^given^middle^prefix ("Reader^Ada^^Dr"), trailing empty components dropped."""
    components = [name["family"], name["given"][0], " ".join(name["given"][1:]), name["prefix"]]
    return "^".join(components).rstrip("^")


def checked_signature(signature):
    """The signature, after checking that it names a reader (as Family, Given) and a time a reader of the export can
    place."""
    if signature is None:
        return None
    if not str(signature.get("reader") or "").strip():
        raise ValueError("A signature needs the reader's name.")
    person_name(signature["reader"])
    signed_at = signature.get("signed_at")
    if not isinstance(signed_at, datetime) or signed_at.utcoffset() is None:
        raise ValueError("A signature needs its time as a timezone-aware datetime.")
    return signature


def utc_offset(moment):
    """"+01:00" (Python 3.11 has no %:z)."""
    minutes = int(moment.utcoffset().total_seconds() // 60)
    return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def signature_line(signature):
    signed_at = signature["signed_at"]
    reader = display_name(person_name(signature["reader"]))
    return f"Signed by {reader} on {signed_at:%Y-%m-%d %H:%M} {utc_offset(signed_at)}"


def override_lines(signature):
    """What the reader signed over, where the text disagreed with the checklist or itself ([] otherwise)."""
    open_items = (signature or {}).get("override") or []
    return [f"Signed despite {len(open_items)} open disagreement(s): {'; '.join(open_items)}"] if open_items else []


def provenance_lines(record):
    """How the draft was made, as every export says it: the release and its revision, the images the model read,
    the unfamiliar-image check."""
    lines = []
    release = record.get("release")
    if release:
        lines.append(f"Drafted by: {release['name']} (revision {release['revision']})")
    images = record.get("images_read")
    if images:
        lines.append("Images read by the model: " + "; ".join(image_text(index, image) for index, image in
                                                                enumerate(images, start=1)))
    ood = record.get("ood")
    if ood:
        verdict = ("FLAGGED: unlike the model's training images, the draft may be meaningless" if ood["flag"] else
                   "like the model's training images")
        lines.append(f"Unfamiliar-image check: {verdict} (score {ood['score']:.2f}, flagged beyond "
                     f"{ood['threshold']:.2f})")
    return lines


def image_text(index, image):
    """"1: PA (SOP Instance UID 1.2.3)" or "1: view not stated (SHA-1 ab12...)" for a file without a header."""
    view = image.get("view") or "view not stated"
    which = f"SOP Instance UID {image['sop_instance_uid']}" if image.get("sop_instance_uid") else \
        f"file SHA-1 {image.get('sha1', 'unknown')}"
    return f"{index}: {view} ({which})"


def comparison_text(comparison):
    """"ACC-2 (2024-01-15), images and report read" for the prior study a draft compared with; "none" for a draft
    written as a first study."""
    if not comparison:
        return "none"
    date = comparison.get("study_date")
    read = " and ".join(what for what, given in (("images", comparison.get("images")),
                                                 ("report", comparison.get("report_read"))) if given)
    return f"{comparison['id']}{f' ({date})' if date else ''}{f', {read} read' if read else ''}"


def report_document(record, signature=None):
    """The plain-text report: DRAFT banner (unsigned), identity, how it was drafted and the comparison study,
    FINDINGS/IMPRESSION, signature (signed), notice."""
    signature = checked_signature(signature)
    lines = [] if signature else [DRAFT_BANNER]
    lines += identity_lines(record["study"])
    lines += provenance_lines(record)
    if record.get("exported_at"):
        lines.append(f"Exported: {record['exported_at']}")
    lines += [f"Comparison: {comparison_text(record.get('comparison'))}", "", record["report"]]
    if signature:
        lines += ["", signature_line(signature), *override_lines(signature)]
    lines += ["", NOTICE]
    return "\n".join(lines) + "\n"


# FHIR R4 DiagnosticReport


def negative_side(record, observation):
    """The side of a pertinent negative when every sentence that negates it names the same one ("No left
    effusion" says nothing of the right), else None."""
    sides = {sentence.get("sides", {}).get(observation) for sentence in record.get("sentences", [])
             if sentence.get("labels", {}).get(observation) == NEGATIVE}
    return sides.pop() if len(sides) == 1 and None not in sides else None


def finding_concept(name):
    """(SNOMED CT (code, display) or None, side or None) of a finding name: the labeler's ("Pleural Effusion") or the
    phantom label set's ("pleural_effusion:right"). The one table FHIR and the SR take their codes from."""
    base, _, side = name.partition(":")
    labeler_name = PHANTOM_FINDINGS.get(base, base)
    return FINDING_CODES.get(labeler_name), (side if side in LATERALITY_CODES else None)


def finding_code(name):
    code = {"text": name}
    concept, _ = finding_concept(name)
    if concept:
        code["coding"] = [{"system": SNOMED, "code": concept[0], "display": concept[1]}]
    return code


def laterality(side):
    """FHIR bodySite of a side: SNOMED CT's laterality qualifier (Right, Left, Right and left)."""
    value, display = LATERALITY_CODES[side]
    return {"coding": [{"system": SNOMED, "code": value, "display": display}], "text": side}


def observation(resource_id, status, code, value, side=None, method=None, note=None):
    resource = {"resourceType": "Observation", "id": resource_id, "status": status, "category": [IMAGING],
                "code": code, "valueCodeableConcept": value}
    if side:
        resource["bodySite"] = laterality(side) if side in LATERALITY_CODES else {"text": side}
    if method:
        resource["method"] = method
    if note:
        resource["note"] = [{"text": note}]
    return resource


def finding_observations(record, status):
    """Claimed findings (present or possible) then pertinent negatives, in the labeler's order."""
    values = {"present": PRESENT, "possible": POSSIBLE}
    observations = [observation(f"finding-{index}", status, finding_code(claim["observation"]),
                                values[claim["status"]], claim.get("side"))
                    for index, claim in enumerate(record.get("claimed_findings", []), start=1)]
    negatives = [name for name in FINDINGS if record.get("labels", {}).get(name) == NEGATIVE]
    observations += [observation(f"negative-{index}", status, finding_code(name), ABSENT,
                                 negative_side(record, name))
                     for index, name in enumerate(negatives, start=1)]
    return observations


def checklist_observations(checklist, status):
    """One Observation per finding of the head's label set: Present if the reader checked it, else Absent."""
    probabilities = checklist.get("model_probabilities") or {}
    checked = list(checklist.get("checked_by_reader") or [])
    predicted = set(checklist.get("model_findings") or [])
    names = list(probabilities) + [name for name in checked if name not in probabilities]
    resources = []
    for index, name in enumerate(names, start=1):
        note = None
        if name in probabilities:
            note = (f"model probability {float(probabilities[name]):.2f}"
                    f"{', predicted by the model' if name in predicted else ''}")
        # the head's names ("pleural_effusion:right"): the finding coded where known, its side in bodySite
        resources.append(observation(f"checklist-{index}", status, finding_code(name),
                                     PRESENT if name in checked else ABSENT, finding_concept(name)[1],
                                     method=CHECKLIST_METHOD, note=note))
    return resources


def provenance_resources(record, status):
    """The drafting model as a Device, and the unfamiliar-image check as an Observation by it (with the images the
    model read), for a record that says how it was drafted; [] otherwise."""
    release, ood = record.get("release"), record.get("ood")
    if not release:
        return []
    device = {"resourceType": "Device", "id": "drafting-model",
              "deviceName": [{"name": release["name"], "type": "model-name"}],
              "version": [{"value": str(release["revision"])}]}
    resources = [device]
    if ood:
        check = {"resourceType": "Observation", "id": "unfamiliar-image-check", "status": status,
                 "category": [IMAGING], "code": {"text": "Image unlike the drafting model's training images"},
                 "valueBoolean": bool(ood["flag"]), "device": {"reference": "#drafting-model"},
                 "component": [{"code": {"text": "unfamiliar-image score"}, "valueQuantity": {"value": ood["score"]}},
                               {"code": {"text": "flagged beyond"}, "valueQuantity": {"value": ood["threshold"]}}]}
        images = provenance_lines({"images_read": record.get("images_read")})
        if images:
            check["note"] = [{"text": images[0]}]
        resources.append(check)
    return resources


def fhir_instant(moment):
    """A FHIR instant (seconds and a time zone required) from a datetime or an ISO text."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.utcoffset() is None:
        raise ValueError(f"{moment} has no time zone: a FHIR instant needs one")
    return moment.isoformat(timespec="seconds")


def comparison_reference(record):
    """A Reference to the prior ImagingStudy by its Study Instance UID where its headers give one (a PNG/JPEG prior
    is named in text only)."""
    comparison = record["comparison"]
    reference = {"type": "ImagingStudy", "display": f"Comparison: {comparison_text(comparison)}"}
    if comparison.get("study_instance_uid"):
        reference["identifier"] = {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{comparison['study_instance_uid']}"}
    return reference


def fhir_diagnostic_report(record, signature=None):
    """A FHIR R4 DiagnosticReport (JSON dict) of the record: "final" when signed, "preliminary" when not."""
    signature = checked_signature(signature)
    study = record.get("study", {})
    status = "final" if signature else "preliminary"
    contained = finding_observations(record, status)
    if record.get("findings_checklist"):
        contained += checklist_observations(record["findings_checklist"], status)
    contained += provenance_resources(record, status)
    report = {"resourceType": "DiagnosticReport", "contained": contained, "status": status, "category": [RADIOLOGY],
              "code": REPORT_CODE}
    if study.get("accession_number"):
        report["identifier"] = [{"type": ACCESSION_TYPE, "value": study["accession_number"]}]
    if study.get("patient_id"):  # no ID in the files: no subject, rather than an invented one
        report["subject"] = {"identifier": {"value": study["patient_id"]},
                             "display": f"Patient ID {study['patient_id']}"}
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", study.get("study_date", "")):
        report["effectiveDateTime"] = study["study_date"]
    report["issued"] = fhir_instant(signature["signed_at"] if signature else record["exported_at"])
    if signature:
        name = person_name(signature["reader"])
        human_name = {"text": display_name(name), "family": name["family"], "given": name["given"]}
        if name["prefix"]:
            human_name["prefix"] = [name["prefix"]]
        contained.append({"resourceType": "Practitioner", "id": "reader", "name": [human_name]})
        report["resultsInterpreter"] = [{"reference": "#reader", "display": display_name(name)}]
    results = [{"reference": f"#{resource['id']}"} for resource in contained
               if resource["resourceType"] == "Observation"]
    if results:
        report["result"] = results
    if study.get("study_instance_uid"):
        report["imagingStudy"] = [{"type": "ImagingStudy", "identifier": {
            "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study['study_instance_uid']}"}}]
    if record.get("comparison"):  # the study reported is imagingStudy; the one it was compared with, an extension
        report["extension"] = [{"url": COMPARISON_EXTENSION, "valueReference": comparison_reference(record)}]
    if record.get("impression"):
        report["conclusion"] = record["impression"]
    document = report_document(record, signature).encode("utf-8")
    report["presentedForm"] = [{"contentType": "text/plain; charset=utf-8",
                                "data": base64.b64encode(document).decode("ascii"),
                                "title": "Chest X-ray report" + ("" if signature else " (DRAFT, not signed)")}]
    if not contained:  # FHIR forbids empty arrays
        del report["contained"]
    return copy.deepcopy(report)  # the caller's to change: no shared module-level codes in it


# DICOM Basic Text SR


def code_item(pydicom, code):
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def text_item(pydicom, concept, text):
    if len(text.encode("utf-8")) > UT_MAX_BYTES:
        raise ValueError(f"{concept[2]} text is longer than a DICOM UT value can hold")
    item = pydicom.Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [code_item(pydicom, concept)]
    item.TextValue = text
    return item


def container(pydicom, concept, children, relationship="CONTAINS"):
    item = pydicom.Dataset()
    if relationship:
        item.RelationshipType = relationship
    item.ValueType = "CONTAINER"
    item.ConceptNameCodeSequence = [code_item(pydicom, concept)]
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = children
    return item


def checked_references(record, references):
    """The references' single Study Instance UID; refuses other studies than the images' or the record's."""
    if not references:
        raise NoDicomReferences()
    for reference in references:
        missing = [key for key in REFERENCE_KEYS if not str(reference.get(key) or "").strip()]
        if missing:
            raise ValueError(f"An image reference lacks {', '.join(missing)}.")
    studies = sorted({reference["study_instance_uid"] for reference in references})
    if len(studies) > 1:
        raise ValueError(f"The images belong to {len(studies)} studies ({', '.join(studies)}): an SR reports on "
                         "one study.")
    recorded = record.get("study", {}).get("study_instance_uid")
    if recorded and recorded != studies[0]:
        raise ValueError(f"The report is of study {recorded}, the images of study {studies[0]}.")
    return studies[0]


def evidence(pydicom, study_uid, references):
    """CurrentRequestedProcedureEvidenceSequence: every image, grouped by series (first-seen order, no repeats)."""
    series = {}
    for reference in references:
        instances = series.setdefault(reference["series_instance_uid"], {})
        instances.setdefault(reference["sop_instance_uid"], reference["sop_class_uid"])
    study = pydicom.Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = []
    for series_uid, instances in series.items():
        item = pydicom.Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = []
        for instance_uid, class_uid in instances.items():
            sop = pydicom.Dataset()
            sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = class_uid, instance_uid
            item.ReferencedSOPSequence.append(sop)
        study.ReferencedSeriesSequence.append(item)
    return [study]


def dicom_date(iso_date):
    """"2024-03-01" -> "20240301"; "" when unknown or not a date (type 2: empty)."""
    return iso_date.replace("-", "") if re.fullmatch(r"\d{4}-\d{2}-\d{2}", iso_date or "") else ""


def verifying_observer(pydicom, signature):
    item = pydicom.Dataset()
    item.VerifyingObserverName = dicom_person_name(person_name(signature["reader"]))
    item.VerifyingObserverIdentificationCodeSequence = []  # type 2: no coded ID of the reader is known
    item.VerifyingOrganization = str(signature.get("organization") or "").strip() or "not stated"  # type 1
    item.VerificationDateTime = signature["signed_at"].strftime("%Y%m%d%H%M%S%z")
    return item


def comparison_section(pydicom, record):
    """The Prior Procedure Descriptions section: the comparison as text ("Comparison: none" for a first study) and,
    where its headers give one, the prior's Study Instance UID."""
    comparison = record.get("comparison")
    items = [text_item(pydicom, SR_PROCEDURE, f"Comparison: {comparison_text(comparison)}")]
    if comparison and comparison.get("study_instance_uid"):
        item = pydicom.Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "UIDREF"
        item.ConceptNameCodeSequence = [code_item(pydicom, SR_STUDY_UID)]
        item.UID = comparison["study_instance_uid"]
        items.append(item)
    return container(pydicom, SR_PRIOR_PROCEDURES, items)


def comparison_evidence(pydicom, record, study_uid):
    """PertinentOtherEvidenceSequence's items: the comparison study's images, for a comparison whose headers give
    them ([] otherwise); refuses the study itself as its own comparison."""
    comparison = record.get("comparison") or {}
    references = comparison.get("references") or []
    if not references:
        return []
    prior_uid = checked_references({}, references)
    if prior_uid == study_uid:
        raise ValueError(f"The comparison study is the study itself ({study_uid}).")
    return evidence(pydicom, prior_uid, references)


def code_content(pydicom, concept, code, relationship):
    item = pydicom.Dataset()
    item.RelationshipType = relationship
    item.ValueType = "CODE"
    item.ConceptNameCodeSequence = [code_item(pydicom, concept)]
    item.ConceptCodeSequence = [code_item(pydicom, code)]
    return item


def coded_findings(pydicom, record):
    """A CODE item (Finding = the SNOMED CT concept, with its laterality) per finding the report claims present or
    possible and `finding_concept` has a code for: the same codes as the FHIR export."""
    items = []
    for claim in record.get("claimed_findings", []):
        concept, _ = finding_concept(claim["observation"])
        if not concept:
            continue
        item = code_content(pydicom, SR_FINDING, (concept[0], "SCT", concept[1]), "CONTAINS")
        if claim.get("side") in LATERALITY_CODES:
            value, display = LATERALITY_CODES[claim["side"]]
            item.ContentSequence = [code_content(pydicom, SR_LATERALITY, (value, "SCT", display),
                                                 "HAS CONCEPT MOD")]
        items.append(item)
    return items


def sr_series_number(references):
    """The SR's own series number: after the highest of the images' series (1 when none is known)."""
    return max((reference.get("series_number") or 0 for reference in references), default=0) + 1


def predecessor_documents(pydicom, predecessor):
    """PredecessorDocumentsSequence citing the SR this one supersedes ({study, series, SOP class, SOP instance})."""
    sop = pydicom.Dataset()
    sop.ReferencedSOPClassUID = predecessor["sop_class_uid"]
    sop.ReferencedSOPInstanceUID = predecessor["sop_instance_uid"]
    series = pydicom.Dataset()
    series.SeriesInstanceUID = predecessor["series_instance_uid"]
    series.ReferencedSOPSequence = [sop]
    study = pydicom.Dataset()
    study.StudyInstanceUID = predecessor["study_instance_uid"]
    study.ReferencedSeriesSequence = [series]
    return [study]


def basic_text_sr(record, references, signature=None, when=None, identity=None, series=None, predecessor=None):
    """A Basic Text SR of the record in the referenced images' study; `when`: its content time.

    `identity`: the study's header values (study_identity: patient name, ID, birth date and sex, study date and time,
    study ID, accession number, referring physician), copied into the SR's Patient and General Study modules so that
    a PACS files it with the images without a mismatch (the record's own, privacy-filtered identity otherwise).
    `series`: {"series_instance_uid", "series_number", "instance_number"} of the report series this SR joins (a
    draft SR exported earlier, which a signed one supersedes); None starts one after the images' series.
    `predecessor`: the SR this one supersedes (PredecessorDocumentsSequence), as a `sr_reference`."""
    pydicom = import_pydicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    signature = checked_signature(signature)
    study_uid = checked_references(record, references)
    study = identity if identity is not None else record.get("study", {})
    when = when or datetime.now().astimezone()
    series = series or {"series_instance_uid": generate_uid(), "series_number": sr_series_number(references),
                        "instance_number": 1}

    dataset = pydicom.Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names and report text need not be ASCII
    dataset.SOPClassUID = BASIC_TEXT_SR
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    if when.utcoffset() is not None:
        dataset.TimezoneOffsetFromUTC = when.strftime("%z")

    # Patient and General Study: the headers' values, else empty (type 2); nothing is invented
    dataset.PatientName = study.get("patient_name", "")
    dataset.PatientID = study.get("patient_id", "")
    dataset.PatientBirthDate = study.get("patient_birth_date", "")
    dataset.PatientSex = study.get("patient_sex", "")
    dataset.StudyInstanceUID = study_uid
    dataset.StudyDate = dicom_date(study.get("study_date"))
    dataset.StudyTime = study.get("study_time", "")
    dataset.AccessionNumber = study.get("accession_number", "")
    dataset.ReferringPhysicianName = study.get("referring_physician", "")
    dataset.StudyID = study.get("study_id", "")

    # SR Document Series and General Equipment: the report's own series, after the images'
    dataset.Modality = "SR"
    dataset.SeriesInstanceUID = series["series_instance_uid"]
    dataset.SeriesNumber = series["series_number"]
    dataset.SeriesDescription = "Chest X-ray report (cliptt5)"
    dataset.ReferencedPerformedProcedureStepSequence = []
    dataset.Manufacturer = ""

    # SR Document General
    dataset.InstanceNumber = series["instance_number"]
    dataset.ContentDate = when.strftime("%Y%m%d")
    dataset.ContentTime = when.strftime("%H%M%S")
    if signature:
        dataset.CompletionFlag, dataset.VerificationFlag, dataset.PreliminaryFlag = "COMPLETE", "VERIFIED", "FINAL"
        dataset.VerifyingObserverSequence = [verifying_observer(pydicom, signature)]
    else:
        dataset.CompletionFlag, dataset.VerificationFlag = "PARTIAL", "UNVERIFIED"
        dataset.PreliminaryFlag = "PRELIMINARY"
    if predecessor:
        dataset.PredecessorDocumentsSequence = predecessor_documents(pydicom, predecessor)
    dataset.CurrentRequestedProcedureEvidenceSequence = evidence(pydicom, study_uid, references)
    pertinent = comparison_evidence(pydicom, record, study_uid)
    if pertinent:  # type 1C: the images of the study the report compares with (PS3.3 C.17.2)
        dataset.PertinentOtherEvidenceSequence = pertinent
    dataset.PerformedProcedureCodeSequence = []

    # SR Document Content: the draft comment first, so that a reader of the SR sees it before the text; the
    # comparison; the findings as text and, where a code is known, coded; then how the draft was made
    content = [] if signature else [text_item(pydicom, SR_COMMENT, DRAFT_BANNER)]
    if "comparison" in record:
        content.append(comparison_section(pydicom, record))
    for section, item_concept, text in ((SR_FINDINGS, SR_FINDING, record.get("findings")),
                                        (SR_IMPRESSIONS, SR_IMPRESSION, record.get("impression"))):
        if (text or "").strip():
            items = [text_item(pydicom, item_concept, text.strip())]
            if section == SR_FINDINGS:
                items += coded_findings(pydicom, record)
            content.append(container(pydicom, section, items))
    release = record.get("release")
    if release:
        content += [text_item(pydicom, SR_ALGORITHM_NAME, str(release["name"])),
                    text_item(pydicom, SR_ALGORITHM_VERSION, str(release["revision"]))]
    content += [text_item(pydicom, SR_COMMENT, line) for line in provenance_lines(record)[1 if release else 0:]]
    content += [text_item(pydicom, SR_COMMENT, line) for line in override_lines(signature)]
    root = container(pydicom, SR_REPORT, content, relationship=None)
    for element in root:
        dataset.add(element)
    return dataset


def sr_reference(dataset):
    """What a later SR cites of this one (its predecessor) and the series it continues."""
    return {"study_instance_uid": dataset.StudyInstanceUID, "series_instance_uid": dataset.SeriesInstanceUID,
            "sop_class_uid": dataset.SOPClassUID, "sop_instance_uid": dataset.SOPInstanceUID,
            "series_number": int(dataset.SeriesNumber), "instance_number": int(dataset.InstanceNumber)}


def write_basic_text_sr(path, record, references, signature=None, when=None, **placement):
    """Writes the SR (`basic_text_sr`; `placement`: its identity, series and predecessor) to `path`."""
    return write_dicom(path, basic_text_sr(record, references, signature, when, **placement))


def write_dicom(path, dataset):
    """Writes a dataset to `path` whole or not at all (encoded in memory first, then an atomic rename)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    path = Path(path)
    with atomic_file(path, "wb") as stream:
        stream.write(buffer.getvalue())
    return path

"""Whose study the page shows: the identity in the DICOM headers, the check that a file added to a study belongs
to it, and export file names that carry the study id and time."""

import hashlib
import html
import re
from datetime import datetime

from modeling_cliptt5.images.dicom import read_header
from modeling_cliptt5.images.views import dataset_view

# Header attributes the page reads (DICOM keywords). The patient's name is shown and exported only when the user
# asks for it (app.py --show-patient-name): a name on a shared screen is more than the reading needs.
HEADER_FIELDS = {
    "patient_id": "PatientID", "patient_name": "PatientName", "accession_number": "AccessionNumber",
    "study_date": "StudyDate", "study_instance_uid": "StudyInstanceUID", "view_position": "ViewPosition",
    "series_instance_uid": "SeriesInstanceUID", "sop_class_uid": "SOPClassUID", "sop_instance_uid": "SOPInstanceUID",
    "series_number": "SeriesNumber",
    # the rest of the Patient and General Study modules, which a DICOM SR of the report repeats (as DICOM text)
    "patient_birth_date": "PatientBirthDate", "patient_sex": "PatientSex", "study_time": "StudyTime",
    "study_id": "StudyID", "referring_physician": "ReferringPhysicianName",
}
# What a DICOM SR of the report cites of each image (report_formats.basic_text_sr), and the image's series number
# (the SR's own series takes the next one).
REFERENCE_FIELDS = ("study_instance_uid", "series_instance_uid", "sop_class_uid", "sop_instance_uid")
STUDY_FIELDS = ("patient_id", "patient_name", "accession_number", "study_date", "study_instance_uid",
                "patient_birth_date", "patient_sex", "study_time", "study_id", "referring_physician")
# What the text, JSON and FHIR exports carry of it (the name only when shown): enough to file the report
EXPORTED_FIELDS = ("patient_id", "patient_name", "accession_number", "study_date", "study_instance_uid")
# Two files of one study never differ in these; a difference means another patient or another study.
MATCHING_FIELDS = {"patient_id": "patient ID", "study_instance_uid": "Study Instance UID",
                   "accession_number": "accession number"}
LABELS = {"patient_name": "Patient", "patient_id": "Patient ID", "accession_number": "Accession",
          "study_date": "Study date"}
EXPORT_PREFIX = "cxr_report"
UNIDENTIFIED = "unidentified"  # export name part of a study without an accession number (PNG, JPEG)


def file_key(path):
    """A file's content hash: the same image dropped twice is one file of the study."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path):
    """{field: value} from a DICOM file's header (HEADER_FIELDS that are set); {} for PNG/JPEG or a header
    that cannot be read (the image reader names that problem)."""
    dataset = read_header(path)
    if dataset is None:
        return {}
    values = {field: str(dataset.get(keyword, "") or "").strip() for field, keyword in HEADER_FIELDS.items()}
    values["view_position"] = dataset_view(dataset)  # ViewPosition, else the view code: as the model's order reads it
    if len(values["study_date"]) == 8 and values["study_date"].isdigit():  # DA: YYYYMMDD
        date = values["study_date"]
        values["study_date"] = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return {field: value for field, value in values.items() if value}


def file_reference(identity):
    """{REFERENCE_FIELDS: UID} of a DICOM file's identity (file_identity), with its series number where the header
    has one; None without all four UIDs (PNG, JPEG)."""
    if not all(identity.get(field) for field in REFERENCE_FIELDS):
        return None
    reference = {field: identity[field] for field in REFERENCE_FIELDS}
    if identity.get("series_number", "").isdigit():
        reference["series_number"] = int(identity["series_number"])
    return reference


def study_identity(identities):
    """The study's identity: each STUDY_FIELDS value from the first file that has it."""
    study = {}
    for identity in identities:
        for field in STUDY_FIELDS:
            if field in identity and field not in study:
                study[field] = identity[field]
    return study


def mismatch(study, identity):
    """Why a file does not belong to the study ("patient ID 123 (this study: 456)"), or None."""
    for field, label in MATCHING_FIELDS.items():
        if study.get(field) and identity.get(field) and study[field] != identity[field]:
            return f"{label} {identity[field]} (this study: {study[field]})"
    return None


def identity_html(study, views, show_name=False):
    """The line above the images: patient ID, accession, study date, the view of each image."""
    shown = [field for field in LABELS if field in study and (show_name or field != "patient_name")]
    view_text = ", ".join(f"{index}: {view or 'not stated'}" for index, view in enumerate(views, start=1))
    if not shown:
        return ('<div class="study-identity unidentified"><b>No patient identity</b>: these files carry no DICOM '
                "header (PNG/JPEG). Check that they are the intended patient's images."
                f"{f' <b>Views</b> {html.escape(view_text)}' if views else ''}</div>")
    parts = [f"<b>{LABELS[field]}</b> {html.escape(study[field])}" for field in shown]
    parts.append(f"<b>Views</b> {html.escape(view_text)}")
    return f'<div class="study-identity">{" &middot; ".join(parts)}</div>'


def exported_identity(study, views, show_name=False):
    """The identity written into an export (the name only when shown on the page)."""
    record = {field: study[field] for field in EXPORTED_FIELDS if field in study
              and (show_name or field != "patient_name")}
    return {**record, "view_positions": list(views)}


def identity_lines(identity):
    """The export's text header: one "Label: value" line per known field; the patient ID line always."""
    lines = [f"{LABELS[field]}: {identity[field]}" for field in LABELS if field in identity]
    if "patient_id" not in identity:
        lines.insert(int("patient_name" in identity), "Patient ID: not in the files (no DICOM header names one)")
    if identity.get("view_positions"):
        lines.append(f"Views: {', '.join(view or 'not stated' for view in identity['view_positions'])}")
    return lines


def export_basename(study, when=None):
    """cxr_report_<accession number (else Study Instance UID)>_<YYYYmmdd-HHMMSS>, in safe file-name characters."""
    when = when or datetime.now()
    study_id = study.get("accession_number") or study.get("study_instance_uid") or ""
    study_id = re.sub(r"[^A-Za-z0-9._-]+", "-", study_id).strip("-.") or UNIDENTIFIED
    return f"{EXPORT_PREFIX}_{study_id}_{when:%Y%m%d-%H%M%S}"

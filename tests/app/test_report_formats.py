"""The report's structured exports (report_formats): the text document, the FHIR R4 DiagnosticReport (validated
with fhir.resources' R4B models) and the DICOM Basic Text SR (written and read back with pydicom), each naming the
prior study the draft compared with."""

import base64
from datetime import datetime, timedelta, timezone

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from modeling_cliptt5.app import report_formats
from modeling_cliptt5.app.report_formats import (
    NoDicomReferences,
    basic_text_sr,
    fhir_diagnostic_report,
    report_document,
    write_basic_text_sr,
)
from modeling_cliptt5.app.report_review import NOTICE, export_record
from modeling_cliptt5.app.study_identity import exported_identity

FINDINGS_TEXT = "Right pneumothorax. No pleural effusion. Heart size is normal."
IMPRESSION_TEXT = "Right pneumothorax."
READER = "Reader, Dr A."  # Family, Given as the page asks for it
SIGNED_AT = datetime(2025, 1, 2, 10, 30, 15, tzinfo=timezone(timedelta(hours=1)))
SIGNATURE = {"reader": READER, "signed_at": SIGNED_AT}
DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SNOMED = "http://snomed.info/sct"
RIGHT = {"coding": [{"system": SNOMED, "code": "24028007", "display": "Right"}], "text": "right"}
LEFT = {"coding": [{"system": SNOMED, "code": "7771000", "display": "Left"}], "text": "left"}
STUDY_UID = generate_uid()
HEADERS = {"patient_id": "P-0042", "patient_name": "Doe^Jane", "accession_number": "ACC123",
           "study_date": "2024-03-01", "study_instance_uid": STUDY_UID}


def make_record(headers=HEADERS, findings=FINDINGS_TEXT, impression=IMPRESSION_TEXT, show_name=False,
                checklist=None):
    """A record as web_app.export_report assembles it."""
    record = {"study": exported_identity(headers, ["PA", "LATERAL"], show_name), **export_record(findings, impression)}
    if checklist is not None:
        record["findings_checklist"] = checklist
    return record


def image_references(study_uid=STUDY_UID, series_sizes=(2, 1)):
    """References of DICOM images: `series_sizes[i]` images in series i, listed interleaved across series."""
    series = [generate_uid() for _ in series_sizes]
    per_series = [[{"study_instance_uid": study_uid, "series_instance_uid": uid, "sop_class_uid": DIGITAL_XRAY,
                    "sop_instance_uid": generate_uid()} for _ in range(size)]
                  for uid, size in zip(series, series_sizes)]
    return [reference for index in range(max(series_sizes)) for images in per_series
            for reference in images[index:index + 1]]


# The text document


def test_unsigned_document_opens_with_the_draft_banner():
    lines = report_document(make_record()).splitlines()
    assert lines[0].startswith("DRAFT - NOT SIGNED")
    assert "Patient ID: P-0042" in lines and "Accession: ACC123" in lines
    assert f"FINDINGS: {FINDINGS_TEXT}" in lines and f"IMPRESSION: {IMPRESSION_TEXT}" in lines
    assert not any(line.startswith("Signed by") for line in lines)
    assert lines[-1] == NOTICE


def test_signed_document_closes_with_the_signature_line():
    text = report_document(make_record(), SIGNATURE)
    lines = text.splitlines()
    assert "DRAFT" not in text
    assert lines[0] == "Patient ID: P-0042"
    signature = lines.index("Signed by Dr A. Reader on 2025-01-02 10:30 +01:00")  # the name in reading order
    assert lines.index(f"IMPRESSION: {IMPRESSION_TEXT}") < signature < lines.index(NOTICE)


def test_a_signature_needs_a_timezone_and_a_reader():
    with pytest.raises(ValueError, match="timezone"):
        report_document(make_record(), {"reader": READER, "signed_at": datetime(2025, 1, 2, 10, 30)})
    with pytest.raises(ValueError, match="name"):
        report_document(make_record(), {"reader": " ", "signed_at": SIGNED_AT})


# FHIR R4 DiagnosticReport


def validated(report):
    """The report after validation against the FHIR R4B model (R4's DiagnosticReport and Observation)."""
    models = pytest.importorskip("fhir.resources.R4B.diagnosticreport")
    models.DiagnosticReport.model_validate(report)
    return report


def contained(report, resource_type="Observation", method=None):
    return [resource for resource in report.get("contained", []) if resource["resourceType"] == resource_type
            and (resource.get("method") or {}).get("text") == method]


def finding(report, name):
    (resource,) = [resource for resource in contained(report) if resource["code"]["text"] == name]
    return resource


def snomed_codes(concept):
    return [coding["code"] for coding in concept.get("coding", []) if coding["system"] == SNOMED]


def presented_text(report):
    (form,) = report["presentedForm"]
    assert form["contentType"].split(";")[0] == "text/plain" and "charset=utf-8" in form["contentType"]
    return base64.b64decode(form["data"]).decode("utf-8")


@pytest.mark.parametrize("signature, status", [(None, "preliminary"), (SIGNATURE, "final")])
def test_fhir_report_validates_with_the_status_of_its_signature(signature, status):
    report = validated(fhir_diagnostic_report(make_record(), signature))
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == status
    assert {resource["status"] for resource in contained(report)} == {status}
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["code"]["coding"][0]["system"] == "http://loinc.org"
    assert report["code"]["coding"][0]["code"] == "18748-4"
    # every finding is a contained Observation the report's results point to
    assert sorted(item["reference"] for item in report["result"]) == sorted(
        f"#{resource['id']}" for resource in contained(report))


def test_fhir_claims_and_pertinent_negatives():
    report = validated(fhir_diagnostic_report(make_record()))
    pneumothorax = finding(report, "Pneumothorax")
    assert snomed_codes(pneumothorax["code"]) == ["36118008"]
    assert snomed_codes(pneumothorax["valueCodeableConcept"]) == ["52101004"]  # Present
    assert pneumothorax["bodySite"] == RIGHT
    for name, code in (("Pleural Effusion", "60046008"), ("Cardiomegaly", "8186001")):  # "No ...", "normal"
        negative = finding(report, name)
        assert snomed_codes(negative["code"]) == [code]
        assert snomed_codes(negative["valueCodeableConcept"]) == ["2667000"]  # Absent
        assert "bodySite" not in negative
    assert sorted(resource["code"]["text"] for resource in contained(report)) == [
        "Cardiomegaly", "Pleural Effusion", "Pneumothorax"]


def test_fhir_possible_findings_sided_negatives_and_uncoded_findings():
    report = validated(fhir_diagnostic_report(make_record(
        findings="Possible left lower lobe pneumonia. No right pleural effusion. Endotracheal tube in place.",
        impression="Possible pneumonia.")))
    pneumonia = finding(report, "Pneumonia")
    assert snomed_codes(pneumonia["code"]) == ["233604007"]
    assert pneumonia["valueCodeableConcept"] == {"text": "possible"}
    assert pneumonia["bodySite"] == LEFT
    effusion = finding(report, "Pleural Effusion")  # only the right side is said to be clear
    assert snomed_codes(effusion["valueCodeableConcept"]) == ["2667000"]
    assert effusion["bodySite"] == RIGHT
    devices = finding(report, "Support Devices")  # no SNOMED code we are sure of: text only
    assert "coding" not in devices["code"]
    assert snomed_codes(devices["valueCodeableConcept"]) == ["52101004"]


def test_fhir_conclusion_and_presented_form_of_a_draft():
    record = make_record()
    report = validated(fhir_diagnostic_report(record))
    assert report["conclusion"] == IMPRESSION_TEXT
    text = presented_text(report)
    assert text.splitlines()[0].startswith("DRAFT - NOT SIGNED")
    assert f"FINDINGS: {FINDINGS_TEXT}" in text and "Signed by" not in text
    assert report["issued"] == record["exported_at"]
    assert "resultsInterpreter" not in report and not contained(report, "Practitioner")


def test_fhir_conclusion_and_presented_form_of_a_signed_report():
    report = validated(fhir_diagnostic_report(make_record(), SIGNATURE))
    assert report["conclusion"] == IMPRESSION_TEXT
    text = presented_text(report)
    assert "DRAFT" not in text
    assert "Signed by Dr A. Reader on 2025-01-02 10:30 +01:00" in text.splitlines()
    assert report["issued"] == "2025-01-02T10:30:15+01:00"
    (interpreter,) = report["resultsInterpreter"]
    (practitioner,) = contained(report, "Practitioner")
    assert interpreter["reference"] == f"#{practitioner['id']}"
    assert practitioner["name"] == [{"text": "Dr A. Reader", "family": "Reader", "given": ["A."], "prefix": ["Dr"]}]


def test_fhir_identity_from_the_headers():
    report = validated(fhir_diagnostic_report(make_record()))
    assert report["subject"]["identifier"]["value"] == "P-0042"
    (study,) = report["imagingStudy"]
    assert study["identifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}
    assert [identifier["value"] for identifier in report["identifier"]] == ["ACC123"]
    assert report["effectiveDateTime"] == "2024-03-01"
    assert "Doe" not in str(report)  # the name is exported only when shown on the page


def test_fhir_report_of_a_study_without_identity_invents_none():
    report = validated(fhir_diagnostic_report(make_record(headers={})))  # PNG/JPEG: no DICOM header
    for absent in ("subject", "imagingStudy", "identifier", "effectiveDateTime"):
        assert absent not in report
    assert snomed_codes(finding(report, "Pneumothorax")["code"]) == ["36118008"]


def test_fhir_findings_checklist_observations():
    checklist = {"checked_by_reader": ["nodule:right", "pleural effusion"],
                 "model_findings": ["nodule:right"],
                 "model_probabilities": {"pleural effusion": 0.41, "nodule:right": 0.87, "pneumothorax:left": 0.05}}
    report = validated(fhir_diagnostic_report(make_record(checklist=checklist), SIGNATURE))
    entries = contained(report, method="reader-confirmed finding checklist")
    values = {entry["code"]["text"]: snomed_codes(entry["valueCodeableConcept"]) for entry in entries}
    assert values == {"nodule:right": ["52101004"], "pleural effusion": ["52101004"],
                      "pneumothorax:left": ["2667000"]}
    assert all(entry["status"] == "final" for entry in entries)
    by_name = {entry["code"]["text"]: entry for entry in entries}
    # the finding coded where the one table knows it (the SR's codes), its side as a coded laterality
    assert snomed_codes(by_name["pneumothorax:left"]["code"]) == ["36118008"]
    assert by_name["pneumothorax:left"]["bodySite"] == LEFT
    assert "coding" not in by_name["nodule:right"]["code"] and by_name["nodule:right"]["bodySite"] == RIGHT
    assert "coding" not in by_name["pleural effusion"]["code"] and "bodySite" not in by_name["pleural effusion"]
    references = {item["reference"] for item in report["result"]}
    assert {f"#{entry['id']}" for entry in entries} <= references
    assert not contained(fhir_diagnostic_report(make_record()), method="reader-confirmed finding checklist")


# DICOM Basic Text SR


def content_items(dataset):
    """{(code value, code meaning): item} of an SR content sequence."""
    return {(item.ConceptNameCodeSequence[0].CodeValue, item.ConceptNameCodeSequence[0].CodeMeaning): item
            for item in dataset.ContentSequence}


def section_text(dataset, section, entry):
    """The section's text (its one TEXT item; the Findings section also holds the findings coded)."""
    (item,) = [item for item in content_items(dataset)[section].ContentSequence if item.ValueType == "TEXT"]
    assert item.RelationshipType == "CONTAINS"
    assert (item.ConceptNameCodeSequence[0].CodeValue, item.ConceptNameCodeSequence[0].CodeMeaning) == entry
    return item.TextValue


def test_signed_sr_round_trip(tmp_path):
    references = image_references()
    path = write_basic_text_sr(tmp_path / "report.dcm", make_record(), references, SIGNATURE)
    dataset = pydicom.dcmread(path)
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dataset.SOPClassUID == BASIC_TEXT_SR and dataset.Modality == "SR"
    assert dataset.StudyInstanceUID == STUDY_UID
    assert dataset.SeriesInstanceUID not in {reference["series_instance_uid"] for reference in references}
    assert dataset.SOPInstanceUID not in {reference["sop_instance_uid"] for reference in references}
    assert (dataset.PatientID, dataset.AccessionNumber, dataset.StudyDate) == ("P-0042", "ACC123", "20240301")
    assert (dataset.CompletionFlag, dataset.VerificationFlag, dataset.PreliminaryFlag) == (
        "COMPLETE", "VERIFIED", "FINAL")
    (observer,) = dataset.VerifyingObserverSequence
    assert str(observer.VerifyingObserverName) == "Reader^A.^^Dr"  # DICOM person-name form
    assert observer.VerificationDateTime == "20250102103015+0100"
    assert dataset.ValueType == "CONTAINER" and dataset.ContinuityOfContent == "SEPARATE"
    assert dataset.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert dataset.ConceptNameCodeSequence[0].CodingSchemeDesignator == "LN"
    assert section_text(dataset, ("121070", "Findings"), ("121071", "Finding")) == FINDINGS_TEXT
    assert section_text(dataset, ("121072", "Impressions"), ("121073", "Impression")) == IMPRESSION_TEXT
    assert ("121106", "Comment") not in content_items(dataset)


def test_sr_evidence_references_every_image_by_series(tmp_path):
    references = image_references(series_sizes=(2, 3, 1))
    dataset = pydicom.dcmread(write_basic_text_sr(tmp_path / "report.dcm", make_record(), references))
    (study,) = dataset.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == STUDY_UID
    found = {series.SeriesInstanceUID: {(sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID)
                                        for sop in series.ReferencedSOPSequence}
             for series in study.ReferencedSeriesSequence}
    expected = {}
    for reference in references:
        expected.setdefault(reference["series_instance_uid"], set()).add(
            (reference["sop_class_uid"], reference["sop_instance_uid"]))
    assert len(study.ReferencedSeriesSequence) == 3 and found == expected


def test_unsigned_sr_is_a_partial_unverified_draft(tmp_path):
    record = make_record(impression="")
    dataset = pydicom.dcmread(write_basic_text_sr(tmp_path / "draft.dcm", record, image_references()))
    assert (dataset.CompletionFlag, dataset.VerificationFlag, dataset.PreliminaryFlag) == (
        "PARTIAL", "UNVERIFIED", "PRELIMINARY")
    assert "VerifyingObserverSequence" not in dataset
    first = dataset.ContentSequence[0]  # seen before the report text
    assert first.ValueType == "TEXT" and first.ConceptNameCodeSequence[0].CodeValue == "121106"
    assert first.TextValue.startswith("DRAFT - NOT SIGNED")
    items = content_items(dataset)
    assert ("121072", "Impressions") not in items  # an empty section is left out
    assert section_text(dataset, ("121070", "Findings"), ("121071", "Finding")) == FINDINGS_TEXT


def test_sr_patient_name_only_when_the_study_carries_it():
    references = image_references()
    assert basic_text_sr(make_record(), references).PatientName == ""
    named = basic_text_sr(make_record(show_name=True), references)
    assert str(named.PatientName) == "Doe^Jane"
    anonymous = basic_text_sr(make_record(headers={}), references)  # no identity in the record
    assert (anonymous.PatientID, anonymous.AccessionNumber, anonymous.StudyDate) == ("", "", "")
    assert anonymous.StudyInstanceUID == STUDY_UID  # the images' study


def test_sr_refuses_a_study_without_dicom_images(tmp_path):
    with pytest.raises(NoDicomReferences, match="PNG/JPEG"):
        write_basic_text_sr(tmp_path / "report.dcm", make_record(headers={}), [])
    assert list(tmp_path.iterdir()) == []


def test_sr_refuses_images_of_two_studies():
    references = image_references() + image_references(study_uid=generate_uid(), series_sizes=(1,))
    with pytest.raises(ValueError, match="2 studies") as raised:
        basic_text_sr(make_record(), references)
    assert not isinstance(raised.value, NoDicomReferences)


def test_sr_refuses_a_report_of_another_study():
    with pytest.raises(ValueError, match="study"):
        basic_text_sr(make_record(), image_references(study_uid=generate_uid()))


def test_sr_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "report.dcm"
    write_basic_text_sr(path, make_record(), image_references())
    write_basic_text_sr(path, make_record(), image_references(), SIGNATURE)  # replaces the draft
    assert [entry.name for entry in tmp_path.iterdir()] == ["report.dcm"]
    assert pydicom.dcmread(path).VerificationFlag == "VERIFIED"
    before = path.read_bytes()

    def failing_save_as(dataset, target, *args, **options):  # the write stops half-way
        if hasattr(target, "write"):
            target.write(b"half a file")
        else:
            with open(target, "wb") as stream:
                stream.write(b"half a file")
        raise OSError("disk went away")

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save_as)
    with pytest.raises(OSError, match="disk went away"):
        write_basic_text_sr(path, make_record(), image_references())
    assert path.read_bytes() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["report.dcm"]


def test_snomed_table_holds_the_known_codes():
    assert report_formats.FINDING_CODES["Pneumothorax"][0] == "36118008"
    assert report_formats.FINDING_CODES["Edema"][0] == "19242006"
    assert not {"Enlarged Cardiomediastinum", "Lung Opacity", "Lung Lesion", "Pleural Other",
                "Support Devices"} & set(report_formats.FINDING_CODES)


# The comparison study: the prior a draft compared with, in every format

PRIOR_UID = generate_uid()
IDR_COMPARISON = "https://profiles.ihe.net/RAD/IDR/StructureDefinition/idrComparisonStudy"


def comparison(references=None, **changes):
    """A record's comparison as web_app's export makes it (web_app.comparison_record)."""
    references = image_references(PRIOR_UID, (1,)) if references is None else references
    return {"id": "ACC099", "study_instance_uid": PRIOR_UID, "accession_number": "ACC099", "study_date": "2023-11-02",
            "report_read": True, "images": [{"view": "PA", "sop_instance_uid": reference["sop_instance_uid"]}
                                            for reference in references],
            "references": references, **changes}


def with_comparison(value):
    return {**make_record(), "comparison": value}


def test_the_text_names_the_comparison_study_or_none():
    lines = report_document(with_comparison(None)).splitlines()
    assert lines[lines.index("") - 1] == "Comparison: none"  # the header's last line, before the report
    lines = report_document(with_comparison(comparison()), SIGNATURE).splitlines()
    assert lines[lines.index("") - 1] == "Comparison: ACC099 (2023-11-02), images and report read"
    png = comparison(references=[], id="the prior study", images=[{"view": "", "sha1": "ab12"}], report_read=False,
                     study_instance_uid=None, study_date=None)
    assert "Comparison: the prior study, images read" in report_document(with_comparison(png)).splitlines()


def test_fhir_references_the_comparison_study_in_ihes_comparison_extension():
    models = pytest.importorskip("fhir.resources.R4B.diagnosticreport")
    report = validated(fhir_diagnostic_report(with_comparison(comparison())))
    (extension,) = report["extension"]
    assert extension["url"] == IDR_COMPARISON
    reference = extension["valueReference"]
    assert reference["type"] == "ImagingStudy"
    assert reference["identifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{PRIOR_UID}"}
    # the model keeps it, and the study reported is still the report's imagingStudy
    parsed = models.DiagnosticReport.model_validate(report)
    assert parsed.extension[0].valueReference.identifier.value == f"urn:oid:{PRIOR_UID}"
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{STUDY_UID}"
    assert "Comparison: ACC099" in presented_text(report)
    # a prior without a DICOM header is named in text; a first study has no comparison
    png = comparison(references=[], study_instance_uid=None, id="the prior study")
    (extension,) = validated(fhir_diagnostic_report(with_comparison(png)))["extension"]
    assert "identifier" not in extension["valueReference"]
    assert extension["valueReference"]["display"].startswith("Comparison: the prior study")
    assert "extension" not in validated(fhir_diagnostic_report(with_comparison(None)))


def test_sr_cites_the_comparison_studys_images_as_pertinent_other_evidence(tmp_path):
    prior_images = image_references(PRIOR_UID, (2, 1))
    record = with_comparison(comparison(prior_images))
    dataset = pydicom.dcmread(write_basic_text_sr(tmp_path / "report.dcm", record, image_references(), SIGNATURE))
    (study,) = dataset.PertinentOtherEvidenceSequence
    assert study.StudyInstanceUID == PRIOR_UID
    cited = {(series.SeriesInstanceUID, sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID)
             for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    assert cited == {(reference["series_instance_uid"], reference["sop_class_uid"], reference["sop_instance_uid"])
                     for reference in prior_images}
    (current,) = dataset.CurrentRequestedProcedureEvidenceSequence
    assert current.StudyInstanceUID == STUDY_UID  # the study reported stays the current evidence
    section = content_items(dataset)[("121066", "Prior Procedure Descriptions")]
    text, uid = section.ContentSequence
    assert (text.ConceptNameCodeSequence[0].CodeValue, text.TextValue) == (
        "121065", "Comparison: ACC099 (2023-11-02), images and report read")
    assert (uid.ValueType, uid.ConceptNameCodeSequence[0].CodeValue, uid.UID) == ("UIDREF", "121018", PRIOR_UID)

    first = basic_text_sr(with_comparison(None), image_references())
    assert "PertinentOtherEvidenceSequence" not in first
    (text,) = content_items(first)[("121066", "Prior Procedure Descriptions")].ContentSequence
    assert text.TextValue == "Comparison: none"
    # a record that says nothing of a comparison (the node's) gets no such section
    assert ("121066", "Prior Procedure Descriptions") not in content_items(basic_text_sr(make_record(),
                                                                                        image_references()))
    with pytest.raises(ValueError, match="itself"):
        basic_text_sr(with_comparison(comparison(image_references(STUDY_UID, (1,)))), image_references())

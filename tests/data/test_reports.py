"""Report text cleaning and sectioning, on hand-worked examples and on real OpenI (IU X-ray) text."""

import collections
import csv
import importlib.metadata
import json
import re
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from modeling_cliptt5.evaluation.metrics import clean_report_iu_xray, clean_report_mimic_cxr
from modeling_cliptt5.data.reports import (
    DEID_TOKEN, extract_sections, normalize_deidentification, normalize_whitespace, section_name,
    sections_from_free_text,
)

IU_XRAY_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference" / "iu_xray"
ANNOTATION = IU_XRAY_DIR / "annotation.json"


def openi_xml_reports(limit=None):
    """[{label: text}] of AbstractText sections of torchxrayvision's bundled OpenI reports (skip if not installed)."""
    try:
        distribution = importlib.metadata.distribution("torchxrayvision")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torchxrayvision (with NLMCXR_reports.tgz) is not installed")
    archive_path = next(Path(distribution.locate_file(f)) for f in distribution.files if f.name == "NLMCXR_reports.tgz")
    reports = []
    with tarfile.open(archive_path) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if member.name.endswith(".xml"):
                root = ElementTree.fromstring(archive.extractfile(member).read())
                reports.append({e.get("Label").lower(): (e.text or "") for e in root.iter("AbstractText")})
                if limit and len(reports) >= limit:
                    break
    return reports


def annotation_reports():
    if not ANNOTATION.is_file():
        pytest.skip(f"{ANNOTATION} not available")
    return json.loads(ANNOTATION.read_text())


# --- R2Gen cleaners -------------------------------------------------------------------------------------------------

def test_iu_xray_cleaner_on_worked_examples():
    # "..", list numbers "1. " / ". 2. ", lower case, punctuation removed, " . " between sentences.
    assert (clean_report_iu_xray("The heart is normal.. 1. No effusion. 2. Lungs: clear (no x-XXXX).")
            == "the heart is normal . no effusion . lungs clear no x-xxxx .")
    # R2Gen's character class holds the range ':-[' : '=' and '?' go, '-' stays; the double space stays too.
    assert clean_report_iu_xray("Heart size 2 = 3 cm? well-expanded") == "heart size 2  3 cm well-expanded ."
    # R2Gen's `!= []` filter keeps empty sentences.
    assert clean_report_iu_xray("Normal. . Clear.") == "normal .  . clear ."


def test_mimic_cxr_cleaner_on_worked_example():
    # newline -> space, "___" -> "_" (then removed, leaving two spaces), ".." -> ".", "1. " dropped.
    assert (clean_report_mimic_cxr("FINDINGS:\n\nHeart ___ normal..  1. Lungs clear.")
            == "findings heart  normal . lungs clear .")


def test_iu_xray_cleaner_reproduces_published_cvt2distilgpt2_scores():
    """With R2Gen's cleaning of the references, pycocoevalcap's BLEU gives CvT2DistilGPT2's published numbers
    (protocol in ../shared/reference/iu_xray/README.md): only an exact cleaner gets all four to 5 decimals."""
    bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
    annotation = annotation_reports()
    counts = collections.Counter(token for entry in annotation["train"]
                                 for token in clean_report_iu_xray(entry["report"]).split())
    known = {token for token, count in counts.items() if count >= 3}
    references = {entry["id"]: [" ".join(token if token in known else "<unk>"
                                         for token in clean_report_iu_xray(entry["report"]).split()[:59])]
                  for entry in annotation["test"]}
    with open(IU_XRAY_DIR / "cvt2distilgpt2_test_reports.csv", newline="") as handle:
        generated = {row["dicom_id"]: [re.sub(" +", " ", row["report"].replace(".", " ."))]
                     for row in csv.DictReader(handle)}
    scores, _ = bleu.Bleu(4).compute_score(references, generated, verbose=0)
    assert [round(score, 5) for score in scores] == [0.47341, 0.30362, 0.22399, 0.17524]


def test_iu_xray_cleaner_output_on_every_real_report():
    annotation = annotation_reports()
    for entry in (entry for split in annotation.values() for entry in split):
        cleaned = clean_report_iu_xray(entry["report"])
        assert cleaned.endswith(" .") and cleaned == cleaned.lower()
        assert not re.search(r"[,?;*!%^&_+():\[\]{}<=>@\"'/\\]", cleaned), cleaned


# --- de-identification and whitespace -------------------------------------------------------------------------------

def test_deidentification_placeholders_become_one_token():
    assert DEID_TOKEN == "XXXX"
    text = "Chest x-XXXX. XXXX-year-old with ___ pain on __. Seen XXXXXXXX. X-XXXX"
    assert normalize_deidentification(text) == "Chest XXXX. XXXX-year-old with XXXX pain on XXXX. Seen XXXX. XXXX"
    untouched = "Xray of the box-X; xxx and XXX stay; snake_case stays"
    assert normalize_deidentification(untouched) == untouched


def test_deidentification_on_real_openi_text_keeps_every_placeholder():
    reports = openi_xml_reports()
    for report in reports:
        for text in report.values():
            normalized = normalize_deidentification(text)
            assert "x-XXXX" not in normalized and "XXXXX" not in normalized
            # Every placeholder is still there, one token each ("x-XXXX" and "XXXXXXXX" count once).
            assert normalized.count("XXXX") == len(re.findall(r"[xX]-XXXX|(?:XXXX)+", text))


def test_whitespace_normalisation():
    assert normalize_whitespace("  The heart\n\n is\tnormal.  ") == "The heart is normal."
    assert normalize_whitespace(None) == ""


# --- sections -------------------------------------------------------------------------------------------------------

MIMIC_STYLE_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // ?pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 The lungs are clear without focal consolidation.  No pleural effusion.
 Heart size is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_mimic_style_report_sections():
    sections = extract_sections(MIMIC_STYLE_REPORT)
    assert sections["preamble"] == "FINAL REPORT"
    assert sections["examination"] == "CHEST (PA AND LAT)"
    assert sections["indication"] == "___F with cough  // ?pneumonia"
    assert sections["technique"] == "Chest PA and lateral"
    assert sections["comparison"] == "None."
    assert normalize_whitespace(sections["findings"]) == ("The lungs are clear without focal consolidation. "
                                                         "No pleural effusion. Heart size is normal.")
    assert sections["impression"] == "No acute cardiopulmonary process."
    free = sections_from_free_text(MIMIC_STYLE_REPORT)
    assert free["impression"] == "No acute cardiopulmonary process." and free["indication"].startswith("___F")


@pytest.mark.parametrize("header, name", [
    ("FINDINGS AND IMPRESSION", "impression"), ("Findings/Impression", "impression"), ("CONCLUSION", "impression"),
    ("impression", "impression"), ("Findings", "findings"), ("REASON FOR EXAMINATION", "indication"),
    ("CLINICAL HISTORY", "history"), ("CHEST, TWO VIEWS", "findings"), ("IMPRESSON", "impression"),
    ("WET READ", "wet read"), ("NOTIFICATION", "notification"),
])
def test_header_variants(header, name):
    assert section_name(header) == name
    assert extract_sections(f"{header}: some text here.") == {name: "some text here."}


def test_inline_lower_case_headers_and_no_headers():
    assert sections_from_free_text("findings: the lungs are clear. impression: normal chest.") == {
        "findings": "the lungs are clear.", "impression": "normal chest.", "indication": ""}
    # No section header: the whole report is the findings (as in R2Gen's data).
    assert sections_from_free_text("The lungs are clear. No effusion.") == {
        "findings": "The lungs are clear. No effusion.", "impression": "", "indication": ""}
    # "FINDINGS AND IMPRESSION:" must not split into a findings and an impression header.
    assert sections_from_free_text("FINDINGS AND IMPRESSION: Normal chest.")["impression"] == "Normal chest."
    # A time is no header, nor an upper-case phrase naming no section (real IU X-ray text: "KUB XXXX: ...").
    assert sections_from_free_text("Film at 10:30 shows clear lungs.")["findings"] == "Film at 10:30 shows clear lungs."
    text = "FINDINGS: Clear lungs. KUB XXXX: single view of the abdomen. IMPRESSION: Normal."
    assert sections_from_free_text(text)["findings"] == "Clear lungs. KUB XXXX: single view of the abdomen."
    assert section_name("KUB XXXX") is None


@pytest.mark.parametrize("style", ["upper", "lower", "title_conclusion"])
def test_sections_round_trip_on_real_openi_reports(style):
    """Real findings/impression pairs, joined with headers in several spellings, come back exactly."""
    headers = {"upper": ("FINDINGS:", "IMPRESSION:"), "lower": ("findings:", "impression:"),
               "title_conclusion": ("Findings:", "CONCLUSION:")}[style]
    checked = 0
    for report in openi_xml_reports(limit=400):
        findings, impression = normalize_whitespace(report["findings"]), normalize_whitespace(report["impression"])
        if not findings or not impression:
            continue
        text = f"INDICATION: {report['indication']}\n{headers[0]} {findings}\n{headers[1]} {impression}"
        sections = sections_from_free_text(text)
        assert normalize_whitespace(sections["findings"]) == findings
        assert normalize_whitespace(sections["impression"]) == impression
        if ":" not in report["indication"]:  # some real indications hold headers themselves ("INDICATION: ...")
            assert normalize_whitespace(sections["indication"]) == normalize_whitespace(report["indication"])
        checked += 1
    assert checked > 200


def test_real_r2gen_reports_have_no_headers_so_all_is_findings():
    annotation = annotation_reports()
    entries = [entry for split in annotation.values() for entry in split]
    assert len(entries) == 2069 + 296 + 590
    for entry in entries:
        sections = sections_from_free_text(entry["report"])
        assert sections["findings"] == entry["report"].strip() and sections["impression"] == ""

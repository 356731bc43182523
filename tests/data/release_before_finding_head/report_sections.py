"""The report text format CLIP-T5 is trained on: "FINDINGS: ... IMPRESSION: ..." and its inverse.

Kept free of any dependency so the release folder (remote code) can ship it beside the processor.
"""

import re

FINDINGS_HEADER = "FINDINGS:"
IMPRESSION_HEADER = "IMPRESSION:"
REPORT_TARGETS = ("findings", "impression", "both")

_SECTION_PATTERN = re.compile(r"\b(FINDINGS|IMPRESSION)\s*:", flags=re.IGNORECASE)


def format_report(findings, impression, target="both"):
    """Builds the training target text from the two sections.

    target="both" writes section headers so that decoding can split the draft again;
    "findings" or "impression" return that section alone, without a header (R2Gen style).
    """
    findings = (findings or "").strip()
    impression = (impression or "").strip()
    if target == "findings":
        return findings
    if target == "impression":
        return impression
    if target != "both":
        raise ValueError(f"report target must be one of {REPORT_TARGETS}, got {target!r}")
    parts = []
    if findings:
        parts.append(f"{FINDINGS_HEADER} {findings}")
    if impression:
        parts.append(f"{IMPRESSION_HEADER} {impression}")
    return " ".join(parts)


def split_report_sections(text):
    """Returns {"findings": str|None, "impression": str|None} from a report with section headers.

    A report without any header is returned as findings (what R2Gen-style models produce).
    """
    text = (text or "").strip()
    matches = list(_SECTION_PATTERN.finditer(text))
    if not matches:
        return {"findings": text or None, "impression": None}
    sections = {"findings": None, "impression": None}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end():end].strip()
        name = match.group(1).lower()
        if body:
            sections[name] = body if sections[name] is None else f"{sections[name]} {body}"
    return sections

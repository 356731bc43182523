"""Report text as sources ship it -> clean findings/impression: sectioning and de-identification tokens (R2Gen's
benchmark cleaners are in metrics.py)."""

import re

# One placeholder for every de-identified span: OpenI writes "XXXX" (also "x-XXXX" for a redacted
# "x-ray"), MIMIC-CXR writes "___". "XXXX" is kept because the IU X-ray benchmark references contain it.
DEID_TOKEN = "XXXX"

# "x-XXXX" first (the whole word becomes the token), then runs of X (4 or more, upper-case only, so
# words like "xxx" or "Xray" are untouched), then MIMIC's runs of underscores.
_DEID_PATTERN = re.compile(r"(?<![\w-])[xX]-X{4,}\b|X{4,}|_{2,}")

# Section headers that count in any letter case ("Findings:", "IMPRESSION:", "findings:").
_KNOWN_HEADER_PATTERN = re.compile(
    r"(?<![\w-])(?P<name>findings\s+and\s+impressions?|findings\s*/\s*impressions?|findings|impressions?|"
    r"conclusions?|indications?|reason\s+for\s+exam(?:ination)?|clinical\s+(?:history|indication|information)|"
    r"history|comparisons?|technique)\s*:",
    flags=re.IGNORECASE,
)
# Any other upper-case header ("EXAMINATION:", "WET READ:", "CHEST (PA AND LAT):") at the start of a line or a
# sentence: MIMIC-CXR's convention, as in MIT-LCP mimic-code txt/section_parser.py.
_CAPS_HEADER_PATTERN = re.compile(r"(?m)(?:^|(?<=[.;]))[ \t]*(?P<name>[A-Z][A-Z ,/&()-]*[A-Z)])[ \t]*:")

# Header spellings -> section name. Mappings and counts of the variants follow mimic-code's section_parser.py
# (e.g. "findings and impression" and "conclusion" are the impression there).
_SECTION_NAMES = {
    "finding": "findings",
    "findings": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "findings and impression": "impression",
    "findings and impressions": "impression",
    "findings/impression": "impression",
    "findings/impressions": "impression",
    "indication": "indication",
    "indications": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "clinical indication": "indication",
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "patient history": "history",
    "comparison": "comparison",
    "comparisons": "comparison",
    "technique": "technique",
    "exam": "examination",
    "examination": "examination",
    "type of examination": "examination",
    "recommendation": "recommendations",
    "recommendations": "recommendations",
    "recommendation(s)": "recommendations",
    "wet read": "wet read",
    "wetread": "wet read",
    "notification": "notification",
    "addendum": "addendum",
    "comment": "comment",
    "comments": "comment",
    "note": "comment",
    # Misspellings seen in MIMIC-CXR (section_parser.py lists them with their counts).
    "impresson": "impression",
    "impresion": "impression",
    "impession": "impression",
    "imprression": "impression",
    "findngs": "findings",
    "findins": "findings",
    "finidngs": "findings",
}
# Headers that name the view ("CHEST, TWO VIEWS:", "PA AND LATERAL:") introduce the findings (section_parser.py).
_VIEW_HEADER_PATTERN = re.compile(r"chest|portable|pa and lat|ap and lat|lateral and|frontal|two views|one view")


def normalize_whitespace(text):
    """Collapses every run of spaces, tabs and newlines into one space and strips the ends."""
    return " ".join((text or "").split())


def normalize_deidentification(text, token=DEID_TOKEN):
    """Replaces every de-identification placeholder ("XXXX", "x-XXXX", "___") with `token`."""
    return _DEID_PATTERN.sub(token, text or "")


def clean_report_text(text, normalize_deid=True):
    """Whitespace and (by default) de-identification normalisation: what converters store."""
    if normalize_deid:
        text = normalize_deidentification(text)
    return normalize_whitespace(text)


def section_name(header):
    """The section a header introduces ("FINDINGS AND IMPRESSION" -> "impression"), or None for an unknown header."""
    name = " ".join(header.lower().replace("/ ", "/").split())
    if name in _SECTION_NAMES:
        return _SECTION_NAMES[name]
    for main in ("impression", "findings", "history", "comparison", "addendum"):
        if main in name:
            return main
    if _VIEW_HEADER_PATTERN.search(name):
        return "findings"
    return None


def _header_matches(text):
    """Section headers left to right, overlaps removed (earliest, longest wins).

    An upper-case "header" naming no known section ("KUB XXXX:", "PICC LINE:") is text, not a boundary: real
    IU X-ray findings contain such phrases, and cutting there would lose the rest of the findings.
    """
    caps = [match for match in _CAPS_HEADER_PATTERN.finditer(text) if section_name(match.group("name"))]
    matches = sorted(list(_KNOWN_HEADER_PATTERN.finditer(text)) + caps,
                     key=lambda match: (match.start("name"), -match.end()))
    kept = []
    for match in matches:
        if not kept or match.start("name") >= kept[-1].end():
            kept.append(match)
    return kept


def extract_sections(text):
    """Splits free report text into {section name: text}; text before the first header is the "preamble".

    Sections that repeat are joined with a space; empty sections are left out.
    """
    text = text or ""
    headers = _header_matches(text)
    sections = {}

    def add(name, body):
        body = body.strip()
        if body:
            sections[name] = f"{sections[name]} {body}" if name in sections else body

    add("preamble", text[:headers[0].start("name")] if headers else text)
    for index, match in enumerate(headers):
        end = headers[index + 1].start("name") if index + 1 < len(headers) else len(text)
        add(section_name(match.group("name")), text[match.end():end])
    return sections


def sections_from_free_text(text):
    """{"findings", "impression", "indication"} from free report text (MIMIC-CXR style or no headers at all).

    A report without a findings or impression header is taken as findings (its text before any other header),
    as R2Gen-style data does. The indication falls back to the clinical history.
    """
    sections = extract_sections(text)
    findings = sections.get("findings", "")
    impression = sections.get("impression", "")
    if not findings and not impression:
        findings = sections.get("preamble", "")
    return {
        "findings": findings,
        "impression": impression,
        "indication": sections.get("indication", sections.get("history", "")),
    }

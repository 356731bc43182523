"""Comparison claims: the sentences of a report that compare the study with an earlier one ("Unchanged
cardiomegaly.", "The effusion has increased since the prior study.", "Interval placement of a catheter.").

A report drafted without a prior has no earlier study to compare with: any such claim in it is invented (a
"hallucinated comparison", an error class report metrics such as GREEN count). A model trained on archives whose
reports compare learns to write them anyway; the scoring tables print the share of drafts that do
(`invented_comparison_rate`).

A rule reader, beside the labeler (labeler.py): a sentence claims a comparison when it
- names an earlier study ("compared with", "prior study / exam / film / radiograph / CT", "previous(ly)", "since",
  "from <date or study>"),
- or a change or its absence, in the words radiologists use for one: "unchanged", "stable", "no (significant)
  change", "again seen / noted", "redemonstrated", "persistent / persists", "interval ...", "new", "resolved",
  "improved", "worsened", "has increased / decreased", "increased / decreased in size", "increasing / decreasing",
  "..., now moderate", "larger / smaller" (not "larger than the left"), "increased / decreased" before a finding
  ("Increased right pleural effusion."), "removed", "no longer seen";
- but not when it says there is nothing to compare with ("No prior studies for comparison."), and not for
  "increased" or "decreased" describing the image alone ("increased interstitial markings", "Pulmonary vascularity
  is increased").
It reads the words, not their meaning, so its counts are approximate; tests/evaluation/test_comparisons.py holds the
sentences it is held to.
"""

import re

# Names an earlier study or the act of comparing.
_EARLIER = (r"compar(?:ed|ison)\s+(?:to|with)|\bin\s+comparison\b|"
            r"\b(?:prior|previous|preceding|earlier|recent|last)\s+(?:\w+\s+){0,2}"
            r"(?:study|studies|exam|exams|examination|examinations|film|films|radiograph|radiographs|image|images|"
            r"ct|cts|x-?ray|x-?rays|chest\s+radiograph)\b|"
            r"\bpreviously\b|\bas\s+before\b|\bsince\s+(?:the\s+)?(?:prior|previous|last|\d)|"
            r"\bfrom\s+(?:the\s+)?(?:prior|previous)\b|\bon\s+(?:the\s+)?prior\b")
# A change, or its absence, in the words of a comparison.
_CHANGE = (r"\bunchanged\b|\bstable\b|\bstably\b|\bno\s+(?:\w+\s+)?change\b|\bchanged\b|"
           r"\b(?:again|once\s+again)\s+(?:seen|noted|demonstrated|identified|visualized|present)\b|\bagain\b|"
           r"\bredemonstrat\w*|\bpersist\w*|\binterval\w*|\bnew(?:ly)?\b|\bresolv\w*|\bresolution\b|"
           r"\bimprov\w*|\bworse\w*|\bprogress\w*|\bregress\w*|"
           r"\b(?:has|have|had)\s+(?:\w+\s+){0,2}(?:increased|decreased|enlarged|diminished|grown|reduced)\b|"
           r"\b(?:increased|decreased|enlarged|diminished|reduced)\s+(?:\w+\s+)?(?:in\s+(?:size|extent|number)|"
           r"from|since)\b|\b(?:increasing|decreasing|enlarging)\b|\binterval\s+(?:increase|decrease)\b|"
           # "..., now moderate": a size given against the last one; "larger" / "smaller" unless side by side
           r"\bnow\b|\b(?:larger|smaller)\b(?!\s+than\s+(?:the\s+)?(?:left|right)\b)|"
           # a finding that cannot be "increased" in one image ("Increased right pleural effusion."), unlike
           # "increased interstitial markings"; gone since the last study
           r"\b(?:increased|decreased)\s+(?:\w+\s+){0,3}?(?:effusions?|pneumothora(?:x|ces)|consolidations?|"
           r"cardiomegaly|nodules?|mass(?:es)?|edema|atelectasis)\b|\bno\s+longer\b|\bremov(?:ed|al)\b")
# Says there is nothing to compare with: the right sentence for a first study, not a claim.
_NO_EARLIER = (r"\bno\s+(?:available\s+|other\s+|recent\s+)?(?:prior|previous|comparison|old)\b|"
               r"\bwithout\s+(?:a\s+|any\s+)?(?:prior|previous|comparison)\b|\bcomparison\s*:\s*none\b|"
               r"\bnone\s+(?:available\s+)?for\s+comparison\b|\bnot\s+available\s+for\s+comparison\b")

EARLIER, CHANGE, NO_EARLIER = (re.compile(pattern, re.IGNORECASE) for pattern in (_EARLIER, _CHANGE, _NO_EARLIER))
_CLAUSE_END = re.compile(r"(?<=;)\s+|\n+")


def sentences_of(text):
    """The labeler's sentences (labeler.split_sentences), each cut again after ";" and at line breaks: a clause that
    compares ("The effusion has increased; no pneumothorax.") is read, and stripped, without its neighbour."""
    from modeling_cliptt5.evaluation.labeler import split_sentences

    return [clause.strip() for sentence in split_sentences(text) for clause in _CLAUSE_END.split(sentence)
            if clause.strip()]


def claims_comparison(sentence):
    """True when the sentence compares the study with an earlier one (see the module's rules)."""
    if NO_EARLIER.search(sentence):
        return False
    return bool(EARLIER.search(sentence) or CHANGE.search(sentence))


def comparison_claims(text):
    """The sentences of a report that claim a comparison with an earlier study."""
    return [sentence for sentence in sentences_of(text) if claims_comparison(sentence)]


def without_comparisons(report):
    """The report without its comparison claims, section by section (FINDINGS: / IMPRESSION: headers kept where the
    report has them, a section left empty dropped): a training target for a study whose prior is not in the data,
    so that the model does not learn to compare with a study it cannot see."""
    from modeling_cliptt5.processing_cliptt5 import format_report, split_report_sections

    sections = split_report_sections(report)
    kept = {name: " ".join(sentence for sentence in sentences_of(text) if not claims_comparison(sentence))
            for name, text in sections.items()}
    if sections["impression"] is None and not (report or "").lstrip().upper().startswith("FINDINGS"):
        return kept["findings"]  # a report without headers stays without them
    return format_report(kept["findings"], kept["impression"], "both")


def invented_comparison_rate(texts, has_prior=None):
    """The share of reports, among those whose study had no prior (`has_prior`: one bool per report; None: no
    study had one), that claim a comparison all the same; None when every study had a prior."""
    has_prior = [False] * len(texts) if has_prior is None else list(has_prior)
    if len(has_prior) != len(texts):
        raise ValueError(f"{len(texts)} reports but {len(has_prior)} prior flags")
    without = [text for text, prior in zip(texts, has_prior) if not prior]
    if not without:
        return None
    return sum(bool(comparison_claims(text)) for text in without) / len(without)

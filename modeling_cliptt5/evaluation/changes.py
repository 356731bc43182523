"""Change statements: what a report says has changed since the prior study ("New small right pleural effusion." ->
`pleural_effusion:right:new`), scored against the change labels a follow-up study carries.

comparisons.py counts whether a draft compares at all (an invented comparison when there is no prior); this module
asks whether a draft of a study WITH a prior says the right change about the right finding.

Labels, as the phantom's follow-up studies store them beside their presence labels:
`{finding}:{side}:{change}` for sided findings (`pleural_effusion:right:increased`) and `{finding}:{change}` for
findings without a side (`cardiomegaly:unchanged`, `support_device:new`), change in CHANGES.

How a report is read, sentence by sentence (comparisons.sentences_of: sentences, cut again after ";"):
- the change class comes from the sentence's change words (CHANGE_CUES, radiology wording); when a sentence has
  cues of two classes, the FIRST cue in the sentence decides ("Stable to slightly increased effusion" ->
  unchanged), so one sentence states one change (the phantom writes one finding per sentence);
- a first cue negated just before it ("No new effusion.", "The effusion has not increased.") gives nothing;
- the findings come from `findings_of` (default: the phantom's `labels_from_report`) applied to the sentence with
  every change word taken out, so that "Interval resolution of the right pleural effusion." is read as "the right
  pleural effusion" (a reader that takes "resolution of" for a negation would otherwise find nothing), or to the
  whole sentence where that leaves no finding ("The heart has enlarged."); its negations still count, so "No
  pneumothorax." gives nothing; "bilateral" gives both sides; a sided finding named without a side ("The effusion
  is no longer seen.") gives nothing, since its label needs a side;
- "enlarged" alone describes the image ("Enlarged cardiac silhouette."), as "increased" does in comparisons.py's
  rules: it is a change only as "has enlarged", "enlarging" or "enlarged since / in size";
- each statement counts once per report, however many sentences (findings and impression) repeat it.
Rules read words, not meaning: the scores are approximate, and tests/evaluation/test_changes.py holds the sentences
they are held to.
"""

import re

from modeling_cliptt5.evaluation.comparisons import sentences_of
from modeling_cliptt5.evaluation.labeler import precision_recall_f1

CHANGES = ("new", "increased", "decreased", "resolved", "unchanged")

# Change class -> its words; "interval" in front of any of them is part of the cue.
_SINCE = r"(?:\s+(?:in\s+(?:size|extent)|since|from))?"
_NOT_SIDE_BY_SIDE = r"(?!\s+than\s+(?:the\s+)?(?:left|right|on\s+the))"  # "right larger than left" is no change
CHANGE_CUES = {
    # "placement of" only after "interval": "Appropriate placement of the tube." describes this study alone.
    "new": (r"new(?:ly)?(?:\s+(?:seen|noted|developed|appearing))?|"
            r"interval\s+(?:development|appearance|placement|insertion)(?:\s+of)?|"
            r"(?:has|have)\s+(?:been\s+)?(?:developed|appeared|placed|inserted)"),
    "increased": (rf"increas(?:ed|ing|e){_SINCE}(?:\s+(?:of|in))?|larger{_NOT_SIDE_BY_SIDE}|worse(?:ned|ning)?|"
                  rf"(?:has|have)\s+(?:\w+\s+)?enlarged|enlarging|enlarged\s+(?:in\s+size|since|from)|"
                  rf"progress(?:ed|ing|ion)(?:\s+of)?"),
    "decreased": (rf"decreas(?:ed|ing|e){_SINCE}(?:\s+(?:of|in))?|smaller{_NOT_SIDE_BY_SIDE}|"
                  r"improv(?:ed|ing|ement)(?:\s+(?:of|in))?|resolving|diminish(?:ed|ing)|"
                  r"(?:has|have)\s+(?:\w+\s+)?(?:reduced|regressed)"),
    "resolved": (r"(?:resolution|removal)(?:\s+of)?|(?:has\s+|have\s+)?(?:been\s+)?(?:completely\s+)?"
                 r"(?:resolved|removed|cleared)|no\s+longer\s+(?:seen|visible|visualized|present|identified|evident|"
                 r"demonstrated|appreciated)"),
    "unchanged": (r"unchanged|stabl[ey]|(?:no|without)\s+(?:\w+\s+){0,2}?change(?:\s+in)?|"
                  r"not\s+(?:significantly\s+)?changed|again\s+(?:seen|noted|demonstrated|identified|visualized)|"
                  r"redemonstrat\w*|persist\w*"),
}
_CUE = re.compile("|".join(rf"(?P<{change}>\b(?:interval\s+)?(?:{CHANGE_CUES[change]})\b)" for change in CHANGES),
                  re.IGNORECASE)
# "No new effusion", "has not increased": the change is denied, not stated.
_DENIED = re.compile(r"\b(?:no|not|without)\s+(?:\w+\s+)?$", re.IGNORECASE)


def _default_findings_of(text):
    from modeling_cliptt5.data.phantom import labels_from_report  # numpy and PIL: imported only when used

    return labels_from_report(text)


def sentence_change(sentence):
    """The change class a sentence states (its first change cue), or None: no cue, or the first one denied."""
    cue = _CUE.search(sentence)
    if cue is None or _DENIED.search(sentence[:cue.start()]):
        return None
    return cue.lastgroup


def change_statements(text, findings_of=None):
    """The change labels a report states, sorted; `findings_of(text) -> presence labels` reads the findings of one
    sentence with its change words taken out (default: the phantom's `labels_from_report`)."""
    findings_of = findings_of or _default_findings_of
    statements = set()
    for sentence in sentences_of(text):
        change = sentence_change(sentence)
        if change is None:
            continue
        # Without its change words; where that leaves no finding, the cue was the finding's own word ("The heart
        # has enlarged."), and the whole sentence is read.
        findings = findings_of(_CUE.sub(" ", sentence)) or findings_of(sentence)
        statements |= {f"{finding}:{change}" for finding in findings}
    return sorted(statements)


def is_change_label(label):
    return label.rsplit(":", 1)[-1] in CHANGES


# The change head's classes (modeling_cliptt5.CLIPT5ChangeHead): how a finding present in both studies has changed.
SIZE_CHANGES = {"decreased": 0, "unchanged": 1, "increased": 2}


def change_targets_from_label_lists(label_lists, names, ignore=-100):
    """Rows' label lists -> [rows, findings] long targets of the change head: 0 decreased, 1 unchanged, 2 increased
    for each finding whose change label says so ("pleural_effusion:right:increased" for the finding
    "pleural_effusion:right"), `ignore` elsewhere (new and resolved findings are not in both studies, and a row
    without change labels says nothing)."""
    import torch

    index = {name: position for position, name in enumerate(names)}
    targets = torch.full((len(label_lists), len(names)), ignore, dtype=torch.long)
    for row, labels in enumerate(label_lists):
        for label in labels or ():
            if not is_change_label(label):
                continue
            name, change = label.rsplit(":", 1)
            if change in SIZE_CHANGES and name in index:
                targets[row, index[name]] = SIZE_CHANGES[change]
    return targets


def _finding_and_change(label):
    return label.split(":", 1)[0], label.rsplit(":", 1)[1]


def _scored(true_positive, predicted, support):
    return {**precision_recall_f1(true_positive, predicted, support), "support": support, "predicted": predicted,
            "true_positive": true_positive}


def change_scores(truth_labels, drafts, findings=None):
    """Precision, recall and F1 of the change statements of `drafts` against the change labels in `truth_labels`.

    Score only studies that HAVE a prior (the caller filters): a study without one has no change to state, and a
    change its draft states anyway is an invented comparison, which comparisons.invented_comparison_rate counts.

    truth_labels: one list of labels per study (the dataset's `labels`; its presence labels are ignored).
    drafts: the drafted report texts, one per study.
    findings: finding names without side, e.g. ("pleural_effusion", "cardiomegaly"); statements and labels about
        other findings are left out. None: every finding named in the truth or the drafts.
    A statement is correct only when finding, side and change all match the study's label; the table merges the
    two sides of a finding ("pleural_effusion" counts both).

    Returns a plain dict: `cells` {finding: {change: scores}}, `per_change` {change: scores pooled over the
    findings}, `per_finding` {finding: scores pooled over the changes}, `micro` (everything pooled), and the
    headline `macro_f1`: the mean over the change classes of `per_change` F1, leaving out a class with neither a
    true label nor a statement (its F1 is undefined, not 0); `macro_changes` lists the classes in the mean, and
    `macro_f1` is None when there are none. Scores are {precision, recall, f1, support (true labels), predicted
    (statements), true_positive}.
    """
    if len(truth_labels) != len(drafts):
        raise ValueError(f"{len(truth_labels)} label lists but {len(drafts)} drafts")
    truths = [{label for label in labels if is_change_label(label)} for labels in truth_labels]
    stated = [set(change_statements(text)) for text in drafts]
    if findings is None:
        findings = sorted({_finding_and_change(label)[0] for labels in truths + stated for label in labels})
    findings = list(findings)
    counts = {(finding, change): [0, 0, 0] for finding in findings for change in CHANGES}  # tp, predicted, support
    for truth, statements in zip(truths, stated):
        for label in truth | statements:
            key = _finding_and_change(label)
            if key not in counts:
                continue
            counts[key][0] += label in truth and label in statements
            counts[key][1] += label in statements
            counts[key][2] += label in truth

    def pooled(keys):
        return _scored(*(sum(counts[key][index] for key in keys) for index in range(3)))

    per_change = {change: pooled([(finding, change) for finding in findings]) for change in CHANGES}
    macro_changes = [change for change in CHANGES if per_change[change]["support"] or per_change[change]["predicted"]]
    return {
        "n_studies": len(drafts),
        "findings": findings,
        "macro_f1": (sum(per_change[change]["f1"] for change in macro_changes) / len(macro_changes)
                     if macro_changes else None),
        "macro_changes": macro_changes,
        "per_change": per_change,
        "per_finding": {finding: pooled([(finding, change) for change in CHANGES]) for finding in findings},
        "cells": {finding: {change: _scored(*counts[finding, change]) for change in CHANGES} for finding in findings},
        "micro": pooled(list(counts)),
    }


def format_change_table(scores):
    """Text rows: F1 (support) per finding and change, pooled rows and columns, then the macro line; "-" where a
    cell has neither a true label nor a statement."""
    def cell(score):
        return f"{score['f1']:.2f} ({score['support']})" if score["support"] or score["predicted"] else "-"

    width = max([len("all findings")] + [len(finding) for finding in scores["findings"]])
    header = " ".join([f"{'finding':<{width}}", *(f"{name:>12}" for name in (*CHANGES, "all"))])
    rows = [f"change statements of {scores['n_studies']} studies with a prior: F1 (true labels)", header]
    for finding in scores["findings"]:
        cells = [cell(scores["cells"][finding][change]) for change in CHANGES] + [cell(scores["per_finding"][finding])]
        rows.append(" ".join([f"{finding:<{width}}", *(f"{text:>12}" for text in cells)]))
    cells = [cell(scores["per_change"][change]) for change in CHANGES] + [cell(scores["micro"])]
    rows.append(" ".join([f"{'all findings':<{width}}", *(f"{text:>12}" for text in cells)]))
    if scores["macro_f1"] is None:
        rows.append("macro F1: none (no change in the truth or the drafts)")
    else:
        rows.append(f"macro F1 {scores['macro_f1']:.3f} (mean over {', '.join(scores['macro_changes'])})")
    return "\n".join(rows)

"""What the rule labeler reads in a draft as the reader edits it: sentence tags, claimed and critical findings, the
change each sentence states and the comparisons of a draft written without a prior study."""

from datetime import datetime, timezone

from modeling_cliptt5.evaluation.changes import sentence_change
from modeling_cliptt5.evaluation.comparisons import claims_comparison

from modeling_cliptt5.evaluation.labeler import (
    FINDINGS,
    LABELER_NOTE,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    label_report,
    label_sentences,
    sentence_sides,
    split_sentences,
)
from modeling_cliptt5.evaluation.repetition import numbered_sentences
from modeling_cliptt5.processing_cliptt5 import FINDINGS_HEADER, IMPRESSION_HEADER, format_report

NOTICE = ("Research prototype, not a medical device. Drafts are written by a model and can be wrong or miss "
          "findings: every draft must be reviewed and corrected by a qualified reader before any use.")

STATUS_WORDS = {POSITIVE: "present", UNCERTAIN: "possible", NEGATIVE: "absent"}

# Findings that call for immediate communication to the treating team. The ACR Practice Parameter for
# Communication of Diagnostic Imaging Findings and published critical-result lists name, for chest films,
# pneumothorax (above all under tension), free intraperitoneal air and misplaced tubes or lines. Of these the
# rule labeler reads only pneumothorax (its 14 CheXpert observations have no free air or tube position), so only
# pneumothorax is flagged; a "possible" pneumothorax is flagged too, since it also needs a reader at once.
CRITICAL_FINDINGS = ("Pneumothorax",)

# Tag colours, by what a sentence claims: a critical finding, another finding, a possible one, or only negatives.
TAG_COLORS = {"critical": "#dc2626", "present": "#f97316", "possible": "#eab308", "absent": "#16a34a"}


def report_text(findings, impression):
    """The report as exported and copied: each section under its header, a blank line between them."""
    sections = ((FINDINGS_HEADER, findings), (IMPRESSION_HEADER, impression))
    return "\n\n".join(f"{header} {text.strip()}" for header, text in sections if (text or "").strip())


# A sentence that compares with an earlier study, in a draft the model wrote without reading one: it has nothing to
# compare with, so the comparison is the model's invention until the reader fixes it or accepts it knowingly.
INVENTED_COMPARISON = "invented comparison: drafted without a prior"


def drafted_without_prior(draft):
    """True for a draft the model wrote as a first study (its record names no prior: DraftedReport.prior_id)."""
    return bool(draft) and not draft.get("prior_id")


def sentence_marks(sentence, without_prior=False):
    """A review item's marks after its sentence: the change it states ("[increased]", evaluation/changes.py) and, in
    a draft written without a prior (`without_prior`), "[invented comparison: ...]" where it compares at all
    (evaluation/comparisons.py)."""
    change = sentence_change(sentence)
    marks = [f"[{change}]"] if change else []
    if without_prior and claims_comparison(sentence):
        marks.append(f"[{INVENTED_COMPARISON}]")
    return marks


def review_items(findings, impression, without_prior=False):
    """The sentences a reader accepts one by one, as "Findings: <sentence>" / "Impression: <sentence>" followed by its
    marks (sentence_marks): every sentence as often as the section says it, a repeat marked "[repeat 2]",
    "[repeat 3]"... so that each copy that would go into the signed report is seen and accepted (a degenerate draft
    repeats sentences). Accepting an item marked as an invented comparison confirms that comparison."""
    return [" ".join([f"{section}: {sentence}", *sentence_marks(sentence, without_prior),
                      *([] if occurrence == 1 else [f"[repeat {occurrence}]"])])
            for section, text in (("Findings", findings), ("Impression", impression))
            for sentence, occurrence in numbered_sentences(text)]


def reviewed_sentences(findings, impression, accepted, draft):
    """(the text's review items, those reviewed): accepted before and still in the text word for word, or written
    by the reader (no sentence of the model's draft). An edited sentence is the reader's own; a redraft's are not."""
    without_prior = drafted_without_prior(draft)
    items = review_items(findings, impression, without_prior)
    model = set(review_items((draft or {}).get("findings"), (draft or {}).get("impression"), without_prior))
    accepted = set(accepted or [])
    return items, [item for item in items if item in accepted or item not in model]


def invented_comparisons(findings, impression, draft):
    """The sentences of the text that compare with an earlier study, where the draft was written without one ([] for
    a draft that read a prior, or no draft)."""
    if not drafted_without_prior(draft):
        return []
    return [sentence for text in (findings, impression) for sentence, _ in numbered_sentences(text)
            if claims_comparison(sentence)]


def sentence_tag(labels):
    """"Pneumothorax: present; Pleural Effusion: absent" for a sentence's mentioned findings, None if it has none."""
    mentioned = [f"{observation}: {STATUS_WORDS[status]}" for observation, status in labels.items()
                 if observation in FINDINGS and status is not None]
    return "; ".join(mentioned) or None


def tag_severity(labels):
    """The colour key of a sentence: its most urgent claim."""
    statuses = {observation: status for observation, status in labels.items() if status is not None}
    if any(statuses.get(observation) in (POSITIVE, UNCERTAIN) for observation in CRITICAL_FINDINGS):
        return "critical"
    if POSITIVE in statuses.values():
        return "present"
    if UNCERTAIN in statuses.values():
        return "possible"
    return "absent"


def tagged_sentences(findings, impression):
    """(text, tag) pieces of the whole report for gr.HighlightedText, and the colour of each tag.

    Each section is labelled on its own (as it is shown); section headers and spaces carry no tag.
    """
    pieces, colors = [], {}
    for header, text in ((FINDINGS_HEADER, findings), (IMPRESSION_HEADER, impression)):
        text = (text or "").strip()
        if not text:
            continue
        pieces.append((f"{header} " if not pieces else f"\n{header} ", None))
        for index, (sentence, labels) in enumerate(label_sentences(text)):
            tag = sentence_tag(labels)
            pieces.append((sentence if index == 0 else f" {sentence}", tag))
            if tag is not None:
                colors[tag] = TAG_COLORS[tag_severity(labels)]
    return pieces, colors


def claimed_findings(findings, impression):
    """The findings the report claims (present or possible), with their side and whether they are critical.

    Statuses are the report-level labels (CheXpert's rule: a positive anywhere wins); the side comes from the
    sentences that claim the finding, so "no left effusion" does not give a right effusion a second side.
    """
    labels = label_report(format_report(findings, impression))
    sides = {}
    for section in (findings, impression):
        for sentence, sentence_labels in label_sentences(section or ""):
            for observation, side in sentence_sides(sentence).items():
                if sentence_labels.get(observation) in (POSITIVE, UNCERTAIN):
                    sides.setdefault(observation, set()).add(side)
    claims = []
    for observation in FINDINGS:
        if labels[observation] not in (POSITIVE, UNCERTAIN):
            continue
        found = sides.get(observation, set())
        side = None if not found else found.pop() if len(found) == 1 else "bilateral"
        claims.append({"observation": observation, "status": STATUS_WORDS[labels[observation]], "side": side,
                       "critical": observation in CRITICAL_FINDINGS})
    return claims


def contradictions(findings, impression):
    """Where the text says a finding is there and also that it is not, as the labeler reads its sentences: [{"finding",
    "claimed": sentence, "denied": sentence}], one per finding. Sides count: "No left effusion." does not deny a
    right effusion; a statement without a side ("No pleural effusion or pneumothorax.") covers both."""
    claimed, denied = {}, {}
    for section in (findings, impression):
        for sentence, labels in label_sentences(section or ""):
            sides = sentence_sides(sentence)
            for observation in FINDINGS:
                target = claimed if labels.get(observation) in (POSITIVE, UNCERTAIN) else \
                    denied if labels.get(observation) == NEGATIVE else None
                if target is not None:
                    target.setdefault(observation, []).append((sentence, sides.get(observation)))
    found = []
    for observation in FINDINGS:
        pair = next(((said, unsaid) for said, claim_side in claimed.get(observation, [])
                     for unsaid, denial_side in denied.get(observation, [])
                     if claim_side == denial_side or None in (claim_side, denial_side)
                     or "bilateral" in (claim_side, denial_side)), None)
        if pair:
            found.append({"finding": observation, "claimed": pair[0], "denied": pair[1]})
    return found


def contradiction_text(contradiction):
    """"Pneumothorax: "Right pneumothorax." but "No pleural effusion or pneumothorax."" for the page and exports."""
    return f'{contradiction["finding"]}: "{contradiction["claimed"]}" but "{contradiction["denied"]}"'


def claim_text(claim):
    """"Pneumothorax (right), possible" for the page."""
    side = f" ({claim['side']})" if claim["side"] else ""
    return f"{claim['observation']}{side}, {claim['status']}"


def sentence_record(section, sentence, labels):
    """One sentence as the JSON export keeps it: its section, text, the labeler's findings and sides, and the change
    it states where it states one."""
    record = {"section": section, "text": sentence,
              "labels": {observation: status for observation, status in labels.items()
                         if observation in FINDINGS and status is not None},
              "sides": sentence_sides(sentence)}
    change = sentence_change(sentence)
    if change:
        record["change"] = change
    return record


def export_record(findings, impression, indication="", model_draft=None, model_name=None, images=0,
                  draft_seconds=None):
    """The JSON export: the reader's edited text, the labeler's reading of that text, and how it was drafted.

    No file names or image content: a file name can carry a patient's name or record number.
    """
    findings, impression = (findings or "").strip(), (impression or "").strip()
    model_draft = model_draft or {}
    sentences = [sentence_record(section, sentence, labels)
                 for section, text in (("findings", findings), ("impression", impression))
                 for sentence, labels in label_sentences(text)]
    return {
        "report": report_text(findings, impression),
        "findings": findings,
        "impression": impression,
        "indication": (indication or "").strip(),
        "edited_by_reader": bool(model_draft) and (findings, impression) != (
            (model_draft.get("findings") or "").strip(), (model_draft.get("impression") or "").strip()),
        "labels": label_report(format_report(findings, impression)),
        "claimed_findings": claimed_findings(findings, impression),
        "sentences": sentences,
        "labeler": LABELER_NOTE,
        "model": model_name,
        "model_draft": model_draft or None,
        "images": images,
        "draft_seconds": draft_seconds,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "notice": NOTICE,
    }

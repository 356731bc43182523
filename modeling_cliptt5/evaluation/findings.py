"""The finding head's label sets: names, training targets, fitted thresholds and scores, and the findings a report's
text states (read back by the rule reader that knows the label set), so that the head and the draft can be compared.

Label strings in a dataset's `labels` column are finding names ("Cardiomegaly", "pleural_effusion:left"); a trailing
"?" marks an uncertain label ("Edema?"). A finding a row does not list is absent.
"""

import hashlib
import json
import os

import numpy as np
import torch

from modeling_cliptt5.data.atomic_writes import atomic_file
from modeling_cliptt5.configuration_cliptt5 import CHEXPERT_OBSERVATIONS

# A stage-1 checkpoint trained with a finding head keeps it beside its open_clip weights (contrastive.py).
FINDING_HEAD_FILE = "finding_head.safetensors"
FINDING_HEAD_INFO = "finding_head.json"  # the label names it scores
UNCERTAIN_SUFFIX = "?"
IGNORE = -100  # a target the head's loss leaves out
MAX_POSITIVE_WEIGHT = 10.0


def phantom_labels():
    from modeling_cliptt5.data.phantom import PHANTOM_LABELS

    return list(PHANTOM_LABELS)


def resolve_finding_labels(spec):
    """A finding_labels setting -> the label names ([] for none)."""
    spec = (spec or "none").strip()
    if spec == "none":
        return []
    if spec == "chexpert":
        return list(CHEXPERT_OBSERVATIONS)
    if spec == "phantom":
        return phantom_labels()
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"finding_labels repeats names: {spec!r}")
    return names


def parse_label(label):
    """'Edema?' -> ('Edema', True); 'Edema' -> ('Edema', False)."""
    label = label.strip()
    if label.endswith(UNCERTAIN_SUFFIX):
        return label[:-1].strip(), True
    return label, False


def targets_from_label_lists(label_lists, names, uncertain="ignore", source="the dataset"):
    """Rows' label lists -> [rows, findings] float targets: 1 present, 0 absent, IGNORE (or 1 / 0, as `uncertain`
    says) for uncertain ones. A name outside `names` is a ValueError naming it; change labels of a follow-up study
    (changes.is_change_label: "pleural_effusion:right:increased") say how it differs from its prior, not what its
    image shows, and are left out."""
    from modeling_cliptt5.evaluation.changes import is_change_label

    index = {name: position for position, name in enumerate(names)}
    uncertain_value = {"ignore": IGNORE, "positive": 1.0, "negative": 0.0}[uncertain]
    targets = np.zeros((len(label_lists), len(names)), np.float32)
    unknown = set()
    for row, labels in enumerate(label_lists):
        for label in labels or ():
            if is_change_label(label):
                continue
            name, is_uncertain = parse_label(label)
            if name not in index:
                unknown.add(name)
                continue
            targets[row, index[name]] = uncertain_value if is_uncertain else 1.0
    if unknown:
        raise ValueError(f"{source}: labels {sorted(unknown)} are not among the finding head's labels {names}")
    return torch.from_numpy(targets)


def labeler_label_lists(reports):
    """The rule labeler's CheXpert observations per report: present names, uncertain ones with a trailing "?"."""
    from modeling_cliptt5.evaluation.labeler import NEGATIVE, UNCERTAIN, label_report

    lists = []
    for report in reports:
        statuses = label_report(report or "")
        lists.append([name + (UNCERTAIN_SUFFIX if status == UNCERTAIN else "") for name, status in statuses.items()
                      if status is not None and status != NEGATIVE])
    return lists


def cached_labeler_label_lists(reports, cache_dir):
    """labeler_label_lists, computed once per set of reports and kept in cache_dir (a JSON file named by a hash of
    the reports), since labelling a large training split takes minutes."""
    digest = hashlib.sha1()
    for report in reports:
        digest.update((report or "").encode())
        digest.update(b"\0")
    path = os.path.join(cache_dir, f"labeler_labels-{digest.hexdigest()[:16]}.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    lists = labeler_label_lists(reports)
    with atomic_file(path) as handle:
        json.dump(lists, handle)
    return lists


def has_label_column(rows):
    """True when the rows carry labels (any row lists one)."""
    return "labels" in rows.column_names and any(rows["labels"])


def resolve_label_source(source, train_rows):
    """auto -> column when the training rows carry labels, else labeler (every split then uses the same source)."""
    if source == "auto":
        return "column" if has_label_column(train_rows) else "labeler"
    return source


def label_lists_for(rows, names, source, report_column, cache_dir):
    """The label lists the head trains on for these rows: the `labels` column or the rule labeler's reading of the
    reports, as `source` (column / labeler) says. Returns (lists, where they came from)."""
    if source == "column":
        return list(rows["labels"]), "the dataset's labels column"
    if set(names) - set(CHEXPERT_OBSERVATIONS):
        raise ValueError(f"the rule labeler reads the 14 CheXpert observations, not {sorted(set(names) - set(CHEXPERT_OBSERVATIONS))}: "
                         "give the dataset a labels column or use finding_labels=chexpert")
    return cached_labeler_label_lists(list(rows[report_column]), cache_dir), "the rule labeler (cached)"


def positive_weights(targets):
    """Per finding sqrt(negatives / positives), between 1 and MAX_POSITIVE_WEIGHT: rare findings weigh more in the
    head's loss without one finding's few examples dominating it."""
    counted = targets != IGNORE
    positives = ((targets == 1) & counted).sum(dim=0).float()
    negatives = ((targets == 0) & counted).sum(dim=0).float()
    ratio = torch.sqrt(negatives / positives.clamp(min=1))
    return ratio.clamp(1.0, MAX_POSITIVE_WEIGHT).tolist()


def load_finding_head(folder):
    """(label names, head state dict) of a stage-1 checkpoint folder, or None when it was trained without a head."""
    from safetensors.torch import load_file

    info_path, weights_path = os.path.join(folder, FINDING_HEAD_INFO), os.path.join(folder, FINDING_HEAD_FILE)
    if not (os.path.isfile(info_path) and os.path.isfile(weights_path)):
        return None
    with open(info_path, encoding="utf-8") as handle:
        info = json.load(handle)
    return info["finding_labels"], load_file(weights_path)


# --- scores --------------------------------------------------------------------------------------------------------

def auroc(scores, labels):
    """Area under the ROC curve of one finding (Mann-Whitney U with tied scores sharing ranks); None without both
    classes."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average ranks over ties
        stop = start
        while stop + 1 < len(scores) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def f1_score(predicted, labels):
    predicted, labels = np.asarray(predicted, bool), np.asarray(labels, bool)
    true_positive = int((predicted & labels).sum())
    denominator = int(predicted.sum()) + int(labels.sum())
    return 2 * true_positive / denominator if denominator else 0.0


def fit_threshold(scores, labels, default=0.5):
    """The probability threshold with the best F1 on these studies (the lowest of ties); `default` when the finding
    has no positive example. Candidates are midpoints between neighbouring distinct scores."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if not labels.any():
        return default
    distinct = np.unique(scores)
    candidates = np.concatenate([[distinct[0]], (distinct[1:] + distinct[:-1]) / 2]) if len(distinct) > 1 else distinct
    order = np.argsort(-scores, kind="mergesort")
    # F1 for "score >= t" at each candidate, from cumulative counts over scores sorted high to low
    sorted_scores, sorted_labels = scores[order], labels[order]
    true_positives = np.cumsum(sorted_labels)
    best, best_threshold = -1.0, default
    positives = labels.sum()
    for threshold in candidates:
        predicted = int(np.searchsorted(-sorted_scores, -threshold, side="right"))
        true_positive = true_positives[predicted - 1] if predicted else 0
        f1 = 2 * true_positive / (predicted + positives)
        if f1 > best:
            best, best_threshold = f1, float(threshold)
    return best_threshold


def score_head(probabilities, targets, names, thresholds):
    """Per finding AUROC, F1 / precision / recall at `thresholds`, support; macro means. Targets of IGNORE are left
    out of their finding's scores."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets)
    per_finding = {}
    for index, name in enumerate(names):
        counted = targets[:, index] != IGNORE
        scores, labels = probabilities[counted, index], targets[counted, index] == 1
        predicted = scores >= thresholds[index]
        true_positive = int((predicted & labels).sum())
        per_finding[name] = {
            "auroc": auroc(scores, labels), "f1": f1_score(predicted, labels),
            "precision": true_positive / int(predicted.sum()) if predicted.any() else 0.0,
            "recall": true_positive / int(labels.sum()) if labels.any() else 0.0,
            "support": int(labels.sum()), "threshold": float(thresholds[index])}
    scored = [scores for scores in per_finding.values() if scores["support"]]
    aurocs = [scores["auroc"] for scores in scored if scores["auroc"] is not None]
    return {"per_finding": per_finding,
            "macro_f1": float(np.mean([scores["f1"] for scores in scored])) if scored else 0.0,
            "macro_auroc": float(np.mean(aurocs)) if aurocs else None}


def fit_thresholds(probabilities, targets):
    """Best-F1 threshold per finding (fit_threshold), leaving out IGNORE targets."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets)
    thresholds = []
    for index in range(targets.shape[1]):
        counted = targets[:, index] != IGNORE
        thresholds.append(fit_threshold(probabilities[counted, index], targets[counted, index] == 1))
    return thresholds


# --- what a report's text states ----------------------------------------------------------------------------------

def text_reader(names):
    """A function report text -> set of the `names` it states as present, or None when no rule reader knows this
    label set: the phantom reader for the phantom findings, the CheXpert rule labeler for CheXpert observations
    (positive or uncertain counts as stated)."""
    if list(names) == phantom_labels():
        from modeling_cliptt5.data.phantom import labels_from_report

        return lambda text: set(labels_from_report(text))
    if set(names) <= set(CHEXPERT_OBSERVATIONS):
        from modeling_cliptt5.evaluation.labeler import NEGATIVE, label_report

        def read(text):
            statuses = label_report(text or "")
            return {name for name in names if statuses.get(name) is not None and statuses[name] != NEGATIVE}
        return read
    return None


def sentence_findings(text, names, reader=None):
    """[(sentence, the set of `names` it states)] for each sentence of `text` (labeler.split_sentences), or None
    when there are no names or no rule reader knows them."""
    from modeling_cliptt5.evaluation.labeler import split_sentences

    reader = reader or (text_reader(names) if names else None)
    if reader is None:
        return None
    return [(sentence, reader(sentence)) for sentence in split_sentences(text)]


def stated_findings(text_or_sections, names, reader=None):
    """The set of `names` a report states, or None when there are no names or no rule reader knows them. The one
    rule for "the text states it": a finding is stated when any sentence states it (each sentence read on its own,
    as the reader sees them marked; a sentence that denies it elsewhere does not unstate it, report_review shows
    that contradiction). `text_or_sections`: one text, or its sections (FINDINGS, IMPRESSION)."""
    sections = [text_or_sections] if text_or_sections is None or isinstance(text_or_sections, str) \
        else text_or_sections
    reader = reader or (text_reader(names) if names else None)
    if reader is None:
        return None
    return set().union(*(stated for section in sections for _, stated in sentence_findings(section, names, reader)))


def disagreements(head_present, text, names, reader=None):
    """Where the head and the draft's text disagree: [{"finding", "head": "present"/"absent", "draft":
    "states it"/"does not state it"}], or None when no rule reader knows the label set. What the text states is
    read as the page reads it (stated_findings)."""
    stated = stated_findings(text, names, reader)
    if stated is None:
        return None
    found = []
    for name, present in zip(names, head_present):
        if bool(present) != (name in stated):
            found.append({"finding": name, "head": "present" if present else "absent",
                          "draft": "states it" if name in stated else "does not state it"})
    return found

"""Label sets, training targets, thresholds and scores of the finding head, and reading findings back from text."""

import numpy as np
import pytest
import torch

from modeling_cliptt5.configuration_cliptt5 import CHEXPERT_OBSERVATIONS
from modeling_cliptt5.evaluation.findings import (
    IGNORE, auroc, disagreements, fit_threshold, labeler_label_lists, positive_weights, resolve_finding_labels,
    score_head, targets_from_label_lists, text_reader,
)
from modeling_cliptt5.data.phantom import PHANTOM_LABELS


def test_label_sets_by_name():
    assert resolve_finding_labels("none") == []
    assert resolve_finding_labels("chexpert") == list(CHEXPERT_OBSERVATIONS)
    assert resolve_finding_labels("phantom") == list(PHANTOM_LABELS)
    assert resolve_finding_labels("Edema, Cardiomegaly") == ["Edema", "Cardiomegaly"]
    with pytest.raises(ValueError, match="repeats"):
        resolve_finding_labels("Edema,Edema")


@pytest.mark.parametrize("uncertain, value", [("ignore", IGNORE), ("positive", 1.0), ("negative", 0.0)])
def test_targets_mark_present_absent_and_uncertain_labels_as_the_setting_says(uncertain, value):
    names = ["Cardiomegaly", "Edema", "Pneumothorax"]
    targets = targets_from_label_lists([["Cardiomegaly", "Edema?"], []], names, uncertain)
    assert targets.tolist() == [[1.0, value, 0.0], [0.0, 0.0, 0.0]]


def test_labels_outside_the_label_set_are_refused_by_name():
    with pytest.raises(ValueError, match=r"data/x: labels \['Hernia', 'Mass'\] are not among"):
        targets_from_label_lists([["Mass"], ["Hernia?", "Edema"]], ["Edema"], source="data/x")


def test_the_rule_labeler_gives_present_and_uncertain_observations():
    lists = labeler_label_lists(["The heart is enlarged. Possible left pleural effusion. No pneumothorax.",
                                 "The lungs are clear."])
    assert set(lists[0]) == {"Cardiomegaly", "Pleural Effusion?"}
    assert lists[1] == ["No Finding"]


def test_rare_findings_weigh_more_but_at_most_ten_times():
    targets = torch.zeros(1000, 3)
    targets[:500, 0] = 1  # balanced
    targets[:40, 1] = 1  # 4%: sqrt(960 / 40) = 4.9
    targets[:2, 2] = 1  # 0.2%: sqrt(998 / 2) = 22 -> capped
    assert positive_weights(targets) == pytest.approx([1.0, (960 / 40) ** 0.5, 10.0])


def test_auroc_and_the_best_f1_threshold_on_a_worked_example():
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert auroc(scores, labels) == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs ranked right
    assert auroc([0.2, 0.2, 0.7], [0, 1, 1]) == pytest.approx(0.75)  # a tie counts a half
    assert auroc([0.1, 0.2], [0, 0]) is None
    threshold = fit_threshold(scores, labels)
    assert 0.1 < threshold <= 0.35  # calling 0.35, 0.4 and 0.8 present: F1 2 * 2 / (3 + 2) = 0.8, the best
    scored = score_head(np.array([scores]).T, np.array([labels]).T, ["x"], [threshold])["per_finding"]["x"]
    assert scored["f1"] == pytest.approx(0.8) and scored["precision"] == pytest.approx(2 / 3)
    assert fit_threshold([0.3, 0.6], [0, 0], default=0.5) == 0.5  # no positive: the default


def test_scores_leave_ignored_targets_out():
    probabilities = np.array([[0.9], [0.1], [0.8]])
    scored = score_head(probabilities, np.array([[1.0], [0.0], [IGNORE]]), ["x"], [0.5])
    assert scored["per_finding"]["x"]["f1"] == 1.0 and scored["per_finding"]["x"]["support"] == 1


def test_disagreements_between_the_head_and_the_text():
    names = list(PHANTOM_LABELS)
    head = [name in ("cardiomegaly", "nodule:left") for name in names]
    text = "FINDINGS: The heart is enlarged. Small right pleural effusion. IMPRESSION: Cardiomegaly."
    found = disagreements(head, text, names)
    assert found == [
        {"finding": "pleural_effusion:right", "head": "absent", "draft": "states it"},
        {"finding": "nodule:left", "head": "present", "draft": "does not state it"},
    ]
    chexpert = list(CHEXPERT_OBSERVATIONS)
    assert text_reader(chexpert)("Possible edema.") == {"Edema"}
    assert disagreements([False, True], "anything", ["foo", "bar"]) is None  # no reader knows this label set

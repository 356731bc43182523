"""Change statements read from report sentences, against labels written by hand, and their scores against
precision / recall / F1 counted by hand."""

import json

import pytest

from modeling_cliptt5.evaluation.changes import CHANGES, change_scores, change_statements, format_change_table


@pytest.mark.parametrize("sentence, expected", [
    # new
    ("New small right pleural effusion.", ["pleural_effusion:right:new"]),
    ("Interval development of a left pleural effusion.", ["pleural_effusion:left:new"]),
    ("New consolidation in the right lower lobe.", ["consolidation:right:new"]),
    ("New consolidation in the lingula.", ["consolidation:left:new"]),
    ("New 1.5 cm nodule in the left upper lobe.", ["nodule:left:new"]),
    ("New cardiomegaly.", ["cardiomegaly:new"]),
    ("Interval placement of an endotracheal tube.", ["support_device:new"]),
    # increased
    ("Increased right pleural effusion, now moderate.", ["pleural_effusion:right:increased"]),
    ("The right pleural effusion has increased, now moderate.", ["pleural_effusion:right:increased"]),
    ("Interval increase in the right pleural effusion.", ["pleural_effusion:right:increased"]),
    ("Increased bilateral pleural effusions.", ["pleural_effusion:left:increased", "pleural_effusion:right:increased"]),
    ("Larger left pneumothorax.", ["pneumothorax:left:increased"]),
    ("Worsening left lower lobe consolidation.", ["consolidation:left:increased"]),
    ("The heart has enlarged.", ["cardiomegaly:increased"]),
    # decreased
    ("Decreased left pneumothorax, now small.", ["pneumothorax:left:decreased"]),
    ("The left pneumothorax is smaller.", ["pneumothorax:left:decreased"]),
    ("Improved right lower lobe pneumonia.", ["consolidation:right:decreased"]),
    ("Interval decrease in the bilateral pleural effusions.",
     ["pleural_effusion:left:decreased", "pleural_effusion:right:decreased"]),
    # resolved
    ("Interval resolution of the right pleural effusion.", ["pleural_effusion:right:resolved"]),
    ("The previously seen right pleural effusion has resolved.", ["pleural_effusion:right:resolved"]),
    ("Interval resolution of the right lower lobe consolidation.", ["consolidation:right:resolved"]),
    ("The left pneumothorax is no longer seen.", ["pneumothorax:left:resolved"]),
    ("Interval removal of the endotracheal tube.", ["support_device:resolved"]),
    ("The right upper lobe mass has been removed.", ["mass:right:resolved"]),
    # unchanged
    ("Unchanged moderate right pleural effusion.", ["pleural_effusion:right:unchanged"]),
    ("Stable moderate right pleural effusion.", ["pleural_effusion:right:unchanged"]),
    ("Right pleural effusion with no significant interval change.", ["pleural_effusion:right:unchanged"]),
    ("Persistent right upper lobe nodule.", ["nodule:right:unchanged"]),
    ("A 4.2 cm left lower lobe mass is again seen.", ["mass:left:unchanged"]),
    ("Unchanged cardiomegaly.", ["cardiomegaly:unchanged"]),
    ("Stable enlargement of the cardiac silhouette.", ["cardiomegaly:unchanged"]),
    ("Support devices are unchanged in position.", ["support_device:unchanged"]),
    # cues of two classes: the first one decides
    ("Stable to slightly increased right pleural effusion.", ["pleural_effusion:right:unchanged"]),
    ("Increased right pleural effusion, unchanged from the outside study.", ["pleural_effusion:right:increased"]),
    # negated: nothing stated
    ("No new effusion.", []),
    ("No new consolidation.", []),
    ("No pneumothorax.", []),
    ("The right pleural effusion has not increased.", []),
    ("No interval increase in the right pleural effusion.", []),
    # no change word, or no finding, or a finding without the side its label needs: nothing
    ("No prior study for comparison.", []),
    ("Small right pleural effusion.", []),
    ("The heart is enlarged.", []),
    ("Enlarged cardiac silhouette.", []),
    ("Endotracheal tube terminates above the carina.", []),
    ("Appropriate placement of the endotracheal tube.", []),
    ("Bilateral pleural effusions, right larger than left.", []),
    ("Increased interstitial markings.", []),
    ("Heart size is unchanged.", []),
    ("The effusion is no longer seen.", []),
    ("The lungs are clear.", []),
])
def test_change_statements_of_one_sentence(sentence, expected):
    assert change_statements(sentence) == expected


def test_a_statement_made_twice_counts_once_and_every_section_counts():
    report = ("FINDINGS: Increased right pleural effusion, now moderate. Unchanged cardiomegaly. No pneumothorax.\n"
              "IMPRESSION: The right pleural effusion has increased; unchanged cardiomegaly. "
              "Interval removal of the endotracheal tube.")
    assert change_statements(report) == ["cardiomegaly:unchanged", "pleural_effusion:right:increased",
                                         "support_device:resolved"]
    assert change_statements("") == []


def test_the_finding_reader_sees_the_sentence_without_its_change_words():
    seen = []

    def findings_of(text):
        seen.append(" ".join(text.split()))
        return ["pleural_effusion:right"]

    assert change_statements("Interval resolution of the right pleural effusion.", findings_of) == [
        "pleural_effusion:right:resolved"]
    assert seen == ["the right pleural effusion."]
    seen.clear()
    assert change_statements("The lungs are clear.", findings_of) == []  # no change word: the reader is not asked
    assert seen == []


def test_unchanged_where_the_truth_is_increased_is_a_false_positive_and_a_false_negative():
    scores = change_scores([["pleural_effusion:right", "pleural_effusion:right:increased"]],
                           ["Unchanged right pleural effusion."])
    unchanged, increased = scores["per_change"]["unchanged"], scores["per_change"]["increased"]
    assert (unchanged["true_positive"], unchanged["predicted"], unchanged["support"]) == (0, 1, 0)
    assert (increased["true_positive"], increased["predicted"], increased["support"]) == (0, 0, 1)
    assert unchanged["precision"] == 0.0 and increased["recall"] == 0.0
    assert scores["macro_changes"] == ["increased", "unchanged"]
    assert scores["macro_f1"] == 0.0


TRUTH = [
    ["pleural_effusion:right", "pleural_effusion:right:increased", "cardiomegaly", "cardiomegaly:unchanged"],
    ["pneumothorax:left:resolved", "support_device", "support_device:new"],
    ["pleural_effusion:left", "pleural_effusion:left:new"],
    ["consolidation:right", "consolidation:right:new"],
]
DRAFTS = [
    "Unchanged right pleural effusion. Unchanged cardiomegaly.",  # wrong change for the effusion
    "Interval resolution of the left pneumothorax. Interval placement of an endotracheal tube.",  # both right
    "New right pleural effusion.",  # right change, wrong side
    "Right lower lobe consolidation.",  # no change stated
]


def test_change_scores_against_hand_counts():
    scores = change_scores(TRUTH, DRAFTS)
    assert scores["n_studies"] == 4
    assert scores["findings"] == ["cardiomegaly", "consolidation", "pleural_effusion", "pneumothorax", "support_device"]
    # new: statements {effusion right (wrong side), device} -> TP 1 of 2 stated, 3 true (effusion left, device,
    # consolidation): P 1/2, R 1/3, F1 2/5.
    assert scores["per_change"]["new"] == pytest.approx(
        {"precision": 1 / 2, "recall": 1 / 3, "f1": 2 / 5, "support": 3, "predicted": 2, "true_positive": 1})
    # increased: the effusion's increase is missed: F1 0. resolved: 1 of 1. unchanged: cardiomegaly right, the
    # effusion wrong: P 1/2, R 1, F1 2/3. decreased: nothing either side, left out of the mean.
    assert scores["per_change"]["increased"]["f1"] == 0.0
    assert scores["per_change"]["resolved"]["f1"] == 1.0
    assert scores["per_change"]["unchanged"]["precision"] == pytest.approx(1 / 2)
    assert scores["per_change"]["unchanged"]["f1"] == pytest.approx(2 / 3)
    assert scores["macro_changes"] == ["new", "increased", "resolved", "unchanged"]
    assert scores["macro_f1"] == pytest.approx((2 / 5 + 0 + 1 + 2 / 3) / 4)
    # everything pooled: TP 3, 5 statements, 6 true labels.
    assert scores["micro"]["f1"] == pytest.approx(2 * 3 / (5 + 6))
    # The table merges sides: the effusion's row holds both the right (study 1) and the left (study 3) labels.
    assert scores["per_finding"]["pleural_effusion"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2, "predicted": 2, "true_positive": 0})
    assert scores["cells"]["pleural_effusion"]["new"]["support"] == 1
    assert scores["cells"]["cardiomegaly"]["unchanged"]["f1"] == 1.0
    assert set(scores["cells"]["support_device"]) == set(CHANGES)
    json.dumps(scores)  # a plain dict, ready for a run summary


def test_change_scores_over_chosen_findings():
    scores = change_scores(TRUTH, DRAFTS, findings=("pleural_effusion", "cardiomegaly"))
    # new: the wrong-side effusion only: TP 0, 1 stated, 1 true. increased: 0 of 1. unchanged: TP 1, 2 stated,
    # 1 true: F1 2/3. resolved (a pneumothorax) is outside the chosen findings.
    assert scores["macro_changes"] == ["new", "increased", "unchanged"]
    assert scores["macro_f1"] == pytest.approx((0 + 0 + 2 / 3) / 3)
    assert list(scores["cells"]) == ["pleural_effusion", "cardiomegaly"]


def test_change_scores_without_any_change():
    scores = change_scores([["cardiomegaly"], []], ["Cardiomegaly.", "No prior study for comparison."])
    assert scores["macro_f1"] is None and scores["macro_changes"] == []
    assert "macro F1: none" in format_change_table(scores)
    with pytest.raises(ValueError, match="2 label lists but 1 drafts"):
        change_scores([[], []], [""])


def test_format_change_table():
    table = format_change_table(change_scores(TRUTH, DRAFTS)).splitlines()
    assert table[0] == "change statements of 4 studies with a prior: F1 (true labels)"
    assert table[1].split() == ["finding", *CHANGES, "all"]
    rows = {line.split()[0]: line for line in table[2:-2]}
    # cardiomegaly: only "unchanged" has labels or statements (1 of 1), the rest "-".
    assert rows["cardiomegaly"].split() == ["cardiomegaly", "-", "-", "-", "-", "1.00", "(1)", "1.00", "(1)"]
    assert rows["pleural_effusion"].split() == ["pleural_effusion", "0.00", "(1)", "0.00", "(1)", "-", "-",
                                                "0.00", "(0)", "0.00", "(2)"]
    assert table[-2].split()[:3] == ["all", "findings", "0.40"]
    assert table[-1] == "macro F1 0.517 (mean over new, increased, resolved, unchanged)"

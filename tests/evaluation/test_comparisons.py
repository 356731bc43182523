"""The rule reader of comparison claims (evaluation/comparisons.py), held to sentences whose answer a reader knows,
many of them real IU X-ray report sentences, and the invented-comparison rate the scoring tables print."""

import pytest

from modeling_cliptt5.evaluation import metrics
from modeling_cliptt5.evaluation.comparisons import claims_comparison, comparison_claims, invented_comparison_rate

CLAIMS = [  # each compares with an earlier study
    "Cardiomediastinal silhouette is unchanged.",
    "Stable left lower lobe calcified granuloma.",
    "Severe emphysematous disease is again noted.",
    "This is unchanged as compared to the prior study.",
    "Interval placement of the chest XXXX with the tip in the superior XXXX XXXX.",
    "Interval removal of nasogastric tube.",
    "This is increased since the previous study.",
    "Calcified granuloma is again seen in the right upper lobe.",
    "No change from previous study.",
    "The right pleural effusion has increased.",
    "Decreased in size from prior exam.",
    "No new focal consolidation.",
    "The left pneumothorax has resolved.",
    "Persistent left basilar opacity.",
    "Redemonstrated mild cardiomegaly.",
    "Diminutive right hilar silhouette, as noted on prior CT.",
    "Improved aeration of the left lung base.",
    "Increased right pleural effusion, now moderate.",
    "Decreased left pneumothorax, now small.",
    "The right pleural effusion is larger.",
    "The cardiac silhouette is smaller than before.",
    "Increased right pleural effusion.",
    "Decreased small left pneumothorax.",
    "The endotracheal tube has been removed.",
    "Support devices removed.",
    "The left pneumothorax is no longer seen.",
]
NOT_CLAIMS = [  # describe this image alone, or say there is nothing to compare with
    "Normal cardiomediastinal silhouette.",
    "There is no focal consolidation.",
    "There are no XXXX of a large pleural effusion.",
    "Pulmonary vascularity is increased.",
    "There are some chronic increased interstitial markings noted.",
    "There is increased kyphotic curvature of the thoracic spine.",
    "Prior abdominal surgery.",
    "No prior studies for comparison.",
    "No previous films available.",
    "Comparison: none.",
    "Right pleural effusion.",
    "Heart size is enlarged.",
    "The right hemidiaphragm is higher than the left, the right lung larger than the left.",
]


@pytest.mark.parametrize("sentence", CLAIMS)
def test_a_sentence_that_compares_with_an_earlier_study_is_a_claim(sentence):
    assert claims_comparison(sentence)


@pytest.mark.parametrize("sentence", NOT_CLAIMS)
def test_a_sentence_about_this_image_alone_or_about_no_prior_is_not_a_claim(sentence):
    assert not claims_comparison(sentence)


def test_claims_are_found_sentence_by_sentence_and_counted_among_studies_without_a_prior():
    report = "Heart size normal. The effusion has increased; no pneumothorax. No prior studies for comparison."
    assert comparison_claims(report) == ["The effusion has increased;"]
    reports = [report, "Clear lungs.", "Stable cardiomegaly.", "Clear lungs."]
    assert invented_comparison_rate(reports) == 0.5
    # a study that has a prior may compare: only the two without one count, and one of them claims a comparison
    assert invented_comparison_rate(reports, has_prior=[True, False, True, False]) == 0.0
    assert invented_comparison_rate(reports, has_prior=[False, False, True, True]) == 0.5
    assert invented_comparison_rate(reports, has_prior=[True] * 4) is None
    with pytest.raises(ValueError, match="4 reports but 3 prior flags"):
        invented_comparison_rate(reports, has_prior=[True] * 3)


def test_the_scores_table_prints_each_systems_invented_comparisons(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, to stay fast
    references = ["Heart size normal.", "Small left effusion.", "Clear lungs.", "Mild cardiomegaly."]
    generated = ["Heart size normal.", "Unchanged small left effusion.", "Clear lungs.", "Stable cardiomegaly."]
    train = ["Clear lungs.", "Clear lungs.", "Heart size normal."]
    with pytest.warns(UserWarning, match="java"):
        results = metrics.score_with_baselines(generated, references, train, seed=0)
    assert results[metrics.MODEL]["invented_comparisons"] == 0.5
    assert results[metrics.CONSTANT_BASELINE]["invented_comparisons"] == 0.0
    metrics.print_scores_table(results)
    table = capsys.readouterr().out
    model_row = next(line for line in table.splitlines() if line.startswith(metrics.MODEL))
    assert "invented comparisons" in table.splitlines()[0] and model_row.rstrip().endswith("50.0%")


def test_a_target_without_a_prior_loses_its_comparisons_section_by_section():
    from modeling_cliptt5.evaluation.comparisons import without_comparisons

    assert without_comparisons("FINDINGS: Stable cardiomegaly. No effusion. IMPRESSION: Unchanged. Normal lungs.") \
        == "FINDINGS: No effusion. IMPRESSION: Normal lungs."
    assert without_comparisons("FINDINGS: Clear lungs. IMPRESSION: No change from prior.") == "FINDINGS: Clear lungs."
    assert without_comparisons("Interval removal of the tube. The lungs are clear.") == "The lungs are clear."
    assert without_comparisons("IMPRESSION: Stable.") == ""


def test_training_strips_comparisons_only_from_studies_without_a_prior():
    import datasets

    from modeling_cliptt5.training.data import StudyDataset

    rows = datasets.Dataset.from_list([
        {"id": "first", "report": "FINDINGS: Unchanged effusion. Clear left lung.", "prior_id": ""},
        {"id": "second", "report": "FINDINGS: Unchanged effusion. Clear left lung.", "prior_id": "first"},
        {"id": "only", "report": "IMPRESSION: Stable.", "prior_id": ""},
    ])
    stripped = StudyDataset(rows, lambda row, index: index, max_bad_samples=1, strip_comparisons=True)
    assert stripped[0]["report"] == "FINDINGS: Clear left lung."
    assert stripped[1]["report"] == "FINDINGS: Unchanged effusion. Clear left lung."  # it has its prior
    only = stripped[2]  # nothing left to learn: skipped like an unreadable study, saying why
    assert only["id"] == "first" and "holds only comparisons" in only["skipped"][0]["error"]
    kept = StudyDataset(rows, lambda row, index: index, max_bad_samples=1)
    assert kept[0]["report"] == "FINDINGS: Unchanged effusion. Clear left lung."

"""Stage 2 with the finding head: labels from the rule labeler when a dataset has none, the head's loss, thresholds
and scores in the release and its card, guidance during training, and bad label sets."""

import json

import pytest
import torch
from datasets import load_from_disk

from modeling_cliptt5 import CLIPT5ForConditionalGeneration
from modeling_cliptt5.data.schema import save_dataset_atomically
from modeling_cliptt5.evaluation.labeler import label_report
from modeling_cliptt5.training.generation import train_generation
from modeling_cliptt5.training.config import config_from_dict
from modeling_cliptt5.training.data import guidance_findings
from training_helpers import make_tiny_dataset, tiny_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_test")


@pytest.fixture(scope="module")
def unlabelled_dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")  # its labels column is empty


@pytest.fixture(scope="module")
def labelled_run(unlabelled_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    settings = tiny_settings(unlabelled_dataset, output, finding_labels="chexpert", max_steps=40, eval_every_steps=20,
                             save_every_steps=20, log_every_steps=2, learning_rate=1e-2,
                             projection_learning_rate=1e-2)
    return train_generation(config_from_dict(settings)), output


def test_without_a_labels_column_the_head_learns_the_rule_labelers_reading_of_the_reports(labelled_run,
                                                                                         unlabelled_dataset):
    result, output = labelled_run
    reports = load_from_disk(str(unlabelled_dataset))["train"]["report"]
    caches = [json.loads(path.read_text()) for path in (output / "finding_labels").glob("labeler_labels-*.json")]
    assert sorted(len(cached) for cached in caches) == [8, 40]  # one per split: validation and train
    (cached,) = [cached for cached in caches if len(cached) == len(reports)]
    for labels, report in zip(cached, reports):
        statuses = label_report(report)
        assert set(labels) == {name + ("?" if status == -1 else "") for name, status in statuses.items()
                               if status in (1, -1)}
    assert any("Cardiomegaly" in labels for labels in cached) and any("Pneumothorax" in labels for labels in cached)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    head_losses = [record["train/finding_loss"] for record in records if "train/finding_loss" in record]
    assert len(head_losses) == 20
    assert sum(head_losses[-4:]) / 4 < 0.7 * sum(head_losses[:4]) / 4  # the head's loss falls


def test_the_release_carries_fitted_thresholds_and_the_heads_validation_scores(labelled_run):
    result, output = labelled_run
    release = output / "best"
    model = CLIPT5ForConditionalGeneration.from_pretrained(release)
    info = json.loads((release / "release_info.json").read_text())
    head = info["finding_head"]
    assert model.config.finding_thresholds == head["thresholds"]
    assert model.config.finding_thresholds != [0.5] * 14  # fitted, not the defaults
    assert set(head["per_finding"]) == set(model.config.finding_labels)
    assert head["per_finding"]["Cardiomegaly"]["support"] > 0 and head["per_finding"]["Cardiomegaly"]["auroc"] is not None
    assert model.config.finding_positive_weights != [1.0] * 14  # rare findings weigh more
    card = (release / "README.md").read_text()
    assert "## Finding head" in card
    cardiomegaly = head["per_finding"]["Cardiomegaly"]
    assert f"| Cardiomegaly | {cardiomegaly['support']} | {cardiomegaly['auroc']:.3f} | {cardiomegaly['f1']:.3f} |" in card
    assert "validation/finding_macro_f1" in info["metrics"]


def test_guidance_shows_the_true_findings_to_the_share_asked_and_leaves_the_rest_to_the_head():
    targets = torch.tensor([[1.0, 0.0, -100.0]] * 2000)
    findings = guidance_findings(targets, 0.25, torch.Generator().manual_seed(0))
    truth_rows = (findings[:, 0] == 1)
    assert 0.22 < truth_rows.float().mean() < 0.28
    assert (findings[truth_rows] == torch.tensor([1, 0, -1])).all()  # an uncertain label is left to the head
    assert (findings[~truth_rows] == -1).all()


def test_dataset_labels_outside_the_label_set_are_refused_by_name(unlabelled_dataset, tmp_path):
    data = load_from_disk(str(unlabelled_dataset))
    data["train"] = data["train"].map(lambda row, index: {"labels": ["Cardiomegaly"] if index % 2 else ["Hernia"]},
                                      with_indices=True)
    labelled = save_dataset_atomically(data, str(tmp_path / "labelled"))
    settings = tiny_settings(labelled, tmp_path / "run", finding_labels="chexpert", max_steps=1)
    with pytest.raises(ValueError, match=r"labels \['Hernia'\] are not among the finding head's labels"):
        train_generation(config_from_dict(settings))


def test_continuing_a_release_with_another_label_set_is_refused(labelled_run, unlabelled_dataset, tmp_path):
    _, output = labelled_run
    settings = tiny_settings(unlabelled_dataset, tmp_path / "run", init="release", init_from=str(output / "best"),
                             finding_labels="phantom", max_steps=1)
    with pytest.raises(ValueError, match="has a finding head over .*but finding_labels='phantom'"):
        train_generation(config_from_dict(settings))

"""The model card's model-index: the release's validation scores as Hub eval results, which the Hub's parser reads
back unchanged."""

import os

import pytest
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_cliptt5.training.release import write_release

INFO = {
    "model_name": "cliptt5-test", "dataset": "openi_prepared", "sources": {"openi": 30, "synthetic-phantom": 10},
    "split_sizes": {"train": 40, "validation": 8}, "validation_studies": 8, "step": 120, "best_metric": "bleu_4",
    "metrics": {"validation/loss": 2.5, "validation/bleu_1": 0.31, "validation/bleu_4": 0.1234,
                "validation/meteor": 0.14, "validation/rouge_l": 0.29, "validation/cider": 0.5,
                "validation/finding_macro_f1": 0.41, "validation/finding_macro_auroc": 0.77},
    "finding_head": {"studies": 8, "macro_f1": 0.41, "macro_auroc": 0.77, "per_finding": {
        "Cardiomegaly": {"support": 3, "auroc": 0.77, "f1": 0.41, "threshold": 0.4}}},
}


def card_of(tmp_path, tiny_model, tiny_processor_fixture, info):
    release = write_release(tiny_model, tiny_processor_fixture, str(tmp_path / "best"), info)
    return ModelCard.load(os.path.join(release, "README.md"))  # the Hub's parser: raises on an invalid model-index


def test_validation_scores_are_the_cards_eval_results(tmp_path, tiny_model, tiny_processor_fixture):
    card = card_of(tmp_path, tiny_model, tiny_processor_fixture, INFO)
    results = {result.metric_name: result for result in card.data.eval_results}
    assert card.data.model_name == "cliptt5-test"
    assert set(results) == {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr",
                            "Finding macro F1 (thresholds fitted on these studies)", "Finding macro AUROC"}
    assert [(results[name].metric_type, results[name].metric_value) for name in ("BLEU-4", "ROUGE-L", "CIDEr")] == [
        ("bleu", 0.1234), ("rouge", 0.29), ("cider", 0.5)]
    assert results["BLEU-1"].metric_args == {"max_order": 1}
    for result in card.data.eval_results:
        assert (result.dataset_name, result.dataset_type, result.dataset_split) == (
            "openi_prepared", "openi+synthetic-phantom", "validation")
    reports = [result for result in card.data.eval_results if result.task_type == "image-text-to-text"]
    head = [result for result in card.data.eval_results if result.task_type == "image-classification"]
    assert len(reports) == 5 and len(head) == 2
    f1 = next(result for result in head if result.metric_type == "f1")
    assert f1.metric_value == 0.41 and f1.metric_args == {"average": "macro"}
    assert card.data.pipeline_tag == "image-text-to-text"  # the task the release's own pipeline answers
    assert card.data.metrics == ["bleu", "cider", "f1", "meteor", "roc_auc", "rouge"]  # Hub metric ids only
    assert "| loss | 2.5000 |" in card.text  # the loss stays in the table, out of the model-index


def test_the_model_index_round_trips_through_the_hub_parser(tmp_path, tiny_model, tiny_processor_fixture):
    card = card_of(tmp_path, tiny_model, tiny_processor_fixture, INFO)
    text = open(os.path.join(tmp_path, "best", "README.md"), encoding="utf-8").read()
    front_matter = text.split("---\n")[1].strip()
    assert card.data.to_yaml() == front_matter  # parsed and written again: the same YAML
    index = card.data.to_dict()["model-index"]
    assert [result["task"]["type"] for result in index[0]["results"]] == ["image-text-to-text", "image-classification"]
    rebuilt = ModelCardData(model_name="cliptt5-test", eval_results=[
        EvalResult(task_type=result.task_type, task_name=result.task_name, dataset_type=result.dataset_type,
                   dataset_name=result.dataset_name, dataset_split=result.dataset_split,
                   metric_type=result.metric_type, metric_value=result.metric_value,
                   metric_name=result.metric_name, metric_args=result.metric_args)
        for result in card.data.eval_results])
    assert rebuilt.to_dict()["model-index"] == index


@pytest.mark.parametrize("metrics", [{"validation/loss": 2.5}, {}], ids=["loss-only", "none"])
def test_a_release_without_scores_has_no_model_index(tmp_path, tiny_model, tiny_processor_fixture, metrics):
    info = {key: value for key, value in INFO.items() if key != "finding_head"}
    card = card_of(tmp_path, tiny_model, tiny_processor_fixture, {**info, "metrics": metrics})
    assert not card.data.eval_results and "model-index" not in card.data.to_dict()


def test_a_finding_head_score_only_in_the_head_summary_still_counts(tmp_path, tiny_model, tiny_processor_fixture):
    metrics = {"validation/loss": 2.5, "validation/bleu_4": 0.1234}
    card = card_of(tmp_path, tiny_model, tiny_processor_fixture, {**INFO, "metrics": metrics})
    head = {result.metric_type: result.metric_value for result in card.data.eval_results
            if result.task_type == "image-classification"}
    assert head == {"f1": 0.41, "roc_auc": 0.77}

"""Stage 2 with priors: each study reads its prior from the same split (image input and report), a study whose
prior is not there reads none and learns no comparison, and a run trains the prior's embeddings."""

import datasets
import torch

from conftest import TINY_REPORTS, tiny_config, tiny_processor
from modeling_cliptt5 import CLIPT5ForConditionalGeneration
from modeling_cliptt5.data.schema import link_priors, load_report_dataset, save_dataset_atomically
from modeling_cliptt5.training.data import GenerationCollator, StudyDataset
from training_helpers import TINY_MODEL, make_tiny_dataset, one_torch_thread, tiny_settings


def with_patients(folder, target):
    """The tiny dataset with two studies per patient (rows 2k and 2k+1 of a split, a day apart), priors linked."""
    data = load_report_dataset(str(folder))

    def patients(rows, indices):
        return {"patient_id": [f"{rows['split'][0]}-patient-{index // 2}" for index in indices],
                "study_datetime": [f"2024-01-0{1 + index % 2}" for index in indices]}

    data = link_priors(datasets.DatasetDict({split: rows.map(patients, batched=True, with_indices=True)
                                             for split, rows in data.items()}))
    save_dataset_atomically(data, str(target))
    return target


def test_a_study_reads_its_prior_from_the_same_rows_and_one_without_learns_no_comparison():
    rows = datasets.Dataset.from_list([
        {"id": "a1", "report": "FINDINGS: Unchanged effusion. Clear left lung.", "prior_id": ""},
        {"id": "a2", "report": "FINDINGS: Increased effusion, now large.", "prior_id": "a1"},
        {"id": "b2", "report": "FINDINGS: Stable cardiomegaly. No effusion.", "prior_id": "b1"},  # b1 not here
    ])
    studies = StudyDataset(rows, lambda row, index: torch.full((1, 2), float(index)), max_bad_samples=1,
                           strip_comparisons=True, read_priors=True)
    first, follow_up, orphan = studies[0], studies[1], studies[2]
    assert first["prior_input"] is None and first["report"] == "FINDINGS: Clear left lung."
    assert torch.equal(follow_up["prior_input"], torch.zeros(1, 2))  # row 0's image input
    assert follow_up["prior_report"] == rows[0]["report"] and follow_up["report"] == rows[1]["report"]
    assert orphan["prior_input"] is None and orphan["report"] == "FINDINGS: No effusion."


def test_the_collator_stacks_priors_with_masks(tiny_processor_fixture):
    examples = [{"image_input": torch.ones(1, 3, 32, 32), "report": TINY_REPORTS[0], "prompt": None, "id": str(index),
                 "index": index, "skipped": [], "prior_input": prior, "prior_report": report}
                for index, (prior, report) in enumerate([(None, None), (torch.full((1, 3, 32, 32), 2.0),
                                                                        TINY_REPORTS[1])])]
    batch = GenerationCollator(tiny_processor_fixture)(examples)
    assert batch["prior_image_mask"].tolist() == [0, 1]
    assert not batch["prior_pixel_values"][0].any() and (batch["prior_pixel_values"][1] == 2).all()
    assert batch["prior_attention_mask"][0].sum() == 0 and batch["prior_attention_mask"][1].sum() > 0
    assert "prior_pixel_values" not in GenerationCollator(tiny_processor_fixture)(examples[:1])


def test_a_run_with_priors_trains_their_embeddings_and_releases_a_model_that_reads_them(tmp_path):
    from modeling_cliptt5 import CLIPT5ForConditionalGeneration
    from modeling_cliptt5.training.config import config_from_dict
    from modeling_cliptt5.training.generation import train_generation

    plain = make_tiny_dataset(tmp_path / "tiny")
    linked = with_patients(plain, tmp_path / "patients")
    assert load_report_dataset(str(linked))["train"]["prior_id"][:2] == ["", "train-0"]
    trained = {}
    for name, data in (("priors", linked), ("none", plain)):  # same seed, same start: only the priors differ
        with one_torch_thread():
            result = train_generation(config_from_dict(tiny_settings(
                data, tmp_path / name, train_vision="frozen", feature_cache=True, eval_metrics="none",
                model={**TINY_MODEL, "reads_prior": True, "max_prior_report_tokens": 40})))
        trained[name] = {part: getattr(result.model.prior_embeddings, part).weight.detach().cpu().clone()
                         for part in ("status", "kinds")}
    release = CLIPT5ForConditionalGeneration.from_pretrained(tmp_path / "priors" / "best")
    assert release.config.reads_prior and release.config.max_prior_report_tokens == 40
    # The prior's kinds are read only where a study has a prior: without any, they kept (almost: weight decay)
    # their start; with priors they learned. The "prior" status row likewise; "no prior" is read in both runs.
    assert (trained["priors"]["kinds"] - trained["none"]["kinds"]).abs().max() > 1e-3
    assert (trained["priors"]["status"][1] - trained["none"]["status"][1]).abs().max() > 1e-3


def test_a_run_with_a_change_head_learns_from_the_follow_ups_change_labels(tmp_path):
    """Follow-ups labelled with a finding's change train the change head through the run (its loss is logged, its
    weights move only where change labels exist); a study whose prior is not in the batch's rows has no target."""
    from modeling_cliptt5 import CLIPT5ForConditionalGeneration
    from modeling_cliptt5.training.config import config_from_dict
    from modeling_cliptt5.training.generation import train_generation

    linked = with_patients(make_tiny_dataset(tmp_path / "tiny"), tmp_path / "patients")
    data = load_report_dataset(str(linked))

    def labelled(changes):
        def labels(rows, indices):  # every study has cardiomegaly; follow-ups (odd rows) say how it changed
            return {"labels": [["Cardiomegaly"] + ([f"Cardiomegaly:{changes[index // 2 % 3]}"]
                                                   if index % 2 and changes else []) for index in indices]}
        folder = tmp_path / ("labelled-" + ("-".join(changes) or "none"))
        save_dataset_atomically(datasets.DatasetDict({split: rows.map(labels, batched=True, with_indices=True)
                                                      for split, rows in data.items()}), str(folder))
        return folder

    studies = StudyDataset(load_report_dataset(str(labelled(("increased", "decreased", "unchanged"))))["train"],
                           lambda row, index: torch.zeros(1, 2), max_bad_samples=1, read_priors=True,
                           change_targets=torch.tensor([[2], [2], [0], [0]] + [[1]] * 36))
    assert studies[0]["change_targets"].tolist() == [-100]  # a first study: nothing to compare with
    assert studies[1]["change_targets"].tolist() == [2] and studies[3]["change_targets"].tolist() == [0]

    heads, logged = {}, {}
    for name, changes in (("changes", ("increased", "decreased", "unchanged")), ("none", ())):
        with one_torch_thread():
            result = train_generation(config_from_dict(tiny_settings(
                labelled(changes), tmp_path / name, train_vision="frozen",
                feature_cache=True, eval_metrics="none", finding_labels="Cardiomegaly,Edema",
                model={**TINY_MODEL, "reads_prior": True, "max_prior_report_tokens": 40, "change_head": True,
                       "change_head_hidden": 8})))
        heads[name] = result.model.change_head.inputs.weight.detach().cpu().clone()
        logged[name] = (tmp_path / name / "metrics.jsonl").read_text()
    release = CLIPT5ForConditionalGeneration.from_pretrained(tmp_path / "changes" / "best")
    assert release.config.change_head and release.change_head is not None
    assert "train/change_loss" in logged["changes"]
    # Without change labels the head's loss is 0: it keeps (almost: weight decay) its start; with them it learned.
    assert (heads["changes"] - heads["none"]).abs().max() > 1e-3


def test_a_follow_up_carries_its_priors_true_findings_for_the_course_tokens(tiny_tokenizer):
    from modeling_cliptt5.training.data import guidance_findings

    rows = datasets.Dataset.from_list([
        {"id": "a1", "report": "FINDINGS: Small effusion.", "prior_id": ""},
        {"id": "a2", "report": "FINDINGS: Increased effusion, now large.", "prior_id": "a1"},
        {"id": "b2", "report": "FINDINGS: No effusion.", "prior_id": "b1"},  # b1 not here
    ])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -100.0]])
    studies = StudyDataset(rows, lambda row, index: torch.full((1, 2), float(index)), max_bad_samples=1,
                           finding_targets=targets, read_priors=True)
    assert torch.equal(studies[1]["prior_finding_targets"], targets[0])  # a1's findings
    assert studies[0]["prior_finding_targets"].tolist() == [-100, -100]  # no prior: left to the head
    collate = GenerationCollator(tiny_processor(tiny_tokenizer), "vision_features")
    batch = collate([studies[index] for index in range(3)])
    assert batch["prior_finding_targets"].tolist() == [[-100, -100], [1, 0], [-100, -100]]
    # with every study shown its truth, the course tokens read the prior's true findings (-1: the head's decision)
    shown = guidance_findings(batch["prior_finding_targets"], 1.0, torch.Generator().manual_seed(0))
    assert shown.tolist() == [[-1, -1], [1, 0], [-1, -1]]


def test_prior_report_dropout_masks_whole_prior_reports_and_keeps_the_prior_images():
    from modeling_cliptt5.training.data import drop_prior_reports

    lengths = torch.arange(400) % 5 + 1  # reports of 1-5 tokens, padded on the right to 7 columns
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    batch = {"prior_input_ids": torch.randint(3, 50, (400, 7)) * mask, "prior_attention_mask": mask,
             "prior_image_mask": torch.ones(400)}
    dropped = drop_prior_reports(batch, 0.5, torch.Generator().manual_seed(0))
    kept = dropped["prior_attention_mask"].sum(dim=1)
    assert torch.equal(kept[kept > 0], lengths[kept > 0])  # a report is read whole or not at all
    assert 150 < int((kept == 0).sum()) < 250
    assert torch.equal(dropped["prior_image_mask"], batch["prior_image_mask"])
    # the padding columns past the longest kept report are gone; the kept tokens are the same
    assert dropped["prior_input_ids"].shape == dropped["prior_attention_mask"].shape == (400, 5)
    assert torch.equal(dropped["prior_input_ids"], batch["prior_input_ids"][:, :5])
    assert drop_prior_reports(batch, 0.0, torch.Generator()) is batch
    assert drop_prior_reports({"labels": torch.ones(2, 3)}, 0.5, torch.Generator()).keys() == {"labels"}


def test_dropping_the_padding_of_prior_reports_leaves_the_loss_as_it_was():
    """What drop_prior_reports relies on: columns that only pad the prior reports change no output."""
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration(tiny_config(finding_head=True, finding_labels=["a", "b"],
                                                       reads_prior=True)).eval()
    config = model.config
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, 1, config.num_image_tokens_per_view, config.vision_config.hidden_size,
                           generator=generator)
    ids = torch.randint(3, config.vocab_size, (3, 9), generator=generator)
    mask = torch.tensor([[1] * 4 + [0] * 5, [1] * 6 + [0] * 3, [0] * 9])
    labels = torch.randint(3, config.vocab_size, (3, 5), generator=generator)

    def loss(width):
        return model(vision_features=features, prior_vision_features=features.flip(0),
                     prior_image_mask=torch.tensor([1, 1, 0]), prior_input_ids=ids[:, :width] * mask[:, :width],
                     prior_attention_mask=mask[:, :width], labels=labels).loss

    with torch.no_grad():
        torch.testing.assert_close(loss(6), loss(9), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(loss(3), loss(9))  # cutting a kept token would change it

"""The prior study as the model's input: the encoder reads the prior's image, its finding guidance and its report
after the current study, "no prior" is a token of its own, and a model without priors refuses one."""

import pytest
import torch

from conftest import TINY_REPORTS, noise_image
from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration, CLIPT5Processor
from modeling_cliptt5.modeling_cliptt5 import CLIPT5PriorEmbeddings


@pytest.fixture(scope="module")
def prior_model(prior_release_dir):
    return CLIPT5ForConditionalGeneration.from_pretrained(prior_release_dir).eval()


@pytest.fixture(scope="module")
def prior_processor(prior_release_dir):
    return CLIPT5Processor.from_pretrained(prior_release_dir)


def greedy(model, **inputs):
    return model.generate(**inputs, max_new_tokens=12, num_beams=1, do_sample=False)


def test_a_model_without_priors_refuses_a_prior_naming_it(tiny_model, tiny_processor_fixture):
    inputs = tiny_processor_fixture(images=[noise_image(0)], prior_reports=["Small right pleural effusion."])
    assert tiny_model.config.reads_prior is False and tiny_model.prior_embeddings is None
    with pytest.raises(ValueError, match=r"does not read a prior study .*prior_input_ids"):
        tiny_model.generate(pixel_values=inputs["pixel_values"], prior_input_ids=inputs["prior_input_ids"])


def test_a_release_from_before_priors_loads_without_them(tmp_path):
    from pathlib import Path

    old = Path(__file__).parent / "fixtures" / "release_before_finding_head"
    config = CLIPT5Config.from_pretrained(old)
    assert config.reads_prior is False and config.max_prior_report_tokens == 128


def test_the_processor_stacks_priors_with_masks_and_truncates_long_reports(prior_processor):
    images = [noise_image(0), noise_image(1)]
    encoded = prior_processor(images=images, prior_images=[noise_image(2), None],
                              prior_reports=[None, "No acute cardiopulmonary process."])
    assert encoded["prior_image_mask"].tolist() == [1, 0]
    assert torch.equal(encoded["prior_pixel_values"][0], prior_processor(images=[noise_image(2)])["pixel_values"][0])
    assert not encoded["prior_pixel_values"][1].any()
    assert not encoded["prior_attention_mask"][0].any() and encoded["prior_attention_mask"][1].all()
    assert "prior_pixel_values" not in prior_processor(images=images, prior_images=[None, None])
    long_report = " ".join(TINY_REPORTS)
    with pytest.warns(UserWarning, match=r"prior report of \d+ tokens truncated to max_prior_report_tokens=48"):
        truncated = prior_processor(images=images[:1], prior_reports=[long_report])
    assert truncated["prior_input_ids"].shape[1] == 48


def test_the_prior_changes_the_draft_and_no_prior_is_a_token_of_its_own(prior_model, prior_processor):
    images = [noise_image(seed) for seed in range(4)]
    alone = greedy(prior_model, **prior_processor(images=images))
    with_report = greedy(prior_model, **prior_processor(images=images, prior_reports=[TINY_REPORTS[1]] * 4))
    other_report = greedy(prior_model, **prior_processor(images=images, prior_reports=[TINY_REPORTS[3]] * 4))
    with_image = greedy(prior_model, **prior_processor(images=images, prior_images=[noise_image(9)] * 4))
    assert len({tuple(row) for row in alone.tolist()}) > 1  # drafts that differ with the image
    for drafts in (with_report, other_report, with_image):
        assert not torch.equal(drafts, alone)
    assert not torch.equal(with_report, other_report)
    reports = prior_processor(images=images[:2], prior_reports=[None, TINY_REPORTS[1]])
    embeds, mask = prior_model.prior_inputs(2, prior_input_ids=reports["prior_input_ids"],
                                            prior_attention_mask=reports["prior_attention_mask"])
    status = prior_model.prior_embeddings.status.weight
    assert torch.equal(embeds[0, 0], status[CLIPT5PriorEmbeddings.NO_PRIOR])
    assert torch.equal(embeds[1, 0], status[CLIPT5PriorEmbeddings.PRIOR])
    assert mask[0, 0] == 1 and mask[0, 1:].sum() == 0  # a study without a prior reads "no prior" and nothing else


def test_a_batch_of_studies_with_and_without_priors_drafts_each_as_alone(prior_model, prior_processor):
    images = [noise_image(seed) for seed in range(4)]
    priors = [noise_image(7), None, noise_image(8), None]
    reports = [TINY_REPORTS[0], TINY_REPORTS[2], None, None]
    together = greedy(prior_model, **prior_processor(images=images, prior_images=priors, prior_reports=reports))
    for index in range(4):
        alone = greedy(prior_model, **prior_processor(images=images[index:index + 1],
                                                      prior_images=priors[index:index + 1],
                                                      prior_reports=reports[index:index + 1]))
        assert together[index, :alone.shape[1]].tolist() == alone[0].tolist()


def test_forward_learns_from_the_prior_and_the_release_round_trips(prior_model, prior_processor, tmp_path):
    batch = prior_processor(images=[noise_image(0), noise_image(1)], prior_images=[noise_image(2), None],
                            prior_reports=[TINY_REPORTS[4], None], reports=TINY_REPORTS[:2])
    model = CLIPT5ForConditionalGeneration.from_pretrained(prior_model.name_or_path).train()
    model(**batch).loss.backward()
    for part in (model.prior_embeddings.status, model.prior_embeddings.kinds):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0
    prior_model.save_pretrained(tmp_path)
    prior_processor.save_pretrained(tmp_path)
    loaded = CLIPT5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.reads_prior is True and loaded.config.max_prior_report_tokens == 48
    assert CLIPT5Processor.from_pretrained(tmp_path).max_prior_report_tokens == 48
    for name, tensor in prior_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    inputs = prior_processor(images=[noise_image(3)], prior_images=[noise_image(4)], prior_reports=[TINY_REPORTS[0]])
    assert torch.equal(greedy(loaded, **inputs), greedy(prior_model, **inputs))


def test_a_prior_report_longer_than_the_model_reads_is_refused_by_the_model(prior_model):
    with pytest.raises(ValueError, match="max_prior_report_tokens=48"):
        prior_model.generate(pixel_values=torch.zeros(1, 3, 32, 32), prior_input_ids=torch.ones(1, 49, dtype=torch.long))


def test_each_findings_course_from_the_prior_to_the_current_study_is_a_token_of_its_own(prior_model, prior_processor):
    inputs = prior_processor(images=[noise_image(0)], prior_images=[noise_image(5)])
    features = prior_model.get_vision_features(inputs["prior_pixel_values"])
    prior_statuses = prior_model.guidance_statuses(prior_model.finding_head(features)[0])[0]
    config, embeddings = prior_model.config, prior_model.prior_embeddings
    image_places = config.num_views * config.num_image_tokens_per_view
    for current in ([0, 0, 0], [1, 0, 1]):
        embeds, _ = prior_model.prior_inputs(1, torch.tensor([current]), prior_vision_features=features)
        courses = embeds[0, 1 + image_places:1 + image_places + len(current)]
        for finding, status in enumerate(current):
            row = 4 * finding + 2 * int(prior_statuses[finding]) + status  # absent/new/gone/present in both
            expected = embeddings.courses.weight[row] + embeddings.kinds.weight[CLIPT5PriorEmbeddings.FINDINGS]
            assert torch.allclose(courses[finding], expected), (current, finding)
    with pytest.raises(ValueError, match="pass its guidance statuses"):
        prior_model.prior_inputs(1, prior_vision_features=features)

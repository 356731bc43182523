"""The finding head: settings, pooling and heatmaps, its loss, guidance of the draft by predicted or given findings,
save/load, and releases made before it."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import HEAD_FINDINGS as NAMES
from conftest import REPO_ROOT, noise_image, rerandomized, tiny_config
from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration, CLIPT5Processor
from modeling_cliptt5.configuration_cliptt5 import CHEXPERT_OBSERVATIONS
from modeling_cliptt5.evaluation.labeler import OBSERVATIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_test")

OLD_RELEASE = REPO_ROOT / "tests" / "fixtures" / "release_before_finding_head"


def head_model(seed=0, **overrides):
    torch.manual_seed(seed)
    settings = dict(finding_head=True, finding_labels=NAMES)
    settings.update(overrides)
    return CLIPT5ForConditionalGeneration(tiny_config(**settings)).eval()


def test_the_default_label_set_is_the_labelers_14_chexpert_observations():
    assert CLIPT5Config(finding_head=True).finding_labels == list(CHEXPERT_OBSERVATIONS) == list(OBSERVATIONS)
    assert CLIPT5Config().finding_labels == [] and not CLIPT5Config().finding_head


@pytest.mark.parametrize("settings, message", [
    (dict(finding_head=True, finding_labels=["a", "b"], finding_thresholds=[0.5]), "finding_thresholds has 1"),
    (dict(finding_head=True, finding_labels=["a", "a"]), "must be distinct"),
    (dict(finding_head=True, image_tokens="pooled"), "image_tokens='patch'"),
    (dict(finding_labels=["a"]), "finding_head is False"),
    (dict(finding_head=True, finding_guidance="prompt"), "finding_guidance"),
])
def test_settings_that_cannot_work_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**settings)


def test_pooling_lies_between_the_mean_and_the_maximum_of_the_patch_logits_and_sharpens_with_r():
    model = head_model()
    features = torch.randn(2, 1, 17, 32)
    patch_logits = model.finding_head.layers(features[:, :, 1:]).flatten(1, 2)
    for sharpness in (1.0, 5.0, 50.0):
        model.finding_head.sharpness = sharpness
        pooled, _ = model.finding_head(features)
        by_hand = (torch.log(torch.exp(sharpness * patch_logits.double()).mean(dim=1)) / sharpness).float()
        assert torch.allclose(pooled, by_hand, atol=1e-5)
        assert (pooled >= patch_logits.mean(dim=1) - 1e-6).all() and (pooled <= patch_logits.amax(dim=1) + 1e-6).all()
    assert torch.allclose(pooled, patch_logits.amax(dim=1), atol=0.1)  # r = 50: nearly the maximum


def test_the_heatmap_is_brightest_where_the_finding_is():
    """A patch whose features carry the finding's direction lights up at its place in the grid (row-major)."""
    model = head_model()
    with torch.no_grad():
        model.finding_head.layers[0].weight.zero_()
        model.finding_head.layers[0].bias.fill_(-4.0)
        model.finding_head.layers[0].weight[2, 5] = 1.0  # "Lung Lesion" reads channel 5
    features = torch.zeros(1, 1, 17, 32)
    row, column = 1, 3  # the patch in the second row, fourth column of the 4 x 4 grid
    features[0, 0, 1 + row * 4 + column, 5] = 10.0
    output = model.predict_findings(vision_features=features)
    lesion_map = output.maps[0, 0, 2]
    assert lesion_map.shape == (4, 4)
    assert divmod(int(lesion_map.argmax()), 4) == (row, column)
    assert output.maps[0, 0, 0].max() < 0.1  # cardiomegaly's map stays dark
    assert output.present[0].tolist() == [False, False, True]


def test_the_finding_loss_is_weighted_binary_cross_entropy_that_skips_ignored_targets():
    model = head_model(finding_positive_weights=[1.0, 3.0, 1.0], finding_loss_weight=2.0)
    pixels = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([[1.0, 0.0, -100.0], [0.0, 1.0, 1.0]])
    labels = torch.randint(2, 100, (2, 5))
    output = model(pixel_values=pixels, labels=labels, finding_targets=targets)
    probabilities = torch.sigmoid(output.finding_logits)
    by_hand = []
    for study in range(2):
        for finding, weight in enumerate((1.0, 3.0, 1.0)):
            target = targets[study, finding].item()
            if target == -100:
                continue
            p = probabilities[study, finding].item()
            by_hand.append(-(weight * target * math.log(p) + (1 - target) * math.log(1 - p)))
    assert output.finding_loss.item() == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)
    report_loss = model(pixel_values=pixels, labels=labels).loss
    assert output.loss.item() == pytest.approx(report_loss.item() + 2.0 * output.finding_loss.item(), rel=1e-5)


def test_findings_enter_the_encoder_after_the_image_tokens_and_given_ones_replace_the_heads():
    model = rerandomized(head_model())
    pixels = torch.randn(2, 3, 32, 32)
    predicted = model.predict_findings(pixel_values=pixels).present
    embeds, mask = model.build_encoder_inputs(pixels)
    assert embeds.shape[1] == 17 + len(NAMES) and mask.shape == (2, 20)
    expected = model.finding_tokens(predicted.long())
    assert torch.equal(embeds[:, 17:], expected)
    given = [["Lung Lesion"], {"Cardiomegaly": True}]
    embeds, _ = model.build_encoder_inputs(pixels, findings=given)
    statuses = torch.tensor([[0, 0, 1], [1, int(predicted[1, 1]), int(predicted[1, 2])]])
    assert torch.equal(embeds[:, 17:], model.finding_tokens(statuses))
    # generate() follows the head by default: the same tokens as with the head's decisions passed explicitly
    as_names = [[name for name, flag in zip(NAMES, row) if flag] for row in predicted.tolist()]
    assert torch.equal(model.generate(pixel_values=pixels, max_new_tokens=8),
                       model.generate(pixel_values=pixels, max_new_tokens=8, findings=as_names))


def test_bad_findings_are_refused_by_name(tiny_model):
    model = head_model()
    pixels = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"unknown finding name\(s\) \['Nodule'\]"):
        model.generate(pixel_values=pixels, findings=[["Nodule"]])
    with pytest.raises(ValueError, match="1 studies"):
        model.generate(pixel_values=pixels, findings=[[], []])
    with pytest.raises(ValueError, match="no finding head"):
        tiny_model.generate(pixel_values=pixels, findings=[["Cardiomegaly"]])
    with pytest.raises(ValueError, match="no finding head"):
        tiny_model.predict_findings(pixel_values=pixels)


def test_a_reader_who_corrects_a_finding_gets_a_draft_that_follows_the_correction(head_release_dir):
    model = CLIPT5ForConditionalGeneration.from_pretrained(head_release_dir).eval()
    processor = CLIPT5Processor.from_pretrained(head_release_dir)
    pixels = processor(images=[noise_image(seed) for seed in (20, 21)])["pixel_values"]
    enlarged = processor.batch_decode_reports(model.generate(pixel_values=pixels, max_new_tokens=40,
                                                             findings=[["Cardiomegaly"], ["Cardiomegaly"]]))
    normal = processor.batch_decode_reports(model.generate(pixel_values=pixels, max_new_tokens=40,
                                                           findings=[[], []]))
    assert all("heart is enlarged" in report["text"] for report in enlarged)
    assert all("heart is normal" in report["text"] for report in normal)


def test_the_head_and_its_settings_survive_save_and_load(head_release_dir):
    model = CLIPT5ForConditionalGeneration.from_pretrained(head_release_dir).eval()
    config = json.loads((Path(head_release_dir) / "config.json").read_text())
    assert config["finding_head"] is True and config["finding_labels"] == NAMES
    again = CLIPT5ForConditionalGeneration.from_pretrained(head_release_dir).eval()
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.predict_findings(pixel_values=pixels).logits,
                       again.predict_findings(pixel_values=pixels).logits)
    fresh = head_model(vocab_size=model.config.vocab_size)  # the loaded weights are the trained ones
    assert not torch.equal(fresh.finding_embeddings.weight, model.finding_embeddings.weight)


def test_a_release_made_before_the_head_loads_and_drafts_exactly_as_before():
    """tests/fixtures/release_before_finding_head was saved by main before the head existed, with its drafts."""
    from transformers import AutoModelForSeq2SeqLM, AutoProcessor

    expected = json.loads((OLD_RELEASE / "expected_drafts.json").read_text())
    images = [noise_image(seed) for seed in range(4)]
    for trust_remote_code in (False, True):  # the package's classes, and the release's own (older) code files
        model = AutoModelForSeq2SeqLM.from_pretrained(OLD_RELEASE, trust_remote_code=trust_remote_code).eval()
        processor = AutoProcessor.from_pretrained(OLD_RELEASE, trust_remote_code=trust_remote_code)
        ids = model.generate(**processor(images=images), max_new_tokens=expected["max_new_tokens"])
        assert ids.tolist() == expected["token_ids"]
    model = CLIPT5ForConditionalGeneration.from_pretrained(OLD_RELEASE)
    assert model.finding_head is None and model.finding_embeddings is None and not model.config.finding_head

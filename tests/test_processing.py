import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_cliptt5 import CLIPT5ImageProcessor, CLIPT5Processor
from modeling_cliptt5.processing_cliptt5 import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, to_rgb_image


def radiograph_like(width, height, seed=0):
    """A grey image with smooth structure and noise, like a radiograph (real ones cannot be downloaded here)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = 120 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + rng.normal(0, 20, (height, width))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L")


@pytest.mark.parametrize("size", [(700, 513), (1841, 1955), (512, 512)])
def test_pixels_match_open_clip_biomedclip_eval_transform(size):
    open_clip = pytest.importorskip("open_clip")
    image = radiograph_like(*size).convert("RGB")
    reference = open_clip.image_transform(224, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)(image)
    ours = CLIPT5ImageProcessor()(image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == reference.shape == (3, 224, 224)
    assert (ours - reference).abs().max().item() <= 1e-5


def test_grayscale_bit_depths_and_alpha_become_the_same_rgb():
    base = np.asarray(radiograph_like(64, 48))
    as_16_bit = base.astype(np.uint16) * 257  # the same picture stretched to 16 bits
    as_12_bit = base.astype(np.uint16) * 16
    rgba = np.dstack([base, base, base, np.full_like(base, 128)])
    expected = np.asarray(to_rgb_image(Image.fromarray(base).point(lambda v: v)))
    stretched = np.asarray(to_rgb_image(base.astype(np.float32) / 255.0))
    assert np.abs(stretched.astype(int) - expected.astype(int)).max() <= 1
    for variant in (as_16_bit, as_12_bit):
        converted = np.asarray(to_rgb_image(variant))
        low, high = base.min(), base.max()
        window = np.round((base.astype(float) - low) * 255.0 / (high - low))
        assert converted.shape == (48, 64, 3)
        assert np.abs(converted[..., 0] - window).max() <= 1
    assert np.array_equal(np.asarray(to_rgb_image(rgba)), np.dstack([base] * 3))
    assert np.array_equal(np.asarray(to_rgb_image(Image.fromarray(as_16_bit))), np.asarray(to_rgb_image(as_16_bit)))


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="shape"):
        to_rgb_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        to_rgb_image(np.zeros((2, 4, 4, 3), dtype=np.uint8))


def test_studies_with_views_prompts_and_reports(tiny_processor_fixture):
    processor = tiny_processor_fixture
    studies = [[radiograph_like(40, 50, seed=i), np.asarray(radiograph_like(50, 40, seed=i + 9))] for i in range(3)]
    encoding = processor(images=studies, text=["cough", "fever and cough for two weeks", "pain"],
                         reports=["FINDINGS: The lungs are clear.", "IMPRESSION: Right pneumothorax.",
                                  "FINDINGS: Small left pleural effusion. IMPRESSION: Effusion."])
    assert encoding["pixel_values"].shape == (3, 2, 3, 32, 32)
    assert encoding["input_ids"].shape[0] == 3 and encoding["attention_mask"].shape == encoding["input_ids"].shape
    labels = encoding["labels"]
    assert (labels == -100).any() and (labels[:, 0] != -100).all()
    single = processor(images=[radiograph_like(40, 50)])
    assert single["pixel_values"].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="same number of views"):
        processor(images=[[radiograph_like(40, 40)], [radiograph_like(40, 40), radiograph_like(40, 40)]])


def test_long_prompts_are_truncated_with_a_warning(tiny_tokenizer):
    processor = CLIPT5Processor(image_processor=CLIPT5ImageProcessor(), tokenizer=tiny_tokenizer, max_prompt_tokens=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoding = processor(text="the heart is normal in size and the lungs are clear")
    assert encoding["input_ids"].shape[1] == 5
    assert any("truncated" in str(warning.message) for warning in caught)


def test_decode_splits_findings_and_impression(tiny_processor_fixture):
    processor = tiny_processor_fixture
    report = "FINDINGS: The heart is enlarged. IMPRESSION: Cardiomegaly."
    ids = processor.tokenizer([report], return_tensors="pt")["input_ids"]
    decoded = processor.batch_decode_reports(ids)[0]
    assert decoded["findings"] == "The heart is enlarged."
    assert decoded["impression"] == "Cardiomegaly."
    plain = processor.decode_report(processor.tokenizer("The lungs are clear.")["input_ids"])
    assert plain == {"text": "The lungs are clear.", "findings": "The lungs are clear.", "impression": None}


def test_processor_round_trip(tmp_path, tiny_processor_fixture):
    tiny_processor_fixture.save_pretrained(tmp_path)
    loaded = CLIPT5Processor.from_pretrained(tmp_path)
    image = radiograph_like(60, 45)
    torch.testing.assert_close(loaded(images=image)["pixel_values"], tiny_processor_fixture(images=image)["pixel_values"])
    assert loaded.max_prompt_tokens == tiny_processor_fixture.max_prompt_tokens
    text = "FINDINGS: No pleural effusion."
    assert loaded.tokenizer(text)["input_ids"] == tiny_processor_fixture.tokenizer(text)["input_ids"]

import json

import pytest

from conftest import tiny_config
from modeling_cliptt5 import CLIPT5Config


def test_defaults_are_biomedclip_vit_b16_and_t5_small():
    config = CLIPT5Config()
    vision = config.vision_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (224, 16, 768)
    assert (vision.num_hidden_layers, vision.num_attention_heads, vision.layer_norm_eps) == (12, 12, 1e-6)
    assert config.clip_projection_dim == 512
    assert (config.d_model, config.num_layers, config.num_heads, config.vocab_size) == (512, 6, 8, 32128)
    assert config.decoder_start_token_id == 0 and config.eos_token_id == 1
    assert config.image_tokens == "patch" and config.num_image_tokens_per_view == 197
    assert config.prompt is None


def test_token_pooling_counts():
    assert CLIPT5Config(image_token_pooling=2).num_image_tokens_per_view == 50
    assert CLIPT5Config(image_tokens="pooled").num_image_tokens_per_view == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_tokens": "grid"}, "image_tokens"),
        ({"projector_type": "qformer"}, "projector_type"),
        ({"num_views": 0}, "num_views"),
        ({"image_token_pooling": 5}, "image_token_pooling"),
    ],
)
def test_invalid_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        CLIPT5Config(**overrides)


def test_round_trip_keeps_every_setting(tmp_path):
    config = tiny_config(image_tokens="pooled", projector_type="mlp", num_views=2, prompt="Indication: cough.")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "cliptt5"
    assert set(saved["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM", "AutoModelForImageTextToText"}
    loaded = CLIPT5Config.from_pretrained(tmp_path)
    for name in ("image_tokens", "projector_type", "num_views", "prompt", "d_model", "clip_projection_dim"):
        assert getattr(loaded, name) == getattr(config, name)
    assert loaded.vision_config.hidden_size == config.vision_config.hidden_size


def test_a_folder_that_is_not_a_release_is_refused(tmp_path):
    from transformers import T5Config

    T5Config(d_model=32).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a CLIP-T5 release"):
        CLIPT5Config.from_pretrained(tmp_path)

"""The converter turns an open_clip BiomedCLIP-shaped model + a T5 checkpoint into CLIP-T5, exactly."""

import json
import re

import pytest
import torch

pytest.importorskip("open_clip")

from conftest import build_tiny_open_clip  # noqa: E402
from modeling_cliptt5.cli.convert_biomedclip_t5 import main  # noqa: E402
from modeling_cliptt5.training.clip_t5_builder import CheckpointError, build_clip_t5  # noqa: E402
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402


def save_tiny_t5(folder, tie_word_embeddings=True):
    torch.manual_seed(1)
    config = T5Config(vocab_size=120, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                      decoder_start_token_id=0, tie_word_embeddings=tie_word_embeddings)
    model = T5ForConditionalGeneration(config)
    if not tie_word_embeddings:
        # transformers 5 ties at construction whatever the config says and unties only when a checkpoint holds
        # a distinct head (as flan-t5's does): give it one
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    model.save_pretrained(folder)
    return T5ForConditionalGeneration.from_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_open_clip(tmp_path_factory.mktemp("open_clip"))[0]


@pytest.mark.parametrize("image_tokens", ["patch", "pooled"])
def test_vision_tower_reproduces_open_clip_tokens_and_embedding(tiny_clip, tmp_path, image_tokens):
    save_tiny_t5(tmp_path / "t5")
    model = build_clip_t5(tiny_clip, str(tmp_path / "t5"), image_tokens=image_tokens)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_tokens = tiny_clip.visual.trunk.forward_features(images)
        expected_embedding = tiny_clip.encode_image(images)
        tokens = model.vision_model(pixel_values=images).last_hidden_state
        features = model.get_vision_features(images)
    assert (tokens - expected_tokens).abs().max().item() <= 1e-5
    if image_tokens == "pooled":
        assert features.shape == (3, 1, 1, expected_embedding.shape[-1])
        assert (features[:, 0, 0] - expected_embedding).abs().max().item() <= 1e-5
    else:
        assert model.visual_projection is None
        assert features.shape == (3, 1, 17, 32)


def test_full_size_biomedclip_tower_converts_exactly(tmp_path):
    """BiomedCLIP's real tower shape (timm vit_base_patch16_224, 224 px), random weights."""
    clip, _ = build_tiny_open_clip(tmp_path / "clip", timm_model_name="vit_base_patch16_224", image_size=224,
                                   embed_dim=512)
    save_tiny_t5(tmp_path / "t5")
    model = build_clip_t5(clip, str(tmp_path / "t5"), image_tokens="pooled")
    vision = model.config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.layer_norm_eps) == (768, 12, 16, 1e-6)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.vision_model(pixel_values=images).last_hidden_state
                - clip.visual.trunk.forward_features(images)).abs().max().item() <= 1e-5
        assert (model.get_vision_features(images)[:, 0, 0] - clip.encode_image(images)).abs().max().item() <= 1e-5
    assert not any(name.startswith(("text", "transformer", "token_embedding")) for name in model.state_dict())


@pytest.mark.parametrize("tied", [True, False])
def test_every_t5_weight_arrives_and_the_tie_state_is_kept(tiny_clip, tmp_path, tied):
    source = save_tiny_t5(tmp_path / "t5", tie_word_embeddings=tied)
    model = build_clip_t5(tiny_clip, str(tmp_path / "t5"))
    converted = model.state_dict()
    for name, tensor in source.state_dict().items():
        assert torch.equal(converted[name], tensor), name
    source_tied = source.lm_head.weight.data_ptr() == source.shared.weight.data_ptr()
    assert source_tied == tied
    assert (model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()) == source_tied
    extra = {name.split(".")[0] for name in set(converted) - set(source.state_dict())}
    assert extra == {"vision_model", "clip_projection"}
    # Same T5 weights and the same encoder input give the same logits.
    embeds = torch.randn(1, 5, 32)
    decoder_input_ids = torch.tensor([[0, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(
            T5ForConditionalGeneration.forward(model, inputs_embeds=embeds, decoder_input_ids=decoder_input_ids).logits,
            source(inputs_embeds=embeds, decoder_input_ids=decoder_input_ids).logits,
        )


def test_wrong_architectures_are_refused_with_the_reason(tiny_clip, tmp_path):
    import open_clip
    from transformers import BertConfig, BertModel

    save_tiny_t5(tmp_path / "t5")
    not_timm = open_clip.create_model("ViT-B-32", pretrained=None)  # open_clip's own ViT, no timm trunk
    with pytest.raises(CheckpointError, match="timm ViT"):
        build_clip_t5(not_timm, str(tmp_path / "t5"))
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        build_clip_t5(tiny_clip, str(tmp_path / "bert"))


def test_cli_writes_a_complete_release(tiny_clip, tmp_path, monkeypatch, tiny_tokenizer):
    from modeling_cliptt5.training import clip_t5_builder

    save_tiny_t5(tmp_path / "t5")
    tiny_tokenizer.save_pretrained(tmp_path / "t5")
    monkeypatch.setattr(clip_t5_builder, "load_open_clip_model", lambda name, text_model="": tiny_clip)
    main(["--clip-model", "local-dir:unused", "--t5-model", str(tmp_path / "t5"), "--output", str(tmp_path / "release"),
          "--image-token-pooling", "2"])
    files = {path.name for path in (tmp_path / "release").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "modeling_cliptt5.py",
            "configuration_cliptt5.py", "processing_cliptt5.py", "tokenizer.json"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary folder left
    # A full release: its info and model card, as train.py writes them (so it can be pushed).
    info = json.loads((tmp_path / "release" / "release_info.json").read_text())
    assert info["base_models"] == ["local-dir:unused", str(tmp_path / "t5")] and info["step"] == 0
    assert info["parameters"] > 0
    card = (tmp_path / "release" / "README.md").read_text()
    assert "NOT a medical device" in card and "clip_projection untrained" in card


def test_the_cli_names_a_wrong_checkpoint_in_one_line_and_writes_nothing(tiny_clip, tmp_path, monkeypatch, capsys):
    from transformers import BertConfig, BertModel

    from modeling_cliptt5.training import clip_t5_builder

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path / "bert")
    monkeypatch.setattr(clip_t5_builder, "load_open_clip_model", lambda name, text_model="": tiny_clip)
    capsys.readouterr()  # what saving the BERT folder printed
    assert main(["--clip-model", "local-dir:unused", "--t5-model", str(tmp_path / "bert"), "--output",
                 str(tmp_path / "release")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.match(r"^cliptt5-convert-biomedclip: error: .*model_type 'bert'", line), line
    assert not (tmp_path / "release").exists()

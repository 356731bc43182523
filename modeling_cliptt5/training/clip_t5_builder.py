"""Build a CLIP-T5 from real pretrained parts: an open_clip BiomedCLIP image tower and a T5 checkpoint.

The timm ViT-B/16 trunk of BiomedCLIP becomes transformers' ViTModel (exact: same patch tokens), CLIP's image
projection is kept for the pooled mode, T5 arrives through `from_pretrained` (so its tied or untied head is
respected), and the CLIP text tower is left behind. Needs open_clip (the `train` extra); used by training
(`init: pretrained`, stage-1 towers) and by cliptt5-convert-biomedclip.

Every part named by a Hub id can be a local folder instead (model_sources): what `hf download ID --local-dir DIR`
writes on a machine with internet access. BiomedCLIP's open_clip config names its text tower by Hub id too
(microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract, whose config.json open_clip reads to build the tower);
`text_model` points that at a folder.
"""

import json
import os
import tempfile

from safetensors.torch import save_file

from modeling_cliptt5.configuration_cliptt5 import CLIPT5Config
from modeling_cliptt5.inference.model_sources import DEFAULT_CLIP_MODEL, DEFAULT_T5_MODEL, ModelSourceError, resolve_pretrained
from modeling_cliptt5.modeling_cliptt5 import CLIPT5ForConditionalGeneration
from modeling_cliptt5.processing_cliptt5 import CLIPT5ImageProcessor, CLIPT5Processor

OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
# What open_clip reads of a BiomedCLIP-style repo: its config, weights and tokenizer files.
OPEN_CLIP_FILES = [OPEN_CLIP_CONFIG_FILE, "*.safetensors", "open_clip_pytorch_model.bin", "*.txt", "tokenizer*",
                   "special_tokens_map.json"]
DEMO_VIT = "vit_cliptt5_demo"  # the image tower of the demo's stage-1 model (demo.py: demo_open_clip_config)


def register_demo_vit():
    """Adds the demo's small ViT to timm's registry (once): open_clip builds an image tower from a timm model name,
    and a stage-1 checkpoint of the demo records that name. 64 px images in 16 px patches, 2 layers, 128 wide:
    the tower whose label probe learnt fastest on the phantoms (configs/demo.yaml)."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    if timm.is_model(DEMO_VIT):
        return

    @register_model
    def vit_cliptt5_demo(pretrained=False, **kwargs):
        sizes = dict(img_size=64, patch_size=16, embed_dim=128, depth=2, num_heads=4, mlp_ratio=2.0)
        return _create_vision_transformer(DEMO_VIT, pretrained=pretrained, **{**sizes, **kwargs})


# T5 config fields that describe a T5 checkpoint (everything else in its config.json is bookkeeping).
_T5_FIELDS = (
    "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
    "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate", "layer_norm_epsilon",
    "initializer_factor", "feed_forward_proj", "pad_token_id", "eos_token_id", "decoder_start_token_id",
    "tie_word_embeddings",
)


class CheckpointError(ValueError):
    """A checkpoint that does not have the architecture the converter expects."""


def open_clip_source(name_or_path, text_model=""):
    """(open_clip model name, create_model keyword overrides) for `hf-hub:org/repo`, `local-dir:/path`, a plain
    folder, or a model name registered with open_clip (the demo's and the tests' towers). Hub ids become local
    folders first (model_sources), the text tower's among them, so that a machine without Hub access reads the
    folders it was given and never waits on the network."""
    what, flag = "the image-text model (clip_model)", "--clip_model"
    if name_or_path.startswith("hf-hub:"):
        folder = resolve_pretrained(name_or_path.removeprefix("hf-hub:"), what, flag, OPEN_CLIP_FILES)
    elif name_or_path.startswith("local-dir:") or os.path.isdir(name_or_path) or os.sep in name_or_path:
        folder = resolve_pretrained(name_or_path.removeprefix("local-dir:"), what, flag, OPEN_CLIP_FILES)
    else:
        return name_or_path, {}  # registered open_clip names have no path separator
    config_path = os.path.join(folder, OPEN_CLIP_CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ModelSourceError(f"{name_or_path}: no {OPEN_CLIP_CONFIG_FILE} in {folder} (not an open_clip model)")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    text_cfg = config.get("model_cfg", config).get("text_cfg", {})
    named = text_cfg.get("hf_model_name")
    overrides = {}
    if text_model or (named and not os.path.isdir(named)):
        # open_clip builds a Hugging Face text tower from its config.json (the weights come from the checkpoint)
        text_folder = resolve_pretrained(text_model or named, "the text tower of clip_model (clip_text_model)",
                                         "--clip_text_model")
        overrides["text_cfg"] = {**text_cfg, "hf_model_name": text_folder, "hf_model_pretrained": False}
    return f"local-dir:{folder}", overrides


def load_open_clip_model(name_or_path, text_model=""):
    """An open_clip model from `hf-hub:org/repo`, `local-dir:/path`, a plain folder, or an open_clip model name."""
    import open_clip  # the `convert` / `train` extra: not needed to run a release

    register_demo_vit()  # a stage-1 checkpoint of the demo names its timm tower
    name, overrides = open_clip_source(name_or_path, text_model)
    return open_clip.create_model(name, **overrides)


def _timm_vit_trunk(clip_model):
    visual = getattr(clip_model, "visual", None)
    trunk = getattr(visual, "trunk", None)
    if trunk is None or not all(hasattr(trunk, name) for name in ("patch_embed", "cls_token", "pos_embed", "blocks")):
        raise CheckpointError(
            f"expected an open_clip model whose image tower is a timm ViT (model.visual.trunk with patch_embed, "
            f"cls_token, pos_embed, blocks) as in BiomedCLIP; got {type(visual).__name__} with "
            f"{type(trunk).__name__ if trunk is not None else 'no trunk'}"
        )
    if trunk.cls_token is None or getattr(trunk, "num_prefix_tokens", 1) != 1:
        raise CheckpointError("the ViT trunk must have exactly one class token (and no register tokens)")
    return trunk


def vision_config_from_open_clip(clip_model):
    """ViT sizes read off the timm trunk, so that any BiomedCLIP-shaped tower (also a tiny test one) converts."""
    trunk = _timm_vit_trunk(clip_model)
    first_block = trunk.blocks[0]
    patch_size = trunk.patch_embed.patch_size
    image_size = trunk.patch_embed.img_size
    return {
        "image_size": int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size),
        "patch_size": int(patch_size[0] if isinstance(patch_size, (tuple, list)) else patch_size),
        "num_channels": int(trunk.patch_embed.proj.in_channels),
        "hidden_size": int(trunk.embed_dim),
        "num_hidden_layers": len(trunk.blocks),
        "num_attention_heads": int(first_block.attn.num_heads),
        "intermediate_size": int(first_block.mlp.fc1.out_features),
        "layer_norm_eps": float(trunk.norm.eps),
        "qkv_bias": first_block.attn.qkv.bias is not None,
    }


def vision_state_dict_from_open_clip(clip_model):
    """Maps the timm ViT trunk (+ CLIP image projection) onto transformers ViTModel checkpoint names."""
    trunk = _timm_vit_trunk(clip_model)
    hidden = trunk.embed_dim
    state = {
        "vision_model.embeddings.cls_token": trunk.cls_token,
        "vision_model.embeddings.position_embeddings": trunk.pos_embed,
        "vision_model.embeddings.patch_embeddings.projection.weight": trunk.patch_embed.proj.weight,
        "vision_model.embeddings.patch_embeddings.projection.bias": trunk.patch_embed.proj.bias,
        "vision_model.layernorm.weight": trunk.norm.weight,
        "vision_model.layernorm.bias": trunk.norm.bias,
    }
    for index, block in enumerate(trunk.blocks):
        prefix = f"vision_model.encoder.layer.{index}."
        if tuple(block.attn.qkv.weight.shape) != (3 * hidden, hidden):
            raise CheckpointError(
                f"block {index}: attn.qkv.weight has shape {tuple(block.attn.qkv.weight.shape)}, "
                f"expected {(3 * hidden, hidden)} for a fused timm ViT attention"
            )
        # timm fuses query, key and value in one Linear, in that order
        query, key, value = block.attn.qkv.weight.chunk(3, dim=0)
        state[prefix + "attention.attention.query.weight"] = query
        state[prefix + "attention.attention.key.weight"] = key
        state[prefix + "attention.attention.value.weight"] = value
        if block.attn.qkv.bias is not None:
            query_bias, key_bias, value_bias = block.attn.qkv.bias.chunk(3, dim=0)
            state[prefix + "attention.attention.query.bias"] = query_bias
            state[prefix + "attention.attention.key.bias"] = key_bias
            state[prefix + "attention.attention.value.bias"] = value_bias
        state[prefix + "attention.output.dense.weight"] = block.attn.proj.weight
        state[prefix + "attention.output.dense.bias"] = block.attn.proj.bias
        state[prefix + "layernorm_before.weight"] = block.norm1.weight
        state[prefix + "layernorm_before.bias"] = block.norm1.bias
        state[prefix + "layernorm_after.weight"] = block.norm2.weight
        state[prefix + "layernorm_after.bias"] = block.norm2.bias
        state[prefix + "intermediate.dense.weight"] = block.mlp.fc1.weight
        state[prefix + "intermediate.dense.bias"] = block.mlp.fc1.bias
        state[prefix + "output.dense.weight"] = block.mlp.fc2.weight
        state[prefix + "output.dense.bias"] = block.mlp.fc2.bias
    head_projection = getattr(getattr(clip_model.visual, "head", None), "proj", None)
    if head_projection is not None:
        state["visual_projection.weight"] = head_projection.weight
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def load_t5(t5_name_or_path):
    """Loads a T5 checkpoint through `from_pretrained`, refusing anything that is not a T5 encoder-decoder."""
    from transformers import AutoConfig, T5ForConditionalGeneration

    t5_name_or_path = resolve_pretrained(t5_name_or_path, "T5 (t5_model)", "--t5_model")
    config = AutoConfig.from_pretrained(t5_name_or_path)
    if config.model_type not in ("t5", "cliptt5"):
        raise CheckpointError(
            f"{t5_name_or_path}: expected a T5 checkpoint (model_type 't5'), found model_type {config.model_type!r}"
        )
    model, info = T5ForConditionalGeneration.from_pretrained(t5_name_or_path, output_loading_info=True)
    missing = sorted(name for name in info["missing_keys"] if not name.startswith(("vision_model", "clip_projection")))
    if missing:
        raise CheckpointError(f"{t5_name_or_path}: T5 weights missing from the checkpoint: {missing[:10]}")
    return model


def _lm_head_is_tied(t5_model):
    return t5_model.lm_head.weight.data_ptr() == t5_model.shared.weight.data_ptr()


def build_clip_t5(clip_model=DEFAULT_CLIP_MODEL, t5_model=DEFAULT_T5_MODEL, clip_text_model="", **config_overrides):
    """Returns a CLIPT5ForConditionalGeneration with BiomedCLIP's image tower and T5's weights.

    clip_model: an open_clip model object, or a name for `load_open_clip_model`.
    t5_model: a hub id or local folder of a T5 checkpoint.
    clip_text_model: a folder (or Hub id) for the text tower clip_model's open_clip config names ("": as named).
    config_overrides: CLIP-T5 settings (image_tokens, image_token_pooling, projector_type, num_views, prompt...).
    `clip_projection` (and view embeddings, and a finding head with its guidance tokens) are new and start from
    random initialisation.
    """
    if isinstance(clip_model, str):
        clip_model = load_open_clip_model(clip_model, clip_text_model)
    vision_state = vision_state_dict_from_open_clip(clip_model)
    vision_config = vision_config_from_open_clip(clip_model)
    t5 = load_t5(t5_model)
    tied = _lm_head_is_tied(t5)
    t5_settings = {field: getattr(t5.config, field) for field in _T5_FIELDS if hasattr(t5.config, field)}
    t5_settings["tie_word_embeddings"] = tied
    if "visual_projection.weight" in vision_state:
        config_overrides.setdefault("clip_projection_dim", vision_state["visual_projection.weight"].shape[0])
    config = CLIPT5Config(vision_config=vision_config, **{**t5_settings, **config_overrides})
    if config.image_tokens != "pooled":
        vision_state.pop("visual_projection.weight", None)
    elif "visual_projection.weight" not in vision_state:
        raise CheckpointError("image_tokens='pooled' needs CLIP's image projection (model.visual.head.proj)")

    t5_state = {name: tensor.detach().clone().contiguous() for name, tensor in t5.state_dict().items()
                if not name.endswith("embed_tokens.weight")}  # both are the shared embedding
    if tied:
        t5_state.pop("lm_head.weight", None)
    # Going through a checkpoint folder lets from_pretrained do the name conversions of each transformers major.
    with tempfile.TemporaryDirectory() as staging:
        config.save_pretrained(staging)
        save_file({**t5_state, **vision_state}, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        model, info = CLIPT5ForConditionalGeneration.from_pretrained(staging, output_loading_info=True)
    unexpected = sorted(info["unexpected_keys"])
    # new layers start from their initialisation: the projection, and the finding head with its guidance tokens
    missing = sorted(name for name in info["missing_keys"]
                     if not name.startswith(("clip_projection", "finding_head", "finding_embeddings")))
    if unexpected or missing:
        raise CheckpointError(f"weights did not map onto CLIP-T5: missing {missing[:10]}, unexpected {unexpected[:10]}")
    return model.eval()


def build_processor(t5_model=DEFAULT_T5_MODEL, image_size=224, max_prompt_tokens=128, max_report_tokens=256):
    """BiomedCLIP's preprocessing (shortest side -> image_size, bicubic, center crop) + the T5 checkpoint's tokenizer."""
    from transformers import AutoTokenizer

    image_processor = CLIPT5ImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPT5Processor(
        image_processor=image_processor,
        tokenizer=AutoTokenizer.from_pretrained(resolve_pretrained(t5_model, "T5 (t5_model)", "--t5_model")),
        max_prompt_tokens=max_prompt_tokens,
        max_report_tokens=max_report_tokens,
    )

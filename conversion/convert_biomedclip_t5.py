"""Builds a CLIP-T5 model from real pretrained parts: an open_clip BiomedCLIP image tower and a T5 checkpoint.

The timm ViT-B/16 trunk of BiomedCLIP becomes transformers' ViTModel (exact: same patch tokens), CLIP's image
projection is kept for the pooled mode, T5 arrives through `from_pretrained` (so its tied or untied head is
respected), and the CLIP text tower is left behind.

    python conversion/convert_biomedclip_t5.py --output releases/biomedclip-t5-small
    python conversion/convert_biomedclip_t5.py --clip-model local-dir:runs/stage1/open_clip --t5-model ./my-t5 ...
"""

import argparse
import os
import sys
import tempfile

from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration, CLIPT5ImageProcessor, CLIPT5Processor  # noqa: E402
from modeling_cliptt5.release import write_release  # noqa: E402

DEFAULT_CLIP_MODEL = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
DEFAULT_T5_MODEL = "t5-small"

# T5 config fields that describe a T5 checkpoint (everything else in its config.json is bookkeeping).
_T5_FIELDS = (
    "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
    "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate", "layer_norm_epsilon",
    "initializer_factor", "feed_forward_proj", "pad_token_id", "eos_token_id", "decoder_start_token_id",
    "tie_word_embeddings",
)


class ConversionError(ValueError):
    """A checkpoint that does not have the architecture the converter expects."""


def load_open_clip_model(name_or_path):
    """An open_clip model from `hf-hub:org/repo`, `local-dir:/path`, a plain folder, or an open_clip model name."""
    import open_clip  # the `convert` / `train` extra: not needed to run a release

    from modeling_cliptt5.contrastive import register_demo_vit

    register_demo_vit()  # a stage-1 checkpoint of the demo names its timm tower
    if os.path.isdir(name_or_path):
        name_or_path = f"local-dir:{name_or_path}"
    return open_clip.create_model(name_or_path)


def _timm_vit_trunk(clip_model):
    visual = getattr(clip_model, "visual", None)
    trunk = getattr(visual, "trunk", None)
    if trunk is None or not all(hasattr(trunk, name) for name in ("patch_embed", "cls_token", "pos_embed", "blocks")):
        raise ConversionError(
            f"expected an open_clip model whose image tower is a timm ViT (model.visual.trunk with patch_embed, "
            f"cls_token, pos_embed, blocks) as in BiomedCLIP; got {type(visual).__name__} with "
            f"{type(trunk).__name__ if trunk is not None else 'no trunk'}"
        )
    if trunk.cls_token is None or getattr(trunk, "num_prefix_tokens", 1) != 1:
        raise ConversionError("the ViT trunk must have exactly one class token (and no register tokens)")
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
            raise ConversionError(
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

    config = AutoConfig.from_pretrained(t5_name_or_path)
    if config.model_type not in ("t5", "cliptt5"):
        raise ConversionError(
            f"{t5_name_or_path}: expected a T5 checkpoint (model_type 't5'), found model_type {config.model_type!r}"
        )
    model, info = T5ForConditionalGeneration.from_pretrained(t5_name_or_path, output_loading_info=True)
    missing = sorted(name for name in info["missing_keys"] if not name.startswith(("vision_model", "clip_projection")))
    if missing:
        raise ConversionError(f"{t5_name_or_path}: T5 weights missing from the checkpoint: {missing[:10]}")
    return model


def _lm_head_is_tied(t5_model):
    return t5_model.lm_head.weight.data_ptr() == t5_model.shared.weight.data_ptr()


def build_clip_t5(clip_model=DEFAULT_CLIP_MODEL, t5_model=DEFAULT_T5_MODEL, **config_overrides):
    """Returns a CLIPT5ForConditionalGeneration with BiomedCLIP's image tower and T5's weights.

    clip_model: an open_clip model object, or a name for `load_open_clip_model`.
    t5_model: a hub id or local folder of a T5 checkpoint.
    config_overrides: CLIP-T5 settings (image_tokens, image_token_pooling, projector_type, num_views, prompt...).
    `clip_projection` (and view embeddings, and a finding head with its guidance tokens) are new and start from
    random initialisation.
    """
    if isinstance(clip_model, str):
        clip_model = load_open_clip_model(clip_model)
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
        raise ConversionError("image_tokens='pooled' needs CLIP's image projection (model.visual.head.proj)")

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
        raise ConversionError(f"weights did not map onto CLIP-T5: missing {missing[:10]}, unexpected {unexpected[:10]}")
    return model.eval()


def build_processor(t5_model=DEFAULT_T5_MODEL, image_size=224, max_prompt_tokens=128, max_report_tokens=256):
    """BiomedCLIP's preprocessing (shortest side -> image_size, bicubic, center crop) + the T5 checkpoint's tokenizer."""
    from transformers import AutoTokenizer

    image_processor = CLIPT5ImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPT5Processor(
        image_processor=image_processor,
        tokenizer=AutoTokenizer.from_pretrained(t5_model),
        max_prompt_tokens=max_prompt_tokens,
        max_report_tokens=max_report_tokens,
    )


def release_info(output_dir, clip_model, t5_model):
    """release_info.json of a converted (untrained) release: what the model card and a push need."""
    return {"model_name": os.path.basename(os.path.abspath(output_dir)), "dataset": "none (converted, not trained)",
            "sources": {}, "split_sizes": {}, "validation_studies": 0, "step": 0, "metrics": {},
            "best_metric": "loss", "license": "other", "base_models": [clip_model, t5_model],
            "initialisation": f"{clip_model} (image tower) + {t5_model}; clip_projection untrained",
            "synthetic_data": False}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Build a CLIP-T5 release folder from an open_clip BiomedCLIP model and a T5 checkpoint. "
        "The CLIP text tower is not copied; clip_projection starts untrained.",
    )
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL,
                        help="open_clip model: hf-hub:org/repo, local-dir:/path, or a folder holding "
                        "open_clip_config.json + weights (e.g. a stage-1 checkpoint). Default: %(default)s")
    parser.add_argument("--t5-model", default=DEFAULT_T5_MODEL,
                        help="T5 hub id or local folder (its tokenizer is used too). Default: %(default)s")
    parser.add_argument("--output", required=True, help="release folder to write (replaced only when complete)")
    parser.add_argument("--image-tokens", choices=["patch", "pooled"], default="patch",
                        help="patch: CLS + patch tokens go to T5; pooled: the CLIP image embedding only")
    parser.add_argument("--image-token-pooling", type=int, default=1,
                        help="average-pool the patch grid by this factor per side (2: 197 -> 50 tokens)")
    parser.add_argument("--projector-type", choices=["linear", "mlp"], default="linear")
    parser.add_argument("--num-views", type=int, default=1, help="images per study (IU X-ray: 2)")
    parser.add_argument("--prompt", default=None, help="default text prompt after the image tokens (none by default)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model = build_clip_t5(
        args.clip_model, args.t5_model, image_tokens=args.image_tokens,
        image_token_pooling=args.image_token_pooling, projector_type=args.projector_type,
        num_views=args.num_views, prompt=args.prompt,
    )
    processor = build_processor(args.t5_model, image_size=model.config.vision_config.image_size,
                                max_prompt_tokens=model.config.max_prompt_tokens)
    write_release(model, processor, args.output, release_info(args.output, args.clip_model, args.t5_model))
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"wrote {args.output}: {parameters / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()

"""Stage 2's model: built from a config, a release or pretrained parts; which parts train, and at which rate."""

import os
import tempfile
import warnings

import torch

from modeling_cliptt5.configuration_cliptt5 import CLIPT5Config
from modeling_cliptt5.modeling_cliptt5 import CLIPT5ForConditionalGeneration, use_sentence_repeat_guard
from modeling_cliptt5.processing_cliptt5 import CLIPT5ImageProcessor, CLIPT5Processor
from modeling_cliptt5.training.tokenizer import train_report_tokenizer
from modeling_cliptt5.data.atomic_writes import atomic_folder
from modeling_cliptt5.training.loop import parameter_groups as shared_parameter_groups


def finding_overrides(config):
    """CLIP-T5 config fields for the finding head that `config.finding_labels` asks for ({} for none)."""
    from modeling_cliptt5.evaluation.findings import resolve_finding_labels

    names = resolve_finding_labels(config.finding_labels)
    if not names:
        return {}
    return {"finding_head": True, "finding_labels": names, "finding_loss_weight": config.finding_loss_weight}


def build_model_and_processor(config, train_rows, accelerator):
    """(model, processor) for `config.init`: "config" (random weights, tokenizer trained on the training reports
    or loaded), "release" (a CLIP-T5 folder) or "pretrained" (BiomedCLIP + T5 through the converter)."""
    overrides = {**finding_overrides(config), **dict(config.model or {})}
    if config.init == "release":
        from modeling_cliptt5.inference.model_sources import resolve_release

        init_from = resolve_release(config.init_from)
        release_config = CLIPT5Config.from_pretrained(init_from)
        head = finding_overrides(config)
        if release_config.finding_head and head and release_config.finding_labels != head["finding_labels"]:
            raise ValueError(f"init_from {config.init_from!r} has a finding head over {release_config.finding_labels}, "
                             f"but finding_labels={config.finding_labels!r} asks for {head['finding_labels']}")
        # A release trained without priors can learn to read them: the prior's embeddings start fresh.
        prior = {name: value for name, value in (config.model or {}).items()
                 if name in ("reads_prior", "max_prior_report_tokens", "change_head", "change_head_hidden",
                             "change_head_patch_channels", "change_loss_weight")}
        model = CLIPT5ForConditionalGeneration.from_pretrained(init_from, **head, **prior)
        processor = CLIPT5Processor.from_pretrained(init_from)
    elif config.init == "pretrained":
        from modeling_cliptt5.training.clip_t5_builder import build_clip_t5, build_processor  # needs open_clip

        model = build_clip_t5(config.clip_model, config.t5_model, config.clip_text_model, **overrides)
        if os.path.isdir(config.clip_model):  # a stage-1 checkpoint: its finding head too
            _load_finding_head(model, config.clip_model)
        processor = build_processor(config.t5_model, image_size=model.config.vision_config.image_size,
                                    max_prompt_tokens=model.config.max_prompt_tokens)
    else:
        tokenizer = _tokenizer_for(config, train_rows, accelerator)
        vision_config, vision_state = _open_clip_image_tower(config.init_vision_from, config.clip_text_model)
        if vision_config:
            overrides["vision_config"] = vision_config
        model_config = CLIPT5Config(**{
            **overrides,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "decoder_start_token_id": tokenizer.pad_token_id,  # T5 starts decoding from the pad token
        })
        model = CLIPT5ForConditionalGeneration(model_config)
        if vision_state:
            _load_image_tower(model, vision_state, config.init_vision_from)
            _load_finding_head(model, config.init_vision_from)
        size = model_config.vision_config.image_size
        image_processor = CLIPT5ImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        processor = CLIPT5Processor(image_processor=image_processor, tokenizer=tokenizer,
                                    max_prompt_tokens=model_config.max_prompt_tokens)
    processor.max_report_tokens = config.max_report_tokens
    processor.max_prior_report_tokens = model.config.max_prior_report_tokens
    if config.prompt is not None:
        model.config.prompt = config.prompt
    # Generation defaults travel with the release (generation_config.json), as its own: a generation config marked
    # as derived from the model config is read back without the settings transformers does not know
    # (no_repeat_sentence's)
    model.generation_config._from_model_config = False
    model.generation_config.max_new_tokens = config.generation_max_new_tokens
    model.generation_config.num_beams = config.generation_num_beams
    if config.generation_no_repeat_ngram_size:
        model.generation_config.no_repeat_ngram_size = config.generation_no_repeat_ngram_size
    if config.generation_no_repeat_sentence:
        # with the tokenizer's ids, so that the release needs nothing else (NoRepeatSentenceLogitsProcessor)
        use_sentence_repeat_guard(model.generation_config, processor.sentence_token_ids())
    return model, processor


def _open_clip_image_tower(name_or_path, text_model=""):
    """(vision config, CLIP-T5 state dict of the image tower) of an open_clip model, or (None, None) for ""."""
    if not name_or_path:
        return None, None
    from modeling_cliptt5.training.clip_t5_builder import (  # needs open_clip
        load_open_clip_model, vision_config_from_open_clip, vision_state_dict_from_open_clip,
    )

    clip_model = load_open_clip_model(name_or_path, text_model)
    return vision_config_from_open_clip(clip_model), vision_state_dict_from_open_clip(clip_model)


def _load_image_tower(model, vision_state, source):
    """Copies a converted image tower into `model`. The converter names weights as transformers 4.x's ViTModel
    does; loading them through ViTModel.from_pretrained lets each transformers major map the names its own way."""
    from safetensors.torch import save_file

    tower_state = {name.removeprefix("vision_model."): tensor.contiguous() for name, tensor in vision_state.items()
                   if name.startswith("vision_model.")}
    with tempfile.TemporaryDirectory() as staging:
        model.config.vision_config.save_pretrained(staging)
        save_file(tower_state, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        tower = type(model.vision_model).from_pretrained(staging, add_pooling_layer=False)
    missing, unexpected = model.vision_model.load_state_dict(tower.state_dict(), strict=False)
    if missing or unexpected or len(tower_state) != len(tower.state_dict()):
        raise ValueError(f"init_vision_from {source!r}: the image tower did not map onto CLIP-T5: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if model.visual_projection is not None:  # only the pooled token goes through CLIP's projection
        model.visual_projection.load_state_dict({"weight": vision_state["visual_projection.weight"]})


def _load_finding_head(model, source):
    """The finding head trained beside the image tower in stage 1, when the checkpoint has one for the same
    findings and sizes (findings.FINDING_HEAD_FILE); otherwise the head keeps its fresh initialisation."""
    from modeling_cliptt5.evaluation.findings import load_finding_head

    if model.finding_head is None or not os.path.isdir(source):
        return False
    loaded = load_finding_head(source)
    if loaded is None:
        return False
    names, state = loaded
    own = model.finding_head.state_dict()
    problem = None
    if names != model.config.finding_labels:
        problem = f"its finding head scores {names}, this model's {model.config.finding_labels}"
    elif set(state) != set(own) or any(state[name].shape != own[name].shape for name in own):
        problem = "its finding head has other sizes (finding_head_hidden)"
    if problem:
        warnings.warn(f"init_vision_from {source!r}: {problem}; the head starts from random weights")
        return False
    model.finding_head.load_state_dict(state)
    return True


def _tokenizer_for(config, train_rows, accelerator):
    """A tokenizer folder or hub id, or (tokenizer=train) one trained on the training reports. Training is not
    deterministic, so the main process trains it once per run into <output_dir>/tokenizer and every rank, and a
    resumed run, loads that copy."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from modeling_cliptt5.inference.model_sources import resolve_pretrained

    if config.tokenizer != "train":
        return AutoTokenizer.from_pretrained(resolve_pretrained(config.tokenizer, "the tokenizer (tokenizer)",
                                                                "--tokenizer"))
    folder = os.path.join(config.output_dir, "tokenizer")
    if accelerator.is_main_process and not os.path.isdir(folder):
        tokenizer = train_report_tokenizer(train_rows[config.report_column], vocab_size=config.tokenizer_vocab_size)
        with atomic_folder(folder) as staging:
            tokenizer.save_pretrained(staging)
    accelerator.wait_for_everyone()
    return PreTrainedTokenizerFast.from_pretrained(folder)


def vision_modules(model):
    modules = [model.vision_model]
    if model.visual_projection is not None:
        modules.append(model.visual_projection)
    return modules


def vision_blocks(model):
    """The ViT's transformer blocks (transformers 5 names them `layers`, 4.x `encoder.layer`)."""
    vision = model.vision_model
    return vision.layers if hasattr(vision, "layers") else vision.encoder.layer


def set_trainable_parts(model, config):
    """requires_grad per part: T5 (train_t5), clip_projection with the finding and change heads and guidance tokens
    (train_projection), image tower (train_vision: frozen, the last vision_last_blocks blocks with the final norm,
    or all)."""
    model.requires_grad_(config.train_t5)
    for module in vision_modules(model):
        module.requires_grad_(config.train_vision == "all")
    if config.train_vision == "last_blocks":
        layers = vision_blocks(model)
        if not 0 < config.vision_last_blocks <= len(layers):
            raise ValueError(f"vision_last_blocks must be in 1..{len(layers)}, got {config.vision_last_blocks}")
        for layer in layers[-config.vision_last_blocks:]:
            layer.requires_grad_(True)
        model.vision_model.layernorm.requires_grad_(True)
        if model.visual_projection is not None:
            model.visual_projection.requires_grad_(True)
    for module in (model.clip_projection, model.finding_head, model.finding_embeddings, model.change_head):
        if module is not None:
            module.requires_grad_(config.train_projection)
    return model


def set_train_mode(model, config):
    """model.train(), except a frozen image tower, which stays in eval mode (no dropout, as when cached)."""
    from accelerate.utils import extract_model_from_parallel

    model.train()
    if config.train_vision == "frozen":
        for module in vision_modules(extract_model_from_parallel(model)):  # under DDP, the wrapped model's
            module.eval()


def part_of(name):
    """Learning-rate group of a parameter: the image tower, the new layers between it and T5 (projection, finding
    head and guidance tokens), or T5."""
    if name.startswith(("vision_model.", "visual_projection.")):
        return "vision"
    if name.startswith(("clip_projection.", "finding_head.", "finding_embeddings.")):
        return "projection"
    return "t5"


def parameter_groups(model, config):
    """AdamW groups (training.loop.parameter_groups): one learning rate per part, no decay on 1-D parameters."""
    rates = {"vision": config.vision_learning_rate, "projection": config.projection_learning_rate,
             "t5": config.learning_rate}
    return shared_parameter_groups(model, rates, config.weight_decay, part_of)


def count_parameters(model):
    total = sum(parameter.numel() for parameter in model.parameters())
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    return total, trainable


def enable_activation_checkpointing(model):
    """Recompute activations in backward (transformers >= 5.24 calls it activation checkpointing; earlier versions,
    gradient checkpointing). Non-reentrant, so a frozen image tower's inputs need no grad."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_optimizer(model, config):
    return torch.optim.AdamW(parameter_groups(model, config), betas=(0.9, 0.999), eps=1e-8)

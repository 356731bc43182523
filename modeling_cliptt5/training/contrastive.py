"""Stage 1: adapt BiomedCLIP (an open_clip model) to the report data with CLIP's contrastive loss, before its image
tower becomes CLIP-T5's (cliptt5-convert-biomedclip reads the saved checkpoint folder).

Image-report pairs come from the report schema (the frontal view and the `report_column` text); training crops
with RandomResizedCrop(scale=(crop_scale_min, 1)) and never flips (a flip would swap left and right findings);
validation reports image->text and text->image recall@1/5/10.

With `finding_labels` set, a finding head (CLIP-T5's own CLIPT5FindingHead) reads the image tower's tokens beside
the contrastive loss, so the tower learns the findings from the labels too; the checkpoint keeps the head
(FINDING_HEAD_FILE), and stage 2 starts its head from it.
"""

import json
import math
import os

import torch
from tqdm.auto import tqdm

from modeling_cliptt5.training.clip_t5_builder import open_clip_source, register_demo_vit
from modeling_cliptt5.evaluation.findings import FINDING_HEAD_FILE, FINDING_HEAD_INFO
from modeling_cliptt5.modeling_cliptt5 import finding_bce
from modeling_cliptt5.processing_cliptt5 import to_rgb_image
from modeling_cliptt5.training.data import StudyDataset, choose_views, finding_targets_for, take_first
from modeling_cliptt5.training.loop import Stage, StageParts, full_parameters, parameter_groups, run_stage
from modeling_cliptt5.data.atomic_writes import atomic_folder

OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"
RECALL_AT = (1, 5, 10)
def load_open_clip(config):
    """(model, tokenizer, model name) for config.clip_model; a folder is read as a stage-1 checkpoint, and Hub ids
    (the model's and its text tower's) as local folders where the Hub cannot be reached (clip_t5_builder)."""
    import open_clip

    register_demo_vit()
    if config.clip_model_config_dir:
        open_clip.add_model_config(config.clip_model_config_dir)
    name, overrides = open_clip_source(config.clip_model, config.clip_text_model)
    model = open_clip.create_model(name, load_weights=config.clip_pretrained, pretrained_text=config.clip_pretrained,
                                   output_dict=True, **overrides)
    return model, open_clip.get_tokenizer(name), name


def image_transforms(model, crop_scale_min):
    """open_clip's own train (RandomResizedCrop, no flip) and eval (resize, centre crop) transforms."""
    import open_clip

    preprocess = model.visual.preprocess_cfg
    common = {"image_size": preprocess["size"], "mean": preprocess["mean"], "std": preprocess["std"],
              "interpolation": preprocess.get("interpolation"), "resize_mode": preprocess.get("resize_mode")}
    train = open_clip.image_transform(is_train=True, aug_cfg=open_clip.AugmentationCfg(scale=(crop_scale_min, 1.0)),
                                      **common)
    evaluation = open_clip.image_transform(is_train=False, **common)
    return train, evaluation


def frontal_image_encoder(transform):
    """encode_images for StudyDataset: the study's first (frontal) view through `transform`."""
    def encode(row, _index):
        return transform(to_rgb_image(choose_views(row["images"], 1, row.get("id"))[0]))
    return encode


class SeededImageEncoder:
    """frontal_image_encoder for the training split, whose random crop of a study depends on (seed, epoch, row)
    alone. Drawn from the global RNG, crops could not be resumed exactly: Accelerate's loader reads one batch
    ahead, so the RNG state a checkpoint restores has already drawn the next batch's crops (measured: weights 0.02
    apart after a resume)."""

    def __init__(self, transform, seed):
        self.transform, self.seed, self.epoch = transform, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __call__(self, row, index):
        import numpy as np

        image = to_rgb_image(choose_views(row["images"], 1, row.get("id"))[0])
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):  # the global RNG (dropout's) is left as it was
            torch.manual_seed(seed)
            return self.transform(image)


class ContrastiveCollator:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, examples):
        reports = [example["report"] for example in examples]
        targets = {"finding_targets": torch.stack([example["finding_targets"] for example in examples])} \
            if "finding_targets" in examples[0] else {}
        return {
            **targets,
            "image": torch.stack([example["image_input"] for example in examples]),
            "text": self.tokenizer(reports),
            "references": reports,
            "indices": [example["index"] for example in examples],
            "ids": [example["id"] for example in examples],
            "skipped": [entry for example in examples for entry in example["skipped"]],
        }


class ContrastiveWithFindings(torch.nn.Module):
    """An open_clip model and a finding head over its image tower's tokens (after the tower's final norm: what CLIP-T5
    reads as vision features), trained together. forward(image, text) returns open_clip's output dict plus
    "finding_logits"."""

    def __init__(self, clip_model, num_findings, head_hidden=0, sharpness=5.0):
        from modeling_cliptt5.modeling_cliptt5 import CLIPT5FindingHead

        super().__init__()
        self.clip = clip_model
        trunk = clip_model.visual.trunk
        self.head = CLIPT5FindingHead(trunk.embed_dim, num_findings, head_hidden, sharpness)
        self._tokens = None
        trunk.norm.register_forward_hook(self._keep_tokens)

    def _keep_tokens(self, _module, _inputs, output):
        self._tokens = output

    @property
    def visual(self):
        return self.clip.visual

    @property
    def logit_scale(self):
        return self.clip.logit_scale

    def forward(self, image, text):
        output = self.clip(image, text)
        logits, _ = self.head(self._tokens[:, None])  # one view
        self._tokens = None
        return {**output, "finding_logits": logits}


def retrieval_recall(image_features, text_features, ks=RECALL_AT, groups=None):
    """Recall@k both ways for matched rows of L2-normalised features: the share of queries whose match is among
    the k most similar candidates. `groups` (e.g. report texts) count any candidate of the query's group as a
    match, so that identical reports of different studies are not scored as misses."""
    count = image_features.shape[0]
    if groups is None:
        group_ids = torch.arange(count)
    else:
        first_of = {}
        group_ids = torch.tensor([first_of.setdefault(group, len(first_of)) for group in groups])
    similarity = image_features.float() @ text_features.float().T
    metrics = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        ranked = scores.argsort(dim=1, descending=True)
        hits = group_ids[ranked] == group_ids[:, None]
        for k in ks:
            metrics[f"{direction}_recall@{k}"] = hits[:, :k].any(dim=1).float().mean().item()
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    return metrics


def contrastive_loss(image_features, text_features, logit_scale):
    """CLIP's symmetric cross-entropy over one similarity matrix (open_clip.ClipLoss on a single process)."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


def evaluate_retrieval(model, loader, config, accelerator):
    """Validation contrastive loss and recall@k over a validation_loader's studies, each counted once (features
    gathered from ranks)."""
    from accelerate.utils import broadcast_object_list

    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    rows, head_rows = [], []
    with full_parameters(model, accelerator):
        for batch in tqdm(loader, desc="validation", leave=False, disable=not accelerator.is_local_main_process):
            with torch.no_grad(), accelerator.autocast():
                output = unwrapped(batch["image"].to(accelerator.device), batch["text"].to(accelerator.device))
            batch_rows = list(zip(batch["indices"], output["image_features"].float().cpu(),
                                  output["text_features"].float().cpu(), batch["references"]))
            if "finding_logits" in output:
                head_rows += accelerator.gather_for_metrics(
                    list(zip(batch["indices"], torch.sigmoid(output["finding_logits"].float()).cpu(),
                             batch["finding_targets"])), use_gather_object=True)
            # per batch: gather_for_metrics knows the last one and drops the studies that pad it
            rows += accelerator.gather_for_metrics(batch_rows, use_gather_object=True)
        logit_scale = unwrapped.logit_scale.detach().exp().float().cpu()
    metrics = {}
    if accelerator.is_main_process:
        by_index = {index: (image, text, report) for index, image, text, report in rows}  # replaced rows repeat
        ordered = [by_index[index] for index in sorted(by_index)]
        images = torch.stack([image for image, _, _ in ordered])
        texts = torch.stack([text for _, text, _ in ordered])
        metrics["loss"] = contrastive_loss(images, texts, logit_scale).item()
        metrics.update(retrieval_recall(images, texts, groups=[report for _, _, report in ordered]))
        if head_rows:
            from modeling_cliptt5.evaluation.findings import fit_thresholds, score_head

            by_index = {index: (probability, target) for index, probability, target in head_rows}
            probabilities = torch.stack([by_index[index][0] for index in sorted(by_index)]).numpy()
            targets = torch.stack([by_index[index][1] for index in sorted(by_index)]).numpy()
            head = score_head(probabilities, targets, config_finding_names(config), fit_thresholds(probabilities, targets))
            metrics["finding_macro_f1"] = head["macro_f1"]
            if head["macro_auroc"] is not None:
                metrics["finding_macro_auroc"] = head["macro_auroc"]
    unwrapped.train(was_training)
    return broadcast_object_list([metrics])[0]


def config_finding_names(config):
    from modeling_cliptt5.evaluation.findings import resolve_finding_labels

    return resolve_finding_labels(config.finding_labels)


def save_open_clip_checkpoint(accelerator, model, tokenizer, model_name, folder, extra=None, finding_labels=None):
    """An open_clip checkpoint folder (open_clip_config.json + safetensors weights + tokenizer files) that
    `open_clip.create_model("local-dir:FOLDER")` and cliptt5-convert-biomedclip load; with a finding head
    (`model` a ContrastiveWithFindings), also its weights and label names."""
    import open_clip
    from safetensors.torch import save_file

    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        head_state = {}
        if isinstance(unwrapped, ContrastiveWithFindings):
            head_state = {name.removeprefix("head."): tensor for name, tensor in state_dict.items()
                          if name.startswith("head.")}
            state_dict = {name.removeprefix("clip."): tensor for name, tensor in state_dict.items()
                          if name.startswith("clip.")}
        with atomic_folder(folder) as staging:
            model_config = open_clip.get_model_config(model_name)
            with open(os.path.join(staging, OPEN_CLIP_CONFIG_FILE), "w", encoding="utf-8") as handle:
                json.dump({"model_cfg": model_config, "preprocess_cfg": unwrapped.visual.preprocess_cfg}, handle,
                          indent=1)
            weights = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
            save_file(weights, os.path.join(staging, OPEN_CLIP_WEIGHTS_FILE), metadata={"format": "pt"})
            if hasattr(tokenizer, "tokenizer") and hasattr(tokenizer.tokenizer, "save_pretrained"):
                tokenizer.tokenizer.save_pretrained(staging)  # local-dir: models read their tokenizer from the folder
            if extra:
                with open(os.path.join(staging, "training_info.json"), "w", encoding="utf-8") as handle:
                    json.dump(extra, handle, indent=1, default=str)
            if head_state:
                save_file({name: tensor.detach().cpu().contiguous() for name, tensor in head_state.items()},
                          os.path.join(staging, FINDING_HEAD_FILE), metadata={"format": "pt"})
                with open(os.path.join(staging, FINDING_HEAD_INFO), "w", encoding="utf-8") as handle:
                    json.dump({"finding_labels": list(finding_labels), "sharpness": unwrapped.head.sharpness},
                              handle, indent=1)
    accelerator.wait_for_everyone()
    return folder


def _cached_images(config, splits, transform, model, accelerator):
    """The splits without their image column and encoders that read each study's preprocessed frontal view from
    an image cache (feature_cache.build_image_cache), computed once."""
    from modeling_cliptt5.training.feature_cache import build_image_cache, cached_encoder

    cache_root = config.feature_cache_dir or os.path.join(config.output_dir, "feature_cache")
    size = model.visual.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    cache, keys = build_image_cache(transform, size, splits, cache_root, accelerator)

    def first_view(encode):
        return lambda row, index: encode(row, index)[0].float()

    encoders = [first_view(cached_encoder(cache, split_keys)) for split_keys in keys]
    return [rows.remove_columns(["images"]) for rows in splits], encoders


def _stage1_targets(config, rows, train_rows, names, accelerator, split):
    """The finding head's targets for one split (None without a head); the label source is the training split's."""
    if not names:
        return None
    from modeling_cliptt5.evaluation.findings import resolve_label_source

    source = resolve_label_source(config.finding_label_source, train_rows)
    return finding_targets_for(config, rows, names, accelerator, split, source)[0]


class ContrastiveStage(Stage):
    """Stage 1 in the shared run: BiomedCLIP (open_clip) on image-report pairs; CLIP's contrastive loss over all
    ranks (plus the finding head's), the temperature capped; validation recall@k; the best model saved as an
    open_clip checkpoint folder."""

    description = "contrastive training"

    def build(self, data):
        import open_clip

        config, accelerator = self.config, self.accelerator
        model, self.tokenizer, self.model_name = load_open_clip(config)
        train_transform, eval_transform = image_transforms(model, config.crop_scale_min)
        self.names = names = config_finding_names(config)
        if names:
            model = ContrastiveWithFindings(model, len(names))
        splits = [take_first(data[config.train_split], config.max_train_samples)]
        if config.validation_split and config.validation_split in data and len(data[config.validation_split]):
            splits.append(take_first(data[config.validation_split], config.eval_max_samples))
        encoders = [SeededImageEncoder(train_transform, config.seed), frontal_image_encoder(eval_transform)]
        if config.image_cache:
            splits, encoders = _cached_images(config, splits, eval_transform, model, accelerator)
        targets = [_stage1_targets(config, rows, splits[0], names, accelerator, split)
                   for rows, split in zip(splits, ("train", "validation"))]
        studies = [StudyDataset(rows, encoder, config.report_column, max_bad_samples=config.max_bad_samples,
                                finding_targets=split_targets)
                   for rows, encoder, split_targets in zip(splits, encoders, targets)]
        self.train_set = studies[0]
        self.finding_weights = None
        if names and config.finding_balance:
            from modeling_cliptt5.evaluation.findings import positive_weights

            self.finding_weights = torch.tensor(positive_weights(targets[0]))
        # open_clip's AdamW settings; one learning rate for the whole model
        optimizer = torch.optim.AdamW(parameter_groups(model, {"clip": config.learning_rate}, config.weight_decay,
                                                       part_of=lambda name: "clip"), betas=(0.9, 0.98), eps=1e-6)
        self.loss_fn = open_clip.ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True,
                                          rank=accelerator.process_index, world_size=accelerator.num_processes)
        self.logit_scale = None
        return StageParts(model, optimizer, studies[0], studies[1] if len(studies) > 1 else None,
                          ContrastiveCollator(self.tokenizer))

    def describe(self, num_steps):
        return (f"stage 1: {self.model_name}, {len(self.train_set)} image-report pairs, {num_steps} steps on "
                f"{self.accelerator.num_processes} process(es) ({self.accelerator.device})")

    def train_mode(self):
        self.model.train()

    def loss(self, batch, step, micro_step):
        device = self.accelerator.device
        output = self.model(batch["image"].to(device), batch["text"].to(device))
        loss = self.loss_fn(output["image_features"], output["text_features"], output["logit_scale"])
        if self.names:
            loss = loss + self.config.finding_loss_weight * finding_bce(
                output["finding_logits"], batch["finding_targets"].to(device), self.finding_weights)
        self.logit_scale = output["logit_scale"]
        return loss, {}

    def after_optimizer_step(self):
        with torch.no_grad():  # CLIP caps the temperature at 100 (Radford et al. 2021)
            self.accelerator.unwrap_model(self.model).logit_scale.clamp_(0, math.log(100))

    def log_values(self):
        return {"train/logit_scale": self.logit_scale.item()}

    def validate(self, step):
        return evaluate_retrieval(self.model, self.eval_loader, self.config, self.accelerator)

    def save_best(self, step, metrics):
        save_open_clip_checkpoint(self.accelerator, self.model, self.tokenizer, self.model_name,
                                  self.config.release_dir, {"step": step, **({"metrics": metrics} if metrics else {})},
                                  self.names)


    def curve_metrics(self, last_metrics):
        return [name for name in last_metrics if "recall@1" in name]

    def written(self):
        return (f"open_clip checkpoint {self.config.release_dir} (convert with cliptt5-convert-biomedclip "
                f"--clip-model {self.config.release_dir})")

    def result(self, trainer_state, last_metrics):
        unwrapped = self.accelerator.unwrap_model(self.model)
        return (unwrapped.clip if self.names else unwrapped), last_metrics


def train_contrastive(config):
    """Runs stage 1; returns (the unwrapped open_clip model, last validation metrics)."""
    return run_stage(config, ContrastiveStage)

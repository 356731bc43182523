"""Stage 2: train CLIP-T5 to write reports (training.loop runs the run): validation loss and report metrics, the
finding head's scores and thresholds, the best release, the OOD summary and the push to the Hub."""

import collections
import dataclasses
import json
import os
import warnings

import torch
from tqdm.auto import tqdm

from modeling_cliptt5.training.data import (
    GenerationCollator, StudyDataset, drop_prior_reports, drop_prompts, finding_targets_for, guidance_findings,
    guidance_truth_share, model_inputs, pixel_encoder, prompt_generator, take_first, validation_loader,
)
from modeling_cliptt5.training.model import (
    build_model_and_processor, count_parameters, enable_activation_checkpointing, make_optimizer, set_train_mode,
    set_trainable_parts,
)
from modeling_cliptt5.training.config import config_sections
from modeling_cliptt5.training.loop import Stage, StageParts, full_parameters, run_stage


# --- validation --------------------------------------------------------------------------------------------------

def _metric_key(name):
    return name.lower().replace("-", "_").replace(" ", "_")


def score_generated_reports(generated, references, backend="auto"):
    """Generated-report metrics: metrics.score_reports (BLEU-1..4, METEOR, ROUGE-L, CIDEr; Java) when
    available, else sacrebleu's corpus BLEU-4 (on a 0-1 scale like the others)."""
    if backend == "none" or not generated:
        return {}
    if backend in ("auto", "coco"):
        try:
            from modeling_cliptt5.evaluation.metrics import score_reports

            scores = score_reports(generated, references)
            return {_metric_key(name): float(value) for name, value in scores.items()
                    if isinstance(value, (int, float))}
        except Exception as error:  # noqa: BLE001 - auto falls back; coco says why it cannot
            if backend == "coco":
                raise
            warnings.warn(f"report metrics unavailable ({type(error).__name__}: {error}); using sacrebleu BLEU-4")
    import sacrebleu

    return {"bleu_4": sacrebleu.corpus_bleu(generated, [references]).score / 100.0}


def study_losses(logits, labels):
    """[batch, 2]: each study's summed token loss and its number of tokens (T5's loss is their ratio over a batch)."""
    token_losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                                     reduction="none")
    return torch.stack([token_losses.sum(dim=1), (labels != -100).sum(dim=1).float()], dim=1)


def evaluate(model, loader, processor, config, accelerator, bad_log=None, step=0):
    """Validation loss (token-weighted) and metrics of greedy/beam reports over a validation_loader's studies, each
    counted once; every rank gets the result."""
    with full_parameters(model, accelerator):
        return _evaluate(model, loader, processor, config, accelerator, bad_log, step)


def _evaluate(model, loader, processor, config, accelerator, bad_log, step):
    from accelerate.utils import broadcast_object_list

    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    losses, results = [], []
    for batch in tqdm(loader, desc="validation", leave=False, disable=not accelerator.is_local_main_process):
        if bad_log is not None:
            bad_log.record(batch["skipped"], step)
        inputs = model_inputs(batch, accelerator.device)
        with torch.no_grad(), accelerator.autocast():
            logits = unwrapped(**inputs).logits
            # gather_for_metrics (per batch: it knows the last one) drops the studies that pad the last batch
            losses.append(accelerator.gather_for_metrics(study_losses(logits, inputs["labels"])).cpu())
            if config.eval_metrics != "none":
                prompt_inputs = {name: value for name, value in inputs.items()
                                 if name not in ("labels", "finding_targets")}
                generated = unwrapped.generate(**prompt_inputs, max_new_tokens=config.generation_max_new_tokens,
                                               num_beams=config.generation_num_beams)
                texts = [text.strip() for text in processor.batch_decode(generated, skip_special_tokens=True)]
                results += accelerator.gather_for_metrics(list(zip(batch["indices"], texts, batch["references"])),
                                                          use_gather_object=True)
    loss_sum, token_count = torch.cat(losses).double().sum(dim=0)
    metrics = {"loss": (loss_sum / token_count.clamp(min=1)).item()}
    samples = []
    if accelerator.is_main_process and results:
        by_index = dict((index, (text, reference)) for index, text, reference in results)  # replaced rows repeat
        ordered = [by_index[index] for index in sorted(by_index)]
        metrics.update(score_generated_reports([g for g, _ in ordered], [r for _, r in ordered], config.eval_metrics))
        samples = ordered[:3]
    metrics, samples = broadcast_object_list([metrics, samples])
    unwrapped.train(was_training)
    return metrics, samples


def evaluate_finding_head(model, loader, accelerator):
    """The head's probabilities over a validation_loader's studies (each counted once), thresholds fitted on them
    (best F1 per finding) and its scores at those thresholds; every rank gets the result.

    Thresholds fitted and scored on the same studies flatter the F1 a little; the test split (demo.py) is the
    honest measure."""
    from accelerate.utils import broadcast_object_list

    from modeling_cliptt5.evaluation.findings import fit_thresholds, score_head

    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    rows = []
    with full_parameters(model, accelerator):
        for batch in tqdm(loader, desc="finding head", leave=False, disable=not accelerator.is_local_main_process):
            image_input = {name: batch[name].to(accelerator.device) for name in ("pixel_values", "vision_features")
                           if name in batch}
            with torch.no_grad(), accelerator.autocast():
                probabilities = unwrapped.predict_findings(**image_input).probabilities.float().cpu()
            rows += accelerator.gather_for_metrics(list(zip(batch["indices"], probabilities,
                                                            batch["finding_targets"])), use_gather_object=True)
    result = None
    if accelerator.is_main_process:
        by_index = {index: (probability, target) for index, probability, target in rows}  # replaced rows repeat
        probabilities = torch.stack([by_index[index][0] for index in sorted(by_index)]).numpy()
        targets = torch.stack([by_index[index][1] for index in sorted(by_index)]).numpy()
        thresholds = fit_thresholds(probabilities, targets)
        result = {"thresholds": thresholds, "studies": len(by_index),
                  **score_head(probabilities, targets, unwrapped.config.finding_labels, thresholds)}
    unwrapped.train(was_training)
    return broadcast_object_list([result])[0]


# --- stage 2 ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainingResult:
    model: torch.nn.Module
    processor: object
    step: int
    best_value: float
    best_step: int
    release_dir: str
    metrics: dict


def _data_summary(config, data, validation_rows):
    train = data[config.train_split]
    sources = collections.Counter(train["source"]) if "source" in train.column_names else {}
    return {
        "dataset": "synthetic phantom studies (modeling_cliptt5/data/phantom.py)" if config.dataset == "phantom"
        else os.path.basename(os.path.normpath(config.dataset)),
        "sources": dict(sources),
        "synthetic_data": config.dataset == "phantom" or set(sources) == {"synthetic-phantom"},
        "split_sizes": {name: len(rows) for name, rows in data.items()},
        "report_column": config.report_column,
        "validation_studies": len(validation_rows) if validation_rows is not None else 0,
    }


def _release_info(config, data_summary, step, metrics, head_scores=None):
    base_models = []
    if config.init == "pretrained":
        base_models = [config.clip_model.removeprefix("hf-hub:"), config.t5_model]
    initialisation = {"config": "random weights", "release": f"CLIP-T5 release {config.init_from}",
                      "pretrained": f"{config.clip_model} + {config.t5_model}"}[config.init]
    return {**data_summary, "model_name": os.path.basename(os.path.normpath(config.output_dir)),
            "step": step, "metrics": metrics, "best_metric": config.best_metric,
            "license": config.model_license, "base_models": base_models, "initialisation": initialisation,
            **({"finding_head": head_scores} if head_scores else {})}


@dataclasses.dataclass
class StudySets:
    train: StudyDataset
    validation: StudyDataset = None  # the first eval_max_samples studies: report loss and metrics
    head: StudyDataset = None  # the first finding_eval_max_samples studies: the finding head's scores and thresholds
    validation_rows: object = None
    collate: object = None
    label_source: str = None


def _datasets_for(config, data, model, processor, accelerator):
    """Training and validation StudyDatasets, reading pixels or (feature_cache) cached vision features; with a
    finding head, each carries its studies' finding targets."""
    train_rows = take_first(data[config.train_split], config.max_train_samples)
    validation_rows = head_rows = None
    if config.validation_split and config.validation_split in data and len(data[config.validation_split]):
        validation_rows = take_first(data[config.validation_split], config.eval_max_samples)
        if model.finding_head is not None:
            head_rows = take_first(data[config.validation_split], config.finding_eval_max_samples)
    splits = [rows for rows in (train_rows, validation_rows, head_rows) if rows is not None]
    targets, label_source = [None] * len(splits), None
    change_targets = [None] * len(splits)
    if getattr(model, "change_head", None) is not None:
        change_targets = [change_targets_of(rows, model.config.finding_labels) for rows in splits]
        if not (change_targets[0] >= 0).any():
            warnings.warn(f"{config.dataset}: no training study carries a change label (\"pleural_effusion:right:"
                          "increased\") in its labels column: the change head learns nothing")
    if model.finding_head is not None:
        from modeling_cliptt5.evaluation.findings import resolve_label_source

        names, source = model.config.finding_labels, resolve_label_source(config.finding_label_source, train_rows)
        for index, (rows, split) in enumerate(zip(splits, ("train", "validation", "validation"))):
            targets[index], label_source = finding_targets_for(config, rows, names, accelerator, split, source)
    num_views = model.config.num_views
    if config.feature_cache:
        from modeling_cliptt5.training.feature_cache import build_feature_cache, cached_encoder

        cache_root = config.feature_cache_dir or os.path.join(config.output_dir, "feature_cache")
        cache, keys = build_feature_cache(model.to(accelerator.device), processor.image_processor, splits, cache_root,
                                          accelerator, batch_size=config.eval_batch_size,
                                          dtype=config.feature_cache_dtype)
        encoders = [cached_encoder(cache, split_keys) for split_keys in keys]
        # Cached rows never decode their images.
        splits = [rows.remove_columns(["images"]) for rows in splits]
        input_name = "vision_features"
    else:
        encoders = [pixel_encoder(processor.image_processor, num_views)] * len(splits)
        input_name = "pixel_values"
    studies = [StudyDataset(rows, encoder, config.report_column, config.prompt, config.use_indication,
                            config.max_bad_samples, split_targets,
                            strip_comparisons=config.comparisons_without_prior == "strip",
                            read_priors=model.config.reads_prior, change_targets=split_changes)
               for rows, encoder, split_targets, split_changes in zip(splits, encoders, targets, change_targets)]
    return StudySets(train=studies[0], validation=studies[1] if len(studies) > 1 else None,
                     head=studies[2] if len(studies) > 2 else None, validation_rows=validation_rows,
                     collate=GenerationCollator(processor, input_name), label_source=label_source)


def change_targets_of(rows, names):
    """The change head's targets for these rows from their labels column (changes.change_targets_from_label_lists);
    all ignored when the rows have no labels."""
    from modeling_cliptt5.evaluation.changes import change_targets_from_label_lists

    label_lists = rows["labels"] if "labels" in rows.column_names else [[]] * len(rows)
    return change_targets_from_label_lists(label_lists, names)


def write_release_summary(release_dir, training, validation, max_training_images=2000, device="cpu"):
    """Fits the release's OOD summary (ood.py) with its own weights and writes it into the release; returns it.
    `training` and `validation` are (rows, encode): `encode` None reads the rows' pixels, else it is the run's
    feature-cache encoder (a frozen tower's features: the release's own)."""
    from modeling_cliptt5.inference.drafting import load_release
    from modeling_cliptt5.inference.ood import fit_summary, vectors_of_rows

    release = load_release(release_dir, device=str(device))
    model, processor = release.model, release.processor
    views = model.config.num_views

    def vectors(rows, encode, max_rows):
        if encode is not None:  # cached features
            return vectors_of_rows(encode, rows, lambda batch: batch, max_rows=max_rows)
        return vectors_of_rows(pixel_encoder(processor.image_processor, views), rows,
                               lambda batch: model.get_vision_features(batch.to(model.device, model.dtype)),
                               max_rows=max_rows)

    summary = fit_summary(vectors(*training, max_rows=max(1, max_training_images // views)).flatten(0, 1),
                          vectors(*validation, max_rows=max_training_images))
    summary.save(release_dir)
    return summary


class GenerationStage(Stage):
    """Stage 2 in the shared run: CLIP-T5 from a config, a release or pretrained parts; report loss (plus the finding
    head's), prompt dropout and finding guidance; validation loss, report metrics and the head's scores; the best
    model saved as a release, which the end of the run completes with the OOD summary and pushes to the Hub."""

    description = "training"

    def build(self, data):
        config, accelerator = self.config, self.accelerator
        if config.train_split not in data:
            raise ValueError(f"{config.dataset}: no {config.train_split!r} split (has {sorted(data)})")
        model, processor = build_model_and_processor(config, take_first(data[config.train_split],
                                                                         config.max_train_samples), accelerator)
        set_trainable_parts(model, config)
        if config.gradient_checkpointing:
            enable_activation_checkpointing(model)
        sets = _datasets_for(config, data, model, processor, accelerator)
        if model.finding_head is not None:
            if config.finding_balance:
                from modeling_cliptt5.evaluation.findings import positive_weights

                model.config.finding_positive_weights = positive_weights(sets.train.finding_targets)
            accelerator.print(f"finding head over {len(model.config.finding_labels)} findings, labels from "
                              f"{sets.label_source}; positive weights {model.config.finding_positive_weights}")
        self.data, self.sets, self.processor = data, sets, processor
        self.data_summary = _data_summary(config, data, sets.validation_rows)
        self.guided = model.config.uses_finding_guidance
        self.truth_share, self.head_scores = None, {}
        return StageParts(model, make_optimizer(model, config), sets.train, sets.validation, sets.collate)

    def prepared(self, model, eval_loader):
        super().prepared(model, eval_loader)
        self.head_loader = (None if self.sets.head is None
                            else validation_loader(self.sets.head, self.sets.collate, self.config, self.accelerator))

    def describe(self, num_steps):
        total, trainable = count_parameters(self.model)
        return (f"CLIP-T5 {total / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trained); "
                f"{len(self.sets.train)} training studies, {num_steps} steps on {self.accelerator.num_processes} "
                f"process(es) ({self.accelerator.device}, precision {self.config.mixed_precision})")

    def train_mode(self):
        set_train_mode(self.model, self.config)

    def begin_step(self, step, num_steps):
        self.truth_share = guidance_truth_share(self.config, step, num_steps)

    def loss(self, batch, step, micro_step):
        config, rank = self.config, self.accelerator.process_index
        batch = drop_prompts(batch, config.prompt_dropout, prompt_generator(config.seed, step, micro_step, rank))
        batch = drop_prior_reports(batch, config.prior_report_dropout,
                                   prompt_generator(config.seed + 4, step, micro_step, rank))
        if self.guided:
            batch["findings"] = guidance_findings(batch["finding_targets"], self.truth_share,
                                                  prompt_generator(config.seed + 1, step, micro_step, rank))
            if "change_targets" in batch:  # the true changes, as the true findings, with the same share
                batch["prior_changes"] = guidance_findings(batch["change_targets"], self.truth_share,
                                                           prompt_generator(config.seed + 2, step, micro_step, rank))
            if "prior_finding_targets" in batch:
                # The prior's true findings for the studies shown their own (the same draws): with the head's
                # decisions on the prior, its errors made course tokens that the target report contradicts
                batch["prior_findings"] = guidance_findings(batch["prior_finding_targets"], self.truth_share,
                                                            prompt_generator(config.seed + 1, step, micro_step, rank))
        outputs = self.model(**model_inputs(batch, self.accelerator.device))
        # train/finding_loss and train/change_loss are the heads' shares of train/loss (report + weight * each head)
        logged = {name: getattr(outputs, name).detach() for name in ("finding_loss", "change_loss")
                  if getattr(outputs, name, None) is not None}
        return outputs.loss, logged

    def log_values(self):
        return {"train/guidance_truth_share": self.truth_share} if self.guided else {}

    def validate(self, step):
        metrics, samples = evaluate(self.model, self.eval_loader, self.processor, self.config, self.accelerator,
                                    self.bad_log, step)
        if self.head_loader is not None:
            scores = evaluate_finding_head(self.model, self.head_loader, self.accelerator)
            metrics["finding_macro_f1"] = scores["macro_f1"]
            if scores["macro_auroc"] is not None:
                metrics["finding_macro_auroc"] = scores["macro_auroc"]
            self.head_scores = scores
            # the release decides "present" at the thresholds fitted now (the loop reads them too, for the
            # studies whose guidance is the head's)
            self.accelerator.unwrap_model(self.model).config.finding_thresholds = scores["thresholds"]
        if samples:
            self.accelerator.print(f"step {step}: {json.dumps(metrics)}\n  generated: {samples[0][0]!r}")
        return metrics

    def save_best(self, step, metrics):
        from modeling_cliptt5.training.release import save_release

        info = _release_info(self.config, self.data_summary, step,
                             {f"validation/{name}": value for name, value in metrics.items()}, self.head_scores)
        save_release(self.accelerator, self.model, self.processor, self.config.release_dir, info,
                     config_sections(self.config))

    def finish(self):
        """The release completed (training/release.finish_release): the summary of its training images (the
        unfamiliar-study flag), its card, the push to the Hub."""
        from modeling_cliptt5.training.release import HubPushError, finish_release

        config, sets = self.config, self.sets
        summary = None
        if config.ood_summary and sets.validation_rows is not None and os.path.isdir(config.release_dir):
            if config.feature_cache:  # the cached features are the frozen tower's: no pixel is read again
                validation_studies = sets.head or sets.validation
                sources = ((sets.train.rows, sets.train.encode_images),
                           (validation_studies.rows, validation_studies.encode_images))
            else:
                sources = ((self.data[config.train_split], None), (self.data[config.validation_split], None))

            def summary():
                return write_release_summary(config.release_dir, *sources, max_training_images=config.ood_max_images,
                                             device=self.accelerator.device)
        try:
            finish_release(config.release_dir, ood_summary=summary, push_to=config.push_to_hub or None,
                           private=config.hub_private)
        except HubPushError as error:  # the run and its release are complete: say so, do not crash
            print(f"error: {error}; push later with cliptt5-release {config.release_dir} "
                  f"--push-to-hub {config.push_to_hub}")

    def curve_metrics(self, last_metrics):
        return [name for name in last_metrics if name != "loss"]

    def written(self):
        return f"release {self.config.release_dir}"

    def result(self, trainer_state, last_metrics):
        return TrainingResult(model=self.accelerator.unwrap_model(self.model), processor=self.processor,
                              step=trainer_state["step"], best_value=trainer_state["best_value"],
                              best_step=trainer_state["best_step"], release_dir=self.config.release_dir,
                              metrics=last_metrics)


def train_generation(config):
    """Runs stage 2 as `config` says; returns a TrainingResult (the model is the trained, unwrapped one)."""
    return run_stage(config, GenerationStage)

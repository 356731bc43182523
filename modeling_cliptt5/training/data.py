"""Training data: the report dataset, studies as tensors, their loaders (sharded across ranks by Accelerate),
unreadable studies skipped and logged."""

import json
import math
import os

import torch

from modeling_cliptt5.data.schema import load_report_dataset
from modeling_cliptt5.data.sources import dataset_folder


def load_training_dataset(config, accelerator):
    """The DatasetDict named by `config.dataset` (data.sources.dataset_folder): a built-in source such as the
    phantoms is prepared once, by the main process, and every rank loads the same saved copy."""
    options = {"work_dir": config.output_dir, "seed": config.seed, "phantom_studies": config.phantom_studies,
               "phantom_image_size": config.phantom_image_size,
               "max_studies_per_patient": config.phantom_max_studies_per_patient,
               "held_out_share": config.phantom_held_out_share}
    if accelerator.is_main_process:
        dataset_folder(config.dataset, **options)
    accelerator.wait_for_everyone()
    return load_report_dataset(dataset_folder(config.dataset, **options))


def take_first(rows, count):
    return rows.select(range(min(count, len(rows)))) if count and count > 0 else rows


def steps_per_epoch(num_examples, batch_size, world_size, accumulation):
    steps = (num_examples // (batch_size * world_size)) // accumulation
    if steps == 0:
        raise ValueError(
            f"the training split has {num_examples} studies, fewer than one optimizer step needs "
            f"(batch_size {batch_size} x {world_size} processes x {accumulation} accumulation steps)"
        )
    return steps


def total_steps(config, num_examples, world_size):
    per_epoch = steps_per_epoch(num_examples, config.batch_size, world_size, config.gradient_accumulation_steps)
    return config.max_steps if config.max_steps > 0 else max(1, math.ceil(config.num_epochs * per_epoch))


def training_loader(dataset, collate, config, accelerator):
    """Shuffled micro-batches of config.batch_size, prepared: Accelerate gives each rank its own batches of every
    global batch and drops the last incomplete global batch, so that ranks step together. The order of epoch e
    depends on the seed and e alone (make_accelerator's seedable sampler; see micro_batches)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, drop_last=True, collate_fn=collate,
        num_workers=config.num_workers,
        # its own generator: starting an epoch must not draw from the global RNG that dropout uses
        generator=torch.Generator().manual_seed(config.seed),
    )
    return accelerator.prepare(loader)


def validation_loader(dataset, collate, config, accelerator):
    """The validation studies in order, prepared: each rank reads its share of every global batch. Accelerate
    pads the last one with repeated studies so that every rank runs as many batches (and collectives);
    accelerator.gather_for_metrics drops them again."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.eval_batch_size, collate_fn=collate,
                                         num_workers=config.num_workers,
                                         generator=torch.Generator().manual_seed(config.seed))  # as above
    return accelerator.prepare(loader)


def micro_batches(loader, accelerator, config, step=0):
    """Yields (epoch, micro-batch) of a training_loader from optimizer step `step` on, epoch after epoch (for ever).

    set_epoch(e) reseeds Accelerate's sampler with data_seed + e, so an epoch's order never depends on what ran
    before: resuming at step k sets the epoch and skip_first_batches passes over the micro-batches it already
    trained on without reading a single image. Micro-batches left at an epoch's end that cannot fill an optimizer
    step are not trained on, so that every epoch has steps_per_epoch steps.
    """
    accumulation = config.gradient_accumulation_steps
    epoch_steps = steps_per_epoch(len(loader.dataset), config.batch_size, accelerator.num_processes, accumulation)
    epoch, step_in_epoch = divmod(step, epoch_steps)
    while True:
        loader.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        done = step_in_epoch * accumulation
        batches = accelerator.skip_first_batches(loader, done) if done else loader
        for position, batch in enumerate(batches, start=done):
            if position == epoch_steps * accumulation:
                break
            yield epoch, batch
        epoch, step_in_epoch = epoch + 1, 0


class BadSampleLimitError(RuntimeError):
    """More unreadable studies than `max_bad_samples`."""


class BadSampleLog:
    """Counts skipped studies of this rank and appends them to <output_dir>/bad_samples.jsonl."""

    def __init__(self, output_dir, limit, rank=0, count=0):
        self.path = os.path.join(output_dir, "bad_samples.jsonl")
        self.limit = limit
        self.rank = rank
        self.count = count

    def record(self, skipped, step):
        if not skipped:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            for entry in skipped:
                handle.write(json.dumps({**entry, "rank": self.rank, "step": step}) + "\n")
        self.count += len(skipped)
        if self.count > self.limit:
            raise BadSampleLimitError(
                f"{self.count} unreadable studies on rank {self.rank}, more than max_bad_samples={self.limit}; "
                f"see {self.path} (last: {skipped[-1]['id']}: {skipped[-1]['error']})"
            )


class StudyDataset(torch.utils.data.Dataset):
    """Rows of one split as {"image_input", "report", "prompt", "id", "index", "skipped"} (and "finding_targets",
    row i of the `finding_targets` tensor, when given; with `read_priors`, "prior_input" and "prior_report": the
    image input and report of the study's prior, None when its prior is not among these rows).

    `encode_images(row, index)` turns a row into the model's image input (pixels, or cached features). A row
    that cannot be read or encoded is replaced by the next readable one, and reported in "skipped", so one bad
    file costs one study rather than the run, and every rank keeps its batch size.
    """

    def __init__(self, rows, encode_images, report_column="report", prompt=None, use_indication=False,
                 max_bad_samples=100, finding_targets=None, strip_comparisons=False, read_priors=False,
                 change_targets=None):
        self.rows = rows
        # A study without a prior among these rows learns its report without the sentences that compare with an
        # earlier study (comparisons.without_comparisons): the model cannot see that study.
        self.strip_comparisons = strip_comparisons
        self.read_priors = read_priors
        self.prior_index = prior_rows(rows)
        self.finding_targets = finding_targets
        self.change_targets = change_targets
        self.study_ids = rows.select_columns(["id"])  # readable even when a row's images are not
        self.encode_images = encode_images
        self.report_column = report_column
        self.prompt = prompt
        self.use_indication = use_indication
        self.max_bad_samples = max_bad_samples

    def __len__(self):
        return len(self.rows)

    def set_epoch(self, epoch):
        """Tells an encoder whose random augmentation depends on the epoch (contrastive.SeededImageEncoder)."""
        if hasattr(self.encode_images, "set_epoch"):
            self.encode_images.set_epoch(epoch)

    def __getitem__(self, index):
        skipped = []
        for offset in range(min(self.max_bad_samples + 1, len(self.rows))):
            row_index = (index + offset) % len(self.rows)
            try:
                example = self._read(row_index)
            except Exception as error:  # noqa: BLE001 - any failure of one study must not end the run
                skipped.append({"index": row_index, "id": self._study_id(row_index),
                                "error": f"{type(error).__name__}: {error}"})
                continue
            example["skipped"] = skipped
            return example
        last = skipped[-1]
        raise BadSampleLimitError(f"{len(skipped)} unreadable studies in a row from row {index}, more than "
                                  f"max_bad_samples={self.max_bad_samples} (last: {last['id']}: {last['error']})")

    def _study_id(self, row_index):
        return self.study_ids[row_index]["id"]

    def _read(self, row_index):
        row = self.rows[row_index]
        report = row[self.report_column]
        if not report or not report.strip():
            raise ValueError(f"empty {self.report_column!r}")
        prior_index = self.prior_index[row_index]
        if self.strip_comparisons and prior_index is None:
            from modeling_cliptt5.evaluation.comparisons import without_comparisons

            report = without_comparisons(report)
            if not report:
                raise ValueError(f"{self.report_column!r} holds only comparisons with an earlier study, which this "
                                 "study does not have (comparisons_without_prior: keep trains on them)")
        prompt = self.prompt
        if self.use_indication and row.get("indication"):
            prompt = row["indication"]
        example = {"image_input": self.encode_images(row, row_index), "report": report, "prompt": prompt,
                   "id": row["id"], "index": row_index}
        if self.finding_targets is not None:
            example["finding_targets"] = self.finding_targets[row_index]
        if self.read_priors:
            prior = None if prior_index is None else self.rows[prior_index]
            example["prior_input"] = None if prior is None else self.encode_images(prior, prior_index)
            example["prior_report"] = None if prior is None else prior[self.report_column]
            if self.change_targets is not None:
                # a study whose prior is not among these rows has no prior image to compare with
                targets = self.change_targets[row_index]
                example["change_targets"] = targets if prior is not None else torch.full_like(targets, -100)
            if self.finding_targets is not None:  # the prior's findings: the truth of its course tokens
                example["prior_finding_targets"] = (self.finding_targets[prior_index] if prior is not None
                                                    else torch.full_like(example["finding_targets"], -100))
        return example


def prior_rows(rows):
    """Per row, the row index of its prior (the schema's prior_id) among the same rows, or None: a prior outside
    them (another split, a row left out) is as good as none."""
    if "prior_id" not in rows.column_names:
        return [None] * len(rows)
    columns = rows.select_columns(["id", "prior_id"])
    index_of = {study_id: index for index, study_id in enumerate(columns["id"])}
    return [index_of.get(prior_id) if prior_id else None for prior_id in columns["prior_id"]]


def choose_views(images, num_views, study_id=None):
    """The first `num_views` images of a study (frontal first, by the schema's convention)."""
    if len(images) < num_views:
        raise ValueError(f"study {study_id} has {len(images)} image(s), the model reads {num_views} view(s)")
    return list(images[:num_views])


def pixel_encoder(image_processor, num_views, transform=None):
    """encode_images for StudyDataset: the study's views -> [views, 3, H, W] (eval preprocessing, or `transform`)."""
    def encode(row, _index):
        views = choose_views(row["images"], num_views, row.get("id"))
        if transform is not None:
            return torch.stack([transform(view.convert("RGB")) for view in views])
        return image_processor(views, return_tensors="pt")["pixel_values"]
    return encode


class GenerationCollator:
    """Stacks studies into model inputs: pixel_values or vision_features, the prompt (masked where a study has
    none), and labels (-100 on padding)."""

    def __init__(self, processor, input_name="pixel_values"):
        self.processor = processor
        self.input_name = input_name

    def __call__(self, examples):
        batch = {self.input_name: torch.stack([example["image_input"] for example in examples])}
        batch["labels"] = self.processor(reports=[example["report"] for example in examples])["labels"]
        prompts = [example["prompt"] for example in examples]
        if any(prompt for prompt in prompts):
            encoded = self.processor(text=[prompt or "" for prompt in prompts])
            has_prompt = torch.tensor([bool(prompt) for prompt in prompts])
            batch["input_ids"] = encoded["input_ids"]
            batch["attention_mask"] = encoded["attention_mask"] * has_prompt[:, None]
        if "finding_targets" in examples[0]:
            batch["finding_targets"] = torch.stack([example["finding_targets"] for example in examples])
        if "prior_input" in examples[0]:
            batch.update(self.priors(examples))
            if "prior_image_mask" in batch:
                for name in ("change_targets", "prior_finding_targets"):
                    if name in examples[0]:
                        batch[name] = torch.stack([example[name] for example in examples])
        batch["ids"] = [example["id"] for example in examples]
        batch["indices"] = [example["index"] for example in examples]
        batch["references"] = [example["report"] for example in examples]
        batch["skipped"] = [entry for example in examples for entry in example["skipped"]]
        return batch


    def priors(self, examples):
        """The prior studies' inputs (see CLIPT5ForConditionalGeneration.prior_inputs): images (zeros and mask 0
        where a study has none) and reports; nothing when no study of the batch has a prior."""
        from modeling_cliptt5.processing_cliptt5 import fill_missing

        inputs = [example["prior_input"] for example in examples]
        present = [prior for prior in inputs if prior is not None]
        if not present:
            return {}
        stacked, has_prior = fill_missing(torch.stack(present), [prior is not None for prior in inputs])
        reports = self.processor(prior_reports=[example["prior_report"] or "" for example in examples])
        return {f"prior_{self.input_name}": stacked, "prior_image_mask": has_prior, **reports}


def drop_prompts(batch, probability, generator):
    """Masks out each study's prompt with `probability` (an all-masked prompt is exactly image-only input);
    drops the prompt tensors when no study keeps one."""
    if "input_ids" not in batch or probability <= 0:
        return batch
    keep = torch.rand(batch["input_ids"].shape[0], generator=generator) >= probability
    batch = dict(batch)
    batch["attention_mask"] = batch["attention_mask"] * keep[:, None]
    if not batch["attention_mask"].any():
        del batch["input_ids"], batch["attention_mask"]
    return batch


def drop_prior_reports(batch, probability, generator):
    """Masks out each study's prior report with `probability` (an all-0 mask is "no prior report"); the prior image
    stays. The columns past the longest report kept go: they were padding, which T5 would read at full cost (the
    reports are padded on the right and come last but for a prompt, so no kept token moves)."""
    if "prior_attention_mask" not in batch or probability <= 0:
        return batch
    keep = torch.rand(batch["prior_attention_mask"].shape[0], generator=generator) >= probability
    mask = batch["prior_attention_mask"] * keep[:, None]
    width = max(int(mask.sum(dim=1).max()), 1)
    return {**batch, "prior_input_ids": batch["prior_input_ids"][:, :width], "prior_attention_mask": mask[:, :width]}


def model_inputs(batch, device):
    """The tensors the model's forward takes, on `device`."""
    names = ("pixel_values", "vision_features", "input_ids", "attention_mask", "labels", "finding_targets",
             "change_targets", "findings", "prior_pixel_values", "prior_vision_features", "prior_image_mask",
             "prior_input_ids", "prior_attention_mask", "prior_changes", "prior_findings")
    return {name: batch[name].to(device) for name in names if name in batch}


def guidance_findings(finding_targets, truth_share, generator):
    """The findings the guidance tokens show during training: each study's true findings with probability
    `truth_share`, else -1 (the head's own decisions, as at inference). An IGNORE (uncertain) target is left to
    the head too."""
    from modeling_cliptt5.evaluation.findings import IGNORE

    truth = torch.rand(finding_targets.shape[0], generator=generator) < truth_share
    known = finding_targets != IGNORE
    return torch.where(truth[:, None] & known, finding_targets.long(), torch.full_like(finding_targets, -1).long())


def guidance_truth_share(config, step, num_steps):
    """Linear from guidance_truth_start at step 0 to guidance_truth_end at the last step."""
    progress = step / max(num_steps - 1, 1)
    return config.guidance_truth_start + (config.guidance_truth_end - config.guidance_truth_start) * progress


def prompt_generator(seed, step, micro_step, rank):
    """Prompt dropout's own RNG, a function of the position in training so that a resumed run draws the same."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1009 + micro_step * 101 + rank) % 2**63)


def finding_targets_for(config, rows, names, accelerator, split, source):
    """[rows, findings] targets of the finding head for one split from `source` (column / labeler:
    findings.label_lists_for); the main process runs the rule labeler once and caches it for the other ranks."""
    from modeling_cliptt5.evaluation.findings import label_lists_for, targets_from_label_lists

    cache_dir = os.path.join(config.output_dir, "finding_labels")
    if accelerator.is_main_process:
        lists, source = label_lists_for(rows, names, source, config.report_column, cache_dir)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        lists, source = label_lists_for(rows, names, source, config.report_column, cache_dir)
    targets = targets_from_label_lists(lists, names, config.finding_uncertain,
                                       source=f"{config.dataset} ({split} split, {source})")
    return targets, source

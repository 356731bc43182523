"""Every training setting, read from a YAML/JSON file and overridable field by field on the command line.

The settings come in three sections: those both stages read (`SharedSettings`, the top level of a file), stage 1's
own (`ContrastiveSettings`, a file's `contrastive:` section) and stage 2's own (`GenerationSettings`, `generation:`).
A run reads them as one flat `TrainingConfig`; a file may also hold every setting at its top level."""

import dataclasses
import difflib
import importlib.resources
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Literal, Optional

import yaml

from modeling_cliptt5.data.sources import DEFAULT_HELD_OUT_SHARE
from modeling_cliptt5.inference.model_sources import DEFAULT_CLIP_MODEL, DEFAULT_T5_MODEL

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def _setting(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class SharedSettings:
    """Settings both stages read: the run, the data, the finding head's labels, optimisation, validation, states and
    logs (the top level of a config file)."""

    stage: Literal["generation", "contrastive"] = _setting(
        "generation", "generation: train CLIP-T5 to write reports (stage 2); contrastive: train BiomedCLIP on "
        "image-report pairs (stage 1)")
    output_dir: str = _setting("runs/cliptt5", "folder for states, the best release, logs and plots")
    seed: int = _setting(0, "seed of weights, data order and prompt dropout")
    resume: bool = _setting(False, "continue from the latest complete training state in output_dir")
    dataset: str = _setting("", "a converted dataset folder (cliptt5-convert-*), or 'phantom' for synthetic studies")
    phantom_studies: int = _setting(2000, "dataset=phantom: number of synthetic studies")
    phantom_image_size: int = _setting(256, "dataset=phantom: stored image size in pixels")
    phantom_max_studies_per_patient: int = _setting(
        1, "dataset=phantom: each synthetic patient has 1 to N studies over time; with N > 1 the follow-ups' reports "
        "compare with the prior study and carry change labels")
    phantom_held_out_share: float = _setting(
        DEFAULT_HELD_OUT_SHARE,
        "dataset=phantom: share of the patients in each of the validation and test splits (the rest train)")
    train_split: str = _setting("train", "split to train on")
    validation_split: str = _setting("validation", "split to validate on ('' for none)")
    report_column: str = _setting("report", "target text column (report, findings or impression)")
    max_train_samples: int = _setting(0, "use only the first N training studies (0: all)")
    max_bad_samples: int = _setting(100, "unreadable studies tolerated (logged to bad_samples.jsonl) before failing")
    num_workers: int = _setting(0, "DataLoader worker processes per rank")
    clip_model: str = _setting(DEFAULT_CLIP_MODEL, "open_clip model: hf-hub:org/repo, local-dir:/path, a stage-1 "
                               "checkpoint folder or a registered name (stage 1's start; stage 2's image tower)")
    clip_text_model: str = _setting("", "the text tower clip_model's open_clip config names by Hub id "
                                    "(BiomedCLIP: microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract), as a folder "
                                    "for a machine without Hub access ('': as named)")
    finding_labels: str = _setting(
        "none", "the finding head's label set: none (no head), chexpert (the 14 CheXpert observations), phantom (the "
        "synthetic phantoms' 12 findings with side) or names separated by commas")
    finding_label_source: Literal["auto", "column", "labeler"] = _setting(
        "auto", "where the head's training labels come from: the dataset's `labels` column, the rule labeler run once "
        "over the training reports (chexpert only; cached in output_dir), or auto (the column when the training "
        "split has any labels, else the labeler)")
    finding_uncertain: Literal["ignore", "positive", "negative"] = _setting(
        "ignore", "uncertain labels ('Edema?' in a labels column, -1 from the labeler): left out of the head's loss, or "
        "counted as positive or negative (CheXpert's U-Ignore / U-Ones / U-Zeros)")
    finding_loss_weight: float = _setting(1.0, "weight of the head's loss beside the report (stage 2) or contrastive "
                                          "(stage 1) loss")
    finding_balance: bool = _setting(True, "weight each finding's positives by sqrt(negatives / positives), at most 10, "
                                     "so that rare findings count")
    batch_size: int = _setting(8, "studies per device per micro-batch")
    gradient_accumulation_steps: int = _setting(1, "micro-batches per optimizer step")
    num_epochs: float = _setting(1.0, "passes over the training split (ignored when max_steps > 0)")
    max_steps: int = _setting(0, "optimizer steps to train (0: from num_epochs)")
    learning_rate: float = _setting(1e-4, "peak learning rate of T5 (stage 2) or of the whole CLIP model (stage 1)")
    weight_decay: float = _setting(0.01, "AdamW weight decay (not applied to biases, norms, embeddings' scale)")
    lr_scheduler: str = _setting("cosine", "transformers.get_scheduler name: cosine, linear, constant_with_warmup...")
    warmup_steps: int = _setting(0, "warmup steps (0: warmup_ratio of all steps)")
    warmup_ratio: float = _setting(0.05, "fraction of steps used for warmup when warmup_steps is 0")
    max_grad_norm: float = _setting(1.0, "gradient clipping norm (0: no clipping)")
    mixed_precision: Literal["no", "bf16", "fp16"] = _setting("no", "autocast precision (Accelerate)")
    eval_every_steps: int = _setting(500, "validate every N optimizer steps (and at the end)")
    eval_max_samples: int = _setting(200, "validation studies used (the first N; 0: all)")
    eval_batch_size: int = _setting(16, "studies per device during validation")
    best_metric: str = _setting("loss", "validation metric that picks the release: loss (lower is better) or a "
                                "generated-report metric such as bleu_4 (higher is better)")
    save_every_steps: int = _setting(500, "save a resumable training state every N optimizer steps")
    keep_last_states: int = _setting(2, "training states kept on disk")
    log_every_steps: int = _setting(10, "training loss logged every N optimizer steps")
    log_with: Literal["auto", "tensorboard", "none"] = _setting("auto", "Accelerate tracker (auto: tensorboard "
                                                                "when installed)")


@dataclass
class ContrastiveSettings:
    """Settings stage 1 alone reads (the `contrastive:` section of a config file)."""

    clip_pretrained: bool = _setting(True, "stage 1: start from clip_model's weights (false: random weights)")
    clip_model_config_dir: str = _setting("", "stage 1: folder of extra open_clip model configs to register")
    crop_scale_min: float = _setting(0.9, "stage 1: RandomResizedCrop scale lower bound (no flips: they swap sides)")
    image_cache: bool = _setting(False, "stage 1: decode and preprocess each image once (eval preprocessing, so "
                                 "crop_scale_min must be 1: no random crops) and train from the stored pixels")


@dataclass
class GenerationSettings:
    """Settings stage 2 alone reads (the `generation:` section of a config file): the model it starts from, the
    report text, what trains, the release and its defaults for drafting."""

    init: Literal["config", "release", "pretrained"] = _setting(
        "config", "config: random weights from `model`; release: continue from a CLIP-T5 folder (init_from); "
        "pretrained: BiomedCLIP (clip_model) + T5 (t5_model), as cliptt5-convert-biomedclip builds them")
    init_from: str = _setting("", "init=release: the CLIP-T5 release folder to start from")
    init_vision_from: str = _setting("", "init=config: start the image tower (its sizes and weights, replacing "
                                     "model.vision_config) from this open_clip model, e.g. a stage-1 checkpoint "
                                     "folder; the rest starts from random weights")
    t5_model: str = _setting(DEFAULT_T5_MODEL, "init=pretrained: T5 hub id or folder (its tokenizer is used too)")
    model: Optional[str] = _setting(None, "CLIP-T5 config fields as a YAML/JSON mapping, merged over the config "
                                    "file's (init=config: the whole architecture; init=pretrained: image_tokens...)")
    tokenizer: str = _setting("train", "init=config: 'train' builds a tokenizer from the training reports, "
                              "or a tokenizer folder / hub id")
    tokenizer_vocab_size: int = _setting(1000, "tokenizer=train: vocabulary size")
    max_report_tokens: int = _setting(256, "target reports are truncated to this many tokens")
    prompt: Optional[str] = _setting(None, "text prompt after the image tokens (none: image only)")
    use_indication: bool = _setting(False, "use a study's indication as its prompt when it has one")
    prompt_dropout: float = _setting(0.5, "probability of training a study without its prompt, so that image-only "
                                     "inference matches training")
    prior_report_dropout: float = _setting(0.0, "probability of training a follow-up without its prior report (the "
                                           "prior image stays), so that the drafts learn to state the change that "
                                           "the course tokens and the change head give rather than read sizes off "
                                           "the prior report")
    comparisons_without_prior: Literal["strip", "keep"] = _setting(
        "strip", "a study without a prior in the dataset (prior_id empty): strip the sentences of its target report "
        "that compare with an earlier study (evaluation/comparisons.py), so that the model does not learn to "
        "compare with a study it cannot see (23.9%% of the IU X-ray training reports do); keep: train on them as "
        "written")
    guidance_truth_start: float = _setting(
        1.0, "stage 2: share of studies whose guidance tokens are their true findings at the first step (the rest "
        "get the head's predictions, as at inference) ...")
    guidance_truth_end: float = _setting(
        1.0, "stage 2: ... and at the last step (linear in between). Measured on the demo: ending at 0.5 taught the "
        "decoder to second-guess its guidance (92 of 100 drafts stated exactly their guidance, against 98 with 1.0; "
        "drafted macro F1 0.76 against 0.79)")
    finding_eval_max_samples: int = _setting(0, "validation studies that score the head and fit its thresholds "
                                             "(the first N; 0: the whole validation split)")
    train_vision: Literal["frozen", "last_blocks", "all"] = _setting(
        "frozen", "image tower: frozen, its last vision_last_blocks blocks, or all of it")
    vision_last_blocks: int = _setting(2, "train_vision=last_blocks: how many of the last ViT blocks train")
    train_projection: bool = _setting(True, "train clip_projection (image tokens -> T5 width), the finding head and "
                                      "its guidance tokens")
    train_t5: bool = _setting(True, "train the T5 encoder-decoder")
    feature_cache: bool = _setting(False, "frozen image tower only: compute its features once and train from them")
    feature_cache_dir: str = _setting("", "where cached features live (default: <output_dir>/feature_cache)")
    feature_cache_dtype: Literal["float16", "float32"] = _setting("float16", "storage type of cached features")
    vision_learning_rate: float = _setting(1e-5, "stage 2: peak learning rate of the image tower")
    projection_learning_rate: float = _setting(1e-3, "stage 2: peak learning rate of clip_projection")
    gradient_checkpointing: bool = _setting(False, "recompute activations in backward to save memory")
    ood_summary: bool = _setting(True, "stage 2: at the end, write a summary of the training images into the "
                                 "release (ood.py: studies unlike them are flagged at inference); needs validation")
    ood_max_images: int = _setting(2000, "training images (the first N) and validation studies the summary reads")
    eval_metrics: Literal["auto", "coco", "sacrebleu", "none"] = _setting(
        "auto", "generated-report metrics: coco (metrics.score_reports, Java), sacrebleu (BLEU-4), auto (coco when "
        "available), none (loss only)")
    generation_max_new_tokens: int = _setting(128, "validation and release default: longest generated report")
    generation_num_beams: int = _setting(1, "validation and release default: beam size")
    generation_no_repeat_ngram_size: int = _setting(
        8, "validation and release default: no run of this many tokens twice in a draft (0: off); with "
        "generation_no_repeat_sentence it keeps drafts from looping on near-copies of a sentence. Measured on the "
        "demo release with priors (benchmarks/bench_repetition.py): 4 alone blocked the phrases an IMPRESSION "
        "restates (findings macro F1 0.713, change macro F1 0.815); 8 with no sentence twice 0.745 / 0.825, no "
        "repeated sentence on the test split or on foreign images")
    generation_no_repeat_sentence: bool = _setting(
        True, "validation and release default: no sentence twice in a section of a draft (the release carries its "
        "tokenizer's sentence-end and header ids; generate(no_repeat_sentence=False) turns it off)")
    model_license: str = _setting("apache-2.0", "license written into the model card (mind the data's terms)")
    push_to_hub: str = _setting("", "after training, upload the release to this Hub repo id (token from HF_TOKEN)")
    hub_private: bool = _setting(False, "create the Hub repo as private")


@dataclass
class TrainingConfig(GenerationSettings, ContrastiveSettings, SharedSettings):
    """Every setting of a run, read as one flat object (`config.batch_size`, `config.crop_scale_min`); each field is
    also a flag of cliptt5-train."""

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def states_dir(self):
        return os.path.join(self.output_dir, "states")

    @property
    def release_dir(self):
        return os.path.join(self.output_dir, "best")


FIELD_NAMES = [item.name for item in dataclasses.fields(TrainingConfig)]
# A config file may hold each stage's own settings in a section of that stage's name (or at the top level, as files
# written before the sections do).
SECTIONS = {"contrastive": ContrastiveSettings, "generation": GenerationSettings}
SECTION_OF = {item.name: section for section, settings in SECTIONS.items() for item in dataclasses.fields(settings)}


def read_config_file(path):
    """A YAML or JSON mapping of TrainingConfig fields, flat: a `contrastive:` or `generation:` section's settings
    join the top level's. Unknown keys, a stage's setting in the other stage's section and a setting given twice are
    errors naming the file and the key."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: config file not found")
    with open(path, encoding="utf-8") as handle:
        try:
            values = yaml.safe_load(handle) or {}  # YAML is a superset of JSON
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML/JSON: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    flat = {}
    for key, value in values.items():
        if key not in SECTIONS:
            if key in flat:
                raise ValueError(f"{path}: {key} is set twice (at the top level and under `{SECTION_OF[key]}:`)")
            flat[_known(path, key)] = value
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{path}: `{key}:` is a section: a mapping of {key} settings, got "
                             f"{type(value).__name__}")
        for name, setting in value.items():
            if SECTION_OF.get(_known(path, name, f"{key}.")) != key:
                home = f"under `{SECTION_OF[name]}:`" if name in SECTION_OF else "at the top level"
                raise ValueError(f"{path}: {key}.{name}: not a {key} setting (it belongs {home})")
            if name in flat:
                raise ValueError(f"{path}: {name} is set twice (at the top level and under `{key}:`)")
            flat[name] = setting
    return flat


def _known(path, key, prefix=""):
    if key not in FIELD_NAMES:
        close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{path}: unknown setting {prefix}{key!r}{hint}")
    return key


def config_sections(config):
    """The settings as a config file holds them: the shared ones at the top level, then the run's stage's own in
    its section (the other stage's are not read by this run)."""
    values = config.to_dict()
    shared = {name: value for name, value in values.items() if name not in SECTION_OF}
    return {**shared, config.stage: {name: value for name, value in values.items()
                                     if SECTION_OF.get(name) == config.stage}}


def _merge(base, update):
    """Nested dict merge: `update` wins, sub-mappings (vision_config) are merged rather than replaced."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def packaged_configs():
    """The folder of the configs that ship with the package (demo, contrastive, biomedclip_t5small; accelerate/)."""
    return importlib.resources.files("modeling_cliptt5") / "configs"


def packaged_config_names():
    return sorted(entry.name.rsplit(".", 1)[0] for entry in packaged_configs().iterdir()
                  if entry.name.endswith(CONFIG_SUFFIXES))


def config_file(name):
    """The settings file `--config NAME` means: a file at that path, else the packaged config of that name."""
    if os.path.isfile(name):
        return name
    if os.sep not in name:
        for suffix in ("", *CONFIG_SUFFIXES):
            packaged = packaged_configs() / f"{name}{suffix}"
            if packaged.is_file():
                return str(packaged)
    raise FileNotFoundError(f"{name}: config file not found (packaged configs, by name: "
                            f"{', '.join(packaged_config_names())})")


def build_parser():
    from transformers import HfArgumentParser

    folder = packaged_configs()
    parser = HfArgumentParser(TrainingConfig, prog="cliptt5-train", description=(
        "Train CLIP-T5. Settings come from --config (YAML/JSON); any flag below overrides the file. "
        "Run with `cliptt5-train` (one process) or `accelerate launch [--config_file FILE] -m "
        "modeling_cliptt5.cli.train` (several processes or machines)."),
        epilog=(f"Packaged configs, by name: {', '.join(packaged_config_names())} (in {folder}). Launch files for "
                f"accelerate's --config_file (one GPU, several GPUs, several machines, FSDP, 2 CPU processes): "
                f"{folder / 'accelerate'}. Exit status: 0 when training finished, 2 for bad settings or a model that "
                "cannot be found, 1 when the run failed."))
    parser.add_argument("--config", default=None,
                        help="YAML/JSON file of settings, or the name of a packaged config (e.g. demo)")
    return parser


def parse_config(argv=None):
    """TrainingConfig from `--config FILE` plus command-line overrides (`--help` lists every field)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    config_path = _config_path_from(argv)
    if config_path:
        config_path = config_file(config_path)
    file_values = read_config_file(config_path) if config_path else {}
    model_from_file = file_values.pop("model", None) or {}
    parser.set_defaults(**file_values)  # the file's values become defaults; flags still win (and --help shows them)
    config, _ = parser.parse_args_into_dataclasses(argv)
    model_from_flag = config.model
    if isinstance(model_from_flag, str):
        try:
            model_from_flag = yaml.safe_load(model_from_flag) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"--model: not a YAML/JSON mapping: {error}") from error
    config.model = _merge(model_from_file, model_from_flag or {})
    return validate(config, source=config_path or "command line")


def _config_path_from(argv):
    for index, argument in enumerate(argv):
        if argument == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--config="):
            return argument.split("=", 1)[1]
    return None


def config_from_dict(values, source="settings"):
    """TrainingConfig from a mapping (tests, notebooks), with the same checks as the command line."""
    unknown = set(values) - set(FIELD_NAMES)
    if unknown:
        raise ValueError(f"{source}: unknown settings {sorted(unknown)}")
    config = TrainingConfig(**{**values, "model": dict(values.get("model") or {})})
    return validate(config, source)


def validate(config, source="settings"):
    """Raises a ValueError naming the setting and the source when settings contradict each other; warns when they
    are valid but cannot work."""
    def fail(message):
        raise ValueError(f"{source}: {message}")

    if not config.dataset:
        fail("no dataset: set `dataset` to a converted dataset folder or to 'phantom'")
    if config.dataset != "phantom" and not os.path.isdir(config.dataset):
        fail(f"dataset folder {config.dataset!r} does not exist (convert one with cliptt5-convert-*, or use 'phantom')")
    if not isinstance(config.model, dict):
        fail(f"`model` must be a mapping of CLIP-T5 config fields, got {type(config.model).__name__}")
    if not 0.0 <= config.prompt_dropout <= 1.0:
        fail(f"prompt_dropout must be in [0, 1], got {config.prompt_dropout}")
    if not 0.0 <= config.prior_report_dropout <= 1.0:
        fail(f"prior_report_dropout must be in [0, 1], got {config.prior_report_dropout}")
    if config.feature_cache and config.train_vision != "frozen":
        fail("feature_cache needs train_vision=frozen (a training image tower changes its features every step)")
    if config.init == "release" and not config.init_from:
        fail("init=release needs init_from (a CLIP-T5 release folder)")
    if config.init_vision_from and config.init != "config":
        fail(f"init_vision_from is for init=config (init={config.init} brings its own image tower)")
    if config.stage == "generation" and not (config.train_projection or config.train_t5 or config.train_vision != "frozen"):
        fail("nothing to train: every part is frozen")
    if (config.stage == "generation" and config.init == "config" and config.train_vision == "frozen"
            and not config.init_vision_from):
        warnings.warn(f"{source}: the image tower stays at its random initialisation (init=config, "
                      f"train_vision=frozen, no init_vision_from), so the model cannot learn to read the images; "
                      f"pass init_vision_from (a stage-1 checkpoint) or train the tower", stacklevel=2)
    for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "eval_every_steps",
                 "save_every_steps", "keep_last_states", "log_every_steps"):
        if getattr(config, name) < 1:
            fail(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.image_cache and config.crop_scale_min < 1.0:
        fail(f"image_cache stores each image preprocessed once, without random crops: set crop_scale_min: 1.0 "
             f"(got {config.crop_scale_min}) or turn image_cache off")
    if config.finding_labels.strip() == "":
        fail("finding_labels is empty: use none, chexpert, phantom or names separated by commas")
    for name in ("guidance_truth_start", "guidance_truth_end"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            fail(f"{name} must be in [0, 1], got {getattr(config, name)}")
    if config.max_steps <= 0 and config.num_epochs <= 0:
        fail("set max_steps or num_epochs to a positive number")
    return config


def save_config(config, path):
    """Writes the settings as YAML, in sections (config_sections): what a run records in its output folder."""
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config_sections(config), handle, sort_keys=False)

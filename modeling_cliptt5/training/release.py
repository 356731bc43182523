"""A CLIP-T5 release folder (model + processor + model card) written atomically, and its upload to the Hub.

    cliptt5-release runs/demo/best --push-to-hub user/cliptt5-demo [--private]
"""

import importlib.resources
import json
import os
from pathlib import Path

import yaml

from modeling_cliptt5.data.atomic_writes import atomic_folder

RELEASE_INFO_FILE = "release_info.json"
TRAINING_CONFIG_FILE = "training_config.yaml"
# Package data (setup.cfg: package_data), so an installed package finds it as the source tree does; the
# repository's top-level model_card.md is a link to it.
MODEL_CARD_TEMPLATE = importlib.resources.files(__package__) / "model_card.md"


def save_release(accelerator, model, processor, release_dir, info, training_config=None):
    """`write_release` from a training run; every rank must call it (FSDP gathers the full state dict)."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        write_release(accelerator.unwrap_model(model), processor, release_dir, info, training_config, state_dict,
                      save_function=accelerator.save)
    accelerator.wait_for_everyone()
    return release_dir


def write_release(model, processor, release_dir, info, training_config=None, state_dict=None, **save_options):
    """Writes model + processor + release_info.json (+ training config) and a filled model card to a hidden folder
    and renames it into place: a previous release there is replaced only by a complete one (a full disk raises
    `DiskFullError` and leaves it as it was)."""
    with atomic_folder(release_dir) as staging:
        model.save_pretrained(staging, state_dict=state_dict, **save_options)
        processor.save_pretrained(staging)
        if training_config is not None:
            with open(os.path.join(staging, TRAINING_CONFIG_FILE), "w", encoding="utf-8") as handle:
                yaml.safe_dump(training_config, handle, sort_keys=False)
        info = {**info, **model_sizes(model, staging)}
        with open(os.path.join(staging, RELEASE_INFO_FILE), "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=1, default=str)
        write_model_card(staging)
    return release_dir


def model_sizes(model, folder):
    weights = sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))
    return {
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "trainable_parameters": sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad),
        "weights_bytes": weights,
    }


def _human(count, unit=""):
    for suffix in ("", "K", "M", "G"):
        if abs(count) < 1000:
            return f"{count:.1f} {suffix}{unit}".replace(".0 ", " ")
        count /= 1000
    return f"{count:.1f} T{unit}"


def _plain_metric_name(name):
    return name.split("/", 1)[-1]


# Validation metrics (release_info.json "metrics", "validation/" dropped) that go into the card's model-index:
# name -> (Hub metric id, display name, metric args). The loss is no benchmark result: it stays in the card's table.
REPORT_METRICS = {
    **{f"bleu_{n}": ("bleu", f"BLEU-{n}", {"max_order": n}) for n in (1, 2, 3, 4)},
    "meteor": ("meteor", "METEOR", None),
    "rouge_l": ("rouge", "ROUGE-L", {"rouge_types": ["rougeL"]}),
    "cider": ("cider", "CIDEr", None),
}
FINDING_METRICS = {
    "finding_macro_f1": ("f1", "Finding macro F1 (thresholds fitted on these studies)", {"average": "macro"}),
    "finding_macro_auroc": ("roc_auc", "Finding macro AUROC", {"average": "macro"}),
}


def eval_results(info):
    """The release's validation scores as huggingface_hub EvalResults (the card's `model-index`): the reports'
    word-overlap metrics under image-text-to-text, the finding head's macro F1 / AUROC under image-classification
    (multi-label), both on the validation split of the training dataset. [] when there are none."""
    from huggingface_hub import EvalResult

    metrics = {_plain_metric_name(name): value for name, value in info.get("metrics", {}).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    head = info.get("finding_head") or {}
    for name, key in (("finding_macro_f1", "macro_f1"), ("finding_macro_auroc", "macro_auroc")):
        if name not in metrics and isinstance(head.get(key), (int, float)):
            metrics[name] = head[key]
    sources = sorted(info.get("sources") or {})
    dataset = dict(dataset_name=str(info.get("dataset", "unknown")), dataset_split="validation",
                   dataset_type="+".join(sources) or _slug(info.get("dataset", "unknown")))
    tasks = ((REPORT_METRICS, dict(task_type="image-text-to-text", task_name="Chest X-ray report generation")),
             (FINDING_METRICS, dict(task_type="image-classification",
                                    task_name="Chest X-ray finding classification (finding head)")))
    results = []
    for table, task in tasks:
        for name, (metric_type, metric_name, metric_args) in table.items():
            if name in metrics:
                results.append(EvalResult(**task, **dataset, metric_type=metric_type, metric_name=metric_name,
                                          metric_value=float(metrics[name]), metric_args=metric_args))
    return results


def _slug(text):
    return "-".join("".join(char if char.isalnum() else " " for char in str(text).lower()).split()) or "unknown"


def render_model_card(release_dir, repo_id=None, template_path=MODEL_CARD_TEMPLATE):
    """The model card text for a release folder, filled from its config.json, release_info.json and training
    config, with Hub metadata (license, datasets, metrics, base models, tags, pipeline_tag)."""
    from huggingface_hub import ModelCard, ModelCardData

    release_dir = Path(release_dir)
    if not template_path.is_file():
        raise FileNotFoundError(f"{template_path}: model card template not found")
    info_path = release_dir / RELEASE_INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: not a training release (no {RELEASE_INFO_FILE})")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    config = json.loads((release_dir / "config.json").read_text(encoding="utf-8"))
    generation_path = release_dir / "generation_config.json"
    generation = json.loads(generation_path.read_text(encoding="utf-8")) if generation_path.is_file() else {}
    training_config_path = release_dir / TRAINING_CONFIG_FILE
    training_config = training_config_path.read_text(encoding="utf-8") if training_config_path.is_file() else ""
    vision = config.get("vision_config", {})
    metrics = {_plain_metric_name(name): value for name, value in info.get("metrics", {}).items()
               if isinstance(value, (int, float))}
    sources = info.get("sources", {})
    results = eval_results(info)
    card_data = ModelCardData(
        model_name=info.get("model_name", release_dir.name),
        license=info.get("license", "apache-2.0"),
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=["radiology", "chest-x-ray", "report-generation", "clip", "t5", "biomedclip", "custom_code"]
        + (["synthetic-data"] if info.get("synthetic_data") else []),
        datasets=sorted(sources) or None,
        metrics=sorted({_metric_family(name) for name in metrics if name != "loss"}) or None,
        base_model=info.get("base_models") or None,
        eval_results=results or None,
    )
    image_tokens = 1 if config.get("image_tokens") == "pooled" else (
        1 + (vision.get("image_size", 224) // vision.get("patch_size", 16) // config.get("image_token_pooling", 1)) ** 2)
    card = ModelCard.from_template(
        card_data,
        template_str=template_path.read_text(encoding="utf-8"),
        repo_id=repo_id or info.get("repo_id") or "path/to/this/folder",
        model_name=info.get("model_name", release_dir.name),
        synthetic_data=info.get("synthetic_data", False),
        dataset=info.get("dataset", "unknown"),
        sources=", ".join(f"{name} ({count})" for name, count in sorted(sources.items())) or "unknown",
        split_sizes=info.get("split_sizes", {}),
        report_column=info.get("report_column", "report"),
        parameters=_human(info.get("parameters", 0)),
        trainable_parameters=_human(info.get("trainable_parameters", 0)),
        weights_size=_human(info.get("weights_bytes", 0), "B"),
        image_size=vision.get("image_size"),
        num_views=config.get("num_views", 1),
        image_tokens=image_tokens,
        vision_layers=vision.get("num_hidden_layers"),
        vision_hidden=vision.get("hidden_size"),
        d_model=config.get("d_model"),
        t5_layers=config.get("num_layers"),
        t5_decoder_layers=config.get("num_decoder_layers") or config.get("num_layers"),
        vocab_size=config.get("vocab_size"),
        report_vocabulary=len(config.get("report_vocabulary") or []),
        initialisation=info.get("initialisation", "unknown"),
        best_step=info.get("step", "?"),
        best_metric=info.get("best_metric", "loss"),
        validation_studies=info.get("validation_studies", "?"),
        metrics=metrics,
        finding_head=info.get("finding_head"),
        training_config=training_config.strip(),
        ood_summary=_ood_card_values(release_dir),
        no_repeat_sentence=bool(generation.get("no_repeat_sentence")),
    )
    return str(card)


def _ood_card_values(release_dir):
    """What the card says of the release's unfamiliar-study flag (inference/ood.py), None without a summary."""
    from modeling_cliptt5.inference.ood import load_summary

    summary = load_summary(release_dir)
    return None if summary is None else {"threshold": f"{summary.threshold:.2f}",
                                         "training_images": summary.training_images,
                                         "validation_studies": summary.validation_studies}


def _metric_family(name):
    """Hub metric ids: bleu_4 -> bleu, rouge_l -> rouge, meteor, cider, finding_macro_f1 -> f1,
    finding_macro_auroc -> roc_auc."""
    known = {**REPORT_METRICS, **FINDING_METRICS}
    return known[name][0] if name in known else name.split("_")[0].lower()


def write_model_card(release_dir, repo_id=None):
    path = Path(release_dir) / "README.md"
    path.write_text(render_model_card(release_dir, repo_id=repo_id), encoding="utf-8")
    return path


FULL_VOCABULARY = "full"  # finish_release(vocabulary=...): lift a report-vocabulary limit


def finish_release(release_dir, ood_summary=None, vocabulary=None, push_to=None, private=False, say=print):
    """Completes a written release, in this one place for a training run (stage 2's end) and cliptt5-release:
    1. `ood_summary`: a function that fits and saves the summary of the training images into the release
       (generation.write_release_summary over the run's rows); too few readable images leave the release without
       one, with a note;
    2. `vocabulary`: a converted dataset whose train-split reports limit the drafts' tokens (report_vocabulary.py),
       or FULL_VOCABULARY to lift the limit;
    3. the model card, filled again from the release's files (a converted release has no training record to fill
       it from: asked for nothing else, that is a FileNotFoundError; else its card stays as it is);
    4. the upload to the Hub repo `push_to`.
    `say` hears what was done. Raises OSError / ValueError for a vocabulary dataset that cannot be read and
    HubPushError for an upload that failed (the folder as it was)."""
    if ood_summary is not None:
        try:
            summary = ood_summary()
            say(f"summary of {summary.training_images} training images written to the release: a study is flagged "
                f"unlike them beyond ood_score {summary.threshold:.2f} (99th percentile of "
                f"{summary.validation_studies} validation studies)")
        except ValueError as error:  # too few readable images: the release is complete without it
            say(f"note: no summary of the training images in the release ({error}): unfamiliar studies will not "
                "be flagged")
    if vocabulary is not None:
        from modeling_cliptt5.training.report_vocabulary import set_release_vocabulary, training_reports

        config = set_release_vocabulary(release_dir, None if vocabulary == FULL_VOCABULARY
                                        else training_reports(vocabulary))
        allowed = config.vocab_size if config.report_vocabulary is None else len(config.report_vocabulary)
        say(f"{release_dir}: drafts may use {allowed:,} of {config.vocab_size:,} tokens")
    if push_to:
        commit = push_release(release_dir, push_to, private=private)  # fills the card with the repo id first
        say(f"uploaded {release_dir} to {push_to}: {getattr(commit, 'commit_url', commit)}")
    elif (Path(release_dir) / RELEASE_INFO_FILE).is_file() or (ood_summary is None and vocabulary is None):
        say(f"wrote {write_model_card(release_dir)}")


class HubPushError(RuntimeError):
    """A push that did not happen (no network, offline mode, no permission); the release folder is as it was."""


def push_release(release_dir, repo_id, private=False, commit_message=None):
    """Uploads a release folder to the Hub (the token comes from HF_TOKEN or `hf auth login`), refilling the
    model card with the repo id first. Raises HubPushError, one line, when the Hub cannot be reached or refuses:
    the folder's model card is then put back as it was."""
    from huggingface_hub import HfApi

    if not (Path(release_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{release_dir}: not a release folder (no config.json)")
    info = json.loads((Path(release_dir) / RELEASE_INFO_FILE).read_text(encoding="utf-8"))
    message = commit_message or f"CLIP-T5 release: step {info.get('step', '?')}, {info.get('best_metric', 'loss')} " \
        f"{info.get('metrics', {}).get('validation/' + info.get('best_metric', 'loss'), 'n/a')}"
    api = HfApi()
    card = Path(release_dir) / "README.md"
    previous_card = card.read_bytes() if card.is_file() else None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")  # reaches the Hub, or fails here
        write_model_card(release_dir, repo_id=repo_id)
        return api.upload_folder(repo_id=repo_id, folder_path=str(release_dir), repo_type="model",
                                 commit_message=message)
    except Exception as error:  # network, offline mode, authentication: all end the push the same way
        if previous_card is None:
            card.unlink(missing_ok=True)
        else:
            card.write_bytes(previous_card)
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise HubPushError(f"could not upload {release_dir} to {repo_id} ({type(error).__name__}: {reason}); "
                           "nothing was uploaded and the folder is unchanged") from None

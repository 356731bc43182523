"""Stage-2 training: settings, data sharding, prompt dropout, trainable parts, a whole run, bad studies, resume."""

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO_ROOT, subprocess_env, tiny_config
from modeling_cliptt5 import CLIPT5ForConditionalGeneration
from modeling_cliptt5.training.config import build_parser, config_from_dict, parse_config
from modeling_cliptt5.training.data import BadSampleLimitError, drop_prompts, micro_batches, training_loader
from modeling_cliptt5.training.model import parameter_groups, set_trainable_parts, vision_blocks
from modeling_cliptt5.training.state import list_states
from training_helpers import make_tiny_dataset, tiny_settings


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_test")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    # 16 training studies = 4 batches of 4: a few steps read every study, the unreadable one included.
    folder = tmp_path_factory.mktemp("data") / "tiny"
    return make_tiny_dataset(folder, sizes=(("train", 16), ("validation", 6), ("test", 2)), bad_images=("train-5",))


# --- settings ---------------------------------------------------------------------------------------------------

def test_flags_override_the_config_file_and_model_mappings_merge(tmp_path, dataset_dir):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"dataset": str(dataset_dir), "batch_size": 3, "learning_rate": 0.5,
                                    "model": {"d_model": 64, "vision_config": {"image_size": 64, "patch_size": 8}}}))
    config = parse_config(["--config", str(path), "--batch-size", "5", "--no_train_t5",
                           "--model", '{"vision_config": {"patch_size": 16}}'])
    assert config.batch_size == 5  # the flag wins
    assert config.learning_rate == 0.5  # the file's value stays
    assert config.train_t5 is False
    assert config.model == {"d_model": 64, "vision_config": {"image_size": 64, "patch_size": 16}}


def test_unknown_or_contradictory_settings_name_the_file(tmp_path, dataset_dir):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"dataset": str(dataset_dir), "learning_rat": 1e-4}))
    with pytest.raises(ValueError, match=r"typo\.yaml: unknown setting 'learning_rat' \(did you mean 'learning_rate'"):
        parse_config(["--config", str(path)])
    path.write_text(yaml.safe_dump({"dataset": str(dataset_dir), "feature_cache": True, "train_vision": "all"}))
    with pytest.raises(ValueError, match="typo.yaml: feature_cache needs train_vision=frozen"):
        parse_config(["--config", str(path)])
    with pytest.raises(ValueError, match="does not exist"):
        config_from_dict({"dataset": str(tmp_path / "missing")})


def test_a_file_in_sections_reads_as_the_same_flat_file_and_a_run_records_its_settings_in_sections(tmp_path,
                                                                                                  dataset_dir):
    from modeling_cliptt5.training.config import save_config

    flat = {"stage": "contrastive", "dataset": str(dataset_dir), "batch_size": 3, "crop_scale_min": 1.0,
            "image_cache": True}
    sectioned = {"stage": "contrastive", "dataset": str(dataset_dir), "batch_size": 3,
                 "contrastive": {"crop_scale_min": 1.0, "image_cache": True}}
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(flat))
    (tmp_path / "sectioned.yaml").write_text(yaml.safe_dump(sectioned))
    config = parse_config(["--config", str(tmp_path / "sectioned.yaml")])
    assert config == parse_config(["--config", str(tmp_path / "flat.yaml")])
    assert (config.crop_scale_min, config.image_cache, config.batch_size) == (1.0, True, 3)
    # what a run writes into its output folder reads back as the same settings, the stage's own in its section
    save_config(config, tmp_path / "recorded.yaml")
    recorded = yaml.safe_load((tmp_path / "recorded.yaml").read_text())
    assert recorded["contrastive"] == {"clip_pretrained": True, "clip_model_config_dir": "", "crop_scale_min": 1.0,
                                       "image_cache": True}
    assert "generation" not in recorded and "train_t5" not in recorded and recorded["batch_size"] == 3
    assert parse_config(["--config", str(tmp_path / "recorded.yaml")]) == config


@pytest.mark.parametrize("settings, message", [
    ({"generation": {"crop_scale_min": 1.0}}, r"generation\.crop_scale_min: not a generation setting \(it belongs "
                                              r"under `contrastive:`\)"),
    ({"contrastive": {"batch_size": 4}}, r"contrastive\.batch_size: not a contrastive setting \(it belongs at the "
                                         r"top level\)"),
    ({"generation": {"train_t5s": True}}, r"unknown setting generation\.'train_t5s' \(did you mean 'train_t5'"),
    ({"train_t5": True, "generation": {"train_t5": False}}, r"train_t5 is set twice"),
    ({"generation": ["train_t5"]}, r"`generation:` is a section: a mapping of generation settings"),
])
def test_a_setting_in_the_wrong_section_names_where_it_belongs(tmp_path, dataset_dir, settings, message):
    path = tmp_path / "sections.yaml"
    path.write_text(yaml.safe_dump({"dataset": str(dataset_dir), **settings}))
    with pytest.raises(ValueError, match=r"sections\.yaml: " + message):
        parse_config(["--config", str(path)])


def test_a_frozen_random_image_tower_is_warned_about(dataset_dir):
    demo = ["--config", str(REPO_ROOT / "configs" / "demo.yaml"), "--dataset", str(dataset_dir)]
    with pytest.warns(UserWarning, match="image tower stays at its random initialisation"):
        parse_config(demo)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_config(demo + ["--init_vision_from", "runs/demo/contrastive/best"])  # as demo.py runs it
        parse_config(demo + ["--train_vision", "all", "--feature_cache", "false"])


@pytest.mark.parametrize("name", ["demo", "biomedclip_t5small", "contrastive"])
def test_the_shipped_configs_are_valid(name, dataset_dir):
    from modeling_cliptt5 import CLIPT5Config

    stage1_tower = ["--init_vision_from", "runs/demo/contrastive/best"] if name == "demo" else []  # as demo.py
    config = parse_config(["--config", str(REPO_ROOT / "configs" / f"{name}.yaml"), "--dataset", str(dataset_dir),
                           *stage1_tower])
    assert config.stage == ("contrastive" if name == "contrastive" else "generation")
    from modeling_cliptt5.training.model import finding_overrides

    # the architecture mapping, with the finding head the settings add (as training builds it), is a valid config
    model_config = CLIPT5Config(**{**finding_overrides(config), **config.model})
    if name == "demo":
        assert config.dataset == str(dataset_dir) and model_config.vision_config.image_size <= 96
        assert model_config.num_image_tokens_per_view == 17
        assert model_config.reads_prior and model_config.change_head


def test_help_documents_every_setting():
    text = build_parser().format_help()
    for flag in ("--prompt_dropout", "--train_vision", "--mixed_precision", "--gradient_accumulation_steps",
                 "--feature_cache", "--resume", "--push_to_hub", "--best_metric", "--config"):
        assert flag in text
    assert "image-only" in text  # the help says why, not only the name


# --- data order and prompts --------------------------------------------------------------------------------------

@pytest.fixture
def two_ranks(monkeypatch):
    """Makes an Accelerator of this one process prepare loaders as rank `two_ranks["rank"]` of 2 would (Accelerate
    shards a loader by num_processes and process_index alone)."""
    from accelerate import Accelerator

    fake = {"rank": 0}
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    monkeypatch.setattr(Accelerator, "process_index", property(lambda self: fake["rank"]))
    return fake


def _micro_batches(config, accelerator, step=0, count=6, num_studies=23):
    loader = training_loader(list(range(num_studies)), list, config, accelerator)
    return list(itertools.islice(micro_batches(loader, accelerator, config, step), count))


def test_each_rank_reads_a_disjoint_equal_shard_reshuffled_every_epoch(tmp_path, dataset_dir, two_ranks):
    from modeling_cliptt5.training.loop import make_accelerator

    # 23 studies in micro-batches of 3 on 2 ranks: 3 global batches of 6 per epoch, 5 studies dropped
    config = config_from_dict({"dataset": str(dataset_dir), "output_dir": str(tmp_path), "batch_size": 3, "seed": 7,
                               "log_with": "none"})
    accelerator = make_accelerator(config)
    ranks = []
    for rank in range(2):
        two_ranks["rank"] = rank
        ranks.append(_micro_batches(config, accelerator))
    for batches in ranks:
        assert [epoch for epoch, _ in batches] == [0, 0, 0, 1, 1, 1] and all(len(b) == 3 for _, b in batches)
    for epoch in (0, 1):
        seen = [{study for e, batch in batches if e == epoch for study in batch} for batches in ranks]
        assert len(seen[0]) == len(seen[1]) == 9 and not seen[0] & seen[1]
    # Same seed and epoch -> same order; another epoch -> another order.
    assert _micro_batches(config, accelerator) == ranks[1]
    assert [batch for _, batch in ranks[0][:3]] != [batch for _, batch in ranks[0][3:]]


def test_a_resumed_run_reads_the_micro_batches_an_uninterrupted_one_reads(tmp_path, dataset_dir, two_ranks):
    from modeling_cliptt5.training.loop import make_accelerator

    # 23 studies in micro-batches of 2 on 2 ranks: 5 per rank and epoch, 2 steps of 2 (the fifth is not trained on)
    config = config_from_dict({"dataset": str(dataset_dir), "output_dir": str(tmp_path), "batch_size": 2, "seed": 3,
                               "gradient_accumulation_steps": 2, "log_with": "none"})
    accelerator = make_accelerator(config)
    for rank in range(2):
        two_ranks["rank"] = rank
        uninterrupted = _micro_batches(config, accelerator, count=12)
        assert [epoch for epoch, _ in uninterrupted] == [0] * 4 + [1] * 4 + [2] * 4
        orders = [[batch for epoch, batch in uninterrupted if epoch == number] for number in range(3)]
        assert orders[0] != orders[1] != orders[2]  # reshuffled, although each epoch stops before its end
        for step in (1, 2, 3, 5):  # inside epoch 0, at the start of epoch 1, inside epochs 1 and 2
            assert _micro_batches(config, accelerator, step=step, count=12 - 2 * step) == uninterrupted[2 * step:]


def test_a_dropped_prompt_gives_exactly_the_image_only_loss():
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration(tiny_config()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[5, 6, 7, 1], [8, 9, 1, -100]])
    batch = {"pixel_values": pixels, "labels": labels, "input_ids": torch.tensor([[11, 12, 1], [13, 1, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    outcomes = [drop_prompts(batch, probability=0.5, generator=torch.Generator().manual_seed(seed)) for seed in range(20)]
    kept_counts = [int(o["attention_mask"].any(dim=1).sum()) if "input_ids" in o else 0 for o in outcomes]
    assert {0, 1, 2} <= set(kept_counts)  # each prompt is dropped on its own
    dropped = outcomes[kept_counts.index(1)]
    kept = dropped["attention_mask"].any(dim=1)
    lost = int((~kept).nonzero()[0])
    with torch.no_grad():
        mixed = model(**dropped).logits[lost]
        image_only = model(pixel_values=pixels[lost:lost + 1], labels=labels[lost:lost + 1]).logits[0]
        with_prompt = model(**{k: v[lost:lost + 1] for k, v in batch.items()}).logits[0]
    torch.testing.assert_close(mixed, image_only, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(with_prompt, image_only, atol=1e-3)
    assert "input_ids" not in drop_prompts(batch, 1.0, torch.Generator())
    assert torch.equal(drop_prompts(batch, 0.0, torch.Generator())["attention_mask"], batch["attention_mask"])


@pytest.mark.parametrize("train_vision, expected_vision", [
    ("frozen", set()),
    ("last_blocks", {"block 1", "final norm"}),
    ("all", {"embeddings", "block 0", "block 1", "final norm"}),
])
def test_trainable_parts_and_their_learning_rates(dataset_dir, train_vision, expected_vision):
    model = CLIPT5ForConditionalGeneration(tiny_config())
    config = config_from_dict({"dataset": str(dataset_dir), "train_vision": train_vision, "vision_last_blocks": 1,
                               "train_t5": False, "learning_rate": 1.0, "vision_learning_rate": 2.0,
                               "projection_learning_rate": 3.0})
    set_trainable_parts(model, config)
    blocks = vision_blocks(model)
    parts = {"embeddings": model.vision_model.embeddings, "block 0": blocks[0], "block 1": blocks[1],
             "final norm": model.vision_model.layernorm}
    trained_vision = {name for name, module in parts.items() if all(p.requires_grad for p in module.parameters())}
    assert trained_vision == expected_vision
    assert not any(p.requires_grad for name, module in parts.items() if name not in expected_vision
                   for p in module.parameters())
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert all(name.startswith(("vision_model.", "clip_projection.")) for name in trained)  # T5 frozen
    assert all(p.requires_grad for p in model.clip_projection.parameters())
    rates = {group["name"]: group["lr"] for group in parameter_groups(model, config)}
    assert rates["projection"] == 3.0 and rates["projection_no_decay"] == 3.0
    assert ("vision" in rates) == (train_vision != "frozen")
    assert all(rate == 2.0 for name, rate in rates.items() if name.startswith("vision"))
    no_decay = [group for group in parameter_groups(model, config) if group["name"].endswith("no_decay")]
    assert all(parameter.ndim == 1 and group["weight_decay"] == 0 for group in no_decay for parameter in group["params"])


def test_generated_reports_are_scored_with_the_coco_metrics_or_sacrebleu():
    from modeling_cliptt5.training.generation import score_generated_reports

    references = ["the heart is normal in size . the lungs are clear .", "small left pleural effusion ."]
    perfect = score_generated_reports(references, references, backend="sacrebleu")
    assert perfect == {"bleu_4": pytest.approx(1.0)}
    wrong = score_generated_reports(["large right pneumothorax .", "no acute process ."], references, "sacrebleu")
    assert wrong["bleu_4"] < 0.1
    coco = score_generated_reports(references, references, backend="coco")  # modeling_cliptt5.evaluation.metrics
    assert coco["bleu_4"] == pytest.approx(1.0, abs=1e-6) and {"rouge_l", "cider"} <= set(coco)
    assert score_generated_reports(references, references, backend="none") == {}


# --- whole runs --------------------------------------------------------------------------------------------------

def test_a_run_learns_skips_the_bad_study_and_releases_the_best_checkpoint(tmp_path, dataset_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoProcessor

    from modeling_cliptt5.training.generation import train_generation

    output = tmp_path / "run"
    config = config_from_dict(tiny_settings(dataset_dir, output, max_steps=12, eval_every_steps=6, prompt="Chest.",
                                            use_indication=True, prompt_dropout=0.5, gradient_accumulation_steps=2,
                                            batch_size=2, keep_last_states=2, train_vision="last_blocks",
                                            vision_last_blocks=1, gradient_checkpointing=True))
    result = train_generation(config)

    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 13))
    assert sum(train_losses[-3:]) / 3 < sum(train_losses[:3]) / 3 - 0.5
    validation = [r for r in records if "validation/loss" in r]
    assert [r["step"] for r in validation] == [6, 12] and all("validation/bleu_4" in r for r in validation)
    best = min(validation, key=lambda r: r["validation/loss"])

    bad = [json.loads(line) for line in (output / "bad_samples.jsonl").read_text().splitlines()]
    assert {entry["id"] for entry in bad} == {"train-5"} and "UnidentifiedImageError" in bad[0]["error"]

    release = output / "best"
    info = json.loads((release / "release_info.json").read_text())
    assert info["step"] == best["step"] == result.best_step
    assert info["metrics"]["validation/loss"] == pytest.approx(best["validation/loss"])
    assert (release / "README.md").is_file() and (release / "training_config.yaml").is_file()
    model = AutoModelForSeq2SeqLM.from_pretrained(release, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(release, trust_remote_code=True)
    assert model.generation_config.max_new_tokens == 12
    # the release keeps its drafts from repeating sentences, with its own tokenizer's ids (no package needed)
    assert model.generation_config.no_repeat_ngram_size == 8 and model.generation_config.no_repeat_sentence is True
    sentence_end = processor.tokenizer("No effusion.", add_special_tokens=False)["input_ids"][-1]
    assert sentence_end in model.generation_config.sentence_end_token_ids
    assert [processor.tokenizer.decode(header).strip() for header in model.generation_config.section_token_ids] == [
        "FINDINGS:", "IMPRESSION:"]
    inputs = processor(images=[torch.zeros(40, 40, dtype=torch.uint8).numpy()])
    assert model.generate(**inputs).shape[0] == 1
    if best["step"] == 12:  # the release holds the final weights
        for name, tensor in result.model.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], tensor.cpu())

    checkpointed = [module for module in result.model.modules() if getattr(module, "gradient_checkpointing", False)]
    assert checkpointed  # gradient_checkpointing=True reached the T5 and ViT blocks
    assert len(list_states(output / "states")) == 2
    assert (output / "training_curves.png").stat().st_size > 1000
    assert not [path for path in output.rglob(".*") if path.name.startswith(".")]  # nothing half-written


def test_too_many_bad_studies_stop_the_run_with_the_reason(tmp_path, dataset_dir):
    from modeling_cliptt5.training.generation import train_generation

    config = config_from_dict(tiny_settings(dataset_dir, tmp_path / "run", max_steps=4, max_bad_samples=0,
                                            validation_split=""))
    with pytest.raises(BadSampleLimitError, match=r"max_bad_samples=0.*train-5.*UnidentifiedImageError"):
        train_generation(config)
    # A fresh run never mixes its states and logs with another run's.
    (tmp_path / "run" / "states" / "state-00000002").mkdir(parents=True)
    (tmp_path / "run" / "states" / "state-00000002" / "trainer_state.json").write_text("{}")
    with pytest.raises(FileExistsError, match="pass --resume"):
        train_generation(config)


def _launch(config_path, *extra):
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config_path), *extra],
                            cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(process, timeout=240):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output.decode()[-3000:]
    return output.decode()


def test_a_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, dataset_dir, tiny_tokenizer):
    from modeling_cliptt5.training.generation import train_generation

    # Both runs read one saved tokenizer: training a tokenizer twice does not give the same ids (tokenizers' Unigram
    # trainer is not deterministic), while one run and its resumption share <output_dir>/tokenizer.
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    # 16 studies in batches of 3: 5 steps per epoch, so that most saved states lie inside an epoch
    settings = tiny_settings(dataset_dir, tmp_path / "reference", max_steps=24, eval_every_steps=8,
                             tokenizer=str(tmp_path / "tokenizer"), eval_metrics="none", save_every_steps=2,
                             log_every_steps=4, prompt="Chest.", prompt_dropout=0.5, batch_size=3)
    interrupted_config = tmp_path / "interrupted.yaml"
    interrupted_config.write_text(yaml.safe_dump({**settings, "output_dir": str(tmp_path / "interrupted")}))
    states = tmp_path / "interrupted" / "states"
    interrupted = _launch(interrupted_config)

    def kill_after_step_4():
        deadline = time.time() + 180
        while not (states / "state-00000004").is_dir() and interrupted.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        interrupted.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_after_step_4)
    killer.start()
    train_generation(config_from_dict(settings))  # the uninterrupted reference, meanwhile, in this process
    killer.join()
    interrupted.communicate()
    assert interrupted.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    for state in list_states(states):  # whatever the kill interrupted, every visible state is whole
        assert {"model.safetensors", "optimizer.bin", "trainer_state.json"} <= set(os.listdir(state))
    killed_at = json.loads((Path(list_states(states)[-1]) / "trainer_state.json").read_text())["step"]
    assert killed_at < 24

    log = _finish(_launch(interrupted_config, "--resume"))
    assert "resumed from" in log and f"(step {killed_at})" in log

    def final_weights(run):
        return load_file(str(Path(list_states(tmp_path / run / "states")[-1]) / "model.safetensors"))

    resumed, uninterrupted = final_weights("interrupted"), final_weights("reference")
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], atol=1e-6, rtol=1e-5)
    for run in ("interrupted", "reference"):
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        keys = [(record["step"], "validation/loss" in record) for record in records]
        assert keys == sorted(keys) and len(keys) == len(set(keys))  # the killed run's extra records are gone
    assert not [path for path in (tmp_path / "interrupted").rglob(".*")]

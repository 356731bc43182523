"""Release folders: written whole or not at all, with a filled model card, uploaded with the right repo and files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate import Accelerator
from huggingface_hub import HfApi, ModelCard

from conftest import subprocess_env
from modeling_cliptt5.cli import release as release_command
from modeling_cliptt5.training.release import push_release, save_release

INFO = {
    "model_name": "cliptt5-test", "dataset": "tiny", "sources": {"openi": 30, "synthetic-phantom": 10},
    "split_sizes": {"train": 40, "validation": 8}, "report_column": "report", "validation_studies": 8,
    "step": 120, "metrics": {"validation/loss": 2.5, "validation/bleu_4": 0.1234, "validation/cider": 0.5},
    "best_metric": "bleu_4", "license": "cc-by-nc-4.0", "base_models": ["microsoft/BiomedCLIP-x", "t5-small"],
    "initialisation": "BiomedCLIP + t5-small", "synthetic_data": False,
}


@pytest.fixture
def release_dir(tmp_path, tiny_model, tiny_processor_fixture):
    return save_release(Accelerator(), tiny_model, tiny_processor_fixture, str(tmp_path / "best"), INFO,
                        training_config={"learning_rate": 0.001, "batch_size": 4})


def test_the_model_card_has_hub_metadata_and_says_what_the_model_is_not(release_dir, tiny_model):
    card = ModelCard.load(os.path.join(release_dir, "README.md"))
    assert card.data.license == "cc-by-nc-4.0"
    assert card.data.pipeline_tag == "image-text-to-text"
    assert card.data.library_name == "transformers"
    assert card.data.datasets == ["openi", "synthetic-phantom"]
    assert card.data.metrics == ["bleu", "cider"]
    assert card.data.base_model == ["microsoft/BiomedCLIP-x", "t5-small"]
    assert {"radiology", "chest-x-ray", "custom_code"} <= set(card.data.tags)
    text = card.text
    assert "NOT a medical device" in text and "Intended use" in text and "Limitations" in text
    assert "| bleu_4 | 0.1234 |" in text and "| loss | 2.5000 |" in text and "step 120" in text
    parameters = sum(parameter.numel() for parameter in tiny_model.parameters())
    assert f"| parameters | {parameters / 1000:.1f} K".replace(".0 K", " K") in text  # "72.4 K", "73 K"
    assert "openi (30), synthetic-phantom (10)" in text and "| train studies | 40 |" in text
    assert "learning_rate: 0.001" in text  # the training configuration is in the card
    assert "synthetic phantom images" not in text  # only said of models trained on phantoms
    info = json.loads(open(os.path.join(release_dir, "release_info.json")).read())
    assert info["parameters"] == parameters and info["weights_bytes"] > 0


def test_a_release_that_fails_half_way_leaves_the_previous_one_untouched(release_dir, tiny_model, monkeypatch):
    before = {name: open(os.path.join(release_dir, name), "rb").read() for name in os.listdir(release_dir)}

    class BrokenProcessor:
        def save_pretrained(self, folder):
            open(os.path.join(folder, "tokenizer.json"), "w").write("half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_release(Accelerator(), tiny_model, BrokenProcessor(), release_dir, {**INFO, "step": 999})
    after = {name: open(os.path.join(release_dir, name), "rb").read() for name in os.listdir(release_dir)}
    assert after == before
    assert os.listdir(os.path.dirname(release_dir)) == ["best"]  # no temporary folder left


def test_push_to_hub_uploads_the_folder_to_the_named_repo(release_dir, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}

    def upload_folder(self, **kwargs):
        calls["upload_folder"] = {**kwargs, "files": sorted(os.listdir(kwargs["folder_path"]))}
        return "https://hub.example/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert push_release(release_dir, "someone/cliptt5-tiny", private=True) == "https://hub.example/commit/1"
    assert calls["create_repo"] == {"repo_id": "someone/cliptt5-tiny", "private": True, "exist_ok": True,
                                    "repo_type": "model"}
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "someone/cliptt5-tiny" and upload["folder_path"] == release_dir
    assert {"README.md", "config.json", "model.safetensors", "modeling_cliptt5.py", "tokenizer.json",
            "processor_config.json", "release_info.json"} <= set(upload["files"])
    assert upload["commit_message"] == "CLIP-T5 release: step 120, bleu_4 0.1234"
    # The card's usage example names the repo it was uploaded to.
    assert 'from_pretrained("someone/cliptt5-tiny", trust_remote_code=True)' in open(
        os.path.join(release_dir, "README.md")).read()


def test_the_release_command_refills_the_card_and_refuses_other_folders(release_dir, tmp_path, capsys):
    os.remove(os.path.join(release_dir, "README.md"))
    release_command.main([release_dir])
    assert "NOT a medical device" in open(os.path.join(release_dir, "README.md")).read()
    assert "wrote" in capsys.readouterr().out
    converted = tmp_path / "converted"  # a release folder without a training record (as the converter writes)
    shutil.copytree(release_dir, converted)
    os.remove(converted / "release_info.json")
    assert release_command.main([str(converted)]) == 1
    assert f"cliptt5-release: error: {converted / 'release_info.json'}: not a training release" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # not a release at all: the command was given the wrong folder
        release_command.main([str(tmp_path / "empty")])
    assert refused.value.code == 2 and "no release folder at" in capsys.readouterr().err


def test_a_release_limited_to_a_report_vocabulary_says_so_in_its_card(release_dir, tmp_path):
    from training_helpers import make_tiny_dataset

    card = os.path.join(release_dir, "README.md")
    assert "drafts use" not in open(card).read()
    release_command.main([release_dir, "--report-vocabulary", str(make_tiny_dataset(tmp_path / "dataset"))])
    limit = len(json.loads(open(os.path.join(release_dir, "config.json")).read())["report_vocabulary"])
    assert f"vocabulary 200; drafts use {limit} of these tokens" in open(card).read()
    release_command.main([release_dir, "--full-vocabulary"])
    assert "drafts use" not in open(card).read()


def test_a_release_that_keeps_drafts_from_repeating_sentences_says_so_in_its_card(release_dir):
    card = os.path.join(release_dir, "README.md")
    assert "no_repeat_sentence" not in open(card).read()  # the fixture's generation config does not ask for it
    path = os.path.join(release_dir, "generation_config.json")
    generation = json.loads(open(path).read())
    open(path, "w").write(json.dumps({**generation, "no_repeat_sentence": True, "sentence_end_token_ids": [3]}))
    release_command.main([release_dir])
    assert "never say a sentence twice in a section" in open(card).read()


def folder_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}


@pytest.mark.parametrize("offline", [False, True], ids=["hub-unreachable", "offline-mode"])
def test_a_push_that_cannot_reach_the_hub_says_so_in_one_line_and_changes_nothing(release_dir, offline):
    before = folder_bytes(release_dir)
    # Nothing listens on port 9 of this machine: the connection is refused at once.
    env = dict(subprocess_env(), HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="hf_not_a_real_token",
               HF_HUB_OFFLINE="1" if offline else "0")
    completed = subprocess.run([sys.executable, "-m", "modeling_cliptt5.cli.release", release_dir,
                                "--push-to-hub", "someone/cliptt5-tiny"], capture_output=True, text=True, env=env,
                               timeout=300)
    assert completed.returncode == 1
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cliptt5-release: error: could not upload"), completed.stderr
    assert "nothing was uploaded and the folder is unchanged" in lines[0]
    assert folder_bytes(release_dir) == before


KILLED_WRITER = """
import sys, time
from accelerate import Accelerator
from modeling_cliptt5 import CLIPT5ForConditionalGeneration, CLIPT5Processor
from modeling_cliptt5.training.release import save_release

release_dir = sys.argv[1]
model = CLIPT5ForConditionalGeneration.from_pretrained(release_dir)
processor = CLIPT5Processor.from_pretrained(release_dir)

class SlowProcessor:  # the weights are written; the processor takes its time: the parent kills us now
    def save_pretrained(self, folder):
        processor.save_pretrained(folder)
        print("writing", flush=True)
        time.sleep(60)

info = {"model_name": "x", "step": 999, "metrics": {}, "best_metric": "loss"}
save_release(Accelerator(), model, SlowProcessor(), release_dir, info)
"""


def test_a_release_write_killed_midway_leaves_the_previous_release_whole(release_dir):
    from modeling_cliptt5.data.atomic_writes import remove_leftovers

    before = folder_bytes(release_dir)
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, release_dir], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env())
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()  # SIGKILL: no handler, no clean-up
    writer.wait(timeout=30)
    assert folder_bytes(release_dir) == before
    parent = Path(release_dir).parent
    assert (parent / ".best.tmp" / "model.safetensors").is_file()  # the half-written one, hidden
    remove_leftovers(str(parent))  # what the next run does first
    assert sorted(path.name for path in parent.iterdir()) == ["best"] and folder_bytes(release_dir) == before


def test_a_kill_between_the_two_renames_puts_the_previous_release_back(release_dir):
    from modeling_cliptt5.data.atomic_writes import remove_leftovers

    before = folder_bytes(release_dir)
    parent = Path(release_dir).parent
    # What replace_folder leaves when killed after moving the old release aside and before moving the new one in.
    os.rename(release_dir, parent / ".best.tmp.old")
    (parent / ".best.tmp").mkdir()
    remove_leftovers(str(parent))
    assert sorted(path.name for path in parent.iterdir()) == ["best"] and folder_bytes(release_dir) == before

"""Training on a machine without Hub access (an air-gapped hospital server): every pretrained part a config names by
Hub id (BiomedCLIP, the text tower its open_clip config names, t5-small and its tokenizer) is given as a folder laid
out as `hf download ID --local-dir DIR` writes it, and the run trains from them with the network really gone (a
fresh network namespace: no interface but a loopback that is down). Without such a folder the run stops at once in
one line naming the model, the command that fetches it elsewhere and the flag that takes the folder, whether
HF_HUB_OFFLINE says so or the network just is not there.

The stand-ins are tiny, with the real repositories' file names and the real ids in their configs."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import TINY_REPORTS, subprocess_env
from training_helpers import make_tiny_dataset, tiny_settings

pytest.importorskip("open_clip")

BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


def network_namespace_missing_reason():
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not found"
    trial = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"], capture_output=True, text=True)
    return None if trial.returncode == 0 else f"no network namespace for this user: {trial.stderr.strip()}"


MISSING = network_namespace_missing_reason()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"air-gapped tests skipped: {MISSING}")


def save_biomedbert(folder):
    """BiomedBERT's snapshot, tiny: config.json and the WordPiece vocabulary."""
    from transformers import BertConfig, BertTokenizerFast

    words = sorted({word.strip(".,:").lower() for report in TINY_REPORTS for word in report.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    BertTokenizerFast(vocab={word: index for index, word in enumerate(vocab)}).save_pretrained(folder)
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(folder)
    return folder


def save_biomedclip(folder, text_folder):
    """BiomedCLIP's snapshot, tiny: open_clip_config.json naming its text tower by Hub id as the real one does,
    open_clip_pytorch_model.bin and the tokenizer files."""
    from modeling_cliptt5.training.clip_t5_builder import DEMO_VIT, register_demo_vit

    register_demo_vit()  # the timm tower the config names is registered by the package that loads it
    text_cfg = {"hf_model_name": BIOMEDBERT, "hf_tokenizer_name": BIOMEDBERT, "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32}
    model_cfg = {"embed_dim": 24, "vision_cfg": {"timm_model_name": DEMO_VIT, "timm_model_pretrained": False,
                                                 "timm_pool": "", "timm_proj": "linear", "image_size": 64},
                 "text_cfg": text_cfg}
    torch.manual_seed(0)
    model = _build_open_clip(model_cfg, text_folder)
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    for path in text_folder.iterdir():  # the tokenizer's files, whichever this transformers writes
        if path.name != "config.json":
            shutil.copy(path, folder / path.name)
    return model


def _build_open_clip(model_cfg, text_folder):
    """The model of `model_cfg`, its text tower read from `text_folder` (open_clip registers configs by name)."""
    import tempfile

    import open_clip

    with tempfile.TemporaryDirectory() as configs:
        config = {**model_cfg, "text_cfg": {**model_cfg["text_cfg"], "hf_model_name": str(text_folder),
                                            "hf_tokenizer_name": str(text_folder)}}
        with open(f"{configs}/air-gapped-biomedclip.json", "w") as handle:
            json.dump(config, handle)
        open_clip.add_model_config(configs)
        return open_clip.create_model("air-gapped-biomedclip", pretrained=None, pretrained_hf=False)


def save_t5(folder, tokenizer):
    """t5-small's snapshot, tiny: config.json, model.safetensors and its tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(1)
    T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_heads=4,
                                        num_layers=2, decoder_start_token_id=0, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("air_gapped")
    biomedbert = save_biomedbert(root / "BiomedNLP-BiomedBERT-base-uncased-abstract")
    clip = save_biomedclip(root / "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", biomedbert)
    t5 = save_t5(root / "t5-small", tiny_tokenizer)
    return {"root": root, "clip_model": root / "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            "clip_text_model": biomedbert, "t5_model": t5, "clip": clip,
            "dataset": make_tiny_dataset(root / "data", sizes=(("train", 8), ("validation", 4), ("test", 1)))}


def pretrained_settings(snapshots, output_dir, **parts):
    model = {"image_tokens": "patch", "projector_type": "linear", "num_views": 1}
    settings = tiny_settings(snapshots["dataset"], output_dir, init="pretrained", model=model, max_steps=2,
                             eval_every_steps=2, save_every_steps=2, batch_size=4, eval_max_samples=4,
                             eval_batch_size=4, generation_max_new_tokens=4, max_report_tokens=24)
    settings.pop("tokenizer_vocab_size")
    return {**settings, **{name: str(value) for name, value in parts.items()}}


def train_without_network(settings, tmp_path, hub_offline=False):
    """cliptt5-train in a process of its own, in a network namespace with no way out; HF_HUB_OFFLINE unset unless
    asked (the point: the network is gone and nobody said so)."""
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    env = subprocess_env()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    if hub_offline:
        env["HF_HUB_OFFLINE"] = "1"
    env["HF_HOME"] = str(tmp_path / "empty_hf_home")  # no cached copy of anything
    command = ["unshare", "--user", "--map-root-user", "--net", sys.executable, "-m", "modeling_cliptt5.cli.train",
               "--config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def test_training_reads_every_pretrained_part_from_local_folders_with_the_network_gone(snapshots, tmp_path):
    from modeling_cliptt5 import CLIPT5ForConditionalGeneration

    settings = pretrained_settings(snapshots, tmp_path / "run", clip_model=snapshots["clip_model"],
                                   clip_text_model=snapshots["clip_text_model"], t5_model=snapshots["t5_model"])
    finished = train_without_network(settings, tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    release = CLIPT5ForConditionalGeneration.from_pretrained(tmp_path / "run" / "best")
    # The release starts from the folders' weights: its image tower is the stand-in BiomedCLIP's (frozen) ...
    trunk = snapshots["clip"].visual.trunk
    torch.testing.assert_close(release.vision_model.embeddings.patch_embeddings.projection.weight,
                               trunk.patch_embed.proj.weight)
    # ... and it reads with the stand-in t5-small's tokenizer
    assert release.config.vocab_size == len(json.loads((snapshots["t5_model"] / "tokenizer.json").read_text())
                                            ["model"]["vocab"])


@pytest.mark.parametrize("hub_offline", [False, True], ids=["network-gone", "HF_HUB_OFFLINE"])
def test_a_hub_id_without_a_local_copy_stops_the_run_in_one_line(snapshots, tmp_path, hub_offline):
    # BiomedCLIP by Hub id, as the shipped config names it, with nothing cached
    settings = pretrained_settings(snapshots, tmp_path / "run", clip_model=f"hf-hub:{BIOMEDCLIP}",
                                   t5_model=snapshots["t5_model"])
    finished = train_without_network(settings, tmp_path, hub_offline)
    assert finished.returncode == 2
    (line,) = [line for line in finished.stderr.splitlines() if line.strip()]
    reason = "HF_HUB_OFFLINE is set" if hub_offline else "the Hub cannot be reached"
    assert line == (f"cliptt5-train: error: the image-text model (clip_model) {BIOMEDCLIP!r} cannot be loaded: not "
                    f"a folder here, and {reason} and the Hugging Face cache has no copy. On a machine with internet "
                    f"access run `hf download {BIOMEDCLIP} --local-dir BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`"
                    ", copy that folder here and pass --clip_model PATH/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
                    " (docs/training.md, air-gapped training)")
    assert not (tmp_path / "run" / "best").exists()


def test_the_text_tower_and_t5_are_named_the_same_way(snapshots, tmp_path):
    # The BiomedCLIP folder is here, but its config names BiomedBERT by Hub id and no folder is given for it
    settings = pretrained_settings(snapshots, tmp_path / "run", clip_model=snapshots["clip_model"],
                                   t5_model=snapshots["t5_model"])
    finished = train_without_network(settings, tmp_path)
    assert finished.returncode == 2
    assert f"the text tower of clip_model (clip_text_model) {BIOMEDBERT!r} cannot be loaded" in finished.stderr
    assert "--clip_text_model PATH/BiomedNLP-BiomedBERT-base-uncased-abstract" in finished.stderr
    settings = pretrained_settings(snapshots, tmp_path / "run", clip_model=snapshots["clip_model"],
                                   clip_text_model=snapshots["clip_text_model"], t5_model="t5-small")
    finished = train_without_network(settings, tmp_path)
    assert finished.returncode == 2
    assert "T5 (t5_model) 't5-small' cannot be loaded" in finished.stderr
    assert "`hf download t5-small --local-dir t5-small`" in finished.stderr and "--t5_model PATH/t5-small" in \
        finished.stderr

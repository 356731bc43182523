"""Tiny report datasets and training settings shared by the training tests (built here: nothing is downloaded)."""

import contextlib
import io
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict
import torch
from PIL import Image

from conftest import TINY_IMAGE_SIZE, TINY_REPORTS
from modeling_cliptt5.data.schema import make_example, report_features, save_dataset_atomically
from modeling_cliptt5.processing_cliptt5 import split_report_sections

TINY_MODEL = {
    "vision_config": {"image_size": TINY_IMAGE_SIZE, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "intermediate_size": 64},
    "clip_projection_dim": 24, "d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 2,
    "dropout_rate": 0.1,
}


def study_image(kind, rng, size=40):
    """A grey image whose bright square sits where the report kind says, plus noise: learnable from pixels."""
    array = rng.normal(60, 20, (size, size)).clip(0, 255)
    row, column = divmod(kind, 3)
    top, left = 4 + row * 16, 4 + column * 11
    array[top:top + 12, left:left + 10] += 150
    return Image.fromarray(array.clip(0, 255).astype(np.uint8)).convert("RGB")


def make_tiny_dataset(folder, sizes=(("train", 40), ("validation", 8), ("test", 4)), seed=0, bad_images=(),
                      num_views=1):
    """A DatasetDict in the report schema saved at `folder`; row ids in `bad_images` get undecodable image bytes."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in sizes:
        rows = []
        for index in range(count):
            kind = int(rng.integers(len(TINY_REPORTS)))
            study_id = f"{split}-{index}"
            sections = split_report_sections(TINY_REPORTS[kind])
            if study_id in bad_images:
                images = [{"bytes": b"this is not an image", "path": None}] * num_views
            else:
                images = [study_image(kind, rng) for _ in range(num_views)]
            rows.append(make_example(study_id, images, sections["findings"], sections["impression"], split, "tiny-test",
                                     indication="Cough." if index % 2 else ""))
        splits[split] = Dataset.from_list(rows, features=report_features())
    save_dataset_atomically(DatasetDict(splits), folder)
    return folder


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_settings(dataset_dir, output_dir, **overrides):
    """Stage-2 settings for a seconds-long run on the tiny dataset."""
    settings = {
        "dataset": str(dataset_dir), "output_dir": str(output_dir), "model": TINY_MODEL,
        "tokenizer_vocab_size": 120, "max_report_tokens": 48, "batch_size": 4, "max_steps": 6,
        "learning_rate": 3e-3, "projection_learning_rate": 3e-3, "warmup_steps": 1, "eval_every_steps": 3,
        "save_every_steps": 2, "log_every_steps": 1, "eval_max_samples": 8, "eval_batch_size": 8,
        "eval_metrics": "sacrebleu", "generation_max_new_tokens": 12, "log_with": "none",
    }
    settings.update(overrides)
    return settings


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models run fastest on one thread (and a busy 2-core machine makes two threads fight)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_open_clip(folder):
    """conftest's tiny BiomedCLIP-shaped open_clip model, registered under its returned name, with a text tokenizer
    that knows the report words. (transformers 5's BertTokenizerFast ignores `vocab_file=`, which leaves a
    5-token tokenizer mapping every word to [UNK]; `vocab=` works in 5.)"""
    from transformers import AutoTokenizer, BertTokenizerFast

    from conftest import build_tiny_open_clip

    _, model_name = build_tiny_open_clip(folder)
    text_dir = Path(folder) / "tiny-bert"
    words = (text_dir / "vocab.txt").read_text().split("\n")
    words = [word for word in words if word]
    if len(AutoTokenizer.from_pretrained(text_dir)) < len(words):
        BertTokenizerFast(vocab={word: index for index, word in enumerate(words)}).save_pretrained(text_dir)
    return model_name, str(Path(folder) / "open_clip_configs")

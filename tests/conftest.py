"""Tiny CLIP-T5 models, processors and releases shared by the tests (built here: nothing is downloaded)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration, CLIPT5ImageProcessor, CLIPT5Processor
from modeling_cliptt5.training.tokenizer import train_report_tokenizer

# `make test` runs the suite in worker processes (pytest-xdist, one per core): each gets its share of the cores, so
# that two workers' torch threads do not fight over the same ones.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

TINY_IMAGE_SIZE = 32
MAX_NEW_TOKENS = 40  # drafts of the trained tiny release below
TRAINED_IMAGES = 10

TINY_REPORTS = [
    "FINDINGS: The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax. "
    "IMPRESSION: No acute cardiopulmonary process.",
    "FINDINGS: The heart is enlarged. Small left pleural effusion. IMPRESSION: Cardiomegaly with left effusion.",
    "FINDINGS: Right upper lobe consolidation. No pneumothorax. IMPRESSION: Right upper lobe pneumonia.",
    "FINDINGS: A 2 cm nodule in the left upper lobe. Endotracheal tube in place. IMPRESSION: Left lung nodule.",
    "FINDINGS: Large right pneumothorax. Heart size is normal. IMPRESSION: Right pneumothorax.",
]


def tiny_config(**overrides):
    """A CLIP-T5 config with the full architecture's structure and toy sizes (32 px, 2-layer ViT and T5)."""
    settings = dict(
        vision_config=dict(image_size=TINY_IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64),
        clip_projection_dim=24, vocab_size=200, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
        dropout_rate=0.0,
    )
    settings.update(overrides)
    return CLIPT5Config(**settings)


def tiny_processor(tokenizer):
    image_processor = CLIPT5ImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    return CLIPT5Processor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_report_tokenizer(TINY_REPORTS * 20, vocab_size=200)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    torch.manual_seed(0)
    return CLIPT5ForConditionalGeneration(tiny_config(vocab_size=len(tiny_tokenizer))).eval()


@pytest.fixture(scope="session")
def tiny_processor_fixture(tiny_tokenizer):
    return tiny_processor(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_release_dir(tmp_path_factory, tiny_model, tiny_processor_fixture):
    """A saved release folder (weights, config, generation config, processor, code) of a tiny model."""
    release = tmp_path_factory.mktemp("tiny_release")
    tiny_model.save_pretrained(release)
    tiny_processor_fixture.save_pretrained(release)
    return release


class PreferSaying(LogitsProcessor):
    """Makes a model say the same sentence over and over: after `sentence`'s last token (or anything not in it) its
    first, after each of its tokens the next."""

    def __init__(self, sentence):
        self.next_token = {token: sentence[(index + 1) % len(sentence)] for index, token in enumerate(sentence)}
        self.first = sentence[0]

    def __call__(self, input_ids, scores):
        for row, ids in enumerate(input_ids.tolist()):
            scores[row, self.next_token.get(ids[-1], self.first)] += 1000.0
        return scores


def noise_image(seed, size=(40, 36)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, size[::-1], dtype=np.uint8))


def rerandomized(model, seed=1, gain=3.0):
    """Random weights 3x larger than T5's init: greedy tokens then differ from image to image."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, gain / parameter.shape[1] ** 0.5)
    return model


@pytest.fixture(scope="session")
def trained_release_dir(tmp_path_factory, tiny_release_dir):
    """The tiny model trained for a few seconds to write TINY_REPORTS[i % 5] for noise image i: its drafts are
    real, different reports with confident tokens, as a trained release's are (the untrained fixture model
    only writes <pad>, which would make every comparison of drafts pass vacuously)."""
    release = tmp_path_factory.mktemp("trained_release")
    processor = CLIPT5Processor.from_pretrained(tiny_release_dir)
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration.from_pretrained(tiny_release_dir).train()
    batch = processor(images=[noise_image(seed) for seed in range(TRAINED_IMAGES)],
                      reports=[TINY_REPORTS[seed % 5] for seed in range(TRAINED_IMAGES)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds synchronisation (3-8x slower here)
    try:
        for _ in range(120):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval().save_pretrained(release)
    processor.save_pretrained(release)
    return release


HEAD_FINDINGS = ["Cardiomegaly", "Pleural Effusion", "Lung Lesion"]


@pytest.fixture(scope="session")
def head_release_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny release with a finding head over HEAD_FINDINGS, trained for a few seconds on noise images: the head
    calls Cardiomegaly on the odd images, and the report says what the guidance tokens say (the heart enlarged
    when Cardiomegaly is present, normal when not: each image is trained with both), so a draft follows the head
    or a reader's correction."""
    processor = tiny_processor(tiny_tokenizer)
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration(tiny_config(vocab_size=len(tiny_tokenizer), finding_head=True,
                                                       finding_labels=HEAD_FINDINGS)).train()
    seeds = list(range(TRAINED_IMAGES)) * 2
    guided = [index // TRAINED_IMAGES for index in range(len(seeds))]  # each image with Cardiomegaly 0, then 1
    batch = processor(images=[noise_image(seed) for seed in seeds],
                      reports=[TINY_REPORTS[1] if status else TINY_REPORTS[0] for status in guided])
    findings = torch.tensor([[status, 0, 0] for status in guided])
    targets = torch.tensor([[float(seed % 2), 0.0, 0.0] for seed in seeds])  # what the head learns: the image
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(150):
            model(**batch, findings=findings, finding_targets=targets).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    release = tmp_path_factory.mktemp("head_release")
    model.eval().save_pretrained(release)
    processor.save_pretrained(release)
    return release


@pytest.fixture(scope="session", autouse=True)
def onnx_exports_in_a_temporary_cache(tmp_path_factory):
    """generate.py --optimize caches ONNX exports in ~/.cache/cliptt5/onnx: the tests use a folder of their own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIPT5_ONNX_CACHE", str(tmp_path_factory.mktemp("onnx_cache")))
        yield


def subprocess_env():
    """Environment for child Python processes: no GPU, few threads, offline."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""})
    return env


def build_tiny_open_clip(folder, timm_model_name="vit_cliptt5_tiny", image_size=TINY_IMAGE_SIZE, embed_dim=24):
    """An open_clip model with BiomedCLIP's structure (timm ViT trunk, timm_pool "", linear projection, a BERT
    text tower with an MLP projection and CLS pooling), built offline from a local config as NOTES.md describes.

    `timm_model_name="vit_cliptt5_tiny"` is a 2-layer 32-wide ViT registered here; "vit_base_patch16_224" gives
    BiomedCLIP's real tower shape (random weights)."""
    import json

    import open_clip
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer
    from transformers import BertConfig, BertTokenizerFast

    if timm_model_name == "vit_cliptt5_tiny" and not timm.is_model("vit_cliptt5_tiny"):
        @register_model
        def vit_cliptt5_tiny(pretrained=False, **kwargs):
            model_args = dict(img_size=TINY_IMAGE_SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
            return _create_vision_transformer("vit_cliptt5_tiny", pretrained=False, **{**model_args, **kwargs})

    folder = Path(folder)
    text_dir = folder / "tiny-bert"
    text_dir.mkdir(parents=True, exist_ok=True)
    words = sorted({word.strip(".,:").lower() for report in TINY_REPORTS for word in report.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (text_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(text_dir / "vocab.txt")).save_pretrained(text_dir)
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(text_dir)
    model_name = f"tiny-biomedclip-{timm_model_name}-{image_size}"
    config = {
        "embed_dim": embed_dim,
        "vision_cfg": {"timm_model_name": timm_model_name, "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": image_size},
        "text_cfg": {"hf_model_name": str(text_dir), "hf_tokenizer_name": str(text_dir), "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32},
    }
    config_dir = folder / "open_clip_configs"
    config_dir.mkdir(exist_ok=True)
    (config_dir / f"{model_name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(config_dir)
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=None, pretrained_hf=False)
    return model.eval(), model_name


@pytest.fixture
def one_torch_thread_per_test():
    """For modules of tiny-model training tests (`pytestmark = pytest.mark.usefixtures(...)`): one torch thread."""
    from training_helpers import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def prior_release_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny release that reads the prior study (config.reads_prior), with a finding head and guidance, its weights
    made large (rerandomized) so that greedy drafts differ with the image and the prior; prior reports are read up
    to 48 tokens (one of TINY_REPORTS fits, all of them do not)."""
    processor = tiny_processor(tiny_tokenizer)
    processor.max_prior_report_tokens = 48
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration(tiny_config(vocab_size=len(tiny_tokenizer), finding_head=True,
                                                       finding_labels=HEAD_FINDINGS, reads_prior=True,
                                                       max_prior_report_tokens=48))
    model = rerandomized(model.eval())
    release = tmp_path_factory.mktemp("prior_release")
    model.save_pretrained(release)
    processor.save_pretrained(release)
    return release


def model_draft_against(release, path, prior_path=None, prior_report=None, **generate_kwargs):
    """What a release's model writes for the image file at `path` against that prior (its image file and/or report),
    computed without the library's drafting, the command or the page: processor, generate(), decode. The sections
    as batch_decode_reports gives them."""
    from modeling_cliptt5.images.image_io import open_image

    model = CLIPT5ForConditionalGeneration.from_pretrained(release).eval()
    processor = CLIPT5Processor.from_pretrained(release)
    inputs = processor(images=[open_image(path)],
                       prior_images=None if prior_path is None else [open_image(prior_path)],
                       prior_reports=None if prior_report is None else [prior_report])
    return processor.batch_decode_reports(model.generate(**inputs, **generate_kwargs))[0]

"""A release's report vocabulary (report_vocabulary.py): drafts use its tokens alone, on both engines, and the fast
path's step graph holds only those rows of the output layer."""

import copy
import shutil

import pytest
import torch

from conftest import MAX_NEW_TOKENS, TINY_REPORTS, TRAINED_IMAGES, noise_image, rerandomized, tiny_config
from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration, CLIPT5Processor
from modeling_cliptt5.cli import release as release_cli
from modeling_cliptt5.training.report_vocabulary import report_token_ids
from training_helpers import make_tiny_dataset

# Every third token of the tiny vocabulary, with pad (the decoder's start), end and unknown.
VOCABULARY = sorted({0, 1, 2, *range(3, 200, 3)})
PROMPTS = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 0, 0, 0], [9, 8, 7, 0, 0]])


@pytest.fixture(scope="module")
def models():
    """(the whole vocabulary, the same weights limited to VOCABULARY)"""
    torch.manual_seed(0)
    model = rerandomized(CLIPT5ForConditionalGeneration(tiny_config()).eval())
    limited = copy.deepcopy(model)
    limited.config.report_vocabulary = VOCABULARY
    return model, limited


def test_report_token_ids_are_the_reports_tokens_and_the_special_ones(tiny_tokenizer):
    report = "FINDINGS: The heart is enlarged. IMPRESSION: Cardiomegaly."
    ids = report_token_ids(tiny_tokenizer, [report, report])
    words = set(tiny_tokenizer.convert_tokens_to_ids(tiny_tokenizer.tokenize(report)))
    assert ids == sorted(words | {0, 1, 2})
    assert tiny_tokenizer.convert_tokens_to_ids("▁pneumothorax.") not in ids  # in other reports, not this one


def test_the_config_refuses_a_vocabulary_it_could_not_draft_with_and_saves_one_it_can(tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary.*0 to 199"):
        tiny_config(report_vocabulary=[0, 1, 200])
    with pytest.raises(ValueError, match="end-of-sequence token"):
        tiny_config(report_vocabulary=[0, 2, 7])
    config = tiny_config(report_vocabulary=[9, 1, 0, 9])
    assert config.report_vocabulary == [0, 1, 9]
    config.save_pretrained(tmp_path)
    assert CLIPT5Config.from_pretrained(tmp_path).report_vocabulary == [0, 1, 9]
    assert tiny_config().report_vocabulary is None


def test_a_limited_model_drafts_from_its_vocabulary_alone_and_trains_on_any_report(models):
    model, limited = models
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for settings in (dict(num_beams=1), dict(num_beams=3)):
        free = model.generate(pixel_values=pixel_values, max_new_tokens=30, do_sample=False, **settings)
        drafts = limited.generate(pixel_values=pixel_values, max_new_tokens=30, do_sample=False, **settings)
        assert set(free.flatten().tolist()) - set(VOCABULARY)  # the whole vocabulary's drafts leave it
        assert set(drafts.flatten().tolist()) <= set(VOCABULARY)
    labels = torch.tensor([[4, 5, 7, 1]] * 3)  # 4, 5 and 7 are outside the vocabulary
    model.train(), limited.train()
    try:
        loss = model(pixel_values=pixel_values, labels=labels).loss
        assert torch.isfinite(loss) and torch.equal(limited(pixel_values=pixel_values, labels=labels).loss, loss)
    finally:
        model.eval(), limited.eval()


@pytest.mark.parametrize("prompt", [None, PROMPTS], ids=["image_only", "padded_prompts"])
def test_float32_graphs_of_a_limited_model_give_its_tokens_from_its_rows_alone(models, prompt, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from modeling_cliptt5.inference.onnx_inference import STEP_FILE, OnnxCLIPT5, export_graphs

    model, limited = models
    export_graphs(copy.deepcopy(limited), tmp_path / "limited", weights="float32")
    engine = OnnxCLIPT5(tmp_path / "limited", limited.config, limited.generation_config, threads=1,
                        weights="float32")
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mask = None if prompt is None else (prompt != 0).long()
    for settings in (dict(num_beams=1), dict(num_beams=3)):
        expected = limited.generate(pixel_values=pixel_values, input_ids=prompt, attention_mask=mask,
                                    max_new_tokens=30, do_sample=False, **settings)
        tokens = engine.generate(pixel_values=pixel_values, input_ids=prompt, attention_mask=mask,
                                 max_new_tokens=30, do_sample=False, **settings)
        assert len({tuple(row.tolist()) for row in expected}) == 3 and torch.equal(tokens, expected)
    # The step graph's weights: the output layer's rows of the vocabulary only (the embedding keeps every row).
    export_graphs(copy.deepcopy(model), tmp_path / "whole", weights="float32")
    weights = {}
    for name in ("limited", "whole"):
        graph = onnx.load(str(tmp_path / name / STEP_FILE)).graph
        weights[name] = sum(initializer.ByteSize() for initializer in graph.initializer)
    left_out = (200 - len(VOCABULARY)) * model.config.d_model * 4
    assert weights["whole"] - weights["limited"] == pytest.approx(left_out, rel=0.02)


def trained_drafts(release):
    processor = CLIPT5Processor.from_pretrained(release)
    model = CLIPT5ForConditionalGeneration.from_pretrained(release).eval()
    inputs = processor(images=[noise_image(seed) for seed in range(TRAINED_IMAGES)], return_tensors="pt")
    return model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=MAX_NEW_TOKENS, num_beams=1)


def test_cliptt5_release_limits_a_release_to_its_reports_tokens_and_lifts_the_limit(trained_release_dir, tmp_path,
                                                                                     capsys):
    release = tmp_path / "release"
    shutil.copytree(trained_release_dir, release)
    dataset = make_tiny_dataset(tmp_path / "dataset")
    before = trained_drafts(release)
    assert release_cli.main([str(release), "--report-vocabulary", str(dataset)]) == 0
    vocabulary = CLIPT5Config.from_pretrained(release).report_vocabulary
    tokenizer = CLIPT5Processor.from_pretrained(release).tokenizer
    assert vocabulary == report_token_ids(tokenizer, TINY_REPORTS) and len(vocabulary) < len(tokenizer) / 2
    assert f"drafts may use {len(vocabulary)} of {len(tokenizer)} tokens" in capsys.readouterr().out
    # A trained model writes its training reports' words: limited to them, it drafts exactly what it drafted.
    assert torch.equal(trained_drafts(release), before)
    assert release_cli.main([str(release), "--full-vocabulary"]) == 0
    assert CLIPT5Config.from_pretrained(release).report_vocabulary is None


def test_cliptt5_release_names_a_missing_dataset_and_leaves_the_release_as_it_was(trained_release_dir, tmp_path,
                                                                                    capsys):
    release = tmp_path / "release"
    shutil.copytree(trained_release_dir, release)
    config_text = (release / "config.json").read_text()
    assert release_cli.main([str(release), "--report-vocabulary", str(tmp_path / "no_such_dataset")]) == 1
    assert "no_such_dataset: no converted dataset folder" in capsys.readouterr().err
    assert (release / "config.json").read_text() == config_text

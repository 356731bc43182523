"""The ONNX Runtime fast path (modeling_cliptt5/inference/onnx_inference.py): the exported graphs decode as the model does."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import LogitsProcessorList

from conftest import MAX_NEW_TOKENS, TRAINED_IMAGES, PreferSaying, noise_image, rerandomized, tiny_config
from modeling_cliptt5 import CLIPT5ForConditionalGeneration, CLIPT5Processor
from modeling_cliptt5.inference.engines import OnnxEngine, TorchEngine
from modeling_cliptt5.inference.fast_inference import is_optimized, load_for_cpu
from modeling_cliptt5.inference.onnx_inference import OnnxCLIPT5, export_graphs, export_key, exported_folder
from modeling_cliptt5.app.report_drafter import ReportDrafter

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from modeling_cliptt5.cli import generate

PROMPTS = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 0, 0, 0], [9, 8, 7, 0, 0]])


@pytest.fixture(scope="module")
def random_model():
    """Large random weights: greedy tokens vary from step to step and image to image (a fresh model repeats one)."""
    torch.manual_seed(0)
    return rerandomized(CLIPT5ForConditionalGeneration(tiny_config()).eval())


@pytest.fixture(scope="module")
def float32_graphs(random_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_float32")
    export_graphs(random_model, folder, weights="float32")  # traced with batch 2 and a 3-token prompt
    return OnnxCLIPT5(folder, random_model.config, random_model.generation_config, threads=1, weights="float32")


def torch_greedy(model, pixel_values, prompt=None, **settings):
    mask = None if prompt is None else (prompt != 0).long()
    return model.generate(pixel_values=pixel_values, input_ids=prompt, attention_mask=mask, num_beams=1,
                          do_sample=False, **settings)


@pytest.mark.parametrize("prompt", [None, PROMPTS], ids=["image_only", "padded_prompts"])
def test_float32_graphs_decode_the_same_tokens_as_generate(random_model, float32_graphs, prompt):
    # Batch 3, prompts of 5 tokens and 30 steps: none of these sizes is the one the graphs were traced with.
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = torch_greedy(random_model, pixel_values, prompt, max_new_tokens=30)
    mask = None if prompt is None else (prompt != 0).long()
    tokens = float32_graphs.generate(pixel_values=pixel_values, input_ids=prompt, attention_mask=mask,
                                     max_new_tokens=30)
    assert len({tuple(row.tolist()) for row in expected}) == 3 and len(set(expected[0].tolist())) > 3
    assert torch.equal(tokens, expected)


@pytest.mark.parametrize("settings", [dict(num_views=2, projector_type="mlp"),
                                      dict(image_tokens="pooled"),
                                      dict(image_token_pooling=2)], ids=["two_views_mlp", "pooled", "pooled_grid"])
def test_other_image_token_settings_export_exactly(settings, tmp_path):
    torch.manual_seed(0)
    model = rerandomized(CLIPT5ForConditionalGeneration(tiny_config(**settings)).eval())
    export_graphs(model, tmp_path, weights="float32")
    engine = OnnxCLIPT5(tmp_path, model.config, model.generation_config, threads=1, weights="float32")
    views = (2,) if settings.get("num_views") == 2 else ()
    pixel_values = torch.randn(3, *views, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    expected = torch_greedy(model, pixel_values, PROMPTS, max_new_tokens=12)
    tokens = engine.generate(pixel_values=pixel_values, input_ids=PROMPTS, attention_mask=(PROMPTS != 0).long(),
                             max_new_tokens=12)
    assert len({tuple(row.tolist()) for row in expected}) > 1 and torch.equal(tokens, expected)


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")  # the default is what is tested
def test_draft_length_defaults_follow_generate(random_model, float32_graphs):
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    config = float32_graphs.generation_config
    for max_length in (None, 9):  # no length setting at all: 20 new tokens; max_length counts the start token
        config.max_length = max_length
        try:
            expected = torch_greedy(random_model, pixel_values)
            assert torch.equal(float32_graphs.generate(pixel_values=pixel_values), expected)
            assert expected.shape[1] == (max_length or 21)
        finally:
            config.max_length = None


def test_end_of_sequence_min_new_tokens_and_padding_follow_generate(random_model, float32_graphs):
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    free = torch_greedy(random_model, pixel_values, max_new_tokens=30)
    # Call a token the first row writes at step 6 the end of sequence: rows then stop at different steps.
    eos = int(free[0, 6])
    float32_graphs.generation_config.eos_token_id = eos
    try:
        stopped = torch_greedy(random_model, pixel_values, eos_token_id=eos, max_new_tokens=30)
        assert stopped[0, 6] == eos and (stopped[0, 7:] == random_model.config.pad_token_id).all()
        assert torch.equal(float32_graphs.generate(pixel_values=pixel_values, max_new_tokens=30), stopped)
        held_back = torch_greedy(random_model, pixel_values, eos_token_id=eos, max_new_tokens=30, min_new_tokens=10)
        assert not (held_back[:, 1:11] == eos).any() and not torch.equal(held_back, stopped)
        assert torch.equal(float32_graphs.generate(pixel_values=pixel_values, max_new_tokens=30, min_new_tokens=10),
                           held_back)
    finally:
        float32_graphs.generation_config.eos_token_id = random_model.generation_config.eos_token_id


def test_teacher_forced_logits_match_the_model_forward(random_model, float32_graphs):
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    decoder_input_ids = torch.randint(0, random_model.config.vocab_size, (2, 12),
                                      generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = random_model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(float32_graphs.teacher_forced_logits(pixel_values, decoder_input_ids), expected,
                               rtol=1e-4, atol=1e-3)  # float32 sums in another order


def test_each_attention_is_one_fused_node_and_a_step_copies_no_cross_keys(random_model, float32_graphs):
    from modeling_cliptt5.inference.onnx_inference import ENCODER_FILE, STEP_FILE, VISION_FILE

    config = random_model.config
    nodes = {name: onnx.load(os.path.join(float32_graphs.name_or_path, name)).graph.node
             for name in (VISION_FILE, ENCODER_FILE, STEP_FILE)}
    fused = {name: sum(node.op_type == "MultiHeadAttention" for node in graph) for name, graph in nodes.items()}
    assert fused == {VISION_FILE: config.vision_config.num_hidden_layers, ENCODER_FILE: config.num_layers,
                     STEP_FILE: 2 * config.num_decoder_layers}  # self and cross attention in each decoder layer
    assert not any(node.op_type == "Softmax" for graph in nodes.values() for node in graph)
    # a Concat of one input is a copy: the cross keys and values go into the attention as they come in
    step_inputs = {node.input[0] for node in nodes[STEP_FILE] if node.op_type == "Concat" and len(node.input) == 1}
    assert not any(name.startswith("cross_") for name in step_inputs), step_inputs
    # the model itself attends as before the export
    assert random_model.config._attn_implementation != "cliptt5_onnx_export"


DECODING_SETTINGS = [dict(num_beams=3), dict(num_beams=3, no_repeat_ngram_size=2, length_penalty=0.5),
                     dict(num_beams=2, num_return_sequences=2), dict(repetition_penalty=1.3),
                     dict(do_sample=True, top_k=5)]


@pytest.mark.parametrize("prompt", [None, PROMPTS], ids=["image_only", "padded_prompts"])
@pytest.mark.parametrize("settings", DECODING_SETTINGS, ids=["beams", "beams_ngram_length", "returned_sequences",
                                                             "repetition_penalty", "sampling"])
def test_every_decoding_setting_gives_generates_tokens(random_model, float32_graphs, prompt, settings):
    """transformers' generate() drives the step graph: beams, penalties and sampling mean the same on both engines."""
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = None if prompt is None else (prompt != 0).long()
    torch.manual_seed(3)  # sampling draws from the global generator on both engines
    expected = random_model.generate(pixel_values=pixel_values, input_ids=prompt, attention_mask=mask,
                                     max_new_tokens=30, **settings)
    torch.manual_seed(3)
    tokens = float32_graphs.generate(pixel_values=pixel_values, input_ids=prompt, attention_mask=mask,
                                     max_new_tokens=30, **settings)
    greedy = torch_greedy(random_model, pixel_values, prompt, max_new_tokens=30)
    assert expected.shape[0] == 3 * settings.get("num_return_sequences", 1)
    assert expected.shape != greedy.shape or not torch.equal(expected, greedy)  # the setting changes the drafts
    assert torch.equal(tokens, expected)


def test_a_releases_own_decoding_settings_are_followed(random_model, float32_graphs):
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    config = float32_graphs.generation_config
    config.num_beams, config.repetition_penalty = 3, 1.3  # a release whose generation config asks for them
    try:
        expected = random_model.generate(pixel_values=pixel_values, max_new_tokens=20, num_beams=3,
                                         repetition_penalty=1.3)
        assert torch.equal(float32_graphs.generate(pixel_values=pixel_values, max_new_tokens=20), expected)
    finally:
        config.num_beams, config.repetition_penalty = 1, 1.0


def test_no_sentence_twice_cuts_the_same_loops_on_both_engines(random_model, float32_graphs):
    """A release's no_repeat_sentence (NoRepeatSentenceLogitsProcessor) guards the fast path's drafts too."""
    config = random_model.generation_config  # the graphs draft with the same object
    guard = {"no_repeat_sentence": True, "sentence_end_token_ids": [7], "section_token_ids": [],
             "number_token_ids": []}
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    settings = dict(max_new_tokens=20, logits_processor=LogitsProcessorList([PreferSaying([5, 6, 7])]))
    try:
        for name, value in guard.items():
            setattr(config, name, value)
        tokens = float32_graphs.generate(pixel_values=pixel_values, **settings)
        assert torch.equal(tokens, random_model.generate(pixel_values=pixel_values, **settings))
        looped = float32_graphs.generate(pixel_values=pixel_values, no_repeat_sentence=False, **settings)
    finally:
        for name in guard:
            delattr(config, name)
    assert looped[:, 1:10].tolist() == [[5, 6, 7] * 3] * 2  # "5 6 7" said three times
    for row in tokens.tolist():
        assert row[1:6] == [5, 6, 7, 5, 6] and row[6] != 7  # said once, then not ended the same way again


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx_cache")


def test_int8_export_is_cached_and_agrees_with_float32(trained_release_dir, onnx_cache):
    folder = exported_folder(trained_release_dir, "int8", onnx_cache)
    assert json.loads((folder / "done.json").read_text())["weights"] == "int8"
    for name in ("encoder.onnx", "decoder_step.onnx"):
        graph = onnx.load(str(folder / name)).graph
        weights = {initializer.name for initializer in graph.initializer}
        assert "MatMulInteger" in {node.op_type for node in graph.node}
        # Every product with a weight matrix is int8; float MatMuls left are attention's (activations only).
        assert not [node.name for node in graph.node if node.op_type in ("MatMul", "Gemm") and weights & set(node.input)]

    engine = OnnxCLIPT5.from_pretrained(trained_release_dir, cache_dir=onnx_cache)
    assert list(onnx_cache.iterdir()) == [folder]  # loaded from the cache, not exported again
    processor = CLIPT5Processor.from_pretrained(trained_release_dir)
    pixel_values = processor(images=[noise_image(seed) for seed in range(TRAINED_IMAGES)])["pixel_values"]
    reference = CLIPT5ForConditionalGeneration.from_pretrained(trained_release_dir).eval()
    expected = reference.generate(pixel_values=pixel_values, max_new_tokens=MAX_NEW_TOKENS)
    tokens = engine.generate(pixel_values=pixel_values, max_new_tokens=MAX_NEW_TOKENS)
    assert len({tuple(row.tolist()) for row in expected}) >= 5
    # As for PyTorch's int8 layers (test_generate.py): a 32-wide model is far more sensitive to int8 activations
    # than a full-size one, so a rare token may flip.
    identical = sum(torch.equal(a, b) for a, b in zip(tokens, expected))
    assert identical >= 8, identical


def test_a_changed_release_is_exported_again(trained_release_dir, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(trained_release_dir, release)
    key = export_key(release, "int8")
    assert export_key(release, "float32") != key
    os.utime(release / "model.safetensors", ns=(1, 1))  # the weights were rewritten
    assert export_key(release, "int8") != key


def test_a_failed_export_names_the_release_and_leaves_nothing_behind(tmp_path):
    release = tmp_path / "broken"
    release.mkdir()
    (release / "model.safetensors").write_bytes(b"not a safetensors file")
    (release / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match=f"ONNX export of {release} failed"):
        exported_folder(release, "int8", cache)
    assert list(cache.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        exported_folder(tmp_path, "int8", cache)


def test_an_export_finished_meanwhile_by_another_process_is_kept(trained_release_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    target = cache / export_key(trained_release_dir, "int8")

    def other_process_finishes_first(command, **kwargs):
        target.mkdir(parents=True)
        (target / "done.json").write_text('{"by": "the other process"}')
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", other_process_finishes_first)
    assert exported_folder(trained_release_dir, "int8", cache) == target
    assert json.loads((target / "done.json").read_text()) == {"by": "the other process"}
    assert list(cache.iterdir()) == [target]  # this process's half of the work is gone


def test_optimize_drafts_on_onnx_and_falls_back_to_pytorch_int8_without_onnxruntime(trained_release_dir, onnx_cache,
                                                                                     monkeypatch):
    monkeypatch.setenv("CLIPT5_ONNX_CACHE", str(onnx_cache))
    model = load_for_cpu(trained_release_dir)
    assert isinstance(model, OnnxCLIPT5) and OnnxEngine(model).name == "ONNX Runtime int8"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = load_for_cpu(trained_release_dir)
    assert is_optimized(fallback) and TorchEngine(fallback).name == "PyTorch int8"
    assert any("pip install 'cliptt5[fast]'" in str(warning.message) for warning in caught)


def test_an_onnxruntime_older_than_the_int8_graphs_need_falls_back_and_says_so(trained_release_dir, onnx_cache,
                                                                                 monkeypatch):
    """onnxruntime 1.17-1.23 refuse the int8 vision graph's ConvInteger when a session loads (checked by hand with
    1.17.3, 1.20.1, 1.22.0 and 1.23.2; 1.24.1 and 1.27.0 run it): the fast path says which version it needs."""
    import onnxruntime

    monkeypatch.setenv("CLIPT5_ONNX_CACHE", str(onnx_cache))
    monkeypatch.setattr(onnxruntime, "__version__", "1.23.2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = load_for_cpu(trained_release_dir)
    assert is_optimized(fallback) and TorchEngine(fallback).name == "PyTorch int8"
    assert any("--optimize needs onnxruntime >= 1.24, found 1.23.2" in str(warning.message) for warning in caught)


def test_generate_py_optimize_drafts_with_onnx_runtime(trained_release_dir, onnx_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPT5_ONNX_CACHE", str(onnx_cache))
    inputs = tmp_path / "scans"
    inputs.mkdir()
    for seed in range(3):
        noise_image(seed).save(inputs / f"study{seed}.png")
    output = tmp_path / "fast.jsonl"
    assert generate.main(["--model", str(trained_release_dir), str(inputs), "--optimize",
                          "--output", str(output), "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
    assert "ONNX Runtime int8" in capsys.readouterr().err
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 3
    # The drafts are the engine's own, decoded by the release's processor.
    engine = OnnxCLIPT5.from_pretrained(trained_release_dir, cache_dir=onnx_cache)
    processor = CLIPT5Processor.from_pretrained(trained_release_dir)
    from modeling_cliptt5.images.image_io import open_image

    for row in rows:
        pixel_values = processor(images=[open_image(row["input_files"][0])])["pixel_values"]
        tokens = engine.generate(pixel_values=pixel_values, max_new_tokens=MAX_NEW_TOKENS)
        assert row["report"] == processor.batch_decode_reports(tokens)[0]["text"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        generate.main(["--model", str(trained_release_dir), str(inputs), "--optimize", "--dtype", "bfloat16"])
    assert refused.value.code == 2 and "cliptt5-generate: error: --optimize is a CPU path" in capsys.readouterr().err


def test_the_page_drafts_with_the_same_fast_path(trained_release_dir, onnx_cache, monkeypatch):
    monkeypatch.setenv("CLIPT5_ONNX_CACHE", str(onnx_cache))
    drafter = ReportDrafter.from_pretrained(trained_release_dir, optimize=True)
    assert isinstance(drafter.model, OnnxCLIPT5) and drafter.name.endswith("(ONNX Runtime int8)")
    report, warning = drafter.draft([noise_image(3)])
    processor = CLIPT5Processor.from_pretrained(trained_release_dir)
    tokens = drafter.model.generate(**processor(images=[noise_image(3)]))
    assert warning is None and report.report == processor.batch_decode_reports(tokens)[0]["text"]


def test_float32_graphs_compute_the_finding_head_and_follow_given_findings(tmp_path):
    """With a finding head the encoder graph also gives its probabilities and heatmaps (within 1e-4 of PyTorch) and
    takes the caller's findings: the tokens equal generate()'s with the head's decisions and with given findings."""
    names = ["Cardiomegaly", "Pleural Effusion", "Lung Lesion"]
    torch.manual_seed(0)
    model = rerandomized(CLIPT5ForConditionalGeneration(tiny_config(
        vocab_size=200, finding_head=True, finding_labels=names, finding_thresholds=[0.3, 0.5, 0.7]))).eval()
    export_graphs(model, tmp_path, weights="float32")
    engine = OnnxCLIPT5(tmp_path, model.config, model.generation_config, threads=1, weights="float32")
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    expected = model.predict_findings(pixel_values=pixels)
    for findings in (None, [["Lung Lesion"], [], ["Cardiomegaly", "Pleural Effusion"]],
                     [{"Cardiomegaly": False}, {}, {"Lung Lesion": True}]):
        tokens, head, _ = engine.generate_with_findings(pixel_values=pixels, max_new_tokens=10, findings=findings)
        assert torch.equal(tokens, model.generate(pixel_values=pixels, max_new_tokens=10, findings=findings))
        torch.testing.assert_close(head.probabilities, expected.probabilities, atol=1e-4, rtol=0)
        torch.testing.assert_close(head.maps, expected.maps, atol=1e-4, rtol=0)
        assert torch.equal(head.present, expected.present)
    assert not torch.equal(*[engine.generate(pixel_values=pixels[:1], max_new_tokens=10, findings=given)
                             for given in ([names], [[]])])  # the findings reach the decoder
    with pytest.raises(ValueError, match=r"unknown finding name\(s\) \['Nodule'\]"):
        engine.generate(pixel_values=pixels[:1], findings=[["Nodule"]])


def test_the_engine_takes_the_config_of_a_model_that_attends_with_sdpa():
    """A model built in this process names "sdpa" in its config; the step graph holds its own attention, so the
    engine made from that config must not refuse it (as transformers refuses models without SDPA support)."""
    from modeling_cliptt5.inference.onnx_inference import OnnxStepModel

    model = CLIPT5ForConditionalGeneration(tiny_config()).eval()
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"
    assert OnnxStepModel(model.config, step_sessions=None).config is model.config


def test_float32_graphs_of_a_release_that_reads_priors_decode_the_same_tokens_with_and_without_one(
        prior_release_dir, float32_graphs, tmp_path):
    from conftest import TINY_REPORTS, noise_image
    from modeling_cliptt5 import CLIPT5Processor

    model = CLIPT5ForConditionalGeneration.from_pretrained(prior_release_dir).eval()
    processor = CLIPT5Processor.from_pretrained(prior_release_dir)
    export_graphs(model, tmp_path, weights="float32")
    engine = OnnxCLIPT5(tmp_path, model.config, model.generation_config, threads=1, weights="float32")
    images = [noise_image(seed) for seed in range(4)]
    layouts = {"no prior": {}, "images": dict(prior_images=[noise_image(7), None, noise_image(8), noise_image(9)]),
               "reports": dict(prior_reports=[TINY_REPORTS[0], None, TINY_REPORTS[2], TINY_REPORTS[3]]),
               "both": dict(prior_images=[noise_image(7), None, None, noise_image(9)],
                            prior_reports=[TINY_REPORTS[0], TINY_REPORTS[1], None, None])}
    # The vision tower's batches: the studies' images, then only the prior images there are (none for first studies)
    tower_batches = {"no prior": [4], "images": [4, 3], "reports": [4], "both": [4, 2]}
    vision_session = engine.vision_session

    class CountingSession:  # the real session, with the batch size of each call written down
        def run(self, names, feeds):
            seen.append(len(feeds["pixel_values"]))
            return vision_session.run(names, feeds)

    engine.vision_session = CountingSession()
    drafts = {}
    for name, prior in layouts.items():
        inputs = processor(images=images, **prior)
        expected = torch_greedy(model, **inputs, max_new_tokens=12)
        seen = []
        assert torch.equal(engine.generate(**inputs, max_new_tokens=12, num_beams=1, do_sample=False), expected), name
        assert seen == tower_batches[name], name
        drafts[name] = expected
    assert len({tuple(tokens.flatten().tolist()) for tokens in drafts.values()}) == 4  # each prior changes drafts
    with pytest.raises(ValueError, match="does not read a prior study"):  # graphs of a release without priors
        float32_graphs.generate(pixel_values=torch.zeros(1, 3, 32, 32), prior_input_ids=torch.ones(1, 2).long())
    # overrides for the prior the model refuses, the graphs refuse alike
    inputs = processor(images=images, **layouts["images"])
    changes = torch.ones(4, len(model.config.finding_labels), dtype=torch.long)
    for run in (model.generate, engine.generate):
        with pytest.raises(ValueError, match="without a change head"):
            run(**inputs, prior_changes=changes, max_new_tokens=4)
    with pytest.raises(ValueError, match="describe the prior image"):
        engine.generate(**processor(images=images), prior_findings=[[]] * 4, max_new_tokens=4)


def test_float32_graphs_of_a_release_with_a_change_head_decode_the_same_tokens(tiny_tokenizer, tmp_path):
    """The encoder graph holds the change head: a finding present in both studies enters as its change there too."""
    from conftest import HEAD_FINDINGS, noise_image, rerandomized, tiny_processor

    torch.manual_seed(0)
    model = rerandomized(CLIPT5ForConditionalGeneration(tiny_config(
        vocab_size=len(tiny_tokenizer), finding_head=True, finding_labels=HEAD_FINDINGS, reads_prior=True,
        change_head=True, change_head_hidden=16)).eval())
    processor = tiny_processor(tiny_tokenizer)
    export_graphs(model, tmp_path, weights="float32")
    engine = OnnxCLIPT5(tmp_path, model.config, model.generation_config, threads=1, weights="float32")
    inputs = processor(images=[noise_image(seed) for seed in range(3)],
                       prior_images=[noise_image(7), None, noise_image(9)])
    present = [list(HEAD_FINDINGS)] * 3  # every finding in both studies: each course token is the change head's
    expected = torch_greedy(model, **inputs, findings=present, max_new_tokens=12)
    changes = model.change_logits(model.get_vision_features(inputs["pixel_values"]),
                                  model.get_vision_features(inputs["prior_pixel_values"])).argmax(-1)
    overridden = torch_greedy(model, **inputs, findings=present, prior_changes=(changes + 1) % 3, max_new_tokens=12)
    assert not torch.equal(expected, overridden)  # the head's decisions shape the draft
    drafted = engine.generate(**inputs, findings=present, max_new_tokens=12, num_beams=1, do_sample=False)
    assert torch.equal(drafted, expected)
    # the overrides for the prior, as the PyTorch model takes them: the changes, and the prior's findings
    assert torch.equal(engine.generate(**inputs, findings=present, prior_changes=(changes + 1) % 3, max_new_tokens=12,
                                       num_beams=1, do_sample=False), overridden)
    absent_before = torch_greedy(model, **inputs, findings=present, prior_findings=[[]] * 3, max_new_tokens=12)
    assert not torch.equal(absent_before, expected)  # every finding new since the prior: other course tokens
    assert torch.equal(engine.generate(**inputs, findings=present, prior_findings=[[]] * 3, max_new_tokens=12,
                                       num_beams=1, do_sample=False), absent_before)
    with pytest.raises(ValueError, match="prior_changes must have shape"):
        engine.generate(**inputs, prior_changes=changes[:, :2], max_new_tokens=12)


def test_drafting_passes_the_prior_overrides_to_both_engines_and_generate_never_ignores_them(tiny_tokenizer,
                                                                                             tmp_path):
    """draft_batch's generate settings may override the heads' decisions on the prior (prior_changes, as generate()
    takes them); both engines draft what the model's generate() drafts with them. generate() given the encoder
    inputs already built refuses them instead of ignoring them (the engines once passed them that way)."""
    from conftest import HEAD_FINDINGS, tiny_processor
    from modeling_cliptt5.inference.drafting import draft_batch
    from modeling_cliptt5.inference.engines import Release

    torch.manual_seed(0)
    model = rerandomized(CLIPT5ForConditionalGeneration(tiny_config(
        vocab_size=len(tiny_tokenizer), finding_head=True, finding_labels=HEAD_FINDINGS, reads_prior=True,
        change_head=True, change_head_hidden=16)).eval())
    processor = tiny_processor(tiny_tokenizer)
    images, priors = [noise_image(seed) for seed in range(3)], [noise_image(7), None, noise_image(9)]
    inputs = processor(images=images, prior_images=priors)
    present = [list(HEAD_FINDINGS)] * 3
    changes = model.change_logits(model.get_vision_features(inputs["pixel_values"]),
                                  model.get_vision_features(inputs["prior_pixel_values"])).argmax(-1)
    overridden = processor.batch_decode_reports(torch_greedy(model, **inputs, findings=present,
                                                             prior_changes=(changes + 1) % 3, max_new_tokens=12))
    export_graphs(model, tmp_path, weights="float32")
    graphs = OnnxCLIPT5(tmp_path, model.config, model.generation_config, threads=1, weights="float32")
    settings = {"max_new_tokens": 12, "num_beams": 1, "do_sample": False}
    for engine in (TorchEngine(model), OnnxEngine(graphs)):
        release = Release(engine, processor)
        batch_priors = [None if image is None else (image, None) for image in priors]
        drafts = draft_batch(release, images, None, {**settings, "prior_changes": (changes + 1) % 3}, present,
                             batch_priors)
        assert [draft.report for draft in drafts] == [text["text"] for text in overridden], engine.name
        heads_own = draft_batch(release, images, None, settings, present, batch_priors)
        assert [draft.report for draft in heads_own] != [draft.report for draft in drafts], engine.name

    embeds, mask = model.build_encoder_inputs(inputs["pixel_values"], None, None, None, present,
                                              prior_pixel_values=inputs["prior_pixel_values"],
                                              prior_image_mask=inputs["prior_image_mask"])
    with pytest.raises(ValueError, match="prior_changes cannot go with inputs_embeds"):
        model.generate(inputs_embeds=embeds, attention_mask=mask, prior_changes=changes, max_new_tokens=4)

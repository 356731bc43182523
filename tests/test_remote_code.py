"""A release folder loads with transformers + torch alone (trust_remote_code), also on the other major version."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import REPO_ROOT, subprocess_env

MINIMAL_PYTHON = Path(os.environ.get("CLIPT5_MINIMAL_PYTHON", REPO_ROOT / ".venv-minimal" / "bin" / "python"))

# Runs in a fresh interpreter where the package cannot be imported: only the release's own code is there.
LOAD_AND_GENERATE = r"""
import json, sys
sys.modules["modeling_cliptt5"] = None
import torch
from safetensors.torch import load_file, save_file
import transformers
from transformers import AutoModel, AutoModelForSeq2SeqLM
release, inputs_file, output_file, with_processor = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
inputs = load_file(inputs_file)
result = {"transformers": transformers.__version__}
outputs = {}
for auto_class in (AutoModel, AutoModelForSeq2SeqLM):
    model = auto_class.from_pretrained(release, trust_remote_code=True).eval()
    result[auto_class.__name__] = [type(model).__name__, type(model).__module__]
    outputs[auto_class.__name__] = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=12, num_beams=2)
    if model.config.finding_head:
        outputs["finding_probabilities"] = model.predict_findings(pixel_values=inputs["pixel_values"]).probabilities
        outputs["finding_maps"] = model.predict_findings(pixel_values=inputs["pixel_values"]).maps
        given = [[model.config.finding_labels[0]]] + [[]] * (inputs["pixel_values"].shape[0] - 1)
        outputs["with_findings"] = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=12,
                                                  findings=given)
    if getattr(model.config, "reads_prior", False):
        prior = {name: tensor for name, tensor in inputs.items() if name.startswith("prior_")}
        outputs["with_prior"] = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=12, **prior)
    if "loop" in inputs:  # a logits processor that makes the model say inputs["loop"] over and over
        loop = inputs["loop"].tolist()
        class SayAgain(transformers.LogitsProcessor):
            def __call__(self, input_ids, scores):
                for row, ids in enumerate(input_ids.tolist()):
                    last = loop.index(ids[-1]) if ids[-1] in loop else -1
                    scores[row, loop[(last + 1) % len(loop)]] += 1000.0
                return scores
        for name, guard in (("guarded", {}), ("looped", {"no_repeat_sentence": False})):
            outputs[name] = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=16, **guard,
                                           logits_processor=transformers.LogitsProcessorList([SayAgain()]))
if with_processor:
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(release, trust_remote_code=True)
    result["processor"] = [type(processor).__name__, type(processor).__module__, type(processor.image_processor).__name__]
    outputs["processor_pixels"] = processor(images=Image.open(sys.argv[5]))["pixel_values"]
save_file({name: tensor.contiguous() for name, tensor in outputs.items()}, output_file)
print(json.dumps(result))
"""


def python_of(major):
    """The interpreter with this transformers major ("this") or the other one ("other": the minimal environment,
    which CI must have and a developer may not yet: a failure in CI, a skip elsewhere)."""
    python = Path(sys.executable) if major == "this" else MINIMAL_PYTHON
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{MINIMAL_PYTHON} missing: .ci/run must build it (make minimal-env)")
        pytest.skip(f"{MINIMAL_PYTHON} missing: build it with `make minimal-env`")
    return python


def run_in_fresh_process(python, release, tmp_path, pixel_values, image_path=None, pythonpath="", prior=None,
                         loop=None):
    inputs_file, output_file = tmp_path / "inputs.safetensors", tmp_path / "outputs.safetensors"
    save_file({"pixel_values": pixel_values.contiguous(),
               **{name: tensor.contiguous() for name, tensor in (prior or {}).items()},
               **({} if loop is None else {"loop": torch.tensor(loop)})}, inputs_file)
    command = [str(python), "-c", LOAD_AND_GENERATE, str(release), str(inputs_file), str(output_file),
               "1" if image_path else "0"] + ([str(image_path)] if image_path else [])
    completed = subprocess.run(command, capture_output=True, text=True, env={**subprocess_env(), "PYTHONPATH": pythonpath},
                               cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1]), load_file(output_file)


def test_release_folder_holds_everything_and_no_pickle(tiny_release_dir):
    files = {path.name for path in Path(tiny_release_dir).iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    # exactly the three remote-code files: configuration, modeling, processing
    assert {name for name in files if name.endswith(".py")} == {"configuration_cliptt5.py", "modeling_cliptt5.py",
                                                                "processing_cliptt5.py"}
    assert {"processor_config.json", "preprocessor_config.json"} & files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    auto_map = json.loads((Path(tiny_release_dir) / "config.json").read_text())["auto_map"]
    for auto_class in ("AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM", "AutoModelForImageTextToText"):
        assert auto_class in auto_map


def test_auto_classes_load_the_release_without_the_package(tiny_release_dir, tiny_model, tiny_processor_fixture, tmp_path):
    image_path = tmp_path / "study.png"
    Image.effect_noise((40, 52), 60).save(image_path)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = tiny_model.generate(pixel_values=pixel_values, max_new_tokens=12, num_beams=2)
    result, outputs = run_in_fresh_process(sys.executable, tiny_release_dir, tmp_path, pixel_values, image_path)
    for auto_class in ("AutoModel", "AutoModelForSeq2SeqLM"):
        class_name, module = result[auto_class]
        assert class_name == "CLIPT5ForConditionalGeneration"
        assert module.startswith("transformers_modules."), module  # the release's own code, not the package
        assert torch.equal(outputs[auto_class], expected)
    assert result["processor"][0] == "CLIPT5Processor" and result["processor"][1].startswith("transformers_modules.")
    assert result["processor"][2] == "CLIPT5ImageProcessor"
    torch.testing.assert_close(outputs["processor_pixels"], tiny_processor_fixture(images=Image.open(image_path))["pixel_values"])


def test_release_runs_on_the_other_transformers_major(tiny_release_dir, tiny_model, tmp_path):
    """The minimal environment holds torch and transformers of the other major version and nothing else
    (`make minimal-env`, run by .ci/run)."""
    python_of("other")
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    expected = tiny_model.generate(pixel_values=pixel_values, max_new_tokens=12, num_beams=2)
    result, outputs = run_in_fresh_process(MINIMAL_PYTHON, tiny_release_dir, tmp_path, pixel_values)
    import transformers

    assert result["transformers"].split(".")[0] != transformers.__version__.split(".")[0]
    freeze = subprocess.run([str(MINIMAL_PYTHON), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    installed = {line.split("==")[0].lower() for line in freeze.splitlines() if "==" in line}
    assert not installed & {"open-clip-torch", "timm", "torchvision", "datasets", "accelerate", "pillow"}
    for auto_class in ("AutoModel", "AutoModelForSeq2SeqLM"):
        assert result[auto_class][0] == "CLIPT5ForConditionalGeneration"
        assert torch.equal(outputs[auto_class], expected)


def test_the_processor_of_a_release_written_here_loads_on_the_other_major(tiny_release_dir, tiny_processor_fixture,
                                                                         tmp_path):
    """The processor needs PIL besides torch and transformers: the minimal environment borrows this one's Pillow
    (a folder holding only Pillow) for this test alone. transformers 5 names the trained tokenizer's class
    "TokenizersBackend", which 4.x lacks; the processor saves the name both read."""
    import PIL

    python_of("other")
    pil_only = tmp_path / "pil_only"
    pil_only.mkdir()
    site_packages = Path(PIL.__file__).parent.parent
    for name in ["PIL", "pillow.libs", *(path.name for path in site_packages.glob("pillow-*.dist-info"))]:
        if (site_packages / name).exists():  # the package, its bundled libraries, its metadata (transformers asks)
            (pil_only / name).symlink_to(site_packages / name)
    image_path = tmp_path / "study.png"
    Image.effect_noise((40, 52), 60).save(image_path)
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    result, outputs = run_in_fresh_process(MINIMAL_PYTHON, tiny_release_dir, tmp_path, pixel_values, image_path,
                                           pythonpath=str(pil_only))
    assert result["processor"][0] == "CLIPT5Processor" and result["processor"][2] == "CLIPT5ImageProcessor"
    torch.testing.assert_close(outputs["processor_pixels"],
                               tiny_processor_fixture(images=Image.open(image_path))["pixel_values"])


@pytest.mark.parametrize("major", ["this", "other"])
def test_a_release_with_a_finding_head_runs_without_the_package_on_both_majors(head_release_dir, tmp_path, major):
    from modeling_cliptt5 import CLIPT5ForConditionalGeneration

    python = python_of(major)
    model = CLIPT5ForConditionalGeneration.from_pretrained(head_release_dir).eval()
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    _, outputs = run_in_fresh_process(python, head_release_dir, tmp_path, pixel_values)
    head = model.predict_findings(pixel_values=pixel_values)
    torch.testing.assert_close(outputs["finding_probabilities"], head.probabilities, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["finding_maps"], head.maps, atol=1e-5, rtol=1e-5)
    assert torch.equal(outputs["AutoModel"], model.generate(pixel_values=pixel_values, max_new_tokens=12, num_beams=2))
    given = [[model.config.finding_labels[0]], []]
    assert torch.equal(outputs["with_findings"],
                       model.generate(pixel_values=pixel_values, max_new_tokens=12, findings=given))


@pytest.mark.parametrize("major", ["this", "other"])
def test_a_release_that_reads_priors_drafts_with_a_prior_without_the_package_on_both_majors(prior_release_dir, tmp_path,
                                                                                           major):
    from conftest import TINY_REPORTS, noise_image
    from modeling_cliptt5 import CLIPT5ForConditionalGeneration, CLIPT5Processor

    python = python_of(major)
    model = CLIPT5ForConditionalGeneration.from_pretrained(prior_release_dir).eval()
    inputs = CLIPT5Processor.from_pretrained(prior_release_dir)(
        images=[noise_image(0), noise_image(1)], prior_images=[noise_image(2), None],
        prior_reports=[TINY_REPORTS[0], TINY_REPORTS[1]])
    prior = {name: tensor for name, tensor in inputs.items() if name.startswith("prior_")}
    _, outputs = run_in_fresh_process(python, prior_release_dir, tmp_path, inputs["pixel_values"], prior=prior)
    expected = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=12, **prior)
    assert torch.equal(outputs["with_prior"], expected)
    assert not torch.equal(expected, model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=12))


def test_loading_a_folder_that_is_not_a_release_fails_clearly(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from modeling_cliptt5 import CLIPT5ForConditionalGeneration

    T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_ff=32, d_kv=4, num_heads=4, num_layers=1)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a CLIP-T5 release"):
        CLIPT5ForConditionalGeneration.from_pretrained(tmp_path)


@pytest.mark.parametrize("major", ["this", "other"])
def test_a_release_with_a_change_head_drafts_by_it_without_the_package_on_both_majors(tiny_tokenizer, tmp_path,
                                                                                      major):
    from conftest import HEAD_FINDINGS, TINY_REPORTS, noise_image, rerandomized, tiny_config, tiny_processor
    from modeling_cliptt5 import CLIPT5ForConditionalGeneration

    python = python_of(major)
    torch.manual_seed(0)
    model = rerandomized(CLIPT5ForConditionalGeneration(tiny_config(
        vocab_size=len(tiny_tokenizer), finding_head=True, finding_labels=HEAD_FINDINGS, reads_prior=True,
        change_head=True, change_head_hidden=16)).eval())
    processor = tiny_processor(tiny_tokenizer)
    release = tmp_path / "release"
    model.save_pretrained(release)
    processor.save_pretrained(release)
    inputs = processor(images=[noise_image(0), noise_image(1)], prior_images=[noise_image(2), noise_image(3)],
                       prior_reports=[TINY_REPORTS[0], TINY_REPORTS[1]])
    prior = {name: tensor for name, tensor in inputs.items() if name.startswith("prior_")}
    _, outputs = run_in_fresh_process(python, release, tmp_path, inputs["pixel_values"], prior=prior)
    assert torch.equal(outputs["with_prior"],
                       model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=12, **prior))


@pytest.mark.parametrize("major", ["this", "other"])
def test_a_release_keeps_its_drafts_from_saying_a_sentence_twice_without_the_package_on_both_majors(
        tiny_tokenizer, tmp_path, major):
    from conftest import PreferSaying, noise_image, tiny_config, tiny_processor
    from modeling_cliptt5 import CLIPT5ForConditionalGeneration
    from modeling_cliptt5.evaluation.repetition import report_repeats
    from modeling_cliptt5.modeling_cliptt5 import use_sentence_repeat_guard
    from transformers import LogitsProcessorList

    python = python_of(major)
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration(tiny_config(vocab_size=len(tiny_tokenizer))).eval()
    processor = tiny_processor(tiny_tokenizer)
    model.generation_config._from_model_config = False  # as training writes a release's generation config
    use_sentence_repeat_guard(model.generation_config, processor.sentence_token_ids())
    release = tmp_path / "release"
    model.save_pretrained(release)
    processor.save_pretrained(release)
    loop = tiny_tokenizer("No pneumothorax.", add_special_tokens=False)["input_ids"]
    pixel_values = processor(images=[noise_image(0), noise_image(1)])["pixel_values"]
    _, outputs = run_in_fresh_process(python, release, tmp_path, pixel_values, loop=loop)
    expected = model.generate(pixel_values=pixel_values, max_new_tokens=16,
                              logits_processor=LogitsProcessorList([PreferSaying(loop)]))
    assert torch.equal(outputs["guarded"], expected)
    assert all(report_repeats(text) == 0 for text in tiny_tokenizer.batch_decode(expected, skip_special_tokens=True))
    assert all(report_repeats(text) >= 2 for text in tiny_tokenizer.batch_decode(outputs["looped"],
                                                                                 skip_special_tokens=True))

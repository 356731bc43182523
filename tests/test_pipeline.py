"""A release drafts with transformers' own pipeline: pipeline("image-text-to-text", model=release,
trust_remote_code=True) takes an image alone, an image and a prompt, or a chat, and answers the report alone."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import MAX_NEW_TOKENS, noise_image, subprocess_env

PROMPT = "Indication: cough"

# Runs in a fresh interpreter where the package cannot be imported: the pipeline comes from the release's own code.
PIPELINE_CALLS = r"""
import functools, http.server, json, os, sys, threading
sys.modules["modeling_cliptt5"] = None
from PIL import Image
from transformers import pipeline
release, max_new_tokens, prompt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
paths = sys.argv[4:]
images = [Image.open(path) for path in paths]
image = images[0]
# The first image served over HTTP on this machine's loopback, as an image URL
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=os.path.dirname(paths[0]))
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_port}/{os.path.basename(paths[0])}"
def attempt(call):  # each call on its own: one that fails is recorded, as "error: ...", and the rest still run
    try:
        return call()
    except Exception as error:
        return f"error: {type(error).__name__}: {error}"
def drafts(result):
    return [record["generated_text"] for record in result]
def chat(*parts):
    return [{"role": "user", "content": [{"type": "image", "image": image}] + [{"type": "text", "text": part}
                                                                               for part in parts]}]
drafter = pipeline("image-text-to-text", model=release, trust_remote_code=True)
untasked = attempt(lambda: pipeline(model=release, trust_remote_code=True))  # the release names its task
outputs = {
    "class": type(drafter).__name__, "module": type(drafter).__module__,
    "untasked_class": untasked if isinstance(untasked, str) else type(untasked).__name__,
    "image": attempt(lambda: drafts(drafter(images=image, max_new_tokens=max_new_tokens))),
    "empty_prompt": attempt(lambda: drafts(drafter(images=image, text="", max_new_tokens=max_new_tokens))),
    "batch": attempt(lambda: drafts(drafter(images=images, max_new_tokens=max_new_tokens))),
    "path": attempt(lambda: drafts(drafter(paths[0], max_new_tokens=max_new_tokens))),
    "paths": attempt(lambda: drafts(drafter(images=paths, max_new_tokens=max_new_tokens))),
    "url": attempt(lambda: drafts(drafter(url, max_new_tokens=max_new_tokens))),
    "prompt": attempt(lambda: drafts(drafter(images=image, text=prompt, max_new_tokens=max_new_tokens))),
    "full_text": attempt(lambda: drafts(drafter(images=image, text=prompt, max_new_tokens=max_new_tokens,
                                                return_full_text=True))),
    "header_prompt": attempt(lambda: drafts(drafter(images=image, text="FINDINGS:", max_new_tokens=max_new_tokens,
                                                    return_full_text=False))),
    "chat": attempt(lambda: drafter(text=chat(prompt), max_new_tokens=max_new_tokens)[0]["generated_text"][-1]),
    "image_chat": attempt(lambda: drafter(text=chat(), max_new_tokens=max_new_tokens)[0]["generated_text"][-1]),
}
print(json.dumps(outputs))
"""


@pytest.fixture(scope="module")
def study_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline_images")
    paths = []
    for seed in (0, 3):  # trained images: the drafts are real, different reports
        paths.append(folder / f"study_{seed}.png")
        noise_image(seed).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def pipeline_outputs(trained_release_dir, study_images, tmp_path_factory):
    command = [sys.executable, "-c", PIPELINE_CALLS, str(trained_release_dir), str(MAX_NEW_TOKENS), PROMPT,
               *map(str, study_images)]
    completed = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(),
                               cwd=tmp_path_factory.mktemp("pipeline_run"), timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def drafted_by_generate(trained_release_dir, study_images):
    """What model.generate writes (greedy, MAX_NEW_TOKENS) for the same images, decoded as the pipeline decodes."""
    from PIL import Image

    from modeling_cliptt5 import CLIPT5ForConditionalGeneration, CLIPT5Processor

    model = CLIPT5ForConditionalGeneration.from_pretrained(trained_release_dir).eval()
    processor = CLIPT5Processor.from_pretrained(trained_release_dir)
    images = [Image.open(path) for path in study_images]

    def draft(images, text=None):
        with torch.no_grad():
            sequences = model.generate(**processor(images=images, text=text), max_new_tokens=MAX_NEW_TOKENS,
                                       do_sample=False, num_beams=1)
        return processor.batch_decode(sequences, skip_special_tokens=True)

    return {"image": draft(images[:1]), "batch": draft(images), "prompt": draft(images[:1], PROMPT),
            "header_prompt": draft(images[:1], "FINDINGS:")}


def test_the_release_brings_its_own_pipeline(pipeline_outputs):
    assert pipeline_outputs["class"] == pipeline_outputs["untasked_class"] == "CLIPT5ReportPipeline"
    assert pipeline_outputs["module"].startswith("transformers_modules."), pipeline_outputs["module"]


def test_an_image_alone_drafts_what_generate_drafts(pipeline_outputs, drafted_by_generate):
    expected = drafted_by_generate["image"]
    assert expected[0].strip()  # a real report, not an empty draft
    assert pipeline_outputs["image"] == expected
    assert pipeline_outputs["empty_prompt"] == expected  # an empty prompt is no prompt
    assert pipeline_outputs["batch"] == drafted_by_generate["batch"]
    assert drafted_by_generate["batch"][0] != drafted_by_generate["batch"][1]
    assert pipeline_outputs["image_chat"] == {"role": "assistant", "content": expected[0]}


def test_a_path_or_url_drafts_what_the_image_drafts(pipeline_outputs, drafted_by_generate):
    """As transformers' image pipelines, a file path or an http(s) URL stands for the image."""
    assert pipeline_outputs["path"] == drafted_by_generate["image"]
    assert pipeline_outputs["paths"] == drafted_by_generate["batch"]
    assert pipeline_outputs["url"] == drafted_by_generate["image"]


def test_a_prompt_is_read_and_not_glued_onto_the_report(pipeline_outputs, drafted_by_generate):
    expected = drafted_by_generate["prompt"]
    assert expected[0].strip()
    assert pipeline_outputs["prompt"] == expected
    assert not pipeline_outputs["prompt"][0].startswith(PROMPT)
    assert pipeline_outputs["chat"] == {"role": "assistant", "content": expected[0]}
    assert pipeline_outputs["full_text"] == [PROMPT + expected[0]]  # asked for: prompt + report


def test_a_report_that_begins_like_its_prompt_keeps_its_beginning(pipeline_outputs, drafted_by_generate):
    """The decoder writes the report alone, so nothing that looks like the prompt is cut from it (transformers'
    pipeline cuts a decoder-only model's echo of the prompt from its output)."""
    expected = drafted_by_generate["header_prompt"]
    assert expected[0].startswith("FINDINGS:")
    assert pipeline_outputs["header_prompt"] == expected

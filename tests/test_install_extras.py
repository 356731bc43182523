"""The `draft` extra is what a drafting workstation installs (cliptt5-generate with DICOM and --optimize, the page):
it must not pull torchvision, open_clip or timm, whose pins replace a CPU build of torch with a CUDA one (6.4 GB
with 3.2 GB of NVIDIA libraries on a machine without a GPU), nor anything else of training's.

The dependency tree is read from the installed packages' own metadata (every extra is installed in the test
environment), without descending into torch: the user brings torch, CPU or GPU build."""

import configparser
import importlib.metadata
import re

from packaging.requirements import Requirement

from conftest import REPO_ROOT

TRAINING_ONLY = {"torchvision", "open-clip-torch", "timm", "triton", "tensorflow", "tensorflow-cpu", "accelerate",
                 "datasets"}


def extras():
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    section = parser["options.extras_require"]
    return {name: [Requirement(line) for line in section[name].splitlines()
                   if line.strip() and not line.strip().startswith("#")] for name in section}


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements):
    """Every distribution the requirements pull, by installed metadata; torch's own tree is the user's."""
    seen, todo = set(), list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        if name == "torch":
            continue
        todo += [Requirement(line) for line in importlib.metadata.requires(requirement.name) or []]
    return seen


def test_the_draft_extra_is_dicom_fast_and_app_together():
    found = extras()
    draft = {canonical(requirement.name) for requirement in found["draft"]}
    assert draft == {canonical(requirement.name) for name in ("dicom", "fast", "app") for requirement in found[name]}


def test_a_drafting_install_pulls_nothing_of_training_and_no_gpu_libraries():
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    core = [Requirement(line) for line in parser["options"]["install_requires"].splitlines() if line.strip()]
    pulled = closure(core + extras()["draft"])
    assert {"onnxruntime", "pydicom", "gradio", "torch", "transformers"} <= pulled
    assert not pulled & TRAINING_ONLY, sorted(pulled & TRAINING_ONLY)
    assert not [name for name in pulled if name.startswith(("nvidia-", "cuda-"))]
    # while the training extra does pull them: the check above can tell
    assert {"torchvision", "open-clip-torch", "timm"} <= closure(extras()["train"])

"""A full disk (a real ENOSPC: a small tmpfs mounted in a private mount namespace) during conversion, training and
release writing: the command names the folder and the cause in one line, and leaves no half-written folder."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import subprocess_env
from training_helpers import make_tiny_dataset, tiny_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"


def small_disks_missing_reason():
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not found"
    trial = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, text=True)
    return None if trial.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {trial.stderr.strip()}"


MISSING = small_disks_missing_reason()
pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=f"full-disk tests skipped: {MISSING}")

# Writes {relative path: sha256 (or "dir")} of everything under the disk to a JSON file beside the test.
SNAPSHOT = """
import hashlib, json, os, sys
root, out = sys.argv[1], sys.argv[2]
found = {}
for folder, folders, files in os.walk(root):
    for name in folders:
        found[os.path.relpath(os.path.join(folder, name), root)] = "dir"
    for name in files:
        path = os.path.join(folder, name)
        found[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
json.dump(found, open(out, "w"))
"""


def run_on_small_disk(tmp_path, size, command, prepare=()):
    """Mounts a `size` tmpfs at tmp_path/disk (seen by this command only), runs the `prepare` commands, then
    `command`; returns (returncode, stderr, files on the disk before `command`, files after)."""
    if MISSING:
        pytest.fail(f"the full-disk tests must run in CI: {MISSING}", pytrace=False)
    disk = tmp_path / "disk"
    disk.mkdir()
    snapshot = [sys.executable, "-c", SNAPSHOT, str(disk)]
    setup = " && ".join([f"mount -t tmpfs -o size={size} tmpfs {disk}", *prepare,
                         subprocess.list2cmdline([*snapshot, str(tmp_path / "before.json")])])
    script = (f"{setup} || exit 99; {subprocess.list2cmdline(command)}; code=$?; "
              f"{subprocess.list2cmdline([*snapshot, str(tmp_path / 'after.json')])}; exit $code")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=600)
    assert result.returncode != 99, f"setting up the small disk failed:\n{result.stderr}"
    before = json.loads((tmp_path / "before.json").read_text())
    after = json.loads((tmp_path / "after.json").read_text())
    return result.returncode, result.stderr, before, after


def last_line(text):
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """60 studies of noise PNGs, 4.2 MB: more than a 2 MB disk holds, and than a 7 MB one holds twice (once as the
    converter's Arrow cache, once as the saved dataset)."""
    folder = tmp_path_factory.mktemp("cxr")
    (folder / "images").mkdir()
    rows = []
    for index in range(60):
        noise = np.random.default_rng(index).integers(0, 256, (256, 256), dtype=np.uint8)
        Image.fromarray(noise).save(folder / "images" / f"{index}.png")
        rows.append({"file_name": f"images/{index}.png", "findings": "Lungs are clear.", "impression": "Normal."})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.mark.parametrize("size", ["2m", "7m"])  # full while caching the rows; full while saving the dataset
def test_a_conversion_that_fills_the_disk_says_so_and_leaves_nothing(tmp_path, image_folder, size):
    output = tmp_path / "disk" / "data"
    code, stderr, before, after = run_on_small_disk(
        tmp_path, size, [sys.executable, "conversion/convert_imagefolder.py", str(image_folder), "--output",
                         str(output)])
    assert code == 1
    assert last_line(stderr) == (f"error: {output}: not written, the disk is full (No space left on device); "
                                 "nothing was replaced. Free some space and run again.")
    assert "Traceback" not in stderr
    assert before == {} and after == {}  # no dataset, no hidden cache or temporary folder


def test_a_conversion_over_an_earlier_dataset_on_a_full_disk_keeps_the_earlier_one(tmp_path, image_folder):
    small = tmp_path / "small"
    (small / "images").mkdir(parents=True)
    shutil.copy(image_folder / "images" / "0.png", small / "images" / "0.png")
    (small / "metadata.jsonl").write_text(json.dumps({"file_name": "images/0.png", "findings": "Clear."}) + "\n")
    output = tmp_path / "disk" / "data"
    convert = [sys.executable, "conversion/convert_imagefolder.py"]
    code, stderr, before, after = run_on_small_disk(
        tmp_path, "7m", [*convert, str(image_folder), "--output", str(output)],
        prepare=[subprocess.list2cmdline([*convert, str(small), "--output", str(output)])])
    assert code == 1 and "data: not written, the disk is full" in last_line(stderr)
    assert "data/dataset_dict.json" in before
    assert after == before  # the earlier dataset, byte for byte, and nothing beside it


def test_training_on_a_full_disk_names_the_folder_and_leaves_only_complete_ones(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "dataset")
    output = tmp_path / "disk" / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_settings(dataset, output)))
    # 1.2 MB holds the tokenizer, the first release and the step-2 state, not the step-4 state (a full run
    # writes 1.9 MB).
    code, stderr, _, after = run_on_small_disk(tmp_path, "1200k",
                                               [sys.executable, "train.py", "--config", str(config)])
    assert code == 1
    assert last_line(stderr) == (f"cliptt5-train: error: {output}/states/state-00000004: not written, the disk is full "
                                 "(No space left on device); nothing was replaced. Free some space and run again.")
    assert "Traceback" not in stderr
    assert not [path for path in after if any(part.startswith(".") for part in Path(path).parts)]
    assert "run/states/state-00000002/trainer_state.json" in after and "run/states/state-00000004" not in after
    assert "run/best/model.safetensors" in after and "run/best/README.md" in after  # the step-3 release, whole


RELEASE_REWRITER = """
import sys
from modeling_cliptt5 import CLIPT5ForConditionalGeneration, CLIPT5Processor
from modeling_cliptt5.training.release import write_release
from modeling_cliptt5.data.atomic_writes import DiskFullError

release = sys.argv[1]
model = CLIPT5ForConditionalGeneration.from_pretrained(release)
try:
    write_release(model, CLIPT5Processor.from_pretrained(release), release, {"model_name": "new", "step": 9,
                  "metrics": {}, "best_metric": "loss"})
except DiskFullError as error:
    sys.exit(str(error))
"""


def test_a_release_written_over_the_previous_one_on_a_full_disk_leaves_it_whole(tmp_path, tiny_release_dir):
    release = tmp_path / "disk" / "best"
    size = sum(path.stat().st_size for path in Path(tiny_release_dir).iterdir())
    # Room for the release once and a half: the new copy is written beside the old one and cannot finish.
    code, stderr, before, after = run_on_small_disk(
        tmp_path, f"{int(size * 1.5) // 1024}k", [sys.executable, "-c", RELEASE_REWRITER, str(release)],
        prepare=[f"cp -r {tiny_release_dir} {release}"])
    assert code == 1
    assert last_line(stderr) == (f"{release}: not written, the disk is full (No space left on device); "
                                 "nothing was replaced. Free some space and run again.")
    assert "best/model.safetensors" in before and after == before
    expected = {str(path.relative_to(tiny_release_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in Path(tiny_release_dir).iterdir()}
    assert {name: digest for name, digest in after.items() if name != "best"} == {
        f"best/{name}": digest for name, digest in expected.items()}


CACHE_BUILDER = """
import sys
import torch
from accelerate import Accelerator
sys.path.insert(0, sys.argv[3])
from conftest import TINY_IMAGE_SIZE, tiny_config
from modeling_cliptt5 import CLIPT5ForConditionalGeneration, CLIPT5ImageProcessor
from modeling_cliptt5.data.schema import load_report_dataset
from modeling_cliptt5.training.feature_cache import build_feature_cache
from modeling_cliptt5.data.atomic_writes import DiskFullError

dataset, cache_root = load_report_dataset(sys.argv[1]), sys.argv[2]
model = CLIPT5ForConditionalGeneration(tiny_config()).eval()
image_processor = CLIPT5ImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE},
                                       crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
try:
    build_feature_cache(model, image_processor, [dataset["train"]], cache_root, Accelerator(), batch_size=4,
                        dtype="float32")
except DiskFullError as error:
    sys.exit(str(error))
"""


def test_a_feature_cache_larger_than_the_disk_is_an_error_not_a_crash(tmp_path):
    # 200 studies x 17 tokens x 32 floats = 435 KB of features on a 256 KB disk. The cache is a memory map: without
    # its blocks reserved up front, the first write past the disk's end kills the process with SIGBUS.
    dataset = make_tiny_dataset(tmp_path / "dataset", sizes=(("train", 200), ("validation", 2), ("test", 1)))
    code, stderr, before, after = run_on_small_disk(
        tmp_path, "256k", [sys.executable, "-c", CACHE_BUILDER, str(dataset), str(tmp_path / "disk" / "cache"),
                                     str(Path(__file__).parent)])
    assert code == 1, stderr[-2000:]
    assert "not written, the disk is full (No space left on device)" in last_line(stderr)
    assert last_line(stderr).startswith(f"{tmp_path / 'disk' / 'cache'}/")
    assert [path for path in after if path != "cache"] == []

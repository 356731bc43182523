"""A normal run prints no warnings: generate.py, load_release + draft_reports, and a release loaded from its own code
(trust_remote_code) on both transformers majors. Each runs in a fresh interpreter with the default warning filters
and logging verbosity, since transformers' `logger.warning_once` speaks once per process."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, noise_image, subprocess_env
from test_remote_code import MINIMAL_PYTHON

# transformers 5's progress bars ("Loading weights: 100%|####| 87/87 [00:00<00:00, ...it/s]"), not notices
PROGRESS_BAR = re.compile(r"^[\w ]+: +\d+%\|.*\| *\d+/\d+ \[")
GENERATE_NOTES = (
    re.compile(r"^note: this release has no summary of its training images"),  # the tiny release has none
    re.compile(r"^\d+ of \d+ studies drafted from \d+ files in "),  # the closing summary
)

DRAFT = r"""
import sys
from pathlib import Path
from modeling_cliptt5.inference.drafting import draft_reports, group_studies, load_release
release = load_release(sys.argv[1])
drafts = list(draft_reports(release, group_studies([Path(sys.argv[2])], "none"),
                            generate_kwargs={"max_new_tokens": 5}))
assert [draft.error for draft in drafts] == [None], drafts
"""

REMOTE = r"""
import sys
sys.modules["modeling_cliptt5"] = None  # only the release's own code files
from transformers import AutoModelForSeq2SeqLM
model = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
if len(sys.argv) > 2:
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
    sequences = model.generate(**processor(images=Image.open(sys.argv[2])), max_new_tokens=5)
    processor.batch_decode_reports(sequences)
"""


def run_quietly(command, tmp_path):
    """stderr lines of a child run other than progress bars; fails if the child fails."""
    env = subprocess_env()
    env["PYTHONPATH"] = str(REPO_ROOT)  # this checkout, whatever the environment's install points at
    for name in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        env.pop(name, None)  # a normal run: default filters, default verbosity
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line.rstrip() for line in re.split(r"[\r\n]", completed.stderr) if line.strip()]
    return [line for line in lines if not PROGRESS_BAR.match(line)]


@pytest.fixture
def study_png(tmp_path):
    path = tmp_path / "study.png"
    noise_image(0).save(path)
    return path


def test_generate_prints_no_warnings(tiny_release_dir, study_png, tmp_path):
    printed = run_quietly([sys.executable, "-m", "modeling_cliptt5.cli.generate", "--model", str(tiny_release_dir),
                           "--max-new-tokens", "5", str(study_png)], tmp_path)
    assert [line for line in printed if not any(note.match(line) for note in GENERATE_NOTES)] == [], printed


def test_load_release_and_draft_reports_print_nothing(tiny_release_dir, study_png, tmp_path):
    assert run_quietly([sys.executable, "-c", DRAFT, str(tiny_release_dir), str(study_png)], tmp_path) == []


def test_release_loads_from_its_own_code_without_warnings(tiny_release_dir, study_png, tmp_path):
    assert run_quietly([sys.executable, "-c", REMOTE, str(tiny_release_dir), str(study_png)], tmp_path) == []


def test_release_loads_on_the_other_major_without_warnings(tiny_release_dir, tmp_path):
    """The minimal environment has no Pillow, so only the model loads there (the processor needs PIL)."""
    if not MINIMAL_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{MINIMAL_PYTHON} missing: .ci/run must build it (make minimal-env)")
        pytest.skip(f"{MINIMAL_PYTHON} missing: build it with `make minimal-env`")
    assert run_quietly([str(MINIMAL_PYTHON), "-c", REMOTE, str(tiny_release_dir)], tmp_path) == []

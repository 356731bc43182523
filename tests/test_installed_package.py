"""The package as a user gets it from `pip install` (a wheel, not the source tree): a training run writes its release
with the model card, resumes, and drafts from another folder.

The wheel is built here and installed into a fresh virtual environment whose only other packages are the
dependencies of the test environment (made visible through a .pth path line, which does not run this checkout's
editable-install hook), so `import modeling_cliptt5` can only find the installed copy."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT, subprocess_env
from training_helpers import make_tiny_dataset, tiny_settings


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory):
    """A fresh venv's python with the built wheel installed (and nothing of the source tree)."""
    root = tmp_path_factory.mktemp("installed")
    # Built from a copy of the tracked sources: an in-tree build would leave build/ behind and could pick up its
    # stale files.
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, check=True, capture_output=True,
                             text=True).stdout.splitlines()
    source = root / "source"
    for name in tracked:
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO_ROOT / name).is_symlink():
            target.symlink_to(os.readlink(REPO_ROOT / name))
        elif (REPO_ROOT / name).is_file():
            shutil.copy2(REPO_ROOT / name, target)
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("cliptt5-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "modeling_cliptt5/training/model_card.md" in names  # the card template travels as package data
    assert "modeling_cliptt5/app/static/viewer.js" in names  # and the page's scripts and styles
    # one top-level name in site-packages: no generic `conversion`, `tests` or script modules
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {
        "modeling_cliptt5"}
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    (Path(site_packages) / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # into the venv (its console commands land in venv/bin), with this environment's pip
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return python


def run_installed(python, script, cwd):
    env = subprocess_env()
    env.pop("PYTHONPATH", None)
    finished = subprocess.run([str(python), "-c", textwrap.dedent(script)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return finished.stdout


def test_an_installed_package_trains_writes_its_release_with_a_card_resumes_and_drafts(installed_python, tmp_path):
    dataset = make_tiny_dataset(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    settings = tiny_settings(dataset, tmp_path / "run", max_steps=4, eval_every_steps=2, save_every_steps=2)
    script = f"""
        import json
        from pathlib import Path

        from PIL import Image

        import modeling_cliptt5
        from modeling_cliptt5.training.generation import train_generation
        from modeling_cliptt5.training.config import config_from_dict
        from modeling_cliptt5.inference.drafting import draft_reports, group_studies, load_release

        settings = json.loads({json.dumps(json.dumps(settings))})
        train_generation(config_from_dict(settings))
        resumed = train_generation(config_from_dict({{**settings, "max_steps": 6, "resume": True}}))
        release = load_release(resumed.release_dir)
        Image.new("L", (40, 40), 90).save("study.png")
        (draft,) = draft_reports(release, group_studies([Path("study.png")], "none"),
                                 generate_kwargs={{"max_new_tokens": 8}})
        print(json.dumps({{"package": modeling_cliptt5.__file__, "step": resumed.step, "error": draft.error}}))
    """
    result = json.loads(run_installed(installed_python, script, elsewhere).strip().splitlines()[-1])
    assert "site-packages" in result["package"] and str(REPO_ROOT) not in result["package"]
    assert result["step"] == 6 and result["error"] is None
    release = tmp_path / "run" / "best"
    card = (release / "README.md").read_text()
    assert "NOT a medical device" in card and card.startswith("---\n")
    assert {path.name for path in (tmp_path / "run" / "states").iterdir()}


COMMANDS = ["cliptt5-train", "cliptt5-generate", "cliptt5-app", "cliptt5-release", "cliptt5-score",
            "cliptt5-make-demo-data", "cliptt5-convert-kaggle", "cliptt5-convert-r2gen", "cliptt5-convert-openi",
            "cliptt5-convert-imagefolder", "cliptt5-convert-biomedclip", "cliptt5-node"]


def run_command(python, command, *args, cwd, status=0):
    env = subprocess_env()
    env.pop("PYTHONPATH", None)
    finished = subprocess.run([str(python.parent / command), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == status, (command, finished.stdout[-3000:] + finished.stderr[-3000:])
    return finished


# What only a source checkout has: an installed user is never told to run these
SOURCE_TREE_ONLY = ("train.py", "generate.py", "app.py", "conversion/", "make demo", "python ")


def image_folder(folder, count=36):
    """An image folder with metadata.jsonl as a user brings one: two kinds of study, told apart by the image."""
    from PIL import Image

    folder.mkdir()
    rows = []
    for index in range(count):
        normal = index % 2 == 0
        name = f"study{index:02d}.png"
        Image.new("L", (48, 48), 40 if normal else 200).save(folder / name)
        rows.append({"file_name": name, "study_id": f"s{index:02d}",
                     "split": "validation" if index % 6 == 5 else "train",
                     "findings": "The lungs are clear." if normal else "There is a right pleural effusion.",
                     "impression": "No acute process." if normal else "Right pleural effusion."})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_the_installed_commands_convert_train_release_draft_and_serve_from_another_folder(installed_python,
                                                                                         tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in COMMANDS:
        helped = run_command(installed_python, command, "--help", cwd=elsewhere).stdout
        assert "usage:" in helped, command
        assert not [text for text in SOURCE_TREE_ONLY if text in helped], (command, helped)
    # The configs the commands name travel in the wheel: `--config demo` reads the packaged demo settings
    refused = run_command(installed_python, "cliptt5-train", "--config", "demo", "--dataset", "nowhere",
                          cwd=elsewhere, status=2)
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("cliptt5-train: error: ") and "site-packages/modeling_cliptt5/configs/demo.yaml: dataset " \
        "folder 'nowhere' does not exist" in line, line
    run_command(installed_python, "cliptt5-convert-imagefolder", image_folder(tmp_path / "cxr"), "--output", "data",
                cwd=elsewhere)
    settings = tiny_settings(elsewhere / "data", elsewhere / "run", max_steps=4, eval_every_steps=2,
                             save_every_steps=2, batch_size=2, eval_max_samples=4, eval_batch_size=4)
    (elsewhere / "settings.json").write_text(json.dumps(settings))  # YAML is a superset of JSON
    run_command(installed_python, "cliptt5-train", "--config", "settings.json", cwd=elsewhere)
    release = elsewhere / "run" / "best"
    card = (release / "README.md").read_text()
    assert card.startswith("---\n") and "NOT a medical device" in card
    run_command(installed_python, "cliptt5-generate", "--model", release, tmp_path / "cxr" / "study01.png",
                "--output", "drafts.jsonl", "--max-new-tokens", "8", cwd=elsewhere)
    (draft,) = [json.loads(line) for line in (elsewhere / "drafts.jsonl").read_text().splitlines()]
    # the tiny run's text can be empty: that the draft of this file was written is the point here
    assert draft["input_files"] == [str(tmp_path / "cxr" / "study01.png")] and isinstance(draft["report"], str)
    # Relative paths, read from the folder the user is in, --optimize's export (a child process) included
    shutil.copy(tmp_path / "cxr" / "study01.png", elsewhere / "study01.png")
    fast = run_command(installed_python, "cliptt5-generate", "--model", "run/best", "study01.png", "--optimize",
                       "--output", "fast.jsonl", "--max-new-tokens", "8", cwd=elsewhere)
    (fast_draft,) = [json.loads(line) for line in (elsewhere / "fast.jsonl").read_text().splitlines()]
    assert fast_draft["input_files"] == ["study01.png"] and "ONNX Runtime int8" in fast.stderr
    page = f"""
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        import gradio as gr

        from modeling_cliptt5.app.web_app import ReportDrafter, build_app, serve_options

        page = build_app(ReportDrafter.from_pretrained({str(release)!r}))
        with TestClient(gr.mount_gradio_app(FastAPI(), page, path="/", **serve_options())) as client:
            response = client.get("/")
            print(response.status_code, "CLIP-T5" in response.text)
    """
    assert run_installed(installed_python, page, elsewhere).strip().splitlines()[-1] == "200 True"

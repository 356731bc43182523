"""`make demo`'s path, shortened: phantoms -> accelerate launch train.py -> release -> Auto* reload -> drafts for the
test split and PNG/DICOM files -> results table and figure. (The full demo's numbers are in the README.)"""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import REPO_ROOT, subprocess_env

import demo
from modeling_cliptt5.data.phantom import PHANTOM_LABELS, generate_study  # noqa: E402


def phantom_rows(seeds):
    studies = [generate_study(np.random.default_rng([3, 0, seed]), image_size=64) for seed in seeds]
    return {"images": [[Image.fromarray(study["image"])] for study in studies],
            "report": [f"FINDINGS: {study['findings']} IMPRESSION: {study['impression']}" for study in studies],
            "labels": [study["labels"] for study in studies]}


def test_true_reports_score_perfectly_and_a_normal_report_scores_zero():
    rows = phantom_rows(range(60))
    perfect = demo.finding_scores(rows["report"], rows["labels"])
    assert perfect["macro"]["f1"] == 1.0
    assert all(scores["accuracy"] == 1.0 for scores in perfect["per_observation"].values())
    normal = demo.constant_report(rows)
    assert not demo.finding_scores([normal], [[]])["per_observation"]["cardiomegaly"]["predicted"]
    assert demo.finding_scores([normal] * 60, rows["labels"])["macro"]["f1"] == 0.0


def test_nearest_neighbour_of_a_training_image_is_itself():
    rows = phantom_rows(range(12))
    assert demo.nearest_neighbour_reports(rows, rows) == rows["report"]


def test_the_shortened_demo_runs_end_to_end(tmp_path):
    output = tmp_path / "demo"
    # 300 studies: the test split (5% of the patients) then holds follow-ups with a finding in both studies
    finished = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo.py"), "--output-dir", str(output), "--studies", "300",
         "--contrastive-steps", "4", "--max-steps", "6", "--examples", "2"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    # stage 1's checkpoint is the image tower stage 2 started from
    assert (output / "contrastive" / "best" / "open_clip_model.safetensors").is_file()
    stage2_settings = (output / "training_config.yaml").read_text()
    assert f"init_vision_from: {output / 'contrastive' / 'best'}" in stage2_settings
    release = output / "best"
    assert {"model.safetensors", "config.json", "README.md", "processor_config.json", "modeling_cliptt5.py"} <= {
        path.name for path in release.iterdir()}
    assert "not a medical device" in (release / "README.md").read_text().lower()
    results = json.loads((output / "results.json").read_text())
    # the finding head guides the drafts; the ablation is stage 2 again without the prior
    assert list(results["results"]) == [*demo.SYSTEMS, demo.WITHOUT_PRIOR, demo.GUIDED_BY_TRUTH]
    assert {name: json.loads((release / "config.json").read_text())[name] for name in ("reads_prior", "change_head")} \
        == {"reads_prior": True, "change_head": True}
    ablation_config = json.loads((output / "without_prior" / "best" / "config.json").read_text())
    assert ablation_config["reads_prior"] is False and ablation_config["change_head"] is False
    # the change head alone, scored on the follow-ups of the test split
    assert set(results["change_head"]) == {"decreased", "unchanged", "increased"}
    assert sum(scores["support"] for scores in results["change_head"].values()) > 0
    assert "max_steps: 6" in (output / "without_prior" / "training_config.yaml").read_text()  # the same budget
    assert set(results["changes"]) == set(results["results"])
    assert all("macro_f1" in scores["changes"] for scores in results["changes"].values())
    for scores in results["results"].values():
        assert list(scores["findings"]["per_observation"]) == list(PHANTOM_LABELS)
    assert results["results"]["constant report"]["findings"]["macro"]["f1"] == 0.0  # a normal report states nothing
    release_config = json.loads((release / "config.json").read_text())
    assert release_config["finding_labels"] == list(PHANTOM_LABELS)
    head = results["finding_head"]
    assert [head["per_finding"][name]["threshold"] for name in PHANTOM_LABELS] == release_config["finding_thresholds"]
    assert (output / "contrastive" / "best" / "finding_head.safetensors").is_file()  # stage 1 trained the head too
    table = (output / "results.txt").read_text()
    assert "finding head alone" in table and "model, true findings" in table
    assert "Change statements on the" in table and "invented comparisons," in table and "change head alone" in table
    from modeling_cliptt5.data.schema import load_report_dataset

    test_rows = load_report_dataset(str(output / "data"))["test"]
    assert results["test_studies"] == len(test_rows) and any(test_rows["prior_id"])  # patients' studies over time
    # the drafts of the example files: one PNG and one DICOM, read through generate.py's functions
    assert sorted(path.suffix for path in (output / "examples").iterdir()) == [".dcm", ".png"]
    assert sorted(name.rsplit(".", 1)[1] for name in results["example_drafts"]) == ["dcm", "png"]
    assert all(draft.strip() for draft in results["example_drafts"].values())
    table = (output / "results.txt").read_text()
    assert "findings macro F1" in table and "nearest-neighbour image" in table and table in finished.stdout
    with Image.open(output / "demo_results.png") as figure:
        assert figure.format == "PNG" and figure.width > 500

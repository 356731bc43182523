"""Tests of the synthetic chest X-ray phantoms: determinism, schema, splits, report labels, visible findings."""

import collections
import io
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from modeling_cliptt5.cli import make_demo_data
from modeling_cliptt5.data.schema import load_report_dataset, report_features
from modeling_cliptt5.data.phantom import (PHANTOM_LABELS, SOURCE, PhantomFindings, assign_splits, encode_png,
                                      generate_study, labels_from_report, make_phantom_dataset)
from modeling_cliptt5.processing_cliptt5 import format_report

REPO = Path(__file__).resolve().parents[2]
SIZE = 128


def png_bytes(split):
    """The stored PNG bytes of each row of a split (without decoding them)."""
    raw = split.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return [images[0]["bytes"] for images in raw["images"]]


def region_mean(image, rows, cols):
    """Mean grey level of a box given in fractions of the image height and width."""
    height, width = image.shape
    return image[int(rows[0] * height):int(rows[1] * height), int(cols[0] * width):int(cols[1] * width)].astype(float).mean()


# Boxes over the lungs in image coordinates: the patient's right lung is on the image's LEFT.
IMAGE_LEFT, IMAGE_RIGHT = (0.12, 0.42), (0.58, 0.88)
LOWER_ZONE, UPPER_ZONE, WHOLE_LUNG = (0.55, 0.75), (0.2, 0.45), (0.2, 0.7)


def test_same_seed_gives_same_study_and_different_seed_a_different_one():
    first, again, other = generate_study(11, SIZE), generate_study(11, SIZE), generate_study(12, SIZE)
    assert first["image"].dtype == np.uint8 and first["image"].shape == (SIZE, SIZE)
    assert encode_png(first["image"]) == encode_png(again["image"])
    assert (first["findings"], first["impression"], first["labels"]) == (again["findings"], again["impression"], again["labels"])
    assert encode_png(first["image"]) != encode_png(other["image"])


def test_generator_argument_advances_so_successive_studies_differ():
    rng = np.random.default_rng(5)
    assert not np.array_equal(generate_study(rng, 64)["image"], generate_study(rng, 64)["image"])


def test_image_looks_like_a_radiograph_air_dark_lungs_darker_than_mediastinum():
    image = generate_study(3, SIZE, findings=PhantomFindings())["image"]
    background = region_mean(image, (0.0, 0.08), (0.9, 1.0))  # air beside the neck
    lungs = (region_mean(image, WHOLE_LUNG, IMAGE_LEFT) + region_mean(image, WHOLE_LUNG, IMAGE_RIGHT)) / 2
    mediastinum = region_mean(image, (0.3, 0.6), (0.47, 0.53))
    abdomen = region_mean(image, (0.85, 0.95), (0.3, 0.7))
    assert background < lungs - 20 and lungs < mediastinum - 40 and lungs < abdomen - 40


def test_dataset_has_the_schema_disjoint_splits_and_same_bytes_with_any_num_proc(tmp_path):
    dataset = make_phantom_dataset(12, seed=3, image_size=64)
    again = make_phantom_dataset(12, seed=3, image_size=64, num_proc=2)  # drawn in 2 worker processes
    other_seed = make_phantom_dataset(12, seed=4, image_size=64)
    assert set(dataset) == {"train", "validation", "test"}
    ids = {split: dataset[split]["id"] for split in dataset}
    all_ids = [study_id for split_ids in ids.values() for study_id in split_ids]
    assert sorted(all_ids) == [f"phantom-{index:06d}" for index in range(12)]
    assert not set(ids["train"]) & set(ids["validation"]) and not set(ids["train"]) & set(ids["test"])
    for split in dataset:
        assert dataset[split].features == report_features()
        assert png_bytes(dataset[split]) == png_bytes(again[split])
        assert dataset[split]["report"] == again[split]["report"]
        for row in dataset[split]:
            assert row["split"] == split and row["source"] == SOURCE == "synthetic-phantom"
            assert row["report"] == format_report(row["findings"], row["impression"], "both")
            assert len(row["images"]) == 1
            assert row["images"][0].size == (64, 64) and row["images"][0].mode == "L"
            assert set(row["labels"]) <= set(PHANTOM_LABELS)
            assert labels_from_report(row["report"]) == row["labels"]
    stored = {key: png for split in dataset for key, png in zip(dataset[split]["id"], png_bytes(dataset[split]))}
    stored_other = {key: png for split in other_seed for key, png in zip(other_seed[split]["id"], png_bytes(other_seed[split]))}
    assert all(png.startswith(b"\x89PNG") for png in stored.values())
    assert all(stored[key] != stored_other[key] for key in stored)


def test_report_target_sets_the_report_column():
    dataset = make_phantom_dataset(3, seed=1, image_size=32, report_target="impression")
    row = dataset["train"][0]
    assert row["report"] == row["impression"] and "IMPRESSION:" not in row["report"]


def test_split_counts_follow_the_fractions_and_study_draws_do_not_depend_on_the_count():
    counts = collections.Counter(assign_splits(200, seed=0))
    assert counts == {"train": 160, "validation": 20, "test": 20}
    assert collections.Counter(assign_splits(3)) == {"train": 1, "validation": 1, "test": 1}
    assert assign_splits(50, seed=1) != assign_splits(50, seed=2)
    with pytest.raises(ValueError, match="split_fractions"):
        assign_splits(10, split_fractions=(0.5, 0.1, 0.1))
    small, large = make_phantom_dataset(4, seed=2, image_size=32), make_phantom_dataset(9, seed=2, image_size=32)
    reports = {row["id"]: row["report"] for split in large for row in large[split]}
    assert all(reports[row["id"]] == row["report"] for split in small for row in small[split])


def test_labels_round_trip_through_every_generated_report_and_each_section():
    seen = collections.Counter()
    for index in range(300):
        study = generate_study(np.random.default_rng([99, index]), 32)
        assert study["labels"] == sorted(set(study["labels"])) and set(study["labels"]) <= set(PHANTOM_LABELS)
        for text in (format_report(study["findings"], study["impression"]), study["findings"], study["impression"]):
            assert labels_from_report(text) == study["labels"], text
        seen.update(study["labels"])
    assert set(seen) == set(PHANTOM_LABELS)


@pytest.mark.parametrize("report, expected", [
    ("Bilateral pleural effusions.", ["pleural_effusion:left", "pleural_effusion:right"]),
    ("Small right and moderate left pleural effusions.", ["pleural_effusion:left", "pleural_effusion:right"]),
    ("No pleural effusion or pneumothorax. The heart is not enlarged.", []),
    ("FINDINGS: Small left pleural effusion. No pneumothorax. IMPRESSION: Left pleural effusion.",
     ["pleural_effusion:left"]),
    ("Visceral pleural line with no lung markings beyond it, consistent with a right pneumothorax.",
     ["pneumothorax:right"]),
    ("A 2.5 cm nodule in the lingula.", ["nodule:left"]),
    ("Right upper lobe mass measuring 4.2 cm. No focal consolidation.", ["mass:right"]),
    ("Retrocardiac airspace opacity in the left lower lobe. Cardiomegaly.", ["cardiomegaly", "consolidation:left"]),
    ("Endotracheal tube terminates above the carina. Lungs are clear.", ["support_device"]),
    ("No suspicious pulmonary nodule or mass. No lines or tubes.", []),
    ("", []),
])
def test_labels_from_report_reads_hand_written_phrasings(report, expected):
    assert labels_from_report(report) == expected


def test_every_label_occurs_and_about_a_third_of_studies_are_normal():
    labels = [generate_study(np.random.default_rng([7, index]), 32)["labels"] for index in range(500)]
    counts = collections.Counter(label for study in labels for label in study)
    assert all(counts[label] > 0 for label in PHANTOM_LABELS), counts
    assert 0.25 < sum(not study for study in labels) / 500 < 0.5


def test_nodules_are_under_3_cm_and_masses_over_3_cm_in_the_report():
    sizes = collections.defaultdict(list)
    for index in range(400):
        study = generate_study(np.random.default_rng([3, index]), 32)
        kinds = {label.split(":")[0] for label in study["labels"]} & {"nodule", "mass"}
        if kinds:  # one lesion per study: every size in the findings is that lesion's
            sizes[kinds.pop()] += [float(size) for size in re.findall(r"(\d+\.\d) cm", study["findings"])]
    assert sizes["nodule"] and sizes["mass"]
    assert max(sizes["nodule"]) < 3.0 < min(sizes["mass"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_left_effusion_whitens_the_image_right_base_only(seed):
    normal = generate_study(seed, SIZE, findings=PhantomFindings())["image"]
    effusion = generate_study(seed, SIZE, findings=PhantomFindings(pleural_effusion=(("left", "moderate"),)))["image"]
    assert region_mean(effusion, LOWER_ZONE, IMAGE_RIGHT) > region_mean(normal, LOWER_ZONE, IMAGE_RIGHT) + 15
    assert abs(region_mean(effusion, LOWER_ZONE, IMAGE_LEFT) - region_mean(normal, LOWER_ZONE, IMAGE_LEFT)) < 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_right_pneumothorax_darkens_the_image_left_lung_only(seed):
    normal = generate_study(seed, SIZE, findings=PhantomFindings())["image"]
    pneumothorax = generate_study(seed, SIZE, findings=PhantomFindings(pneumothorax=(("right", "moderate"),)))["image"]
    assert region_mean(pneumothorax, WHOLE_LUNG, IMAGE_LEFT) < region_mean(normal, WHOLE_LUNG, IMAGE_LEFT) - 4
    assert abs(region_mean(pneumothorax, WHOLE_LUNG, IMAGE_RIGHT) - region_mean(normal, WHOLE_LUNG, IMAGE_RIGHT)) < 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_right_upper_lobe_consolidation_whitens_the_image_left_upper_zone_only(seed):
    normal = generate_study(seed, SIZE, findings=PhantomFindings())["image"]
    consolidation = generate_study(seed, SIZE, findings=PhantomFindings(consolidation=(("right", "upper lobe"),)))["image"]
    assert region_mean(consolidation, UPPER_ZONE, IMAGE_LEFT) > region_mean(normal, UPPER_ZONE, IMAGE_LEFT) + 5
    assert abs(region_mean(consolidation, UPPER_ZONE, IMAGE_RIGHT) - region_mean(normal, UPPER_ZONE, IMAGE_RIGHT)) < 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cardiomegaly_widens_the_bright_heart_mostly_to_the_patients_left(seed):
    rows = slice(int(0.3 * SIZE), int(0.75 * SIZE))
    normal = generate_study(seed, SIZE, findings=PhantomFindings())["image"][rows].astype(float)
    enlarged = generate_study(seed, SIZE, findings=PhantomFindings(cardiomegaly=True))["image"][rows].astype(float)
    thorax = normal[:, int(0.15 * SIZE):int(0.85 * SIZE)]
    threshold = (np.percentile(thorax, 10) + np.percentile(thorax, 90)) / 2  # between lung and soft tissue
    gained, lost = (enlarged > threshold) & (normal <= threshold), (normal > threshold) & (enlarged <= threshold)
    columns = np.nonzero(gained)[1]
    assert gained.sum() > 150 and lost.sum() == 0
    image_left, image_right = (columns < SIZE // 2).sum(), (columns >= SIZE // 2).sum()
    assert 0 < image_left < image_right  # the heart grows both ways, more towards the patient's left


def test_a_nodule_adds_a_small_bright_spot_in_the_right_lung():
    normal = generate_study(4, SIZE, findings=PhantomFindings())["image"].astype(float)
    nodule = generate_study(4, SIZE, findings=PhantomFindings(lesion=(("nodule", "right", "upper lobe", 2.0),)))["image"]
    changed = np.abs(nodule.astype(float) - normal) > 10
    rows, columns = np.nonzero(changed)
    assert 10 < changed.sum() < 400  # a 2 cm nodule is a few pixels across at 128 px
    assert columns.max() < SIZE // 2  # the patient's right is the image's left


def test_support_devices_add_bright_lines_and_the_R_marker_is_on_the_image_left():
    normal = generate_study(6, SIZE, findings=PhantomFindings())["image"].astype(float)
    devices = generate_study(6, SIZE, findings=PhantomFindings(devices=("endotracheal_tube", "right_jugular_line")))["image"]
    assert (devices.astype(float) - normal > 20).sum() > 30
    assert region_mean(normal.astype(np.uint8), (0.03, 0.14), (0.03, 0.14)) > region_mean(normal.astype(np.uint8), (0.03, 0.14), (0.86, 0.97))


def test_bad_arguments_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="image_size"):
        generate_study(0, 16)
    with pytest.raises(ValueError, match="num_studies"):
        make_phantom_dataset(0)


def test_cli_writes_a_loadable_dataset_and_prints_a_summary(tmp_path, capsys):
    output = tmp_path / "demo"
    make_demo_data.main(["--num-studies", "10", "--seed", "2", "--image-size", "48", "--output", str(output)])
    printed = capsys.readouterr().out
    dataset = load_report_dataset(str(output))
    assert sum(len(split) for split in dataset.values()) == 10
    assert "train: 8 studies" in printed and "read 10, converted 10, skipped 0" in printed
    assert "pleural_effusion:left" in printed
    assert (output / "skipped.jsonl").read_text() == ""
    assert Image.open(io.BytesIO(png_bytes(dataset["train"])[0])).size == (48, 48)


def test_cli_report_target_choices_are_the_packages():
    from modeling_cliptt5.cli import arguments
    from modeling_cliptt5.processing_cliptt5 import REPORT_TARGETS

    assert make_demo_data.REPORT_TARGETS == arguments.REPORT_TARGETS == REPORT_TARGETS


@pytest.mark.parametrize("command", [["conversion/make_demo_data.py"], ["-m", "modeling_cliptt5.cli.make_demo_data"]])
def test_cli_help_runs_as_a_script_and_as_a_module(command):
    result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--num-studies" in result.stdout and "synthetic" in result.stdout.lower()

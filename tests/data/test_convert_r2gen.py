"""R2Gen annotation.json converter, on the real IU X-ray split (no images ship: a few tiny PNGs are made here)."""

import json
from pathlib import Path

import pytest

from converter_test_images import bomb_png_bytes, png_bytes, stored_image_bytes, write
from modeling_cliptt5.cli import convert_r2gen
from modeling_cliptt5.data.schema import load_report_dataset

ANNOTATION = Path(__file__).resolve().parents[3] / "shared" / "reference" / "iu_xray" / "annotation.json"
WITH_IMAGES = {"train": 3, "val": 2, "test": 2}  # how many studies of each split get their two PNGs


@pytest.fixture(scope="module")
def annotation():
    if not ANNOTATION.is_file():
        pytest.skip(f"{ANNOTATION} not available")
    return json.loads(ANNOTATION.read_text())


@pytest.fixture()
def iu_images(annotation, tmp_path):
    """PNGs for the first few studies of each split; returns {study id: [image bytes in image_path order]}."""
    images = {}
    for split, count in WITH_IMAGES.items():
        for entry in annotation[split][:count]:
            images[entry["id"]] = [write(tmp_path / "images" / relative, png_bytes(shade=10 * index + 5)).read_bytes()
                                   for index, relative in enumerate(entry["image_path"])]
    return tmp_path / "images", images


def test_annotation_file_is_the_known_split(annotation):
    assert {split: len(entries) for split, entries in annotation.items()} == {"train": 2069, "val": 296, "test": 590}
    assert all(len(entry["image_path"]) == 2 for split in annotation.values() for entry in split)


def test_check_images_lists_every_missing_image(annotation, iu_images, capsys):
    images_dir, images = iu_images
    assert convert_r2gen.main([str(ANNOTATION), "--images", str(images_dir), "--check-images"]) == 1
    printed = capsys.readouterr()
    total_views = sum(len(entry["image_path"]) for split in annotation.values() for entry in split)
    studies = sum(len(split) for split in annotation.values())
    missing_lines = printed.out.splitlines()
    assert len(missing_lines) == total_views - 2 * len(images)
    assert f"{total_views - 2 * len(images)} of {total_views} images missing" in printed.err
    assert f"in {studies - len(images)} of {studies} studies" in printed.err
    listed = set(missing_lines)
    assert str(images_dir / annotation["train"][5]["image_path"][1]) in listed
    assert str(images_dir / annotation["train"][0]["image_path"][0]) not in listed


def test_conversion_keeps_split_text_and_both_views(annotation, iu_images, tmp_path, capsys):
    images_dir, images = iu_images
    output = tmp_path / "out"
    assert convert_r2gen.main([str(ANNOTATION), "--images", str(images_dir), "--output", str(output),
                               "--report-target", "findings"]) == 0
    dataset = load_report_dataset(str(output))
    assert {split: dataset[split].num_rows for split in dataset} == {"train": 3, "validation": 2, "test": 2}
    assert stored_image_bytes(dataset) == images  # both views, in image_path order, bytes unchanged
    by_id = {entry["id"]: entry for split in annotation.values() for entry in split}
    for split in dataset.values():
        for row in split:
            # The benchmark text is kept as it is (de-identification tokens untouched), only whitespace-normalised.
            assert row["findings"] == " ".join(by_id[row["id"]]["report"].split())
            assert row["report"] == row["findings"] and row["impression"] == ""
            assert row["source"] == "r2gen/iu_xray"
    studies = len(by_id)
    skipped = [json.loads(line) for line in (output / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == studies - len(images)
    assert {entry["reason"] for entry in skipped} == {"missing image file"}
    assert f"read {studies}, converted {len(images)}, skipped {studies - len(images)}" in capsys.readouterr().out


def small_annotation(tmp_path, entries_by_split):
    path = tmp_path / "mimic_cxr" / "annotation.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries_by_split))
    return path


def test_bad_entries_are_skipped_with_reasons(tmp_path):
    images = tmp_path / "mimic_cxr" / "images"
    write(images / "p1/s1/a.jpg", png_bytes())
    write(images / "p1/s2/b.png", png_bytes())
    write(images / "p1/s3/bomb.png", bomb_png_bytes())
    write(tmp_path / "secret.png", png_bytes())
    path = small_annotation(tmp_path, {
        "train": [
            {"id": "a", "report": "Lungs clear.", "image_path": ["p1/s1/a.jpg"], "split": "train"},
            {"id": "a", "report": "Same id again.", "image_path": ["p1/s1/a.jpg"], "split": "train"},
            {"id": "escape", "report": "Lungs clear.", "image_path": ["../../secret.png"], "split": "train"},
            {"id": "empty", "report": "   ", "image_path": ["p1/s2/b.png"], "split": "train"},
            {"id": "bomb", "report": "Lungs clear.", "image_path": ["p1/s3/bomb.png"], "split": "train"},
            {"report": "no id"},
        ],
        "val": [{"id": "b", "report": "Heart normal.", "image_path": ["p1/s2/b.png"], "split": "val"}],
        "test": [],
    })
    output = tmp_path / "out"
    assert convert_r2gen.main([str(path), "--output", str(output)]) == 0  # images default to ./images beside it
    dataset = load_report_dataset(str(output))
    assert dataset["train"]["id"] == ["a"] and dataset["validation"]["id"] == ["b"] and dataset["test"].num_rows == 0
    assert dataset["train"][0]["report"] == "FINDINGS: Lungs clear."  # --report-target both by default
    assert dataset["train"][0]["source"] == "r2gen/mimic_cxr"
    reasons = [(entry["id"], entry["reason"]) for entry in
               map(json.loads, (output / "skipped.jsonl").read_text().splitlines())]
    assert reasons[:3] == [("a", "duplicate id"), ("escape", "path escapes the dataset folder"),
                           ("empty", "empty report")]
    assert reasons[3][0] == "bomb" and "too large" in reasons[3][1]
    assert reasons[4] == (None, "entry without an id")
    assert len(reasons) + dataset["train"].num_rows + dataset["validation"].num_rows == 7  # every entry accounted for


def test_max_samples_subset_is_reproducible(tmp_path, capsys):
    images = tmp_path / "mimic_cxr" / "images"
    entries = []
    for index in range(30):
        write(images / f"{index}.png", png_bytes(shade=index))
        entries.append({"id": f"s{index}", "report": f"Finding number {index}.", "image_path": [f"{index}.png"]})
    path = small_annotation(tmp_path, {"train": entries[:20], "val": entries[20:25], "test": entries[25:]})

    def sample(seed, name):
        convert_r2gen.main([str(path), "--output", str(tmp_path / name), "--max-samples", "10", "--seed", str(seed)])
        assert "read 10, converted 10, skipped 0" in capsys.readouterr().out
        dataset = load_report_dataset(str(tmp_path / name))
        return {split: tuple(dataset[split]["id"]) for split in dataset}

    assert sample(7, "a") == sample(7, "b")
    assert sample(7, "a") != sample(8, "c")


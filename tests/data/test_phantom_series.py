"""Tests of longitudinal phantoms: patients with several studies over time, reports that compare with the prior
study, change labels, patient-level splits, and the one-study-per-patient dataset left as it was."""

import collections
import hashlib
import json
import re
from pathlib import Path

import datasets
import numpy as np
import pytest

from modeling_cliptt5.data.phantom import (
    PHANTOM_CHANGES, PHANTOM_LABELS, SIZES, assign_patient_splits, generate_series,
    labels_from_report, make_phantom_dataset,
)
from modeling_cliptt5.data.schema import load_report_dataset
from modeling_cliptt5.data.sources import PHANTOM_SETTINGS_FILE, dataset_folder, draw_phantoms_once
from modeling_cliptt5.processing_cliptt5 import format_report


@pytest.fixture(scope="module")
def many_series():
    """150 patients with 4 studies each (600 studies, 450 follow-ups)."""
    return [generate_series([7, patient], 4, 32) for patient in range(150)]


def follow_ups(all_series):
    """(prior study, study) pairs of consecutive studies."""
    return [(prior, study) for series in all_series for prior, study in zip(series, series[1:])]


def presence(labels):
    return [label for label in labels if label in PHANTOM_LABELS]


def changes(labels):
    return [label for label in labels if label not in PHANTOM_LABELS]


def rows_by_id(dataset):
    return {row["id"]: row for split in dataset.values() for row in split.remove_columns("images")}


def png_bytes(split):
    raw = split.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return [images[0]["bytes"] for images in raw["images"]]


def digest(dataset):
    """One hash of every row's columns and image bytes, split by split."""
    hashed = hashlib.sha256()
    for split in sorted(dataset):
        rows = dataset[split].cast_column("images", datasets.List(datasets.Image(decode=False)))
        for row in rows:
            hashed.update(json.dumps({key: value for key, value in row.items() if key != "images"}, sort_keys=True).encode())
            for image in row["images"]:
                hashed.update(image["bytes"])
    return hashed.hexdigest()


def test_one_study_per_patient_is_the_dataset_drawn_before_series_existed():
    # Hashes of datasets drawn by make_phantom_dataset before patients could have several studies.
    dataset = make_phantom_dataset(12, seed=5, image_size=64)
    assert digest(dataset) == "4b56f56bd1a65f9f386b7409917ebbd8ddb3fe2e3eef969f6c8c5bfbbedc44e3"
    other = make_phantom_dataset(7, seed=0, image_size=48, split_fractions=(0.6, 0.2, 0.2), report_target="impression",
                                 max_studies_per_patient=1)
    assert digest(other) == "c92af7cdcb3f9ba5fdb6687242f5686b320efd0bba5386763fe4eea422c8d734"
    assert all(row["patient_id"] == row["study_datetime"] == row["prior_id"] == "" for row in rows_by_id(dataset).values())


def test_patients_keep_their_studies_in_one_split_dated_in_order_with_the_previous_study_as_prior():
    dataset = make_phantom_dataset(30, seed=1, image_size=32, max_studies_per_patient=4)
    rows = rows_by_id(dataset)
    assert len(rows) == 30
    by_patient = collections.defaultdict(list)
    for study_id, row in rows.items():
        match = re.fullmatch(r"phantom-(\d{6})-(\d)", study_id)
        assert match and row["patient_id"] == f"phantom-patient-{match[1]}", study_id
        by_patient[row["patient_id"]].append((int(match[2]), row))
    assert len(by_patient) > 8  # 1-4 studies each
    assert max(len(studies) for studies in by_patient.values()) > 1
    for studies in by_patient.values():
        studies.sort(key=lambda pair: pair[0])
        numbers, patient_rows = zip(*studies)
        assert list(numbers) == list(range(1, len(studies) + 1))
        assert len({row["split"] for row in patient_rows}) == 1
        dates = [row["study_datetime"] for row in patient_rows]
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", date) for date in dates)
        assert dates == sorted(dates) and len(set(dates)) == len(dates)
        assert "2020-01-01" <= dates[0] < "2025-01-01"
        assert [row["prior_id"] for row in patient_rows] == [""] + [row["id"] for row in patient_rows[:-1]]
        assert not changes(patient_rows[0]["labels"])
        for row in patient_rows:
            assert row["report"] == format_report(row["findings"], row["impression"], "both")
            assert labels_from_report(row["report"]) == presence(row["labels"])


def test_patient_splits_hold_about_the_fractions_of_the_studies():
    studies_per_patient = np.random.default_rng(0).integers(1, 5, size=800).tolist()
    total = sum(studies_per_patient)
    splits = assign_patient_splits(studies_per_patient, seed=0)
    counts = collections.Counter()
    for split, count in zip(splits, studies_per_patient):
        counts[split] += count
    for split, fraction in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs(counts[split] - fraction * total) <= 6, counts  # within two patients' studies
    assert assign_patient_splits(studies_per_patient, seed=1) != splits
    assert set(assign_patient_splits([3], seed=0)) == {"train"}
    with pytest.raises(ValueError, match="split_fractions"):
        assign_patient_splits([2, 2], split_fractions=(0.5, 0.1, 0.1))


def test_same_bytes_with_one_and_two_worker_processes():
    dataset = make_phantom_dataset(9, seed=3, image_size=32, max_studies_per_patient=3)
    again = make_phantom_dataset(9, seed=3, image_size=32, max_studies_per_patient=3, num_proc=2)
    assert set(dataset) == set(again)
    for split in dataset:
        assert png_bytes(dataset[split]) == png_bytes(again[split])
        assert dataset[split].remove_columns("images").to_list() == again[split].remove_columns("images").to_list()


def test_a_patient_cut_short_keeps_its_first_studies():
    short, full = make_phantom_dataset(5, seed=2, image_size=32, max_studies_per_patient=4), \
        make_phantom_dataset(12, seed=2, image_size=32, max_studies_per_patient=4)
    short_rows, full_rows = rows_by_id(short), rows_by_id(full)
    for study_id, row in short_rows.items():
        assert {key: row[key] for key in ("findings", "impression", "labels", "study_datetime", "prior_id")} == \
            {key: full_rows[study_id][key] for key in ("findings", "impression", "labels", "study_datetime", "prior_id")}


def _highpass(image):
    """The image minus its 5x5 local mean: the fine lung markings, not the broad shapes every chest shares."""
    image = image.astype(float)
    padded = np.pad(image, 2, mode="edge")
    local = sum(padded[dy:dy + image.shape[0], dx:dx + image.shape[1]] for dy in range(5) for dx in range(5)) / 25
    return image - local


def _best_correlation(first, second, size):
    """Highest correlation of the fine detail of the patient's right upper lung over shifts of up to 3 px."""
    rows, cols = slice(int(0.25 * size), int(0.5 * size)), slice(int(0.15 * size), int(0.4 * size))
    reference = _highpass(first)[rows, cols].ravel()
    moved = _highpass(second)
    best = -1.0
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            window = moved[rows.start + dy:rows.stop + dy, cols.start + dx:cols.stop + dx].ravel()
            best = max(best, float(np.corrcoef(reference, window)[0, 1]))
    return best


def test_a_series_is_one_patient_placed_and_exposed_anew():
    size = 128

    def quiet(study):  # nothing drawn over the patient's right lung
        return not study["truth"].devices and not any(label.endswith("right") for label in study["labels"])

    pairs = [series[:2] for series in (generate_series(seed, 2, size) for seed in range(40))
             if quiet(series[0]) and quiet(series[1])]
    assert len(pairs) >= 10
    own = [_best_correlation(first["image"], second["image"], size) for first, second in pairs]
    other = [_best_correlation(first["image"], pairs[(index + 1) % len(pairs)][1]["image"], size)
             for index, (first, _) in enumerate(pairs)]
    assert min(own) > 0.75 and np.mean(other) < 0.5 and min(own) > max(other), (own, other)
    assert all(not np.array_equal(first["image"], second["image"]) for first, second in pairs)


def test_change_labels_agree_with_the_findings_drawn(many_series):
    seen = collections.Counter()
    for prior, study in follow_ups(many_series):
        before, now = prior["truth"], study["truth"]
        assert presence(study["labels"]) == now.labels()
        assert study["labels"] == sorted(study["labels"])
        labelled = {}
        for label in changes(study["labels"]):
            *where, change = label.split(":")
            assert change in PHANTOM_CHANGES, label
            labelled[tuple(where)] = change
            seen[where[0], change] += 1
        # every finding in either study has exactly one change label
        involved = {tuple(label.split(":")) for label in before.labels() + now.labels()}
        assert set(labelled) == involved, (before, now, labelled)
        for (finding, *side), change in labelled.items():
            if finding in ("pleural_effusion", "pneumothorax"):
                old, new = dict(getattr(before, finding)).get(side[0]), dict(getattr(now, finding)).get(side[0])
                step = {"increased": 1, "decreased": -1, "unchanged": 0}.get(change)
                if step is None:
                    assert (old is None, new is None) == {"new": (True, False), "resolved": (False, True)}[change]
                else:
                    assert SIZES.index(new) - SIZES.index(old) == step, (finding, side, change, old, new)
            elif finding == "support_device":
                assert {"new": (not before.devices and now.devices), "resolved": (before.devices and not now.devices),
                        "unchanged": before.devices == now.devices}[change]
            elif finding == "consolidation":
                old = [lobe for place, lobe in before.consolidation if place == side[0]]
                new = [lobe for place, lobe in now.consolidation if place == side[0]]
                assert {"new": not old and new, "resolved": old and not new, "unchanged": old == new}[change]
            else:
                was = f"{finding}:{side[0]}" in before.labels() if side else before.cardiomegaly
                assert {"new": not was, "unchanged": was}[change], (finding, side, change)
        assert not set(dict(now.pleural_effusion)) & set(dict(now.pneumothorax))  # no hydropneumothorax
    wanted = {(finding, change) for finding in ("pleural_effusion", "pneumothorax") for change in PHANTOM_CHANGES}
    wanted |= {("cardiomegaly", "new"), ("cardiomegaly", "unchanged")}
    wanted |= {(finding, change) for finding in ("consolidation", "support_device") for change in ("new", "resolved", "unchanged")}
    assert all(seen[key] >= 5 for key in wanted), seen


FINDING_WORDS = {
    "pleural_effusion": r"effusion", "pneumothorax": r"pneumothora", "consolidation": r"consolidation|airspace|pneumonia",
    "cardiomegaly": r"cardiomegaly|cardiac silhouette", "support_device": r"tube|catheter|line|support device",
    "nodule": r"nodule", "mass": r"\bmass\b",
}
CHANGE_WORDS = {
    "new": r"\bnew(?:ly)?\b|\binterval (?:placement|development)\b", "increased": r"\bincrease", "decreased": r"\bdecrease",
    "resolved": r"\bresol|\bremov|\bno longer\b", "unchanged": r"\bunchanged\b|\bstable\b",
}
SIDE_WORDS = {"right": r"\bright\b|\bbilateral\b", "left": r"\bleft\b|\bbilateral\b|\blingula"}


def sentences(text):
    return [sentence for sentence in re.split(r"(?<=\.)\s+", text.lower()) if sentence]


def test_follow_up_reports_state_each_change_beside_its_finding(many_series):
    for _, study in follow_ups(many_series):
        for section in (study["findings"], study["impression"]):
            for sentence in sentences(section):  # one change per sentence
                assert sum(bool(re.search(words, sentence)) for words in CHANGE_WORDS.values()) <= 1, sentence
            for label in changes(study["labels"]):
                finding, *side, change = label.split(":")
                assert any(re.search(FINDING_WORDS[finding], sentence) and re.search(CHANGE_WORDS[change], sentence)
                           and (not side or re.search(SIDE_WORDS[side[0]], sentence))
                           for sentence in sentences(section)), (label, section)


def test_first_studies_have_no_change_labels_and_some_say_there_is_no_prior(many_series):
    firsts = [series[0] for series in many_series]
    assert all(study["days_after_prior"] is None and not changes(study["labels"]) for study in firsts)
    no_prior = [study for study in firsts if re.match(r"No prior (?:\w+ )*?for comparison\.", study["findings"])]
    outside = [study for study in firsts if "outside" in study["findings"]]
    assert 0.15 < len(no_prior) / len(firsts) < 0.45 and 0.03 < len(outside) / len(firsts) < 0.2
    for study in outside:  # compared with a radiograph that is not in the data: present findings are "unchanged"
        assert re.search(r"\b(?:19|20)\d\d\b", study["findings"])
        for label in study["labels"]:
            finding = label.split(":")[0]
            assert any(re.search(FINDING_WORDS[finding], sentence) and re.search(CHANGE_WORDS["unchanged"], sentence)
                       for sentence in sentences(study["findings"])), (label, study["findings"])
    later = [study for series in many_series for study in series[1:]]
    assert all(1 <= study["days_after_prior"] <= 365 for study in later)


def test_labels_read_back_from_every_series_report_and_each_section(many_series):
    studies = [study for series in many_series for study in series]
    assert len(studies) > 300
    for study in studies:
        for text in (format_report(study["findings"], study["impression"]), study["findings"], study["impression"]):
            assert labels_from_report(text) == presence(study["labels"]), text


@pytest.mark.parametrize("report, expected", [
    ("Interval resolution of the right pleural effusion.", []),
    ("The previously seen right pleural effusion has resolved. No pneumothorax.", []),
    ("Interval removal of the endotracheal tube.", []),
    ("The left pneumothorax is no longer seen.", []),
    ("Resolved bilateral pleural effusions.", []),
    ("New small right pleural effusion.", ["pleural_effusion:right"]),
    ("Increased right pleural effusion, now moderate.", ["pleural_effusion:right"]),
    ("The left pleural effusion has decreased, now small.", ["pleural_effusion:left"]),
    ("Decreased left pneumothorax, now small.", ["pneumothorax:left"]),
    ("Unchanged moderate bilateral pleural effusions.", ["pleural_effusion:left", "pleural_effusion:right"]),
    ("Unchanged cardiomegaly.", ["cardiomegaly"]),
    ("Stable enlargement of the cardiac silhouette.", ["cardiomegaly"]),
    ("Interval placement of an endotracheal tube with its tip above the carina.", ["support_device"]),
    ("Support devices are unchanged in position.", ["support_device"]),
    ("Interval resolution of the right lower lobe consolidation. New consolidation in the lingula.",
     ["consolidation:left"]),
    ("No prior study for comparison. Small left pleural effusion.", ["pleural_effusion:left"]),
])
def test_labels_from_report_reads_changes(report, expected):
    assert labels_from_report(report) == expected


def test_phantom_folders_name_and_stamp_the_studies_per_patient_only_when_several(tmp_path):
    single = dataset_folder("phantom", str(tmp_path), phantom_studies=4, phantom_image_size=32)
    several = dataset_folder("phantom", str(tmp_path), phantom_studies=4, phantom_image_size=32, max_studies_per_patient=3)
    assert single.endswith("phantom-4-32px") and several.endswith("phantom-4-32px-3-per-patient")
    assert "max_studies_per_patient" not in json.loads((tmp_path / "phantom-4-32px" / PHANTOM_SETTINGS_FILE).read_text())
    stamp = json.loads((tmp_path / "phantom-4-32px-3-per-patient" / PHANTOM_SETTINGS_FILE).read_text())
    assert stamp["max_studies_per_patient"] == 3
    assert draw_phantoms_once(several, 4, image_size=32, max_studies_per_patient=3)  # kept
    assert not draw_phantoms_once(several, 4, image_size=32, max_studies_per_patient=2)  # drawn again


def test_the_held_out_share_sets_the_validation_and_test_splits_by_patient(tmp_path):
    folder = dataset_folder("phantom", str(tmp_path), phantom_studies=200, phantom_image_size=32,
                            max_studies_per_patient=4, held_out_share=0.05)
    assert folder.endswith("phantom-200-32px-4-per-patient-0.05-held-out")
    splits = load_report_dataset(folder)
    sizes = {split: len(rows) for split, rows in splits.items()}
    assert sum(sizes.values()) == 200 and sizes["train"] > 150
    assert 0 < sizes["validation"] < 25 and 0 < sizes["test"] < 25
    patients = {split: set(rows["patient_id"]) for split, rows in splits.items()}
    assert not patients["train"] & patients["test"] and not patients["train"] & patients["validation"]
    assert json.loads((tmp_path / Path(folder).name / PHANTOM_SETTINGS_FILE).read_text())["split_fractions"] == \
        [0.9, 0.05, 0.05]
    assert draw_phantoms_once(folder, 200, image_size=32, max_studies_per_patient=4, held_out_share=0.05)  # kept
    with pytest.raises(ValueError, match="held-out share .* got 0.5"):
        dataset_folder("phantom", str(tmp_path), phantom_studies=4, phantom_image_size=32, held_out_share=0.5)

"""Patients, study dates and priors in the one schema: the ordering step (schema.link_priors), dates as DICOM and ISO
write them, datasets converted before these columns, and the converters that fill them."""

import json

import numpy as np
import pytest

from converter_test_images import png_bytes, write
from dicom_files import grayscale_dicom
from modeling_cliptt5.cli import convert_imagefolder, convert_r2gen
from modeling_cliptt5.data.schema import (
    iso_datetime, link_priors, load_report_dataset, make_example, report_features, save_dataset_atomically,
)


def dataset_dict(studies):
    """{split: [(id, patient, datetime)]} -> a DatasetDict in the schema."""
    import datasets

    features = report_features()
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict({name: [example[name] for example in examples] for name in features},
                                          features=features)
        for split, examples in ((split, [make_example(study_id, [], "Clear.", "", split, "test", patient_id=patient,
                                                      study_datetime=when) for study_id, patient, when in rows])
                                for split, rows in studies.items())})


def priors(dataset):
    return {row["id"]: row["prior_id"] for split in dataset.values() for row in split}


def test_a_study_gets_the_same_patients_latest_earlier_study_from_any_split():
    linked = link_priors(dataset_dict({
        "train": [("a3", "A", "2024-03-01T09:00:00"), ("a1", "A", "2023-01-10"), ("b1", "B", "2024-01-01"),
                  ("a-undated", "A", ""), ("nobody", "", "2024-01-01")],
        "test": [("a2", "A", "2023-06-30T23:59:00"), ("a2-again", "A", "2023-06-30T23:59:00"),
                 ("b2", "B", "2024-02-01")],
    }))
    assert priors(linked) == {"a1": "", "a2": "a1", "a2-again": "a1", "a3": "a2-again", "b1": "", "b2": "b1",
                              "a-undated": "", "nobody": ""}
    assert linked["train"].features == report_features()


@pytest.mark.parametrize("value, time, expected", [
    ("20240301", "", "2024-03-01"), ("20240301", "140509.123", "2024-03-01T14:05:09"), ("20240301", "14", "2024-03-01T14:00:00"),
    ("2024-03-01", "", "2024-03-01"), ("2024-03-01T14:05", "", "2024-03-01T14:05:00"), ("", "", ""),
])
def test_dates_as_dicom_and_iso_write_them(value, time, expected):
    assert iso_datetime(value, time) == expected


@pytest.mark.parametrize("value, time", [("2024-13-01", ""), ("yesterday", ""), ("20240301", "1405x")])
def test_an_unreadable_date_is_named(value, time):
    with pytest.raises(ValueError, match=f"unreadable study date {value!r}"):
        iso_datetime(value, time)


def test_a_dataset_converted_before_these_columns_still_loads_with_them_empty(tmp_path):
    old = dataset_dict({"train": [("s1", "", "")], "validation": [("s2", "", "")], "test": [("s3", "", "")]})
    old = old.remove_columns(["patient_id", "study_datetime", "prior_id"])
    save_dataset_atomically(old, str(tmp_path / "old"))
    loaded = load_report_dataset(str(tmp_path / "old"))
    assert loaded["train"][0]["patient_id"] == loaded["train"][0]["prior_id"] == "" and loaded["train"][0]["id"] == "s1"
    broken = old.remove_columns(["report"])
    save_dataset_atomically(broken, str(tmp_path / "broken"))
    with pytest.raises(ValueError, match=r"missing columns \['patient_id', 'prior_id', 'report', 'study_datetime'\]"):
        load_report_dataset(str(tmp_path / "broken"))


def test_the_image_folder_converter_reads_patients_and_dates_from_columns_or_dicom_headers(tmp_path):
    folder = tmp_path / "cxr"
    for name in ("first.png", "second.png", "other.png", "bad.png"):
        write(folder / name, png_bytes())
    pixels = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 50)
    grayscale_dicom(pixels, folder / "third.dcm", header={"PatientID": "P1", "StudyDate": "20240305",
                                                           "StudyTime": "081500"})
    rows = [{"file_name": "second.png", "findings": "Effusion.", "patient_id": "P1", "study_datetime": "2024-02-01"},
            {"file_name": "first.png", "findings": "Clear.", "patient_id": "P1", "study_datetime": "20240101"},
            {"file_name": "third.dcm", "findings": "Larger effusion."},
            {"file_name": "other.png", "findings": "Clear.", "patient_id": "P2", "study_datetime": "2024-02-01"},
            {"file_name": "bad.png", "findings": "Clear.", "patient_id": "P2", "study_datetime": "last week"}]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out"
    assert convert_imagefolder.main([str(folder), "--output", str(output), "--test-fraction", "0",
                                     "--validation-fraction", "0"]) == 0
    by_id = {row["id"]: row for row in load_report_dataset(str(output))["train"]}
    assert {study_id: (row["patient_id"], row["study_datetime"], row["prior_id"]) for study_id, row in by_id.items()} == {
        "first.png": ("P1", "2024-01-01", ""), "second.png": ("P1", "2024-02-01", "first.png"),
        "third.dcm": ("P1", "2024-03-05T08:15:00", "second.png"), "other.png": ("P2", "2024-02-01", "")}
    (skipped,) = [json.loads(line) for line in (output / "skipped.jsonl").read_text().splitlines()]
    assert skipped["id"] == "bad.png" and skipped["reason"].startswith("unreadable study date 'last week'")


def test_the_r2gen_converter_keeps_mimics_subject_as_the_patient_without_priors(tmp_path):
    images = tmp_path / "mimic_cxr" / "images"
    write(images / "p1/s1/a.png", png_bytes())
    write(images / "p1/s2/b.png", png_bytes())
    annotation = tmp_path / "mimic_cxr" / "annotation.json"
    annotation.write_text(json.dumps({"train": [
        {"id": "a", "subject_id": 10000032, "study_id": 50414267, "report": "Clear.", "image_path": ["p1/s1/a.png"]},
        {"id": "b", "subject_id": 10000032, "study_id": 53189527, "report": "Clear.", "image_path": ["p1/s2/b.png"]},
    ], "val": [], "test": []}))
    output = tmp_path / "out"
    assert convert_r2gen.main([str(annotation), "--output", str(output)]) == 0
    rows = load_report_dataset(str(output))["train"]
    assert rows["patient_id"] == ["10000032", "10000032"]
    assert rows["study_datetime"] == ["", ""] and rows["prior_id"] == ["", ""]  # no dates in the file: no order

"""Kaggle curated CXR converter: CSV + JPEG layout with every kind of bad row, and TFRecords read in a subprocess."""

import base64
import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from converter_test_images import (
    bomb_png_bytes, jpeg_bytes, png_bytes, stored_image_bytes, truncated_jpeg_bytes, write,
)
from modeling_cliptt5.cli import convert_kaggle_cxr
from modeling_cliptt5.data.converters import kaggle_cxr
from modeling_cliptt5.data.schema import load_report_dataset

IMAGES = Path("mimic_dset") / "re_512_3ch"

# (id, text, path or None for "no path column value", image bytes or None for no file); rows of df_train.csv
TRAIN_ROWS = [
    ("s50000001", "FINDINGS: Lungs clear. IMPRESSION: No acute process.", IMAGES / "Train/s50000001.jpg", 10),
    ("1001", "The heart is normal.\nNo effusion x-XXXX.", None, 20),
    ("s50000003", "FINDINGS: Small effusion.", "/kaggle/input/curated/mimic_dset/re_512_3ch/Train/s50000003.jpg", 30),
    ("s50000004", "FINDINGS: Clear.", IMAGES / "Train/s50000004.jpg", None),  # missing image file
    ("s50000005", "FINDINGS: Clear.", None, b""),  # zero-byte file
    ("s50000006", "FINDINGS: Clear.", None, "truncated"),
    ("s50000007", "FINDINGS: Clear.", None, "bomb"),
    ("s50000001", "FINDINGS: Again.", None, None),  # duplicate id
    ("s50000011", "FINDINGS: Clear.", "../../outside.jpg", None),  # escapes the dataset folder
    ("s50000012", "", None, 40),  # empty report
    ("s50000013", "IMPRESSION: Cardiomegaly.", None, 50),
    ("s50000014", "FINDINGS: Clear.", None, b"this is a text file, not an image"),
]
VAL_ROWS = [("s59000001", "FINDINGS: Valid lungs clear. IMPRESSION: Normal.", None, 60),
            ("2002", "Normal chest.", None, 70)]
CONVERTED = {"s50000001", "1001", "s50000003", "s50000013", "s59000001", "2002"}
ROWS_READ = len(TRAIN_ROWS) + len(VAL_ROWS) + 2  # + the short row and the non-UTF-8 row written by hand


def image_data(kind):
    if isinstance(kind, int):
        return jpeg_bytes(shade=kind)
    return {"truncated": truncated_jpeg_bytes(), "bomb": bomb_png_bytes()}.get(kind, kind)


def csv_line(study_id, text, path):
    quoted = '"' + text.replace('"', '""') + '"'
    return f"{study_id},{quoted},{'' if path is None else path}\n".encode("utf-8")


@pytest.fixture()
def kaggle_root(tmp_path):
    root = tmp_path / "curated-cxr"
    csv_dir = root / "Cleanses csv tfrecords"
    csv_dir.mkdir(parents=True)
    write(tmp_path / "outside.jpg", jpeg_bytes())
    for name, folder, rows in (("df_train.csv", "Train", TRAIN_ROWS), ("df_val.csv", "Valid", VAL_ROWS)):
        lines = [b"id,text,path\n"]
        for study_id, text, path, image in rows:
            lines.append(csv_line(study_id, text, path))
            if image is not None:
                write(root / IMAGES / folder / f"{study_id}.jpg", image_data(image))
        if name == "df_train.csv":
            lines.append(b"s50000009,only two columns\n")
            lines.append(b's50000010,"text with \xff\xfe bytes",\n')
            write(root / IMAGES / folder / "s50000010.jpg", jpeg_bytes())
        (csv_dir / name).write_bytes(b"".join(lines))
    return root


def read_skipped(output):
    return {entry["id"]: entry for entry in map(json.loads, (output / "skipped.jsonl").read_text().splitlines())}


def all_rows(dataset_dict):
    return {row["id"]: row for split in dataset_dict.values() for row in split}


def test_csv_conversion_keeps_good_rows_and_names_every_bad_one(kaggle_root, tmp_path, capsys):
    output = tmp_path / "out"
    assert convert_kaggle_cxr.main([str(kaggle_root), "--output", str(output)]) == 0
    dataset = load_report_dataset(str(output))
    rows = all_rows(dataset)
    skipped = read_skipped(output)
    assert set(rows) == CONVERTED
    assert len(rows) + sum(1 for _ in (output / "skipped.jsonl").open()) == ROWS_READ
    summary = f"read {ROWS_READ}, converted {len(CONVERTED)}, skipped {ROWS_READ - len(CONVERTED)}"
    assert summary in capsys.readouterr().out

    reasons = {study_id: entry["reason"] for study_id, entry in skipped.items()}
    assert reasons["s50000004"] == "missing image file"
    assert "empty file" in reasons["s50000005"]
    assert "truncated" in reasons["s50000006"]
    assert "too large" in reasons["s50000007"]
    assert reasons["s50000011"] == "path escapes the dataset folder"
    # Line 11: the header, 8 rows before it, and one of them spans two lines (a newline inside quotes).
    assert skipped["s50000011"]["file"].endswith("df_train.csv line 11: ../../outside.jpg")
    assert reasons["s50000012"] == "empty report"
    assert "not an image" in reasons["s50000014"]
    assert reasons["s50000009"] == "CSV row has 2 columns, the header has 3"
    assert reasons["s50000010"] == "text is not UTF-8"
    duplicate = [entry for entry in map(json.loads, (output / "skipped.jsonl").read_text().splitlines())
                 if entry["id"] == "s50000001"]
    assert len(duplicate) == 1 and duplicate[0]["reason"] == "duplicate id"
    assert skipped["s50000004"]["file"].endswith("Train/s50000004.jpg")

    first = rows["s50000001"]
    assert (first["findings"], first["impression"]) == ("Lungs clear.", "No acute process.")
    assert first["report"] == "FINDINGS: Lungs clear. IMPRESSION: No acute process."
    assert first["source"] == "kaggle-cxr/mimic-cxr" and rows["1001"]["source"] == "kaggle-cxr/openi"
    # No section headers -> findings; whitespace and de-identification placeholders normalised.
    assert (rows["1001"]["findings"], rows["1001"]["impression"]) == ("The heart is normal. No effusion XXXX.", "")
    assert rows["s50000013"]["impression"] == "Cardiomegaly." and rows["s50000013"]["findings"] == ""
    # Images are embedded: the stored bytes are the source JPEG's bytes, whatever way the path was given.
    stored = stored_image_bytes(dataset)
    for study_id, folder in (("s50000001", "Train"), ("1001", "Train"), ("s50000003", "Train"), ("2002", "Valid")):
        assert stored[study_id] == [(kaggle_root / IMAGES / folder / f"{study_id}.jpg").read_bytes()]
    assert {rows[i]["split"] for i in ("s59000001", "2002")} == {"validation"}


def test_missing_test_split_is_carved_from_train_by_study(kaggle_root, tmp_path, capsys):
    first = tmp_path / "a"
    convert_kaggle_cxr.main([str(kaggle_root), "--output", str(first), "--test-fraction", "0.5"])
    assert "the source has no test split: made from train by study id" in capsys.readouterr().out
    splits = {row_id: row["split"] for row_id, row in all_rows(load_report_dataset(str(first))).items()}
    train_ids = {row[0] for row in TRAIN_ROWS}
    assert {i for i, split in splits.items() if split == "validation"} == {row[0] for row in VAL_ROWS}
    assert {i for i, split in splits.items() if split == "test"} <= train_ids
    # A study's split depends on its id alone, not on which other rows are converted.
    second = tmp_path / "b"
    convert_kaggle_cxr.main([str(kaggle_root), "--output", str(second), "--test-fraction", "0.5",
                             "--max-samples", "9", "--seed", "3"])
    for row_id, row in all_rows(load_report_dataset(str(second))).items():
        assert row["split"] == splits[row_id]


def test_test_csv_gives_the_test_split(kaggle_root, tmp_path):
    csv_dir = kaggle_root / "Cleanses csv tfrecords"
    (csv_dir / "df_test.csv").write_bytes(b"id,text,path\n" + csv_line("s58000001", "FINDINGS: Test lungs.", None))
    write(kaggle_root / IMAGES / "Test" / "s58000001.jpg", jpeg_bytes())
    output = tmp_path / "out"
    convert_kaggle_cxr.main([str(kaggle_root), "--output", str(output), "--test-fraction", "0.5"])
    dataset = load_report_dataset(str(output))
    assert dataset["test"]["id"] == ["s58000001"]
    assert set(dataset["train"]["id"]) == CONVERTED - {"s59000001", "2002"}


def test_report_target_findings_skips_impression_only_studies(kaggle_root, tmp_path):
    output = tmp_path / "out"
    convert_kaggle_cxr.main([str(kaggle_root), "--output", str(output), "--report-target", "findings"])
    rows = all_rows(load_report_dataset(str(output)))
    assert "s50000013" not in rows and read_skipped(output)["s50000013"]["reason"] == "empty report (no findings)"
    assert rows["s50000001"]["report"] == "Lungs clear."


def test_max_samples_is_a_reproducible_subset(kaggle_root, tmp_path, capsys):
    def sample(seed, name):
        output = tmp_path / name
        convert_kaggle_cxr.main([str(kaggle_root), "--output", str(output), "--max-samples", "6", "--seed", str(seed)])
        assert capsys.readouterr().out.startswith("read 6,")
        return set(all_rows(load_report_dataset(str(output)))) | set(read_skipped(output))

    assert sample(1, "a") == sample(1, "b")
    assert sample(1, "a") != sample(2, "c")


def test_failure_mid_way_leaves_no_output(kaggle_root, tmp_path, monkeypatch):
    output = tmp_path / "out"
    output.mkdir()
    (output / "previous.txt").write_text("an earlier conversion")
    calls = []

    def failing_read_view(view, any_modality=False):
        calls.append(view)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return {"bytes": jpeg_bytes(), "path": view.name}

    monkeypatch.setattr("modeling_cliptt5.data.converters.common.read_view", failing_read_view)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_kaggle_cxr.main([str(kaggle_root), "--output", str(output)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curated-cxr", "out", "outside.jpg"]
    assert [p.name for p in output.iterdir()] == ["previous.txt"]
    fresh = tmp_path / "fresh"
    calls.clear()
    with pytest.raises(RuntimeError):
        convert_kaggle_cxr.main([str(kaggle_root), "--output", str(fresh)])
    assert not fresh.exists()


def test_medvill_label_strings_fill_the_labels_column(kaggle_root, tmp_path, capsys):
    """MedViLL's JSONL label strings ("'Cardiomegaly', 'Edema'") become the labels the finding head trains on."""
    labels = tmp_path / "Train.jsonl"
    labels.write_text(json.dumps({"id": "s50000013", "split": "train", "label": "'Cardiomegaly', 'Edema'",
                                  "text": "...", "img": "s50000013.jpg"}) + "\n"
                      + json.dumps({"id": "2002", "label": ""}) + "\n")
    output = tmp_path / "out"
    assert convert_kaggle_cxr.main([str(kaggle_root), "--output", str(output), "--labels", str(labels)]) == 0
    rows = all_rows(load_report_dataset(str(output)))
    assert rows["s50000013"]["labels"] == ["Cardiomegaly", "Edema"]
    assert rows["2002"]["labels"] == [] and rows["s50000001"]["labels"] == []
    assert kaggle_cxr.parse_label_string("Pleural Effusion, No Finding") == ("Pleural Effusion", "No Finding")
    labels.write_text("not json\n")
    assert convert_kaggle_cxr.main([str(kaggle_root), "--output", str(tmp_path / "bad"), "--labels", str(labels)]) == 1
    assert f"{labels} line 1: not a" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_missing_csv_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert convert_kaggle_cxr.main([str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 1
    assert "df_train.csv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- TFRecords (tensorflow only ever runs in child processes) -------------------------------------------------------

WRITE_TFRECORDS = """
import base64, json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
for path, records in json.load(open(sys.argv[1])).items():
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            feature = {}
            for key, (kind, value) in record.items():
                if kind == "bytes":
                    feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[base64.b64decode(value)]))
                else:
                    feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
"""


def tf_record(study_id, text, image, **extra):
    record = {"id": ("bytes", study_id.encode()), "report": ("bytes", text.encode()), "image_raw": ("bytes", image),
              "label": ("int", 1)}
    record.update(extra)
    return {key: (kind, base64.b64encode(value).decode() if kind == "bytes" else value)
            for key, (kind, value) in record.items()}


def flip_byte_in_record(path, record_index):
    """Corrupts one byte of a record's data: its CRC no longer matches."""
    data = bytearray(path.read_bytes())
    offset = 0
    for _ in range(record_index):
        offset += 12 + struct.unpack("<Q", data[offset:offset + 8])[0] + 4
    data[offset + 12 + 5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
    if importlib.util.find_spec("tensorflow") is None:  # looks the package up without importing it
        pytest.skip("tensorflow-cpu is not installed (pip install tensorflow-cpu==2.21.0)")
    folder = tmp_path_factory.mktemp("tfrecords")
    images = {name: jpeg_bytes(shade) for name, shade in (("t1", 11), ("t2", 22), ("t3", 33), ("v1", 44))}
    spec = {
        str(folder / "good" / "train.tfrecord"): [
            tf_record("t1", "FINDINGS: Lungs clear. IMPRESSION: Normal.", images["t1"]),
            tf_record("t2", "FINDINGS: Corrupted on disk.", images["t2"]),
            tf_record("t3", "No section headers here.", images["t3"]),
            tf_record("t4", "FINDINGS: Garbage image.", b"not an image at all"),
        ],
        str(folder / "good" / "val.tfrecord"): [tf_record("v1", "IMPRESSION: Valid.", images["v1"])],
        str(folder / "ambiguous" / "data.tfrecord"): [
            tf_record("a1", "FINDINGS: Lungs clear.", images["t1"], caption=("bytes", b"PA and lateral views"),
                      thumbnail=("bytes", png_bytes())),
        ],
    }
    for path in spec:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-c", WRITE_TFRECORDS, str(folder / "spec.json")], check=True)
    flip_byte_in_record(folder / "good" / "train.tfrecord", 1)
    return folder, images


def test_tfrecords_convert_with_detected_keys_and_skip_a_corrupt_record(tfrecords, tmp_path, capsys):
    folder, images = tfrecords
    output = tmp_path / "out"
    assert convert_kaggle_cxr.main(["--tfrecords", str(folder / "good"), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "read 5, converted 3, skipped 2" in printed
    assert "image 'image_raw', text 'report', id 'id'" in printed
    assert "  label: int64: [1]" in printed and "  image_raw: bytes: JPEG image" in printed  # features listed
    dataset = load_report_dataset(str(output))
    rows = all_rows(dataset)
    assert set(rows) == {"t1", "t3", "v1"}  # t3 comes after the corrupt record: reading went on
    assert rows["v1"]["split"] == "validation" and rows["t1"]["split"] in ("train", "test")
    assert (rows["t1"]["findings"], rows["t1"]["impression"]) == ("Lungs clear.", "Normal.")
    assert rows["t3"]["findings"] == "No section headers here."
    assert stored_image_bytes(dataset) == {name: [images[name]] for name in ("t1", "t3", "v1")}
    entries = [json.loads(line) for line in (output / "skipped.jsonl").read_text().splitlines()]
    reasons = {entry["file"].split("/")[-1]: entry["reason"] for entry in entries}
    assert "CRC" in reasons["train.tfrecord record 1"]
    assert "not an image" in [entry["reason"] for entry in entries if entry["id"] == "t4"][0]
    assert "tensorflow" not in sys.modules  # the TFRecords were read in a child process


def test_tfrecords_with_ambiguous_keys_stop_and_list_them(tfrecords, tmp_path, capsys):
    folder, _ = tfrecords
    output = tmp_path / "out"
    assert convert_kaggle_cxr.main([str(tmp_path), "--tfrecords", str(folder / "ambiguous"),
                                    "--output", str(output)]) == 1
    message = capsys.readouterr().err
    assert "cannot tell the image key (2 bytes features hold JPEG/PNG)" in message
    for listed in ("image_raw: bytes: JPEG image", "thumbnail: bytes: PNG image", "report: bytes: text",
                   "caption: bytes: text", "label: int64", "--image-key"):
        assert listed in message
    assert not output.exists()


def json_feature(kind, value):
    """A feature as tfrecord_reader.py writes it."""
    return {"type": kind, "values": [base64.b64encode(value).decode() if kind == "bytes" else value]}


def test_explicit_keys_pick_among_ambiguous_features():
    features = {"image_raw": json_feature("bytes", jpeg_bytes()), "thumbnail": json_feature("bytes", png_bytes()),
                "report": json_feature("bytes", b"FINDINGS: clear."), "caption": json_feature("bytes", b"PA view"),
                "study_id": json_feature("bytes", b"s1"), "label": json_feature("int64", 1)}
    assert kaggle_cxr.choose_keys(features, image_key="image_raw", text_key="report") == (
        "image_raw", "report", "study_id")
    with pytest.raises(kaggle_cxr.ConversionError, match="cannot tell the report text key"):
        kaggle_cxr.choose_keys(features, image_key="thumbnail")
    with pytest.raises(kaggle_cxr.ConversionError, match="--text-key 'findings' is not a feature"):
        kaggle_cxr.choose_keys(features, image_key="thumbnail", text_key="findings")
    # Unambiguous: one image, one free-text feature (an id or path holds no spaces).
    del features["thumbnail"], features["caption"]
    features["path"] = json_feature("bytes", b"Train/s1.jpg")
    assert kaggle_cxr.choose_keys(features) == ("image_raw", "report", "study_id")


def test_records_are_counted_from_the_framing_without_tensorflow(tfrecords):
    folder, _ = tfrecords
    # The corrupt record still counts: --max-samples draws from every record, readable or not.
    assert kaggle_cxr.count_records(folder / "good" / "train.tfrecord", compressed=False) == 4
    assert kaggle_cxr.count_records(folder / "good" / "val.tfrecord", compressed=False) == 1
    assert [kaggle_cxr.split_from_file_name(name) for name in
            ("train-00001.tfrecord", "df_val.tfrecords", "valid.tfrec", "TEST.tfrecord", "data.tfrecord",
             "interval.tfrecord")] == ["train", "validation", "validation", "test", None, None]

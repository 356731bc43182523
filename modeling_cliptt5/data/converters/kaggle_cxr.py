"""Kaggle "Curated CXR report generation dataset" (MedViLL's MIMIC-CXR + OpenI splits) -> the CLIP-T5 dataset.

Reads `df_train.csv` / `df_val.csv` (columns id,text,path) with images under mimic_dset/re_512_3ch/{Train,Valid,Test}/,
or the dataset's TFRecords (--tfrecords), whose feature keys are not published: they are read off the first record.

CheXpert labels, where the source carries them, fill the `labels` column (what the finding head trains on): a `label`
column in the CSV, or --labels FILE, MedViLL's JSONL files ({"id", "label", ...} per line) whose label is a string
such as "'Cardiomegaly', 'Edema'".

Patients and priors: this set names no patient and no study date, so `patient_id`, `study_datetime` and
`prior_id` stay empty.
"""

import base64
import csv
import dataclasses
import gzip
import io
import itertools
import json
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

from modeling_cliptt5.data.converters.common import (
    JPEG_MAGIC, PNG_MAGIC, ConversionError, StudyRecord, View, is_utf8, resolve_inside,
    sample_indices, split_for_study,
)
from modeling_cliptt5.data.reports import sections_from_free_text

CSV_SPLITS = {"df_train.csv": "train", "df_val.csv": "validation", "df_test.csv": "test"}
IMAGE_FOLDER = PurePosixPath("mimic_dset", "re_512_3ch")
SPLIT_IMAGE_FOLDERS = {"train": "Train", "validation": "Valid", "test": "Test"}
TFRECORD_READER = Path(__file__).resolve().with_name("tfrecord_reader.py")
ID_KEYS = ("id", "study_id", "image_id", "dicom_id")
MIMIC_STUDY_ID = re.compile(r"^s\d+$")


def source_of(study_id):
    """MIMIC-CXR studies have ids like s50260386; the OpenI ones are numbers."""
    return "kaggle-cxr/mimic-cxr" if MIMIC_STUDY_ID.match(study_id) else "kaggle-cxr/openi"


def find_csv_folder(root, csv_dir=None):
    """The folder holding df_train.csv: --csv-dir, the root itself, or one level down ("Cleanses csv tfrecords")."""
    if csv_dir is not None:
        candidates = [Path(csv_dir)]
    else:
        candidates = [root] + sorted(path for path in root.iterdir() if path.is_dir())
    for folder in candidates:
        if any((folder / name).is_file() for name in CSV_SPLITS):
            return folder
    raise ConversionError(f"{root}: no {' / '.join(CSV_SPLITS)} here or one folder down "
                          "(pass --csv-dir, or --tfrecords to read the TFRecords instead)")


def resolve_image(root, csv_split, study_id, path_value):
    """(image path, None) or (None, (problem, offending path)), from the `path` column or, when it is empty or
    points nowhere, from the id.

    Paths written on Kaggle are absolute (/kaggle/input/...): the part from "mimic_dset/" on is used.
    """
    by_id = None
    try:
        by_id = resolve_inside(root, IMAGE_FOLDER / SPLIT_IMAGE_FOLDERS[csv_split] / f"{study_id}.jpg")
    except ValueError as error:
        return None, (str(error), f"{study_id}.jpg")
    path_value = (path_value or "").strip().replace("\\", "/")
    if not path_value:
        return by_id, None
    parts = PurePosixPath(path_value).parts
    if IMAGE_FOLDER.parts[0] in parts:
        relative = PurePosixPath(*parts[parts.index(IMAGE_FOLDER.parts[0]):])
    elif PurePosixPath(path_value).is_absolute():
        return by_id, None
    else:
        relative = PurePosixPath(path_value)
    try:
        from_path = resolve_inside(root, relative)
    except ValueError as error:
        return None, (str(error), path_value)
    return (from_path if from_path.is_file() or not by_id.is_file() else by_id), None


def parse_label_string(value):
    """MedViLL's label string "'Cardiomegaly', 'Edema'" (or "Cardiomegaly, Edema") -> ("Cardiomegaly", "Edema")."""
    names = [part.strip().strip("'\"[] ").strip() for part in (value or "").split(",")]
    return tuple(name for name in names if name)


def read_label_file(path):
    """{study id: labels} from a MedViLL-style JSONL file (one {"id", "label"} object per line)."""
    labels = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                labels[str(entry["id"]).strip()] = parse_label_string(entry.get("label", ""))
            except (ValueError, KeyError, TypeError) as error:
                raise ConversionError(f"{path} line {number}: not a {{\"id\", \"label\"}} JSON object ({error})")
    return labels


def read_csv_records(root, csv_path, csv_split, split_of):
    """StudyRecords of one CSV; malformed rows come back marked with their problem."""
    text = csv_path.read_bytes().decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip().lower() for name in next(reader, [])]
    if "id" not in header or "text" not in header:
        raise ConversionError(f"{csv_path}: expected columns id,text[,path]; the header has {header}")
    columns = {name: header.index(name) for name in ("id", "text", "path", "label") if name in header}
    records = []
    for row in reader:
        if not row:
            continue  # a blank line is not a row
        where = f"{csv_path} line {reader.line_num}"
        study_id = row[columns["id"]].strip() if len(row) > columns["id"] else None
        problem = None
        if len(row) != len(header):
            problem = f"CSV row has {len(row)} columns, the header has {len(header)}"
        elif not all(is_utf8(value) for value in row):
            problem = "text is not UTF-8"
        elif not study_id:
            problem = "empty id"
        if problem:
            records.append(StudyRecord(study_id, where, problem=problem))
            continue
        path_value = row[columns["path"]] if "path" in columns else ""
        image, path_problem = resolve_image(root, csv_split, study_id, path_value)
        if path_problem:
            records.append(StudyRecord(study_id, f"{where}: {path_problem[1]}", problem=path_problem[0]))
            continue
        sections = sections_from_free_text(row[columns["text"]])
        records.append(StudyRecord(
            study_id, where, views=[View(f"{study_id}.jpg", path=image)] if image else [],
            findings=sections["findings"], impression=sections["impression"], indication=sections["indication"],
            split=split_of(study_id, csv_split), source=source_of(study_id),
            labels=parse_label_string(row[columns["label"]]) if "label" in columns else ()))
    return records


def add_labels(records, labels):
    """Records with the labels of their study id from a label file (a CSV's own label column stays where the file
    has no entry)."""
    return (dataclasses.replace(record, labels=labels.get(record.study_id, record.labels)) for record in records)


def split_rule(present_splits, validation_fraction, test_fraction):
    """Keeps the source's splits and carves the missing validation/test out of train by study id.

    Returns (split_of(study_id, source_split), notes); rows with no source split are split by study id alone.
    """
    fractions = {"validation": validation_fraction, "test": test_fraction}
    carved = tuple(split for split in fractions if split not in present_splits)
    notes = [f"the source has no {split} split: made from train by study id ({fractions[split]:.0%} of its studies)"
             for split in carved]

    def split_of(study_id, source_split):
        if source_split is None:
            return split_for_study(study_id, validation_fraction, test_fraction)
        if source_split == "train" and carved:
            return split_for_study(study_id, validation_fraction, test_fraction, splits=carved)
        return source_split

    return split_of, notes


def csv_records(args):
    if args.dataset_root is None:
        raise ConversionError("give the dataset folder (or --tfrecords FILES)")
    root = Path(args.dataset_root).resolve()
    if not root.is_dir():
        raise ConversionError(f"{root}: dataset folder not found")
    folder = find_csv_folder(root, args.csv_dir)
    present = {split: folder / name for name, split in CSV_SPLITS.items() if (folder / name).is_file()}
    if "train" not in present:
        raise ConversionError(f"{folder}: df_train.csv is missing (found {sorted(p.name for p in present.values())})")
    split_of, notes = split_rule(present, args.validation_fraction, args.test_fraction)
    test_images = root / IMAGE_FOLDER / SPLIT_IMAGE_FOLDERS["test"]
    if "test" not in present and test_images.is_dir():
        notes.append(f"{test_images} holds images but no CSV gives their reports: not used")
    records = []
    for split, csv_path in present.items():
        records += read_csv_records(root, csv_path, split, split_of)
    return records, notes


# --- TFRecords ---------------------------------------------------------------------------------------------------

def tfrecord_files(paths):
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if ".tfrec" in p.name)
        elif path.is_file():
            files.append(path)
        else:
            raise ConversionError(f"{path}: no such TFRecord file or folder")
    if not files:
        raise ConversionError(f"no *.tfrecord* files in {', '.join(map(str, paths))}")
    return files


def is_gzip_name(path, compression):
    return compression == "gzip" or (compression == "auto" and path.name.endswith((".gz", ".gzip")))


def count_records(path, compressed):
    """Counts records from the framing alone (no TensorFlow): length fields are followed, CRCs are not checked."""
    count = 0
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
        while len(header := handle.read(12)) == 12:
            (length,) = struct.unpack("<Q", header[:8])
            handle.seek(length + 4, io.SEEK_CUR)
            count += 1
    return count


def stream_tfrecords(files, compression):
    """Records as dicts from tfrecord_reader.py, run in its own process (tensorflow must not meet torchvision)."""
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen([sys.executable, str(TFRECORD_READER), "--compression", compression,
                                    *map(str, files)], stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            for line in process.stdout:
                yield json.loads(line)
            if process.wait() != 0:
                stderr.seek(0)
                tail = stderr.read()[-2000:]
                raise ConversionError(f"the TFRecord reader failed (exit {process.returncode}); is tensorflow-cpu "
                                      f"installed? Its last output:\n{tail}")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def decode_bytes(encoded):
    return base64.b64decode(encoded)


def describe_feature(feature):
    """'bytes: JPEG image', 'bytes: text "The heart ..."', 'int64: [3]' - for messages listing a record's keys."""
    values = feature["values"]
    if feature["type"] != "bytes" or not values:
        return f"{feature['type']}: {values[:3]}"
    data = decode_bytes(values[0])
    if data.startswith(JPEG_MAGIC) or data.startswith(PNG_MAGIC):
        return f"bytes: {'JPEG' if data.startswith(JPEG_MAGIC) else 'PNG'} image ({len(data)} bytes)"
    try:
        return f"bytes: text {data.decode('utf-8')[:40]!r}"
    except UnicodeDecodeError:
        return f"bytes: binary ({len(data)} bytes)"


def choose_keys(features, image_key=None, text_key=None, id_key=None):
    """(image key, text key, id key or None) for a record's features: the user's, else the only plausible ones."""
    listing = "\n".join(f"  {key}: {describe_feature(feature)}" for key, feature in features.items())

    def fail(problem):
        raise ConversionError(f"{problem}. The first record's features are:\n{listing}\n"
                              "Name them with --image-key KEY --text-key KEY (and --id-key KEY if there is one).")

    descriptions = {key: describe_feature(feature) for key, feature in features.items()}
    for option, key in (("--image-key", image_key), ("--text-key", text_key), ("--id-key", id_key)):
        if key is not None and key not in features:
            fail(f"{option} {key!r} is not a feature of the records")
    if image_key is None:
        images = [key for key, description in descriptions.items() if "image (" in description]
        if len(images) != 1:
            fail(f"cannot tell the image key ({len(images)} bytes features hold JPEG/PNG)")
        image_key = images[0]
    if text_key is None:
        # The report is free text; ids and paths decode as UTF-8 too but hold no spaces.
        texts = [key for key, description in descriptions.items()
                 if description.startswith("bytes: text") and key != image_key
                 and " " in decode_bytes(features[key]["values"][0]).decode("utf-8").strip()]
        if len(texts) != 1:
            fail(f"cannot tell the report text key ({len(texts)} bytes features hold free text)")
        text_key = texts[0]
    if id_key is None:
        id_key = next((key for key in ID_KEYS if key in features), None)
    return image_key, text_key, id_key


def first_value(features, key):
    feature = features.get(key)
    if feature is None or not feature["values"]:
        return None
    value = feature["values"][0]
    return decode_bytes(value) if feature["type"] == "bytes" else value


def split_from_file_name(name):
    name = name.lower()
    for split, words in (("validation", ("valid", "val")), ("test", ("test",)), ("train", ("train",))):
        if any(re.search(rf"(^|[^a-z]){word}", name) for word in words):
            return split
    return None


def tfrecord_to_record(record, keys, split_of):
    image_key, text_key, id_key = keys
    path = Path(record["file"])
    where = f"{path} record {record['index']}"
    fallback_id = f"{path.name.split('.')[0]}-{record['index']}"
    if "error" in record:
        return StudyRecord(fallback_id, where, problem=record["error"])
    features = record["features"]
    raw_id = first_value(features, id_key) if id_key else None
    study_id = (raw_id.decode("utf-8", errors="replace") if isinstance(raw_id, bytes) else str(raw_id or "")).strip()
    study_id = study_id or fallback_id
    image, text = first_value(features, image_key), first_value(features, text_key)
    problem = None
    if image is None:
        problem = f"record has no {image_key!r} image bytes"
    elif text is None:
        problem = f"record has no {text_key!r} text"
    else:
        try:
            text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        except UnicodeDecodeError:
            problem = "text is not UTF-8"
    if problem:
        return StudyRecord(study_id, where, problem=problem)
    sections = sections_from_free_text(text)
    suffix = ".png" if image.startswith(PNG_MAGIC) else ".jpg"
    return StudyRecord(study_id, where, views=[View(f"{study_id}{suffix}", data=image)],
                       findings=sections["findings"], impression=sections["impression"],
                       indication=sections["indication"], split=split_of(study_id, split_from_file_name(path.name)),
                       source=source_of(study_id))


def tfrecord_records(args):
    """(records iterator, count, notes): keys are chosen from the first record before anything is converted."""
    files = tfrecord_files(args.tfrecords)
    stream = stream_tfrecords(files, args.compression)
    first = []
    for record in stream:
        first.append(record)
        if "features" in record:
            break
    try:
        if not first or "features" not in first[-1]:
            raise ConversionError(f"no readable record in {', '.join(map(str, files))}")
        keys = choose_keys(first[-1]["features"], args.image_key, args.text_key, args.id_key)
    except ConversionError:
        stream.close()  # ends the reader process now
        raise
    file_splits = {split_from_file_name(path.name) for path in files}
    split_of, split_notes = split_rule(file_splits, args.validation_fraction, args.test_fraction)
    listing = "".join(f"\n  {key}: {describe_feature(feature)}" for key, feature in first[-1]["features"].items())
    notes = [f"the first record's features:{listing}",
             f"TFRecord keys: image {keys[0]!r}, text {keys[1]!r}, id {keys[2]!r}"]
    notes += split_notes if "train" in file_splits else []
    if None in file_splits:
        notes.append("TFRecord file names without train/val/test: those records split by study id "
                     f"({args.validation_fraction:.0%} validation, {args.test_fraction:.0%} test)")
    total = sum(count_records(path, is_gzip_name(path, args.compression)) for path in files)
    chosen = sample_indices(total, args.max_samples, args.seed)
    records = (tfrecord_to_record(record, keys, split_of)
               for index, record in enumerate(itertools.chain(first, stream)) if chosen is None or index in chosen)
    return records, total if chosen is None else len(chosen), notes

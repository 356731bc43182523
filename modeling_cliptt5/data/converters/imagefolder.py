"""A folder of images + metadata.jsonl / metadata.csv (the `datasets` imagefolder convention) -> the CLIP-T5 dataset.

Metadata columns: `file_name` (relative to the metadata file), the text as `findings` and/or `impression` or as one
free-text `report` (or `text`) split into sections; optional `study_id` (rows sharing it are the views of one study),
`split` (train/validation/test), `view` (PA, AP, LL, lateral...: frontal views are put first; without the column a
DICOM file's header says), `indication`, `labels` (list, or a string separated by ';' or '|'). Metadata may also sit
in train/, validation/ (or val/, valid/) and test/ sub-folders, which then give the split. DICOM files are decoded
and stored as PNG (16-bit kept when the image is 16-bit).

Patients and priors: optional `patient_id` and `study_datetime` columns (ISO 8601, e.g. 2024-03-01T14:05:00, or
DICOM's 20240301); without them a study's first DICOM file says (PatientID, StudyDate and StudyTime). A study with
both gets as `prior_id` the same patient's latest earlier study in the dataset.
"""

import csv
import io
import json

from modeling_cliptt5.data.converters.common import (
    ConversionError, StudyRecord, View, is_utf8, resolve_inside, split_for_study,
)
from modeling_cliptt5.data.reports import sections_from_free_text

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "test": "test", "testing": "test"}


def find_metadata_files(root):
    """[(metadata path, split given by its folder or None)]: the root's own file and those of split sub-folders."""
    found = []
    for folder, split in [(root, None)] + [(path, SPLIT_NAMES[path.name.lower()]) for path in sorted(root.iterdir())
                                           if path.is_dir() and path.name.lower() in SPLIT_NAMES]:
        present = [folder / name for name in METADATA_NAMES if (folder / name).is_file()]
        if len(present) > 1:
            raise ConversionError(f"{folder}: both metadata.jsonl and metadata.csv; keep one")
        found += [(path, split) for path in present]
    if not found:
        raise ConversionError(f"{root}: no metadata.jsonl or metadata.csv (here or in train/, validation/, test/)")
    return found


def read_jsonl_rows(path):
    """(where, row dict or None, problem) per non-blank line."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield where, None, "text is not UTF-8"
            continue
        except json.JSONDecodeError as error:
            yield where, None, f"not valid JSON ({error.msg})"
            continue
        if not isinstance(row, dict):
            yield where, None, "a JSON line must be an object"
            continue
        yield where, row, None


def read_csv_rows(path):
    """(where, row dict or None, problem) per CSV row after the header."""
    reader = csv.reader(io.StringIO(path.read_bytes().decode("utf-8", errors="surrogateescape"), newline=""))
    header = [name.strip() for name in next(reader, [])]
    for values in reader:
        if not values:
            continue
        where = f"{path} line {reader.line_num}"
        if len(values) != len(header):
            yield where, None, f"CSV row has {len(values)} columns, the header has {len(header)}"
        elif not all(is_utf8(value) for value in values):
            yield where, None, "text is not UTF-8"
        else:
            yield where, dict(zip(header, values)), None


def text_of(row, key):
    value = row.get(key)
    return "" if value is None else str(value).strip()


def report_sections(row):
    """findings/impression/indication from the section columns, or from a free-text `report`/`text` column."""
    findings, impression = text_of(row, "findings"), text_of(row, "impression")
    free_text = text_of(row, "report") or text_of(row, "text")
    if not findings and not impression and free_text:
        sections = sections_from_free_text(free_text)
        findings, impression = sections["findings"], sections["impression"]
        return findings, impression, text_of(row, "indication") or sections["indication"]
    return findings, impression, text_of(row, "indication")


def parse_labels(value):
    if value is None or value == "":
        return ()
    if isinstance(value, list):
        return tuple(str(label) for label in value)
    separator = "|" if "|" in str(value) else ";"
    return tuple(label.strip() for label in str(value).split(separator) if label.strip())


def row_view(row, path=None):
    """A row's view: its `view` column, else the DICOM header of its file ("" when neither says)."""
    from modeling_cliptt5.images.views import header_view

    return text_of(row, "view") or ("" if path is None else header_view(path))


def study_records(metadata_path, folder_split, source, validation_fraction, test_fraction):
    """StudyRecords of one metadata file: rows sharing a study_id are one study; a row without one is its own study
    (its id is its file_name, so a file listed twice shows up as a duplicate id)."""
    rows = read_jsonl_rows(metadata_path) if metadata_path.suffix == ".jsonl" else read_csv_rows(metadata_path)
    groups = {}  # study id -> (where its first row is, its rows)
    order = []  # bad rows as StudyRecords and groups' rows lists, in order of first appearance
    for where, row, problem in rows:
        if problem is None and not text_of(row, "file_name"):
            problem = "no file_name"
        if problem:
            order.append(StudyRecord(text_of(row or {}, "study_id") or None, where, problem=problem))
            continue
        study_id = text_of(row, "study_id")
        if not study_id or study_id not in groups:
            group = (study_id or text_of(row, "file_name"), where, [])
            order.append(group)
            if study_id:
                groups[study_id] = group
        (groups[study_id] if study_id else group)[2].append(row)
    return [item if isinstance(item, StudyRecord) else
            study_record(*item, metadata_path, folder_split, source, validation_fraction, test_fraction)
            for item in order]


def study_record(study_id, where, rows, metadata_path, folder_split, source, validation_fraction, test_fraction):
    first = rows[0]
    findings, impression, indication = report_sections(first)
    split, problem = folder_split, None
    if split is None and text_of(first, "split"):
        split = SPLIT_NAMES.get(text_of(first, "split").lower())
        if split is None:
            problem = f"unknown split {text_of(first, 'split')!r} (use train, validation or test)"
    split = split or split_for_study(study_id, validation_fraction, test_fraction)
    if any(report_sections(row)[:2] != (findings, impression) and any(report_sections(row)[:2]) for row in rows):
        problem = problem or "the rows of this study disagree on its report"
    views = []
    for row in rows:
        try:
            views.append((row, View(text_of(row, "file_name"), path=resolve_inside(metadata_path.parent,
                                                                                    text_of(row, "file_name")))))
        except ValueError as error:
            if problem is None:
                problem, where = str(error), f"{where}: {text_of(row, 'file_name')}"
    if len(views) > 1:  # the model's first image is the frontal one; headers are read only where there is a choice
        from modeling_cliptt5.images.views import frontal_first

        views = frontal_first(views, [row_view(row, view.path) for row, view in views], [""] * len(views))[0]
    views = [view for _, view in views]
    patient, when = "", ""
    try:
        patient, when = patient_and_date(first, views[0].path if views else None)
    except ValueError as error:
        problem = problem or str(error)
    return StudyRecord(study_id, where, views=views, findings=findings, impression=impression,
                       indication=indication, split=split, source=source,
                       labels=parse_labels(first.get("labels")), patient_id=patient, study_datetime=when,
                       problem=problem)


def patient_and_date(row, path=None):
    """(patient id, ISO study date-time) of a study: its metadata row's `patient_id` and `study_datetime`, else the
    header of its DICOM file at `path` (PatientID; StudyDate and StudyTime); "" where neither says. An unreadable
    date is a ValueError naming it."""
    from modeling_cliptt5.data.schema import iso_datetime

    patient, when = text_of(row, "patient_id"), text_of(row, "study_datetime")
    if (not patient or not when) and path is not None:
        from modeling_cliptt5.images.dicom import read_header

        try:
            header = read_header(path)
        except ImportError:  # pydicom missing: the image reader says so for the file itself
            header = None
        if header is not None:
            patient = patient or str(header.get("PatientID", "") or "").strip()
            if not when:
                return patient, iso_datetime(header.get("StudyDate", ""), header.get("StudyTime", ""))
    return patient, iso_datetime(when)

"""R2Gen `annotation.json` (IU X-ray: two views per study; MIMIC-CXR: one) -> the CLIP-T5 report dataset.

The file's train/val/test lists become train/validation/test; `report` is the findings text, as R2Gen trains on.
Image paths in `image_path` are relative to the images folder (R2Gen's data/<name>/images/).

Patients and priors: an entry's `subject_id` (MIMIC-CXR's) becomes the study's `patient_id`. The annotation holds no
study dates, so no study gets a prior (`prior_id`) from it: a study's date is not guessed from its id. IU X-ray
entries name no patient.
"""

import json
import sys
from pathlib import Path

from modeling_cliptt5.data.converters.common import (
    ConversionError, StudyRecord, View, resolve_inside,
)

ANNOTATION_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def load_annotation(path):
    path = Path(path)
    try:
        annotation = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path}: annotation file not found")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path}: not a UTF-8 JSON file ({error})")
    if not isinstance(annotation, dict) or not set(annotation) & set(ANNOTATION_SPLITS):
        raise ConversionError(f"{path}: expected an object with lists 'train', 'val', 'test' (R2Gen format)")
    return annotation


def annotation_records(annotation, annotation_path, images_dir, source):
    """One StudyRecord per annotation entry, views in `image_path` order (R2Gen puts the frontal view first)."""
    records = []
    for key, split in ANNOTATION_SPLITS.items():
        for index, entry in enumerate(annotation.get(key) or []):
            where = f"{annotation_path} {key}[{index}]"
            if not isinstance(entry, dict) or not entry.get("id"):
                records.append(StudyRecord(None, where, problem="entry without an id"))
                continue
            study_id = str(entry["id"])
            paths = entry.get("image_path") or []
            if isinstance(paths, str):
                paths = [paths]
            views, problem = [], None
            for relative in paths:
                try:
                    views.append(View(str(relative), path=resolve_inside(images_dir, relative)))
                except ValueError as error:
                    problem, where = str(error), f"{where}: {relative}"
            records.append(StudyRecord(study_id, where, views=views, findings=str(entry.get("report") or ""),
                                       split=split, source=source, patient_id=str(entry.get("subject_id") or ""),
                                       problem=problem))
    return records


def missing_images(records):
    """(study id, path) of every listed image that is not a file."""
    return [(record.study_id, view.path) for record in records if not record.problem
            for view in record.views if not view.path.is_file()]


def check_images(records, images_dir):
    """Prints every missing image (one path a line) and a summary; returns the exit code (1 if any is missing)."""
    missing = missing_images(records)
    studies = {study_id for study_id, _ in missing}
    for _, path in missing:
        print(path)
    total_views = sum(len(record.views) for record in records if not record.problem)
    print(f"{len(missing)} of {total_views} images missing under {images_dir}, in {len(studies)} of "
          f"{len(records)} studies", file=sys.stderr)
    return 1 if missing else 0

"""The one dataset schema every converter writes and training/generation read, and safe writing of it."""

import collections
import functools
import json
import os
import uuid

from modeling_cliptt5.data.atomic_writes import cleaned_up_on_failure, replace_folder

SPLITS = ("train", "validation", "test")


@functools.cache
def report_features():
    """Every source becomes these columns (`datasets.Features`). `images` holds one or more views of a study
    (frontal first); `labels` holds finding names such as "pleural_effusion:left" where the source has truth
    labels. A function, so that importing the schema (the converter commands' --help) does not import datasets."""
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
            "findings": datasets.Value("string"),
            "impression": datasets.Value("string"),
            "report": datasets.Value("string"),
            "indication": datasets.Value("string"),
            "split": datasets.Value("string"),
            "source": datasets.Value("string"),
            "labels": datasets.List(datasets.Value("string")),
        }
    )


def make_example(study_id, images, findings, impression, split, source, report_target="both",
                 indication="", labels=()):
    """One row of the schema. `images` are file paths, PIL images or {"bytes": ..., "path": ...} dicts."""
    from modeling_cliptt5.processing_cliptt5 import format_report

    return {
        "id": str(study_id),
        "images": list(images),
        "findings": findings or "",
        "impression": impression or "",
        "report": format_report(findings, impression, report_target),
        "indication": indication or "",
        "split": split,
        "source": source,
        "labels": list(labels),
    }


class ConversionLog:
    """Counts rows read, converted and skipped (by reason), so that converted + skipped == read."""

    def __init__(self):
        self.read = 0
        self.converted = 0
        self.skipped = []

    def row_read(self):
        self.read += 1

    def row_converted(self):
        self.converted += 1

    def skip(self, study_id, file, reason):
        self.skipped.append({"id": None if study_id is None else str(study_id),
                             "file": None if file is None else str(file), "reason": reason})

    def counts_by_reason(self):
        return collections.Counter(entry["reason"] for entry in self.skipped)

    def write_skipped(self, path):
        with open(path, "w", encoding="utf-8") as handle:
            for entry in self.skipped:
                handle.write(json.dumps(entry) + "\n")

    def summary(self):
        lines = [f"read {self.read}, converted {self.converted}, skipped {len(self.skipped)}"]
        lines += [f"  skipped ({reason}): {count}" for reason, count in sorted(self.counts_by_reason().items())]
        return "\n".join(lines)


def save_dataset_atomically(dataset_dict, output_dir, log=None):
    """Writes a DatasetDict (and skipped.jsonl) to a temporary sibling folder, then renames it into place.

    A crash half-way leaves no folder at `output_dir`; an existing folder is replaced only when the
    new one is complete.
    """
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    # Not mkdtemp (0700): the dataset gets the user's usual permissions, as any folder they make.
    temp_dir = os.path.join(parent, f".{os.path.basename(output_dir)}.tmp-{uuid.uuid4().hex[:12]}")
    with cleaned_up_on_failure(temp_dir, output_dir):
        os.makedirs(temp_dir)
        dataset_dict.save_to_disk(temp_dir)
        if log is not None:
            log.write_skipped(os.path.join(temp_dir, "skipped.jsonl"))
        replace_folder(temp_dir, output_dir)
    return output_dir


def load_report_dataset(path):
    """Loads a converted dataset folder (a DatasetDict saved by `save_dataset_atomically`)."""
    import datasets

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no converted dataset folder here (convert one first: cliptt5-convert-*)")
    loaded = datasets.load_from_disk(path)
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"{path}: expected a DatasetDict with splits {SPLITS}, found a single Dataset")
    missing = set(report_features()) - set(next(iter(loaded.values())).column_names)
    if missing:
        raise ValueError(f"{path}: not in the CLIP-T5 report schema, missing columns {sorted(missing)}")
    return loaded

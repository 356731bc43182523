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
            # Whose study it is and when (ISO 8601 text), and the id of the patient's latest earlier study in the
            # dataset (link_priors); each "" where the source does not say.
            "patient_id": datasets.Value("string"),
            "study_datetime": datasets.Value("string"),
            "prior_id": datasets.Value("string"),
        }
    )


# Columns added to the schema after datasets were first converted: a folder without them still loads, with each "".
LATER_COLUMNS = ("patient_id", "study_datetime", "prior_id")


def make_example(study_id, images, findings, impression, split, source, report_target="both",
                 indication="", labels=(), patient_id="", study_datetime=""):
    """One row of the schema. `images` are file paths, PIL images or {"bytes": ..., "path": ...} dicts;
    `study_datetime` ISO 8601 text (iso_datetime). The prior is linked over the whole dataset (link_priors)."""
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
        "patient_id": patient_id or "",
        "study_datetime": study_datetime or "",
        "prior_id": "",
    }


def iso_datetime(value, time=""):
    """ISO 8601 text ("2024-03-01T14:05:09", or "2024-03-01" without a time) of a date as DICOM writes it
    ("20240301", with `time` "140509.123") or as ISO text; "" for an empty value. A date that is neither is a
    ValueError naming it."""
    import datetime

    value, time = str(value or "").strip(), str(time or "").strip()
    if not value:
        return ""
    try:
        if value.isdigit() and len(value) == 8:  # DICOM DA, with an optional TM (HH, HHMM, HHMMSS[.ffffff])
            day = datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))
            digits = time.split(".")[0]
            if not digits:
                return day.isoformat()
            if not digits.isdigit() or len(digits) not in (2, 4, 6):
                raise ValueError
            parts = [int(digits[index:index + 2]) for index in range(0, len(digits), 2)] + [0, 0]
            return datetime.datetime.combine(day, datetime.time(*parts[:3])).isoformat()
        parsed = datetime.datetime.fromisoformat(value)
        return parsed.date().isoformat() if len(value) == 10 else parsed.replace(tzinfo=None).isoformat()
    except ValueError:
        raise ValueError(f"unreadable study date {value!r}{f' {time!r}' if time else ''} (use ISO 8601, e.g. "
                         "2024-03-01T14:05:00, or DICOM's 20240301 and 140500)") from None


def latest_earlier(studies):
    """{key: key of its prior} for (patient_id, study_datetime ISO text, key) triples: the latest study of the same
    patient dated strictly earlier. Studies without a patient or a date take no part; studies of one patient at the
    same time are not each other's prior (ties among earlier ones go to the larger key); a date without a time sorts
    as the start of its day. The one rule for datasets (link_priors) and for drafting (inference.priors)."""
    by_patient = collections.defaultdict(list)
    for patient, when, key in studies:
        if patient and when:
            by_patient[patient].append((when, key))
    prior_of = {}
    for dated in by_patient.values():
        dated.sort()
        for index, (when, key) in enumerate(dated):
            earlier = [other for other_when, other in dated[:index] if other_when < when]
            if earlier:
                prior_of[key] = earlier[-1]
    return prior_of


def link_priors(dataset_dict):
    """The DatasetDict with each study's `prior_id`: the latest study of the same patient dated strictly earlier,
    looked for in every split (a patient-level split keeps a patient's studies together). Only studies with both a
    patient and a date take part: the others have no prior and are no one's prior; studies of one patient at the
    same time are not each other's; a date without a time counts as the start of its day."""
    prior_of = latest_earlier((patient, when, study_id) for rows in dataset_dict.values()
                              for study_id, patient, when in zip(rows["id"], rows["patient_id"], rows["study_datetime"]))
    # (map() over a split of no rows would write an Arrow file without columns: such a split stays as it is)
    return type(dataset_dict)({
        split: rows if not rows.num_rows else rows.map(
            lambda ids: {"prior_id": [prior_of.get(study_id, "") for study_id in ids]}, input_columns="id",
            batched=True, desc="linking priors")
        for split, rows in dataset_dict.items()})


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
    if missing - set(LATER_COLUMNS):
        raise ValueError(f"{path}: not in the CLIP-T5 report schema, missing columns {sorted(missing)}")
    if missing:  # converted before these columns existed: nothing is known of patients, dates or priors
        added, features = [name for name in LATER_COLUMNS if name in missing], report_features()
        loaded = datasets.DatasetDict({
            split: rows.map(lambda ids: {name: [""] * len(ids) for name in added}, input_columns="id", batched=True,
                            features=features, desc="adding empty patient columns") if rows.num_rows
            else datasets.Dataset.from_dict({name: [] for name in features}, features=features)
            for split, rows in loaded.items()})
    return loaded

"""What every converter shares: CLI options, study records, image checks, skip-and-count, atomic dataset writing."""

import dataclasses
import functools
import hashlib
import io
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from modeling_cliptt5.data.schema import (
    SPLITS, ConversionLog, link_priors, make_example, report_features, save_dataset_atomically,
)
from modeling_cliptt5.data.reports import clean_report_text
from modeling_cliptt5.data.atomic_writes import DiskFullError, is_disk_full

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ConversionError(Exception):
    """The input as a whole cannot be converted (nothing readable, keys to choose): the message says what to do."""


@dataclasses.dataclass
class View:
    """One image of a study: a file (`path`) or bytes already in memory (`data`, e.g. from a TFRecord)."""

    name: str
    path: Path = None
    data: bytes = None


@dataclasses.dataclass
class StudyRecord:
    """One study as a source describes it, before its images are read; `problem` marks a row already known bad."""

    study_id: str
    file: str
    views: list = dataclasses.field(default_factory=list)
    findings: str = ""
    impression: str = ""
    indication: str = ""
    split: str = None
    source: str = ""
    labels: tuple = ()
    patient_id: str = ""  # "" where the source does not say
    study_datetime: str = ""  # ISO 8601 text (schema.iso_datetime), "" where the source does not say
    problem: str = None


def study_fraction(study_id):
    """A number in [0, 1) fixed by the study id alone, so a study's split never depends on order or sampling."""
    digest = hashlib.sha256(str(study_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_for_study(study_id, validation_fraction, test_fraction, splits=("validation", "test")):
    """Assigns a study to train, validation or test by its id (only the `splits` named are carved out of train)."""
    value = study_fraction(study_id)
    if "test" in splits and value < test_fraction:
        return "test"
    if "validation" in splits and value >= 1.0 - validation_fraction:
        return "validation"
    return "train"


def is_utf8(text):
    """False for text read with errors="surrogateescape" from bytes that were not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def sample_indices(total, max_samples, seed):
    """Indices of a reproducible random subset of `total` rows (all of them when max_samples is None)."""
    if max_samples is None or max_samples >= total:
        return None
    return set(random.Random(seed).sample(range(total), max_samples))


def sample_records(records, max_samples, seed):
    """The --max-samples subset of a list of records, in their original order."""
    chosen = sample_indices(len(records), max_samples, seed)
    return records if chosen is None else [record for index, record in enumerate(records) if index in chosen]


@functools.lru_cache(maxsize=64)
def _real_root(root):
    return os.path.realpath(root)


def resolve_inside(root, relative_path):
    """`root / relative_path` resolved; refuses paths leading outside `root` ("../x", absolute, symlinks out)."""
    relative_path = os.fspath(relative_path)
    if os.path.isabs(relative_path):
        raise ValueError("absolute path (must be relative to the dataset folder)")
    root = _real_root(os.fspath(root))
    resolved = os.path.realpath(os.path.join(root, relative_path))
    if resolved != root and not resolved.startswith(root.rstrip(os.sep) + os.sep):
        raise ValueError("path escapes the dataset folder")
    return Path(resolved)


def say_doubt(message):
    """A file converted although its header leaves doubt that it is a chest radiograph: one line beside the bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def read_view(view, any_modality=False, on_doubt=say_doubt):
    """A checked view as {"bytes", "path"} for the dataset; raises image_io.ImageReadError naming the file.

    The image is fully decoded once (truncation, size limit, format). PNG and JPEG bytes are then stored unchanged
    (no re-encoding loss); DICOM goes through its display pipeline (dicom.py) and is stored as a 16-bit PNG; other
    formats Pillow reads are stored as PNG.
    """
    from modeling_cliptt5.images.image_io import is_dicom, open_image  # lazy: only image-reading converters need it

    data = view.data if view.data is not None else view.path.read_bytes()
    name = str(view.path or view.name)
    if is_dicom(data, view.name):
        from modeling_cliptt5.images.dicom import read_dicom

        image = read_dicom(data, name=name, bits=16, any_modality=any_modality, on_doubt=on_doubt)
    else:
        image = open_image(data, name=name)
        if data.startswith(JPEG_MAGIC) or data.startswith(PNG_MAGIC):
            return {"bytes": data, "path": view.name}
    return {"bytes": png_bytes(image), "path": str(Path(view.name).with_suffix(".png"))}


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def report_problem(findings, impression, report_target):
    """Why a study's text cannot make a training target for `report_target`, or None."""
    if report_target == "findings" and not findings:
        return "empty report (no findings)"
    if report_target == "impression" and not impression:
        return "empty report (no impression)"
    if not findings and not impression:
        return "empty report"
    return None


def convert_records(records, args, log, total=None):
    """Yields schema rows for good records and logs every other one with its reason (nothing is dropped silently).

    A study is converted only when its text is usable and every one of its views reads.
    """
    from modeling_cliptt5.images.image_io import ImageReadError

    seen = set()
    for record in tqdm(records, total=total, unit="study", desc="converting", dynamic_ncols=True):
        log.row_read()
        if record.problem:
            log.skip(record.study_id, record.file, record.problem)
            continue
        if record.study_id in seen:
            log.skip(record.study_id, record.file, "duplicate id")
            continue
        seen.add(record.study_id)
        findings = clean_report_text(record.findings, args.normalize_deid)
        impression = clean_report_text(record.impression, args.normalize_deid)
        problem = report_problem(findings, impression, args.report_target)
        if problem is None and not record.views:
            problem = "no image listed"
        if problem:
            log.skip(record.study_id, record.file, problem)
            continue
        images, failure = [], None
        for view in record.views:
            if view.data is None and not view.path.is_file():
                failure = (view.path, "missing image file")
                break
            try:
                images.append(read_view(view, getattr(args, "any_modality", False)))
            except ImageReadError as error:
                failure = (view.path or view.name, error.reason)
                break
            except OSError as error:
                failure = (view.path, f"cannot read the file ({error.strerror or error})")
                break
            except ImportError as error:  # pydicom missing: every DICOM file would fail the same way
                raise ConversionError(str(error))
        if failure:
            log.skip(record.study_id, failure[0], failure[1])
            continue
        log.row_converted()
        yield make_example(record.study_id, images, findings, impression, record.split, record.source,
                           report_target=args.report_target,
                           indication=clean_report_text(record.indication, args.normalize_deid),
                           labels=record.labels, patient_id=record.patient_id,
                           study_datetime=record.study_datetime)


def write_report_dataset(examples, output_dir, log):
    """Streams examples into a DatasetDict (train/validation/test) and saves it atomically with skipped.jsonl.

    Rows go to Arrow files as they come (a temporary cache beside the output), so a large source never sits in
    memory; if anything fails, no output folder appears.
    """
    import datasets
    from datasets.exceptions import DatasetGenerationError

    output_dir = Path(output_dir).resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    progress_bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # our own bar counts studies; datasets' would count the same rows twice
    try:
        with tempfile.TemporaryDirectory(prefix=f".{output_dir.name}.cache-", dir=output_dir.parent) as cache_dir:
            try:
                dataset = datasets.Dataset.from_generator(lambda: examples, features=report_features(),
                                                          cache_dir=cache_dir, fingerprint=uuid.uuid4().hex)
            except DatasetGenerationError as error:
                raise (error.__cause__ or error)  # the converter's own error, not datasets' wrapper around it
            except ValueError:
                if log.converted == 0:
                    raise ConversionError(f"nothing could be converted, no dataset written.\n{log.summary()}")
                raise
            splits = datasets.DatasetDict({
                name: dataset.filter(lambda values, name=name: [value == name for value in values],
                                     input_columns="split", batched=True)
                for name in SPLITS
            })
            save_dataset_atomically(link_priors(splits), str(output_dir), log)
    except OSError as error:  # the Arrow cache or the filtered splits met a full disk
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(output_dir, error) from error
        raise
    finally:
        if progress_bars_were_on:
            datasets.enable_progress_bars()
    return splits_summary(splits)


def splits_summary(dataset_dict):
    return ", ".join(f"{name} {dataset_dict[name].num_rows}" for name in SPLITS)


def run_conversion(records, args, notes=(), total=None):
    """Converts records, writes the dataset, prints the summary (to stdout) and returns the ConversionLog."""
    log = ConversionLog()
    split_counts = write_report_dataset(convert_records(records, args, log, total=total), args.output, log)
    print(log.summary())
    print(f"splits: {split_counts}")
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {Path(args.output).resolve()} (skipped rows listed in skipped.jsonl there)")
    return log

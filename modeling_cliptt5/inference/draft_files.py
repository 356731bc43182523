"""A run's records as one file: JSONL (one DraftedReport.row() per line) or CSV (lists as "a; b", mappings as JSON),
written whole or not at all. cliptt5-generate's --output (merged from the run's journal: inference/archive.py); the
page exports one edited report in its own formats (app/report_formats.py)."""

import csv
import json

from modeling_cliptt5.data.atomic_writes import atomic_file

# status: drafted, refused or failed; reason: why a study was refused or failed ("" for a draft)
OUTPUT_COLUMNS = ("id", "status", "reason", "input_files", "report", "findings", "impression", "truncated",
                  "repeated_sentences", "seconds", "prior_id")
LABEL_COLUMNS = ("labels", "uncertain_labels")
FINDING_COLUMNS = ("finding_probabilities", "predicted_findings", "disagreements")
OOD_COLUMNS = ("ood_score", "ood_flag")


def disagreement_text(disagreement):
    """"Cardiomegaly: head present, draft does not state it" for a CSV cell or the terminal."""
    return f"{disagreement['finding']}: head {disagreement['head']}, draft {disagreement['draft']}"


def csv_cell(value):
    """Lists become "a; b", mappings JSON, None an empty cell."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list):
        return "; ".join(disagreement_text(item) if isinstance(item, dict) else str(item) for item in value)
    return value


def output_columns(keys, with_labels):
    """The CSV columns for rows whose keys (together) are `keys`: the labeler's with `with_labels`, the finding
    head's and the OOD score's where some row has them."""
    columns = OUTPUT_COLUMNS + (LABEL_COLUMNS if with_labels else ())
    if "finding_probabilities" in keys:
        columns += FINDING_COLUMNS
    if "ood_score" in keys:
        columns += OOD_COLUMNS
    return columns


def write_outputs(path, rows, with_labels, columns=None):
    """Rows (DraftedReport.row()) to `path` (a pathlib.Path): JSONL by its suffix, else CSV. `rows` may be any
    iterable (read once) when `columns` is given (output_columns); without, it is read into a list to find them."""
    if columns is None:
        rows = list(rows)
        columns = output_columns({key for row in rows for key in row}, with_labels)
    with atomic_file(path, newline="") as stream:  # a reader never sees half a file
        if path.suffix.lower() == ".jsonl":
            stream.writelines(json.dumps(row) + "\n" for row in rows)
            return
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: csv_cell(value) for key, value in row.items()})

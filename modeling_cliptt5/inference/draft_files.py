"""A run's drafts as one file: JSONL (one DraftedReport.row() per line) or CSV (lists as "a; b", mappings as JSON),
written whole or not at all. cliptt5-generate's --output; the page exports one edited report in its own formats
(app/report_formats.py)."""

import csv
import json

from modeling_cliptt5.data.atomic_writes import atomic_file

OUTPUT_COLUMNS = ("id", "input_files", "report", "findings", "impression", "truncated", "repeated_sentences",
                  "seconds", "prior_id")
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


def write_outputs(path, rows, with_labels):
    """Rows (DraftedReport.row()) to `path` (a pathlib.Path): JSONL by its suffix, else CSV with the columns the
    rows have (the labeler's with `with_labels`, the finding head's, the OOD score's)."""
    columns = OUTPUT_COLUMNS + (LABEL_COLUMNS if with_labels else ())
    if any("finding_probabilities" in row for row in rows):
        columns += FINDING_COLUMNS
    if any("ood_score" in row for row in rows):
        columns += OOD_COLUMNS
    with atomic_file(path, newline="") as stream:  # a reader never sees half a file
        if path.suffix.lower() == ".jsonl":
            stream.writelines(json.dumps(row) + "\n" for row in rows)
            return
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: csv_cell(value) for key, value in row.items()})

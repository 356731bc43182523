"""Which earlier study each draft compares with.

A study's prior is the latest study of the same patient dated strictly before it, found among the studies being
drafted: the patient and the date come from the DICOM headers (PatientID, StudyDate + StudyTime), or for PNG/JPEG
from a CSV (`read_study_table`). A prior can also be named for one study (`--prior`). Either way the draft never
reads another patient's study or a later one (`prior_problem`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from modeling_cliptt5.data.schema import iso_datetime, latest_earlier
from modeling_cliptt5.images.image_source import is_dicom

TABLE_COLUMNS = ("study", "patient_id", "study_datetime")  # and, optionally, "report"


@dataclass
class StudyFacts:
    """Whose study it is and when (ISO 8601; "" where unknown), and its report where one is known (a prior's)."""

    patient_id: str = ""
    study_datetime: str = ""
    report: str = ""


class StudyTableError(ValueError):
    """A study table (CSV) that cannot be used, naming the file, the row and the problem."""


def read_study_table(path) -> dict[str, StudyFacts]:
    """{study id: StudyFacts} from a CSV with the columns study, patient_id, study_datetime (ISO date or date and
    time) and optionally report (that study's report, read when it is another study's prior)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            columns = rows[0].keys() if rows else ()
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise StudyTableError(f"{path}: cannot read the study table ({error})") from None
    missing = [name for name in TABLE_COLUMNS if name not in columns]
    if missing:
        raise StudyTableError(f"{path}: the study table needs the columns {', '.join(TABLE_COLUMNS)} (and optionally "
                              f"report); {', '.join(missing)} missing")
    table = {}
    for line, row in enumerate(rows, start=2):
        study = (row["study"] or "").strip()
        if not study:
            raise StudyTableError(f"{path}:{line}: empty study id")
        if study in table:
            raise StudyTableError(f"{path}:{line}: study {study!r} is listed twice")
        when = (row["study_datetime"] or "").strip()
        try:
            when = iso_datetime(when) if when else ""
        except ValueError as error:
            raise StudyTableError(f"{path}:{line}: {error}") from None
        table[study] = StudyFacts((row["patient_id"] or "").strip(), when, (row.get("report") or "").strip())
    return table


def dicom_facts(path) -> StudyFacts:
    """The patient and study date-time in a DICOM file's header ("" where absent or unreadable)."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "StudyDate", "StudyTime"])
    except Exception:  # noqa: BLE001 - an unreadable header says nothing; reading the image reports the file
        return StudyFacts()
    return header_facts(header)


def header_facts(header) -> StudyFacts:
    """The patient and study date-time of a DICOM data set (pydicom), "" where absent or not a date."""
    try:
        patient = str(header.get("PatientID") or "").strip()
        date, time = header.get("StudyDate"), header.get("StudyTime")
    except Exception:  # noqa: BLE001 - pydicom parses elements lazily: a damaged one says nothing
        return StudyFacts()
    when = ""
    if date:
        try:
            when = iso_datetime(str(date), str(time or ""))
        except ValueError:
            when = ""
    return StudyFacts(patient, when)


def study_facts(study, table=None) -> StudyFacts:
    """What the table says of the study, else the header of its first DICOM file."""
    if table and study.study_id in table:
        return table[study.study_id]
    for path in study.files:
        try:
            with open(path, "rb") as handle:
                start = handle.read(132)
        except OSError:
            continue
        if is_dicom(start, str(path)):
            return dicom_facts(path)
    return StudyFacts()


def link_priors(studies, table=None) -> None:
    """Sets each study's `prior` (the latest study of the same patient dated strictly earlier among `studies`:
    data.schema.latest_earlier) and `prior_report` (that study's report, where the table has it). Studies without
    patient or date take no part."""
    facts = [study_facts(study, table) for study in studies]
    # keyed by position: of two earlier studies at the same time, the later in `studies` is the prior
    prior_of = latest_earlier((known.patient_id, known.study_datetime, index) for index, known in enumerate(facts))
    for index, prior in prior_of.items():
        studies[index].prior = studies[prior]
        studies[index].prior_report = facts[prior].report or None


def prior_problem(study, prior, table=None) -> str | None:
    """Why `prior` cannot be `study`'s prior (another patient, not earlier), or None. Unknown patient or date on
    either side cannot be checked, and passes."""
    current, earlier = study_facts(study, table), study_facts(prior, table)
    if current.patient_id and earlier.patient_id and current.patient_id != earlier.patient_id:
        return (f"the prior {prior.study_id} is of patient {earlier.patient_id!r}, the study {study.study_id} of "
                f"patient {current.patient_id!r}: a draft never reads another patient's study")
    if current.study_datetime and earlier.study_datetime and earlier.study_datetime >= current.study_datetime:
        return (f"the prior {prior.study_id} is dated {earlier.study_datetime}, not before the study {study.study_id} "
                f"({current.study_datetime}): a prior must be earlier")
    return None

"""OpenI / Indiana University chest X-ray XML reports + their PNGs -> the CLIP-T5 report dataset.

Each ecgen-radiology/<n>.xml is one study: FINDINGS, IMPRESSION and INDICATION come from its <AbstractText Label=...>
elements, its views from <parentImage id="CXR1_1_IM-0001-3001">, found as <id>.png (or .jpg/.dcm) in the images
folder. OpenI has no official split: validation and test are drawn by study id.
Licence of the reports and images: CC BY-NC-ND 4.0 (non-commercial).

Patients and priors: OpenI names no patient and no study date, so `patient_id`, `study_datetime` and
`prior_id` stay empty.
"""

import importlib.metadata
import os
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from modeling_cliptt5.data.converters.common import (
    ConversionError, StudyRecord, View, resolve_inside, split_for_study,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
SOURCE = "openi"


def bundled_reports():
    """torchxrayvision's copy of the OpenI reports (NLMCXR_reports.tgz), found without importing the package."""
    try:
        distribution = importlib.metadata.distribution("torchxrayvision")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.name == "NLMCXR_reports.tgz":
            path = Path(distribution.locate_file(file))
            return path if path.is_file() else None
    return None


def iter_report_files(reports):
    """(name, bytes) of each XML report in a folder (ecgen-radiology/) or a .tgz of it, in name order."""
    reports = Path(reports)
    if reports.is_dir():
        for path in sorted(reports.glob("*.xml")):
            yield str(path), path.read_bytes()
    elif reports.is_file() and tarfile.is_tarfile(reports):
        with tarfile.open(reports) as archive:
            for member in sorted((m for m in archive.getmembers() if m.isfile() and m.name.endswith(".xml")),
                                 key=lambda member: member.name):
                yield f"{reports}:{member.name}", archive.extractfile(member).read()
    else:
        raise ConversionError(f"{reports}: not a folder of XML reports nor a .tgz of one")


def parse_report(data):
    """{"study_id", "findings", "impression", "indication", "image_ids"} from one OpenI XML report."""
    root = ElementTree.fromstring(data)
    sections = {}
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").strip().lower()
        sections[label] = "".join(element.itertext()).strip()
    uid = root.find("uId")
    return {
        "study_id": uid.get("id") if uid is not None else None,
        "findings": sections.get("findings", ""),
        "impression": sections.get("impression", ""),
        "indication": sections.get("indication", ""),
        "image_ids": [image.get("id") for image in root.iter("parentImage") if image.get("id")],
    }


def find_image(images_dir, file_names, image_id):
    """The image file named by a parentImage id (first existing suffix; the .png path if none exists).

    `file_names` lists the images folder once (a stat per candidate file is slow on 7,470 images).
    """
    for suffix in IMAGE_SUFFIXES:
        if image_id + suffix in file_names:
            return resolve_inside(images_dir, image_id + suffix)
    return resolve_inside(images_dir, image_id + IMAGE_SUFFIXES[0])


def report_records(reports, images_dir, validation_fraction, test_fraction):
    records = []
    file_names = set(os.listdir(images_dir))
    for name, data in iter_report_files(reports):
        fallback_id = Path(name.split(":")[-1]).stem
        try:
            report = parse_report(data)
        except ElementTree.ParseError as error:
            records.append(StudyRecord(fallback_id, name, problem=f"not well-formed XML or not UTF-8 ({error})"))
            continue
        study_id = report["study_id"] or fallback_id
        views, problem = [], None
        for image_id in report["image_ids"]:
            try:
                views.append(View(image_id, path=find_image(images_dir, file_names, image_id)))
            except ValueError as error:
                problem, name = str(error), f"{name}: parentImage {image_id}"
        records.append(StudyRecord(
            study_id, name, views=views, findings=report["findings"], impression=report["impression"],
            indication=report["indication"], split=split_for_study(study_id, validation_fraction, test_fraction),
            source=SOURCE, problem=problem))
    return records

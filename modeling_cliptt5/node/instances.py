"""What the node accepts of an incoming instance: no larger than its limit, valid DICOM UIDs (the only text that
becomes a path), the data set's identity the same as the C-STORE request's, and pixel data the decoders can read.
Each refusal carries the C-STORE status a sender understands and a reason for the log."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modeling_cliptt5.images.dicom import decode_dicom
from modeling_cliptt5.images.image_source import DEFAULT_MAX_PIXELS, ImageReadError
from modeling_cliptt5.inference.priors import header_facts

# C-STORE failure statuses (DICOM PS3.4 Table B.2-1)
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

# PS3.5 9.1: components of digits without leading zeros, separated by dots, 64 characters at most
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")


@dataclass(frozen=True)
class Instance:
    """The identity of an accepted instance, each UID valid, and whose study it is and when ("" where its header does
    not say): how a study finds the patient's prior."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    patient_id: str = ""
    study_datetime: str = ""


class InstanceRefused(Exception):
    """An instance the node does not keep: `status` for the C-STORE response, `reason` for the log."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_uid(text) -> bool:
    return isinstance(text, str) and len(text) <= 64 and UID_PATTERN.fullmatch(text) is not None


def shown(text) -> str:
    """A value a peer sent, safe for one log line: quoted, control characters escaped, cut at 80 characters."""
    return repr(str(text)[:80])


def checked_instance(data: bytes, sop_class_uid: str, sop_instance_uid: str, max_bytes: int,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> Instance:
    """The Instance of a C-STORE's encoded data set (DICOM file format bytes), or InstanceRefused. The modality is not
    judged here: a study that is not a radiograph is refused, whole, when it is drafted."""
    if len(data) > max_bytes:
        raise InstanceRefused(OUT_OF_RESOURCES, f"{len(data):,} bytes, over the node's limit of {max_bytes:,} bytes")
    for what, uid in (("SOP Class UID", sop_class_uid), ("SOP Instance UID", sop_instance_uid)):
        if not is_uid(uid):
            raise InstanceRefused(CANNOT_UNDERSTAND, f"the request's {what} {shown(uid)} is not a valid DICOM UID")
    try:
        dataset, _ = decode_dicom(data, f"instance {sop_instance_uid}", max_pixels, any_modality=True,
                                  on_doubt=lambda message: None)
    except ImageReadError as error:
        raise InstanceRefused(CANNOT_UNDERSTAND, error.reason) from None
    try:
        uids = {keyword: str(dataset.get(keyword, "") or "") for keyword in UID_KEYWORDS}
    except Exception as error:  # noqa: BLE001 - pydicom parses elements lazily: a damaged one raises here
        raise InstanceRefused(CANNOT_UNDERSTAND, f"unreadable UID element ({type(error).__name__})") from None
    for keyword, uid in uids.items():
        if not is_uid(uid):
            raise InstanceRefused(CANNOT_UNDERSTAND, f"{keyword} {shown(uid)} is not a valid DICOM UID")
    if (uids["SOPClassUID"], uids["SOPInstanceUID"]) != (sop_class_uid, sop_instance_uid):
        raise InstanceRefused(DOES_NOT_MATCH_SOP_CLASS, "the data set's SOP Class or Instance UID is not the one its "
                                                        "C-STORE request names")
    facts = header_facts(dataset)
    return Instance(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], sop_class_uid, sop_instance_uid,
                    facts.patient_id, facts.study_datetime)

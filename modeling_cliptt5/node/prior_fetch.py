"""A follow-up's prior from the PACS: when the node holds no earlier study of the patient, it asks its `prior_source`
(a Query/Retrieve SCP, usually the PACS) for the patient's studies (C-FIND, study level, Study Root), takes the
latest one dated before the study (data.schema.latest_earlier, the rule everywhere else) that holds radiographs, and
has it sent to itself (C-MOVE to the node's own AE title). The study is recorded as a prior before it is moved, so
that its instances are kept as a prior: never drafted, no SR sent for it."""

from __future__ import annotations

import logging

from modeling_cliptt5.data.schema import latest_earlier
from modeling_cliptt5.inference.priors import header_facts

LOG = logging.getLogger("cliptt5.node")
FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Query/Retrieve Information Model - MOVE
RADIOGRAPHS = {"CR", "DX"}
PENDING = {0xFF00, 0xFF01}


class PriorFetchError(RuntimeError):
    """The prior source could not be asked, or did not send the study; the message says why in one line."""


def fetch_prior(settings, database, study_instance_uid, ssl_context=None):
    """The Study Instance UID of the study's prior, fetched from settings.prior_source into this node; None when the
    study has no patient or date, or the source holds no earlier radiograph study of the patient. PriorFetchError
    when the source cannot be asked or does not send it."""
    patient_id, study_datetime = database.study_facts(study_instance_uid)
    if not patient_id or not study_datetime:
        return None
    source = settings.prior_source
    association = _associate(settings, source, ssl_context)
    try:
        found = _earlier_studies(association, patient_id, study_datetime[:10].replace("-", ""))
        found.pop(study_instance_uid, None)  # the PACS holds the study itself too
        rows = [(patient_id, when, uid) for uid, when in found.items()] + [
            (patient_id, study_datetime, study_instance_uid)]
        prior = latest_earlier(rows).get(study_instance_uid)
        if prior is None:
            return None
        if not database.expect_prior(prior, patient_id, found[prior]):
            return None  # this node received it itself, and did not draft it (refused, say): no prior
        _move(association, prior, settings.ae_title)
    finally:
        association.release()
    if not database.instance_paths(prior):
        raise PriorFetchError(f"{source.name} sent no instance of the prior study {prior}")
    LOG.info("study %s: prior study %s fetched from %s", study_instance_uid, prior, source.name)
    return prior


def _associate(settings, source, ssl_context):
    from pynetdicom import DEFAULT_TRANSFER_SYNTAXES

    from modeling_cliptt5.node.sender import associate

    association, error = associate(settings.ae_title, source.ae_title, source.host, source.port,
                                   settings.network_timeout_seconds,
                                   [(FIND, DEFAULT_TRANSFER_SYNTAXES), (MOVE, DEFAULT_TRANSFER_SYNTAXES)],
                                   ssl_context if source.tls else None, peer="prior source")
    if association is None:
        raise PriorFetchError(f"{source.name}: {error}")
    return association


def _earlier_studies(association, patient_id, date):
    """{Study Instance UID: ISO date-time} of the patient's studies on or before `date` (YYYYMMDD) that hold CR or
    DX images (or do not say which modalities they hold)."""
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyDate = f"-{date}"
    query.StudyTime = ""
    query.StudyInstanceUID = ""
    query.ModalitiesInStudy = ""
    found = {}
    for status, identifier in association.send_c_find(query, FIND):
        code = status.get("Status") if status else None
        if code is None:
            raise PriorFetchError("no C-FIND response (timeout or aborted)")
        if code in PENDING and identifier is not None:
            modalities = identifier.get("ModalitiesInStudy") or []
            modalities = {modalities} if isinstance(modalities, str) else set(modalities)
            facts = header_facts(identifier)
            if identifier.get("StudyInstanceUID") and facts.study_datetime and (
                    not modalities or modalities & RADIOGRAPHS):
                found[str(identifier.StudyInstanceUID)] = facts.study_datetime
        elif code not in PENDING and code != 0x0000:
            raise PriorFetchError(f"C-FIND status 0x{code:04X}")
    return found


def _move(association, study_instance_uid, destination):
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    final = None
    for status, _ in association.send_c_move(query, destination, MOVE):
        final = status.get("Status") if status else None
    if final is None:
        raise PriorFetchError("no C-MOVE response (timeout or aborted)")
    if final not in (0x0000, 0xB000):  # success, or some sub-operations failed (what arrived is read)
        raise PriorFetchError(f"C-MOVE status 0x{final:04X}")

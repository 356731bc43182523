"""The outbox: each result is sent (C-STORE, pynetdicom as SCU) to its destination until the destination answers
with a success status; a result it does not take is tried again after a wait that doubles up to retry_max_seconds,
and stays in the outbox (listed by `cliptt5-node status`) however long that takes. A result sent twice (the node
killed between the destination's answer and the outbox's record of it) carries the same SOP Instance UID, which a
PACS files once."""

from __future__ import annotations

import logging
import time

from modeling_cliptt5.node.instances import shown

LOG = logging.getLogger("cliptt5.node")
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
# C-STORE statuses that mean the destination keeps the instance (PS3.4 B.2.3): success, and the warnings
# "coercion of data elements", "elements discarded", "data set does not match SOP class"
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


def retry_delay(attempts, first, longest):
    """The wait after the `attempts`-th failed try: first, 2 x first, 4 x first, ... at most `longest`."""
    return min(longest, first * 2 ** max(0, attempts - 1))


def associate(own_ae_title, ae_title, host, port, timeout, contexts, ssl_context=None, peer="destination"):
    """(an established pynetdicom association asking for `contexts`, [(abstract syntax, transfer syntaxes)], None),
    or (None, why not in one line); `peer` names the other side in that line."""
    from pynetdicom import AE

    ae = AE(ae_title=own_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, transfer_syntaxes)
    association = ae.associate(host, port, ae_title=ae_title,
                               tls_args=(ssl_context, host) if ssl_context is not None else None)
    if not association.is_established:
        return None, (f"association rejected by the {peer}" if association.is_rejected else
                      f"no association (no connection, or the {peer} aborted)")
    return association, None


def store_file(path, ae_title, host, port, own_ae_title, timeout, ssl_context=None):
    """Sends one DICOM file with C-STORE; None when the destination took it, else why not (one line)."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    association, error = associate(own_ae_title, ae_title, host, port, timeout,
                                   [(BASIC_TEXT_SR, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])], ssl_context)
    if association is None:
        return error
    try:
        status = association.send_c_store(str(path))
    finally:
        association.release()
    code = status.get("Status") if status is not None else None
    if code is None:
        return "no C-STORE response (timeout or aborted)"
    if code not in STORED:
        comment = status.get("ErrorComment")
        return f"C-STORE status 0x{code:04X}" + (f" ({shown(comment)})" if comment else "")
    return None


class ResultSender:
    def __init__(self, settings, database, client_context=None):
        self.settings = settings
        self.database = database
        self.client_context = client_context

    def send_due(self) -> int:
        """Tries every result whose time has come; returns how many were taken."""
        sent = 0
        for row in self.database.due_results(time.time()):
            destination = f"{row['ae_title']}@{row['host']}:{row['port']}"
            try:
                error = store_file(row["path"], row["ae_title"], row["host"], row["port"], self.settings.ae_title,
                                   self.settings.network_timeout_seconds,
                                   self.client_context if row["tls"] else None)
            except Exception as failure:  # noqa: BLE001 - a missing file, a TLS error...: tried again later
                error = f"{type(failure).__name__}: {failure}"
            now = time.time()
            if error is None:
                self.database.result_sent(row["id"], now)
                LOG.info("SR %s of study %s sent to %s", row["result_uid"], row["study_instance_uid"], destination)
                sent += 1
                continue
            delay = retry_delay(row["attempts"] + 1, self.settings.retry_first_seconds,
                                self.settings.retry_max_seconds)
            self.database.result_not_sent(row["id"], error, now + delay)
            LOG.warning("SR %s of study %s not taken by %s (%s): kept in the outbox, next try in %.0f s",
                        row["result_uid"], row["study_instance_uid"], destination, error, delay)
        return sent

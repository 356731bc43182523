"""The node's DICOM Storage SCP on pynetdicom: who may associate, which SOP classes and transfer syntaxes it accepts,
and one handler per DICOM event that returns a status. An instance is on the disk and in the index before the
node answers Success; everything else gets a failure status the sender can act on, and a log line."""

from __future__ import annotations

import logging
import time
import warnings

from modeling_cliptt5.node.instances import OUT_OF_RESOURCES, InstanceRefused, checked_instance, shown
from modeling_cliptt5.node.storage import write_durably

LOG = logging.getLogger("cliptt5.node")

# The projection radiographs the model reads, and secondary captures (a digitised film); every other SOP class (CT,
# MR, SR, ...) is rejected in the association negotiation.
STORAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
VERIFICATION = "1.2.840.10008.1.1"
PROCESSING_FAILURE = 0x0110
# A-ASSOCIATE-RJ: rejected permanent, by the service user, calling AE title not recognised (PS3.8 9.3.4)
REJECT_UNKNOWN_CALLER = (0x01, 0x01, 0x03)


def transfer_syntaxes():
    """The uncompressed syntaxes, and every compressed one an installed pydicom plugin decodes (the dicom extra's
    pylibjpeg plugins: JPEG, JPEG-LS, JPEG 2000, RLE), so that no accepted instance is one the node cannot read."""
    import pydicom.pixels
    from pydicom.uid import AllTransferSyntaxes

    syntaxes = []
    for syntax in AllTransferSyntaxes:
        if syntax.is_compressed:
            try:
                if not pydicom.pixels.get_decoder(syntax).is_available:
                    continue
            except NotImplementedError:
                continue
        syntaxes.append(syntax)
    return syntaxes


class StorageSCP:
    """The handlers the AE calls, over the node's settings, storage layout and database."""

    def __init__(self, settings, layout, database):
        self.settings = settings
        self.layout = layout
        self.database = database

    def handlers(self):
        from pynetdicom import evt

        return [(evt.EVT_REQUESTED, self.on_association_requested), (evt.EVT_C_ECHO, self.on_echo),
                (evt.EVT_C_STORE, self.on_store)]

    def on_association_requested(self, event):
        """Rejects a calling AE title (or address) the settings do not accept, before anything is negotiated."""
        requestor = event.assoc.requestor
        ae_title, address = str(requestor.primitive.calling_ae_title).strip(), str(requestor.address)
        if any(caller.admits(ae_title, address) for caller in self.settings.accept):
            return
        reason = "calling AE title not accepted" if not any(
            caller.ae_title == ae_title for caller in self.settings.accept) else "address not accepted for this AE title"
        LOG.warning("association rejected: %s (calling AE %s from %s)", reason, shown(ae_title), address)
        self.database.add_refusal(time.time(), "association", reason, ae_title, address)
        event.assoc.acse.send_reject(*REJECT_UNKNOWN_CALLER)

    def on_echo(self, event):
        return 0x0000

    def on_store(self, event):
        """Checks the instance, writes it durably, records it; Success only after all three."""
        ae_title, address = str(event.assoc.requestor.ae_title).strip(), str(event.assoc.requestor.address)
        request = event.request
        sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
        try:
            data = event.encoded_dataset()
            instance = checked_instance(data, str(request.AffectedSOPClassUID or ""), sop_instance_uid,
                                        self.settings.max_instance_bytes)
            path = self.layout.instance_path(instance.study_instance_uid, instance.sop_instance_uid)
            write_durably(path, data)
            outcome = self.database.add_instance(instance, path, len(data), ae_title, time.time())
        except InstanceRefused as refusal:
            return self.refuse(refusal.status, refusal.reason, sop_instance_uid, ae_title, address)
        except OSError as error:  # a full disk, a folder that cannot be written: the sender keeps the instance
            return self.refuse(OUT_OF_RESOURCES, f"not stored ({error.strerror or error})", sop_instance_uid,
                               ae_title, address)
        except Exception as error:  # noqa: BLE001 - whatever it was, the sender must not believe it stored
            LOG.exception("instance %s: failed while storing", shown(sop_instance_uid))
            return self.refuse(PROCESSING_FAILURE, f"failed while storing ({type(error).__name__})",
                               sop_instance_uid, ae_title, address)
        if outcome == "prior":
            LOG.info("stored instance %s of study %s from %s, the prior of a later study", instance.sop_instance_uid,
                     instance.study_instance_uid, ae_title)
        elif outcome == "late":
            LOG.warning("instance %s of study %s arrived after the study was finished: kept, not drafted again",
                        instance.sop_instance_uid, instance.study_instance_uid)
        else:
            LOG.info("stored instance %s of study %s from %s%s", instance.sop_instance_uid,
                     instance.study_instance_uid, ae_title, " (again)" if outcome == "again" else "")
        return 0x0000

    def refuse(self, status, reason, sop_instance_uid, ae_title, address):
        """A failure status with the reason as its Error Comment (64 characters at most), logged and recorded."""
        from pydicom.dataset import Dataset

        LOG.warning("instance %s from %s refused (status 0x%04X): %s", shown(sop_instance_uid), ae_title, status,
                    reason)
        try:
            self.database.add_refusal(time.time(), "instance", reason, ae_title, address)
        except Exception:  # noqa: BLE001 - the refusal stands even if it cannot be recorded (a full disk)
            LOG.exception("could not record the refusal")
        response = Dataset()
        response.Status = status
        response.ErrorComment = reason.encode("ascii", "replace").decode()[:64]
        return response


def start_scp(settings, layout, database, ssl_context=None):
    """Starts the SCP in its own threads; returns pynetdicom's server (`shutdown()` stops it). OSError when the
    address cannot be listened on."""
    from pynetdicom import AE, _config

    # pynetdicom's event logs can dump data sets, pydicom's warnings about invalid values quote them: the node logs
    # IDs only, in its own lines
    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Invalid value for VR")
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.network_timeout_seconds
    syntaxes = transfer_syntaxes()
    ae.add_supported_context(VERIFICATION)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
    scp = StorageSCP(settings, layout, database)
    return ae.start_server((settings.host, settings.port), block=False, evt_handlers=scp.handlers(),
                           ssl_context=ssl_context)

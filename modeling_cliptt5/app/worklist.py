"""The DICOM node's studies on the page (cliptt5-app --node-config node.yaml): the worklist, read from the node's
database without writing to it; a study opened with its stored images and the node's draft, as the page shows a
draft it made itself; and the reader's signed report queued in the node's outbox as a FINAL SR that supersedes the
node's preliminary one, for the running node's sender to deliver to the node's destinations."""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from modeling_cliptt5.app.page_study import prior_name
from modeling_cliptt5.app.report_formats import sr_reference
from modeling_cliptt5.node.database import DRAFTED, FAILED, PRIOR, RECEIVING, REFUSED, NodeDatabase
from modeling_cliptt5.node.settings import load_settings
from modeling_cliptt5.node.storage import StorageLayout, write_durably
from modeling_cliptt5.node.study_report import signed_report, sr_comparison, sr_sections, sr_texts

# What the worklist calls each of the node's states: a study still receiving waits to be drafted.
STATE_NAMES = {DRAFTED: "drafted", RECEIVING: "waiting", REFUSED: "refused",
               FAILED: "failed (drafted again at restart)", PRIOR: "prior (fetched from the PACS, not drafted)"}
WORKLIST_HEADERS = ["Study Instance UID", "state", "images", "last image", "reason"]


class WorklistRefused(ValueError):
    """The study cannot be opened or its report not queued; the message says why."""


class NodeWorklist:
    """The node that `settings` (its settings file, as `cliptt5-node --config` reads it) describes, seen from the
    page. Each read opens the database read-only and closes it, so the worklist is as fresh as the last refresh and
    the page never holds the node's database open."""

    def __init__(self, settings):
        self.settings = settings
        self.layout = StorageLayout(Path(settings.storage))

    @classmethod
    def from_config(cls, path):
        return cls(load_settings(path, serving=False))  # the page drafts nothing: no release or callers needed

    def read(self, method, *arguments):
        if not self.layout.database.is_file():
            raise WorklistRefused(f"No node database in {self.layout.root}: has the node run?")
        database = NodeDatabase(self.layout.database, read_only=True)
        try:
            return getattr(database, method)(*arguments)
        finally:
            database.close()

    def studies(self):
        return self.read("worklist")

    def instance_paths(self, study_instance_uid):
        return self.read("instance_paths", study_instance_uid)

    def study(self, study_instance_uid):
        return self.read("study_row", study_instance_uid)

    def open(self, study_instance_uid, folder):
        """(copies of the study's instances in `folder`, the node's draft or None, the prior it compared with or
        None): the images as if the reader had dropped them (the page's upload sweeper deletes them with the other
        uploads); the draft only for a drafted study (draft_from_sr); the prior as {"paths": copies of its
        instances, "report": the signed report the node read of it, or ""}, as if dropped into the prior slot."""
        row = self.study(study_instance_uid)
        if row is None:
            raise WorklistRefused(f"The node holds no study {study_instance_uid}.")
        target = Path(tempfile.mkdtemp(prefix="node-study-", dir=folder))
        paths = self.copies(study_instance_uid, target)
        if not paths:
            raise WorklistRefused(f"The node holds no image of study {study_instance_uid}.")
        draft = prior = None
        if row["state"] == DRAFTED and row["result_uid"]:
            draft = draft_from_sr(self.layout.result_path(row["result_uid"]))
        if draft and draft["comparison"]:
            uid = draft["comparison"]["study_instance_uid"]
            report = signed_report(self.read("result_paths", uid)) if draft["comparison"]["report_read"] else None
            prior = {"paths": self.copies(uid, target / "prior"), "report": report or ""}
        return paths, draft, prior

    def copies(self, study_instance_uid, folder):
        """Copies of the instances the node holds of a study, in `folder`."""
        Path(folder).mkdir(exist_ok=True)
        return [str(shutil.copyfile(path, Path(folder) / path.name))
                for path in self.instance_paths(study_instance_uid) if path.is_file()]

    def queue_signed_sr(self, path):
        """Puts the signed SR at `path` in the node's outbox, for each of the node's destinations: the file is
        written and fsynced into the node's results first, then queued in one committed transaction, as the node
        queues its own drafts; the running node sends it (or the next start does). Returns its SOP Instance UID."""
        import pydicom

        if not self.settings.destinations:
            raise WorklistRefused("The node's settings name no destination: the signed SR was not queued.")
        dataset = pydicom.dcmread(path)
        if dataset.get("VerificationFlag") != "VERIFIED":
            raise WorklistRefused("Only a signed (VERIFIED) SR goes to the node's outbox.")
        data = Path(path).read_bytes()
        stored = write_durably(self.layout.result_path(dataset.SOPInstanceUID), data)
        database = NodeDatabase(self.layout.database)  # WAL: the running node's own writes wait at most a moment
        try:
            database.queue_result(dataset.StudyInstanceUID, {"uid": dataset.SOPInstanceUID, "path": stored},
                                  self.settings.destinations, time.time())
        finally:
            database.close()
        return dataset.SOPInstanceUID


def worklist_table(studies):
    """The worklist's rows as the page shows them (WORKLIST_HEADERS)."""
    return [[row["study_instance_uid"], STATE_NAMES.get(row["state"], row["state"]), row["instances"],
             f"{datetime.fromtimestamp(row['last_instance_at']):%Y-%m-%d %H:%M:%S}", row["reason"] or ""]
            for row in studies]


def draft_from_sr(path):
    """The node's draft as its SR holds it: {"findings", "impression", "sr": the SR's sr_reference, "mentioned":
    the texts of its comments (they name the images the model read by SOP Instance UID), "content_time",
    "comparison": the prior study it compared with (study_report.sr_comparison) or None}."""
    import pydicom

    dataset = pydicom.dcmread(path)
    texts = sr_texts(dataset)
    findings, impression = sr_sections(texts)
    return {"findings": findings, "impression": impression,
            "sr": {**sr_reference(dataset), "signed": dataset.get("VerificationFlag") == "VERIFIED"},
            "mentioned": [text for _, text in texts],
            "content_time": f"{dataset.get('ContentDate', '')} {dataset.get('ContentTime', '')}",
            "comparison": sr_comparison(dataset)}


def page_draft_of(node_draft, study):
    """The page's draft state (web_app.page_draft) for the node's draft of `study` (a page_study.Study of the
    opened files, with the prior the node compared with in its prior slot): the images the model read are those its
    SR names, and the draft is of this study's images and that prior."""
    mentioned = " ".join(node_draft["mentioned"])
    read = [image.name for image in study.images
            if image.reference and image.reference["sop_instance_uid"] in mentioned]
    compared = bool(node_draft.get("comparison")) and bool(study.prior or study.prior_report)
    return {"findings": node_draft["findings"], "impression": node_draft["impression"], "seconds": None,
            "images": len(read), "truncated": False, "read": read, "engine": "",
            "prior_id": prior_name(study.prior, study.prior_report) if compared else "",
            "prior_key": study.prior_key if compared else "", "keys": study.keys, "node_sr": node_draft["sr"]}

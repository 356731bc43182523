"""The draft queue: complete studies (quiet for the study-complete time) are drafted with the library
(inference.drafting.draft_reports), each draft's SR written durably and queued for every destination in the same
transaction that marks the study drafted; studies that cannot be drafted are refused, with the reason logged."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from modeling_cliptt5.images.dicom import ANY_MODALITY_HINT
from modeling_cliptt5.inference.drafting import Study, draft_reports
from modeling_cliptt5.node.database import DRAFTED, FAILED, REFUSED
from modeling_cliptt5.node.storage import write_durably
from modeling_cliptt5.node.study_report import comparison_record, encoded, signed_report, study_sr

LOG = logging.getLogger("cliptt5.node")
GENERATION_FAILED = "generation failed"  # the start of draft_reports' error for a batch the model failed on


class StudyDrafter:
    def __init__(self, settings, layout, database, release, client_context=None):
        self.settings = settings
        self.layout = layout
        self.database = database
        self.release = release
        self.client_context = client_context  # TLS to the prior source
        self.generate_kwargs = {name: value for name, value in (("num_beams", settings.num_beams),
                                                                ("max_new_tokens", settings.max_new_tokens)) if value}

    def draft_complete_studies(self) -> int:
        """Drafts up to batch_size complete studies; returns how many were finished (drafted, refused or failed)."""
        quiet_before = time.time() - self.settings.study_complete_seconds
        if self.release.config.reads_prior:  # a patient's earlier study first: it is the later one's prior
            waiting = self.database.waiting_for_earlier()
            due = [(uid, quiet) for uid, quiet in self.database.complete_studies(quiet_before)
                   if uid not in waiting][:self.settings.batch_size]
        else:
            due = self.database.complete_studies(quiet_before, self.settings.batch_size)
        if not due:
            return 0
        quiet_since = dict(due)
        studies = {uid: self.study(uid) for uid, _ in due}
        messages = []
        drafts = draft_reports(self.release, list(studies.values()), batch_size=len(studies),
                               prompt=self.release.config.prompt,
                               generate_kwargs=self.generate_kwargs, on_error=messages.append,
                               on_warning=lambda message: LOG.info("note: %s", message),
                               refuse_ood=self.settings.refuse_ood)
        finished = 0
        for draft in drafts:
            uid = draft.study_id
            if draft.error:
                # the model failing on a batch is this node's trouble, not the study's: drafted again after a restart
                state = FAILED if draft.error.startswith(GENERATION_FAILED) else REFUSED
                finished += self.refuse(uid, quiet_since[uid], state,
                                        "; ".join(reasons_of(uid, messages)) or draft.error)
                continue
            try:
                finished += self.send_back(draft, quiet_since[uid], studies[uid])
            except Exception as error:  # noqa: BLE001 - e.g. a full disk: this study waits for a restart, the rest go on
                LOG.exception("study %s: its result could not be written", uid)
                finished += self.refuse(uid, quiet_since[uid], FAILED,
                                        f"the result could not be written ({type(error).__name__}: {error})")
        return finished

    def study(self, uid) -> Study:
        """The study to draft, with its prior for a release that reads one: the latest earlier study of the same
        patient that this node drafted (or, with a prior source, fetched from it when the node has none), its images
        and, where a reader signed it on the page, its signed report."""
        prior = None
        if self.release.config.reads_prior:
            prior = self.database.prior_study(uid)
            if prior is None and self.settings.prior_source is not None:
                prior = self.fetched_prior(uid)
        if prior is None:
            return Study(uid, self.database.instance_paths(uid))
        return Study(uid, self.database.instance_paths(uid), prior=Study(prior, self.database.instance_paths(prior)),
                     prior_report=signed_report(self.database.result_paths(prior)))

    def fetched_prior(self, uid):
        """The study's prior fetched from the prior source, or None (none there, or the source failed: logged, and
        the study is drafted as the patient's first)."""
        from modeling_cliptt5.node.prior_fetch import PriorFetchError, fetch_prior

        try:
            return fetch_prior(self.settings, self.database, uid, self.client_context)
        except (PriorFetchError, OSError, RuntimeError, ValueError) as error:
            LOG.warning("study %s: no prior fetched from %s (%s): drafted as the patient's first", uid,
                        self.settings.prior_source.name, " ".join(str(error).split()))
            return None

    def send_back(self, draft, quiet_since, study) -> bool:
        """Writes the draft's SR and queues it; if an instance arrived meanwhile, drops it (drafted again later).
        `study`: what was drafted, with the prior the draft compared with (draft.prior_id) and its report, if any."""
        uid = draft.study_id
        comparison = (comparison_record(study.prior.files, bool(study.prior_report))
                      if draft.prior_id and study.prior is not None else None)
        dataset = study_sr(draft, self.release.identity, self.release.config.num_views, comparison=comparison)
        path = write_durably(self.layout.result_path(dataset.SOPInstanceUID), encoded(dataset))
        result = {"uid": dataset.SOPInstanceUID, "path": path}
        if not self.database.finish_study(uid, quiet_since, DRAFTED, time.time(), result=result,
                                          destinations=self.settings.destinations):
            path.unlink(missing_ok=True)
            LOG.info("study %s: new instances arrived while it was drafted: drafted again once it is quiet", uid)
            return False
        notes = [note for flag, note in ((draft.truncated, "stopped at the token limit"),
                                         (draft.ood_flag, "unlike the training images (ood_flag)")) if flag]
        compared = f" against the prior study {draft.prior_id}" if draft.prior_id else ""
        LOG.info("study %s drafted from %d instance(s)%s in %.1f s: SR %s queued for %d destination(s)%s", uid,
                 len(draft.files), compared, draft.seconds, dataset.SOPInstanceUID, len(self.settings.destinations),
                 f" ({'; '.join(notes)})" if notes else "")
        return True

    def refuse(self, uid, quiet_since, state, reason) -> bool:
        """Marks the study refused (for good) or failed (drafted again after a restart), with the reason."""
        if not self.database.finish_study(uid, quiet_since, state, time.time(), reason=reason):
            return False
        what = "refused" if state == REFUSED else "not drafted (drafted again after a restart)"
        LOG.warning("study %s %s: %s; no result is sent", uid, what, reason)
        return True


def reasons_of(uid, messages):
    """draft_reports' messages about one study, each naming the instance by its SOP Instance UID (the file names in
    them are storage/instances/<study>/<instance>.dcm) or nothing (the study's own), without the hint about
    cliptt5-generate's --any-modality (the node has no such option)."""
    folder, reasons = f"{os.sep}{uid}{os.sep}", []
    for message in messages:
        if folder in message:
            path, _, reason = message.partition(": ")
            reasons.append(f"instance {Path(path).stem}: {reason}")
        elif message.startswith(f"{uid}: "):
            reasons.append(message[len(uid) + 2:])
    return [reason.replace(f"; {ANY_MODALITY_HINT}", "") for reason in reasons]

"""The node running: it picks up where a stopped or killed node left off, loads the release, listens, and keeps two
workers going (the draft queue and the outbox) until it is told to stop."""

from __future__ import annotations

import logging
import threading
import time

from modeling_cliptt5.node.database import NodeDatabase
from modeling_cliptt5.node.instances import Instance, is_uid
from modeling_cliptt5.node.storage import StorageLayout, make_folders, remove_interrupted_writes, stored_files

LOG = logging.getLogger("cliptt5.node")
IDLE_SECONDS = 0.25  # how often an idle worker looks for work


class NodeStartError(RuntimeError):
    """The node cannot start (no release, an address it cannot listen on); the message says why in one line."""


def open_storage(settings):
    """The storage layout and database, after clearing what a killed node left: half-written files are deleted,
    instance files the index lacks are indexed, result files no outbox entry names are deleted (their studies are
    still waiting, and are drafted again)."""
    from pathlib import Path

    layout = StorageLayout(Path(settings.storage))
    make_folders(layout.root)
    removed = remove_interrupted_writes(layout)
    if removed:
        LOG.info("removed %d half-written file(s) of an interrupted run", len(removed))
    database = NodeDatabase(layout.database)
    known = database.known_paths()
    for path in stored_files(layout.instances):
        if str(path) not in known:
            recover_instance(database, path)
    for path in stored_files(layout.results):
        if str(path) not in known:
            path.unlink()
            LOG.info("removed result %s that was written but never queued: its study is drafted again", path.stem)
    return layout, database


def recover_instance(database, path):
    from modeling_cliptt5.images.dicom import read_header
    from modeling_cliptt5.inference.priors import header_facts

    header = read_header(path)
    uids = [str(header.get(keyword, "")) if header is not None else "" for keyword in
            ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")]
    if not all(map(is_uid, uids)) or path.parent.name != uids[0] or path.stem != uids[3]:
        LOG.warning("%s is not an instance this node wrote: left alone", path)
        return
    facts = header_facts(header)
    database.index_recovered_file(Instance(*uids, facts.patient_id, facts.study_datetime), path, path.stat().st_size,
                                  time.time())
    LOG.info("indexed instance %s of study %s, written before the node stopped", uids[3], uids[0])


def load_drafting_release(settings):
    from transformers.utils import logging as transformers_logging

    from modeling_cliptt5.inference.drafting import load_release

    transformers_logging.disable_progress_bar()  # a progress bar is noise in a service's log
    started = time.perf_counter()
    try:
        release = load_release(settings.release, optimize=settings.optimize)
    except (OSError, ValueError, ImportError) as error:
        raise NodeStartError(" ".join(str(error).split())) from None
    if release.ood_summary is None:
        LOG.warning("the release has no summary of its training images: studies unlike them are not flagged%s",
                    " (refuse_ood cannot refuse any)" if settings.refuse_ood else "")
    LOG.info("loaded release %s (revision %s, %s) in %.1f s", release.identity.get("name"),
             release.identity.get("revision"), release.engine.name, time.perf_counter() - started)
    return release


def worker(name, step, stop):
    """Runs `step` until `stop`; an idle or failing step waits a moment (a failure is logged, then tried again)."""
    def run():
        while not stop.is_set():
            try:
                busy = step()
            except Exception:  # noqa: BLE001 - the worker must outlive one bad round
                LOG.exception("%s: failed, trying again", name)
                busy = 0
            if not busy:
                stop.wait(IDLE_SECONDS)
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def serve(settings, stop: threading.Event):
    """Runs the node until `stop` is set. NodeStartError when it cannot start."""
    from modeling_cliptt5.node.drafter import StudyDrafter
    from modeling_cliptt5.node.scp import start_scp
    from modeling_cliptt5.node.sender import ResultSender
    from modeling_cliptt5.node.tls import client_context, server_context

    layout, database = open_storage(settings)
    release = load_drafting_release(settings)
    try:
        listening_context = server_context(settings.tls) if settings.tls else None
        sending_context = client_context(settings.tls) if settings.tls else None
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise NodeStartError(f"tls: {' '.join(str(error).split())}") from None
    try:
        server = start_scp(settings, layout, database, listening_context)
    except OSError as error:
        raise NodeStartError(f"cannot listen on {settings.host}:{settings.port} ({error.strerror or error})") from None
    database.restart_clocks(time.time())
    drafter = StudyDrafter(settings, layout, database, release, sending_context)
    sender = ResultSender(settings, database, sending_context)
    workers = [worker("drafting", drafter.draft_complete_studies, stop), worker("sending", sender.send_due, stop)]
    LOG.info("listening on %s:%d as %s%s; storage %s; a study is complete %g s after its last instance",
             settings.host, settings.port, settings.ae_title, " over TLS" if listening_context else "",
             layout.root, settings.study_complete_seconds)
    try:
        stop.wait()
    finally:
        server.shutdown()
        for thread in workers:
            thread.join(timeout=settings.network_timeout_seconds)
        if not any(thread.is_alive() for thread in workers):  # a draft still running keeps its connection
            database.close()
    LOG.info("stopped")

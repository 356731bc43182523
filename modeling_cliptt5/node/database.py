"""The node's memory across restarts, in SQLite (WAL, synchronous FULL): the instances it holds, each study's state
(receiving, drafted, refused, failed), the outbox of results and the refusals. Every change is one transaction,
committed before the node answers or moves on, so a node killed at any point restarts where it stopped."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from modeling_cliptt5.data.schema import latest_earlier

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    calling_ae_title TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_of_study ON instances (study_instance_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    first_instance_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    quiet_since REAL NOT NULL,
    late_instances INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    reason TEXT,
    result_uid TEXT,
    patient_id TEXT NOT NULL DEFAULT '',
    study_datetime TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    result_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    ae_title TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    tls INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    sent_at REAL,
    UNIQUE (result_uid, ae_title, host, port)
);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    what TEXT NOT NULL,
    calling_ae_title TEXT,
    address TEXT,
    reason TEXT NOT NULL
);
"""
# Columns added since the first release of the node, each with its default: a database made before them gains them
# when it is opened (its studies then have no patient or date, and are no one's prior)
ADDED_COLUMNS = {"studies": {"patient_id": "TEXT NOT NULL DEFAULT ''", "study_datetime": "TEXT NOT NULL DEFAULT ''"}}
INDEXES = "CREATE INDEX IF NOT EXISTS studies_of_patient ON studies (patient_id);"
# A study's states. "receiving" until it has been quiet for the study-complete time and was drafted; "failed" (the
# model failed on it) is drafted again after a restart; "prior": fetched from the prior source as a later study's
# prior (prior_fetch.py), never drafted.
RECEIVING, DRAFTED, REFUSED, FAILED, PRIOR = "receiving", "drafted", "refused", "failed", "prior"


def priors_among(rows):
    """{study: its prior} among studies table rows (data.schema.latest_earlier)."""
    return latest_earlier((row["patient_id"], row["study_datetime"], row["study_instance_uid"]) for row in rows)


class NodeDatabase:
    """One connection shared by the node's threads (a lock serialises them); `status` opens its own, read-only."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = Path(path)
        if read_only:
            self.connection = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=30,
                                              isolation_level=None, check_same_thread=False)
        else:
            self.connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")  # a commit is on the disk when it returns
            self.connection.executescript(SCHEMA)
            for table, columns in ADDED_COLUMNS.items():
                present = {row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")}
                for name, definition in columns.items():
                    if name not in present:
                        self.connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
            self.connection.executescript(INDEXES)
        self.connection.row_factory = sqlite3.Row
        self.lock = threading.Lock()

    def close(self):
        self.connection.close()

    @contextlib.contextmanager
    def transaction(self):
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def rows(self, query, parameters=()):
        with self.lock:
            return [dict(row) for row in self.connection.execute(query, parameters).fetchall()]

    # receiving

    def add_instance(self, instance, path, size, calling_ae_title, now) -> str:
        """Records an instance written to `path`: "new", "again" (the same SOP instance sent again), "late" (its
        study was already drafted or refused: kept, not drafted again) or "prior" (its study was fetched as a prior:
        kept, never drafted)."""
        with self.transaction() as db:
            known = db.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?",
                               (instance.sop_instance_uid,)).fetchone()
            db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (instance.sop_instance_uid, instance.study_instance_uid, instance.series_instance_uid,
                        instance.sop_class_uid, str(path), size, calling_ae_title, now))
            study = db.execute("SELECT state FROM studies WHERE study_instance_uid = ?",
                               (instance.study_instance_uid,)).fetchone()
            if study is None:
                db.execute("INSERT INTO studies (study_instance_uid, state, first_instance_at, last_instance_at, "
                           "quiet_since, patient_id, study_datetime) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (instance.study_instance_uid, RECEIVING, now, now, now, instance.patient_id,
                            instance.study_datetime))
            elif study["state"] in (RECEIVING, PRIOR):
                db.execute("UPDATE studies SET last_instance_at = ?, quiet_since = ? WHERE study_instance_uid = ?",
                           (now, now, instance.study_instance_uid))
                if study["state"] == PRIOR:
                    return "prior"
            else:
                if not known:
                    db.execute("UPDATE studies SET late_instances = late_instances + 1 WHERE study_instance_uid = ?",
                               (instance.study_instance_uid,))
                return "late"
        return "again" if known else "new"

    def add_refusal(self, now, what, reason, calling_ae_title=None, address=None):
        with self.transaction() as db:
            db.execute("INSERT INTO refusals (at, what, calling_ae_title, address, reason) VALUES (?, ?, ?, ?, ?)",
                       (now, what, calling_ae_title, address, reason))

    def restart_clocks(self, now):
        """After a restart: each study still receiving gets the full study-complete time again (its sender could
        not reach a stopped node), and studies the model failed on are drafted again."""
        with self.transaction() as db:
            db.execute("UPDATE studies SET quiet_since = MAX(quiet_since, ?) WHERE state = ?", (now, RECEIVING))
            db.execute("UPDATE studies SET state = ?, quiet_since = ?, reason = NULL WHERE state = ?",
                       (RECEIVING, now, FAILED))

    def index_recovered_file(self, instance, path, size, now):
        """An instance file on disk that the index lacks (the node was killed between writing it and recording
        it, so it was never acknowledged): recorded like a new arrival."""
        self.add_instance(instance, path, size, "", now)

    # drafting

    def complete_studies(self, quiet_before, limit=None):
        """[(Study Instance UID, quiet_since)] of studies receiving and quiet since `quiet_before` or earlier, the
        longest quiet first; `limit` of them (None: all)."""
        return [(row["study_instance_uid"], row["quiet_since"]) for row in self.rows(
            "SELECT study_instance_uid, quiet_since FROM studies WHERE state = ? AND quiet_since <= ? "
            "ORDER BY quiet_since LIMIT ?", (RECEIVING, quiet_before, -1 if limit is None else limit))]

    def prior_study(self, study_instance_uid):
        """The Study Instance UID of the study's prior among the studies this node drafted or fetched as priors: the
        latest of the same patient dated strictly before it (data.schema.latest_earlier, the rule of datasets and of
        cliptt5-generate), or None (no patient or date in its headers, or no such study)."""
        rows = self.rows(
            "SELECT other.study_instance_uid, other.patient_id, other.study_datetime FROM studies AS study "
            "JOIN studies AS other ON other.patient_id = study.patient_id WHERE study.study_instance_uid = ? "
            "AND study.patient_id != '' AND (other.state = ? OR other.study_instance_uid = study.study_instance_uid "
            # a prior whose move was cut short (the node killed meanwhile) and holds no instance is fetched again
            "OR (other.state = ? AND EXISTS (SELECT 1 FROM instances WHERE "
            "instances.study_instance_uid = other.study_instance_uid)))", (study_instance_uid, DRAFTED, PRIOR))
        return priors_among(rows).get(study_instance_uid)

    def study_facts(self, study_instance_uid):
        """(PatientID, study date-time) of a study, "" where its headers gave none."""
        rows = self.rows("SELECT patient_id, study_datetime FROM studies WHERE study_instance_uid = ?",
                         (study_instance_uid,))
        return (rows[0]["patient_id"], rows[0]["study_datetime"]) if rows else ("", "")

    def expect_prior(self, study_instance_uid, patient_id, study_datetime) -> bool:
        """Records a study about to be fetched as a prior, so that its instances are kept as one and never drafted;
        False when the node already knows it as something else (received, drafted or refused)."""
        with self.transaction() as db:
            study = db.execute("SELECT state FROM studies WHERE study_instance_uid = ?",
                               (study_instance_uid,)).fetchone()
            if study is not None:
                return study["state"] == PRIOR
            db.execute("INSERT INTO studies (study_instance_uid, state, first_instance_at, last_instance_at, "
                       "quiet_since, patient_id, study_datetime) VALUES (?, ?, 0, 0, 0, ?, ?)",
                       (study_instance_uid, PRIOR, patient_id, study_datetime))
        return True

    def waiting_for_earlier(self):
        """The studies being received that wait for an earlier one of the same patient also being received
        (data.schema.latest_earlier over them): that one is drafted first, so that it is their prior, as when a PACS
        sends a patient's studies together."""
        rows = self.rows("SELECT study_instance_uid, patient_id, study_datetime FROM studies WHERE state = ?",
                         (RECEIVING,))
        return set(priors_among(rows))

    def result_paths(self, study_instance_uid):
        """The files of every result queued for the study (the node's draft, a reader's signed SR), newest first."""
        return [Path(row["path"]) for row in self.rows(
            "SELECT path, MAX(id) AS newest FROM outbox WHERE study_instance_uid = ? GROUP BY path "
            "ORDER BY newest DESC", (study_instance_uid,))]

    def instance_paths(self, study_instance_uid):
        return [Path(row["path"]) for row in self.rows(
            "SELECT path FROM instances WHERE study_instance_uid = ? ORDER BY received_at, sop_instance_uid",
            (study_instance_uid,))]

    def finish_study(self, study_instance_uid, quiet_since, state, now, reason=None, result=None,
                     destinations=()) -> bool:
        """Moves a study out of "receiving" (drafted with its result queued for every destination, refused or
        failed) in one transaction. False, and nothing changed, when an instance arrived since `quiet_since`:
        the study is drafted again once it is quiet."""
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE studies SET state = ?, finished_at = ?, reason = ?, result_uid = ? "
                "WHERE study_instance_uid = ? AND state = ? AND quiet_since = ?",
                (state, now, reason, result["uid"] if result else None, study_instance_uid, RECEIVING, quiet_since))
            if changed.rowcount != 1:
                return False
            queue_in(db, study_instance_uid, result, destinations, now)
        return True

    def queue_result(self, study_instance_uid, result, destinations, now):
        """Queues a result already written durably (a reader's signed SR, from the page) for every destination in
        one transaction; the running node's sender delivers it like its own drafts."""
        with self.transaction() as db:
            queue_in(db, study_instance_uid, result, destinations, now)

    # sending

    def due_results(self, now):
        return self.rows("SELECT * FROM outbox WHERE sent_at IS NULL AND next_attempt_at <= ? ORDER BY id", (now,))

    def result_sent(self, outbox_id, now):
        with self.transaction() as db:
            db.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?",
                       (now, outbox_id))

    def result_not_sent(self, outbox_id, error, next_attempt_at):
        with self.transaction() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
                       (error, next_attempt_at, outbox_id))

    # the page's worklist

    def worklist(self, limit=500):
        """Every study the node holds, the latest first: its state, instance count, the reason it was refused and
        its draft SR (result_uid, None until drafted)."""
        return self.rows(
            "SELECT s.study_instance_uid, s.state, s.reason, s.result_uid, s.last_instance_at, s.finished_at, "
            "COUNT(i.sop_instance_uid) AS instances FROM studies s LEFT JOIN instances i USING (study_instance_uid) "
            "GROUP BY s.study_instance_uid ORDER BY s.last_instance_at DESC LIMIT ?", (limit,))

    def study_row(self, study_instance_uid):
        rows = self.rows("SELECT * FROM studies WHERE study_instance_uid = ?", (study_instance_uid,))
        return rows[0] if rows else None

    # recovery and status

    def known_paths(self):
        """Every file the index names: instances and results."""
        return ({row["path"] for row in self.rows("SELECT path FROM instances")}
                | {row["path"] for row in self.rows("SELECT path FROM outbox")})

    def status(self, now, limit=50):
        """What `cliptt5-node status` shows: study counts by state, the studies waiting, the results not yet taken
        by their destination, and the latest refusals."""
        counts = {row["state"]: row["count"] for row in self.rows(
            "SELECT state, COUNT(*) AS count FROM studies GROUP BY state")}
        waiting = self.rows(
            "SELECT s.study_instance_uid, s.state, COUNT(i.sop_instance_uid) AS instances, ? - s.last_instance_at "
            "AS seconds_since_last_instance FROM studies s LEFT JOIN instances i USING (study_instance_uid) "
            "WHERE s.state = ? GROUP BY s.study_instance_uid ORDER BY s.quiet_since LIMIT ?",
            (now, RECEIVING, limit))
        outbox = self.rows(
            "SELECT study_instance_uid, result_uid, ae_title || '@' || host || ':' || port AS destination, attempts, "
            "last_error, next_attempt_at - ? AS next_attempt_in_seconds, ? - created_at AS waiting_seconds "
            "FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?", (now, now, limit))
        sent = self.rows("SELECT COUNT(*) AS count FROM outbox WHERE sent_at IS NOT NULL")[0]["count"]
        refused_studies = self.rows(
            "SELECT study_instance_uid, state, reason, finished_at FROM studies WHERE state IN (?, ?) "
            "ORDER BY finished_at DESC LIMIT ?", (REFUSED, FAILED, limit))
        late = self.rows("SELECT study_instance_uid, late_instances FROM studies WHERE late_instances > 0 LIMIT ?",
                         (limit,))
        refusals = self.rows("SELECT at, what, calling_ae_title, address, reason FROM refusals ORDER BY id DESC "
                             "LIMIT ?", (limit,))
        return {"studies": counts, "queue": waiting, "outbox": outbox, "results_sent": sent,
                "refused_studies": refused_studies, "late_instances": late, "refusals": refusals}


def queue_in(db, study_instance_uid, result, destinations, now):
    """Inside a transaction: one outbox row per destination for the result {"uid", "path"}."""
    for destination in destinations:
        db.execute("INSERT INTO outbox (study_instance_uid, result_uid, path, ae_title, host, port, tls, "
                   "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (study_instance_uid, result["uid"], str(result["path"]), destination.ae_title,
                    destination.host, destination.port, int(destination.tls), now, now))

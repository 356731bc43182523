"""What keeps the page safe as a server: one draft at a time with a bounded wait (more are told the server is
busy), the study each open page shows (a draft that finishes after its study was replaced is dropped), and
uploads deleted on a schedule."""

import contextlib
import os
import sys
import threading
import time


class ServerBusy(Exception):
    """More drafts are waiting than the server accepts; the request was not run."""


class DraftTurns:
    """The model drafts one study at a time; up to `max_waiting` more requests wait their turn, the rest are
    refused at once (ServerBusy) rather than left hanging."""

    def __init__(self, max_waiting=16):
        self.max_waiting = max_waiting
        self._model = threading.Lock()
        self._admitted = threading.BoundedSemaphore(max_waiting + 1)

    @contextlib.contextmanager
    def turn(self):
        # The server's log says when readers wait or are turned away: what an administrator sizes --max-waiting by.
        if not self._admitted.acquire(blocking=False):
            print("A draft was refused: the server is busy.", file=sys.stderr, flush=True)
            raise ServerBusy(f"{self.max_waiting} draft(s) are already waiting for the model")
        try:
            if not self._model.acquire(blocking=False):
                print("A draft waits for the model (another is being drafted).", file=sys.stderr, flush=True)
                self._model.acquire()
            print("A draft is being drafted.", file=sys.stderr, flush=True)
            try:
                yield
            finally:
                self._model.release()
        finally:
            self._admitted.release()


class OpenStudies:
    """Which study each open page (gradio session) shows now, by a token that changes with every new study."""

    def __init__(self):
        self._current = {}
        self._lock = threading.Lock()

    def show(self, session, token):
        with self._lock:
            self._current[session] = token

    def is_current(self, session, token):
        with self._lock:
            return self._current.get(session) == token

    def close(self, session):
        with self._lock:
            self._current.pop(session, None)


class UploadSweeper:
    """Deletes files in `folder` whose status changed more than `age` seconds ago (and folders left empty),
    checking every `every` seconds, in a daemon thread. It covers the whole private folder: uploads, the copies
    gradio makes of them and of exports, and the exports themselves."""

    def __init__(self, folder, age, every):
        self.folder, self.age, self.every = str(folder), float(age), float(every)

    def start(self):
        """Sweeps every `every` seconds in a daemon thread, until the server exits."""
        threading.Thread(target=self._run, name="upload-sweeper", daemon=True).start()
        return self

    def _run(self):
        while True:
            time.sleep(self.every)
            self.sweep()

    def sweep(self, now=None):
        """Deletes what is older than `age`; returns how many files went."""
        now = now or time.time()
        cutoff = now - self.age
        removed = 0
        for parent, folders, files in os.walk(self.folder, topdown=False):
            for name in files:
                path = os.path.join(parent, name)
                with contextlib.suppress(OSError):
                    if os.lstat(path).st_ctime < cutoff:
                        os.remove(path)
                        removed += 1
            if parent != self.folder:  # a folder left empty since the last sweep (not one being filled now)
                with contextlib.suppress(OSError):
                    if not os.listdir(parent) and os.lstat(parent).st_ctime < now - self.every:
                        os.rmdir(parent)
        return removed

"""Drafting a whole archive: each process drafts its share of the studies, records every finished study in a journal
that a rerun resumes from, and one process merges the journal into the output, in input order.

The journal is a hidden folder beside the output (`drafts.jsonl` -> `.drafts.jsonl.parts/`) holding
- `manifest.json`: what the run is (the release, the settings that change a record, a digest of the study list), so
  that a rerun with other settings cannot mix two runs' records in one output;
- `rank-N.jsonl`, one per process: a complete JSON line per study (DraftedReport.row()), each written with a single
  `write` on a file opened for appending (a kill leaves at most a torn last line, which readers drop: that study is
  drafted again), fsync'ed per batch.
A rerun with the same settings, with any number of processes, reads every process's file, skips the studies
recorded there and shares out the rest. When every study is recorded, the main process writes the output in one
atomic step (draft_files.write_outputs) and removes the folder.

Processes come from accelerate (`PartialState`: one per GPU, or CPU processes); without accelerate, or not launched by
it, there is one. The shares are deterministic: every process enumerates the same inputs, links priors over the whole
list and takes every count-th pending study from its own index.

Also here: the studies of a converted dataset (data/schema.py), read one row at a time (`dataset_studies`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from modeling_cliptt5.data.atomic_writes import write_json_atomically
from modeling_cliptt5.inference.drafting import Study

MANIFEST = "manifest.json"
LOCK = "lock"  # held by a run's main process: two runs on one output would record studies twice
MANIFEST_VERSION = 1
# A process may wait at the end for the others to finish their shares: longer than torch's 30-minute default.
BARRIER_TIMEOUT = datetime.timedelta(hours=48)


def journal_folder(output) -> Path:
    """The hidden folder beside `output` where its run keeps its journal."""
    output = Path(output)
    return output.with_name(f".{output.name}.parts")


@dataclass
class Processes:
    """This process's place among the processes accelerate launched (index 0 of 1 when it launched none)."""

    index: int = 0
    count: int = 1
    state: object = None  # accelerate.PartialState, when there are several
    device: str | None = None  # this process's device where accelerate gives one (cuda:N)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait(self):
        """Every process waits here until all have come (nothing to wait for alone)."""
        if self.count > 1:
            self.state.wait_for_everyone()

    def main_first(self):
        """A block the main process runs before the others (e.g. --optimize's one-time ONNX export of a release,
        which every process would otherwise make at once)."""
        return self.state.main_process_first() if self.count > 1 else contextlib.nullcontext()

    def total(self, value: int) -> int:
        """The sum of `value` over the processes."""
        if self.count == 1:
            return value
        from accelerate.utils import gather_object

        return sum(gather_object([value]))

    def close(self):
        if self.count > 1:
            self.state.destroy_process_group()


def current_processes(cpu: bool) -> Processes:
    """The processes of this run, from accelerate's PartialState (`cpu`: gloo on CPU processes, as
    `ACCELERATE_USE_CPU=1` does); one process when accelerate is not installed or did not launch this one."""
    try:
        from accelerate import PartialState
    except ImportError:
        return Processes()
    state = PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
    if state.num_processes == 1:
        return Processes()
    device = None if cpu else str(state.device)
    return Processes(state.process_index, state.num_processes, state, device)


def share_cpu_threads(processes: Processes) -> int:
    """Torch's threads in this process, at most its share of the cores when several processes run on one machine's
    CPUs (2 processes on 2 cores: 1 each; ONNX Runtime's sessions take torch's count when loaded). Returns it."""
    import torch

    if processes.count > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cores // processes.count)))
    return torch.get_num_threads()


def study_list_digest(studies) -> str:
    """SHA-256 of the ordered study list: ids, their views, their priors (a changed input folder is another run)."""
    digest = hashlib.sha256()
    for study in studies:
        prior = study.prior.study_id if study.prior is not None else ""
        digest.update(json.dumps([study.study_id, [str(view) for view in study.files], prior,
                                  study.prior_report or ""]).encode() + b"\n")
    return digest.hexdigest()


def run_manifest(release_identity: dict, settings: dict, studies) -> dict:
    """What a run is: its release, the settings that change a record, and its studies (count and digest)."""
    return {"version": MANIFEST_VERSION, "model": dict(release_identity), "settings": dict(settings),
            "studies": len(studies), "inputs_sha256": study_list_digest(studies)}


def manifest_differences(recorded: dict, current: dict) -> list[str]:
    """"what: X then, Y now" for each way two manifests differ."""
    def flat(manifest):
        items = {f"model {key}": value for key, value in manifest.get("model", {}).items()}
        items.update(manifest.get("settings", {}))
        items["number of studies"] = manifest.get("studies")
        items["input list (digest)"] = (manifest.get("inputs_sha256") or "")[:12]
        items["journal version"] = manifest.get("version")
        return items

    before, now = flat(recorded), flat(current)
    return [f"{name}: {before.get(name)!r} then, {now.get(name)!r} now" for name in dict.fromkeys([*before, *now])
            if before.get(name) != now.get(name)]


class SettingsChanged(ValueError):
    """The journal beside the output records a run with other settings; the message says what differs."""


class RunInProgress(RuntimeError):
    """Another run is drafting into the same output (its main process holds the journal's lock)."""


class Journal:
    """The journal folder of one output: its manifest and one append-only JSONL file per process."""

    def __init__(self, output):
        self.output = Path(output)
        self.folder = journal_folder(output)
        self.lock = None

    def part(self, index: int) -> Path:
        return self.folder / f"rank-{index}.jsonl"

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("rank-*.jsonl"))

    def begin(self, manifest: dict, restart: bool = False) -> None:
        """(Main process.) A fresh folder with `manifest`, or the folder left by an earlier run (`restart`: removed
        first), locked for this run. Raises RunInProgress when another run holds it (e.g. the processes of a launcher
        that was killed: torchrun starts each in its own session, so they outlive it and finish their shares)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.take_lock()
        if restart:
            for path in self.folder.iterdir():
                if path.name != LOCK:
                    path.unlink()
        if not (self.folder / MANIFEST).exists():
            write_json_atomically(self.folder / MANIFEST, manifest)

    def take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows has no flock: there, keeping to one run per output is the user's part
            return
        self.lock = open(self.folder / LOCK, "a")  # noqa: SIM115 - held until the run ends
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.close()
            self.lock = None
            raise RunInProgress(f"another run is drafting into {self.output} (it holds {self.folder / LOCK}): wait for "
                                "it to end, or stop its processes, then run again") from None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def check(self, manifest: dict) -> None:
        """Raises SettingsChanged when the recorded run is not this one."""
        recorded = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        differences = manifest_differences(recorded, manifest)
        if differences:
            raise SettingsChanged(
                f"{self.folder} holds an unfinished run of {self.output} with other settings "
                f"({'; '.join(differences)}): run with those settings to resume it, or add --restart (or delete "
                f"{self.folder}) to start over")

    def index(self) -> JournalIndex:
        """Where each study's record is: every process's file read line by line (never whole). A last line without
        its newline (torn by a kill) and a line that is not JSON are dropped and counted."""
        index = JournalIndex()
        for number, path in enumerate(self.parts()):
            index.files.append(path)
            with open(path, "rb") as handle:
                offset = 0
                for line in handle:
                    start, offset = offset, offset + len(line)
                    try:
                        if not line.endswith(b"\n"):
                            raise ValueError("torn")
                        row = json.loads(line)
                        if not isinstance(row, dict) or "id" not in row:
                            raise ValueError("not a record")
                    except ValueError:
                        index.dropped += 1
                        continue
                    index.keys.update(row)
                    if row["id"] in index.where:
                        index.duplicates += 1
                    else:
                        index.where[row["id"]] = (number, start, len(line))
        return index

    def writer(self, index: int) -> JournalWriter:
        return JournalWriter(self.part(index))

    def merged_rows(self, studies, index: JournalIndex):
        """The recorded rows of `studies`, in their order, read one at a time."""
        handles = [open(path, "rb") for path in index.files]
        try:
            for study in studies:
                number, start, length = index.where[study.study_id]
                handles[number].seek(start)
                yield json.loads(handles[number].read(length))
        finally:
            for handle in handles:
                handle.close()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.release()


class JournalIndex:
    """{study id: (file number, offset, length)} of the records in a journal, and what the readers left out."""

    def __init__(self):
        self.files: list[Path] = []
        self.where: dict[str, tuple[int, int, int]] = {}
        self.keys: set[str] = set()  # every column some record has (the CSV's columns)
        self.dropped = 0  # torn or damaged lines
        self.duplicates = 0  # records of a study recorded before (kept: the first)

    def __len__(self):
        return len(self.where)

    def __contains__(self, study_id):
        return study_id in self.where


class JournalWriter:
    """One process's journal file, opened for appending. A record is one `os.write` of the whole line (the kernel
    has it once the call returns: a killed process loses nothing written); `sync()` makes it durable (fsync)."""

    def __init__(self, path: Path):
        self.path = path
        drop_torn_tail(path)  # else the next record would be glued to the torn fragment
        self.descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.written = 0

    def append(self, row: dict) -> None:
        line = (json.dumps(row) + "\n").encode("utf-8")
        if os.write(self.descriptor, line) != len(line):  # only a full disk writes short: the line is torn
            raise OSError(f"{self.path}: short write (is the disk full?)")
        self.written += 1

    def sync(self) -> None:
        os.fsync(self.descriptor)

    def close(self) -> None:
        if self.descriptor is not None:
            os.fsync(self.descriptor)
            os.close(self.descriptor)
            self.descriptor = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def drop_torn_tail(path: Path) -> None:
    """Cuts a journal file back to its last complete line (a kill may have torn the last one)."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        keep = size
        while keep > 0:
            handle.seek(max(0, keep - 4096))
            block = handle.read(keep - max(0, keep - 4096))
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = max(0, keep - len(block)) + newline + 1
                break
            keep = max(0, keep - len(block))
        if keep != size:
            handle.truncate(keep)


class ArchiveRun:
    """One output's run across processes: start (which studies are this process's), record, finish (merge)."""

    def __init__(self, output, processes: Processes):
        self.journal = Journal(output)
        self.processes = processes
        self.earlier = 0  # studies recorded by earlier runs
        self.records_before = 0  # records (lines) in the journal at the start
        self.dropped = 0  # torn or damaged lines found at the start

    def start(self, studies, manifest: dict, restart: bool = False) -> list[Study]:
        """This process's share of the studies not yet recorded. Raises SettingsChanged (in every process) when the
        journal holds a run with other settings, RunInProgress (in the main process) when another run holds it.
        `close()` ends the run's hold on the journal, whatever happens."""
        if self.processes.is_main:
            self.journal.begin(manifest, restart)
        self.processes.wait()
        self.journal.check(manifest)
        recorded = self.journal.index()
        # every process has read what is done before any appends (else the shares could overlap)
        self.processes.wait()
        self.earlier = sum(study.study_id in recorded for study in studies)
        self.records_before = len(recorded) + recorded.duplicates
        self.dropped = recorded.dropped
        pending = [study for study in studies if study.study_id not in recorded]
        return pending[self.processes.index::self.processes.count]

    def writer(self) -> JournalWriter:
        return self.journal.writer(self.processes.index)

    def close(self) -> None:
        self.journal.release()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def finish(self, studies, write, tally=None):
        """After every process's share: the main process checks that every study is recorded, hands the rows in
        input order to `write(rows, keys)` (keys: every column some record has) and removes the journal; returns the
        number of records this run added, counted in the journal (None in the other processes). `tally(row)` sees
        each row."""
        self.processes.wait()
        if not self.processes.is_main:
            return None
        index = self.journal.index()
        missing = [study.study_id for study in studies if study.study_id not in index]
        if missing:
            raise RuntimeError(f"{len(missing)} studies have no record in {self.journal.folder} (e.g. {missing[0]}): "
                               "run the same command again to draft them")
        rows = self.journal.merged_rows(studies, index)
        write(rows if tally is None else tallied(rows, tally), index.keys)
        added = len(index) + index.duplicates - self.records_before
        self.journal.remove()
        return added


def tallied(rows, tally):
    for row in rows:
        tally(row)
        yield row


@dataclass(frozen=True, eq=False)
class DatasetView:
    """One view of a converted dataset's study, read from the (memory-mapped) dataset only when drafted."""

    rows: object  # the split, in arrow format
    row: int
    view: int
    label: str  # "PATH[split][row]"

    @property
    def name(self) -> str:
        return f"{self.label}.images[{self.view}]"

    def read_bytes(self) -> bytes:
        image = self.rows[self.row].column("images")[0][self.view].as_py()
        if image.get("bytes") is not None:
            return image["bytes"]
        return Path(image["path"]).read_bytes()  # a dataset that refers to its image files

    def __str__(self):
        return self.name


def dataset_studies(path, split: str, with_priors: bool = False) -> list[Study]:
    """The studies of one split of a converted dataset (data.schema.load_report_dataset), in row order: its id, its
    views (DatasetView, frontal first as the schema has them) and, `with_priors`, the prior study its `prior_id`
    names (looked for in every split, as the schema links them) with that study's report. Raises ValueError for a
    split the dataset does not have or ids that repeat."""
    import pyarrow.compute

    from modeling_cliptt5.data.schema import load_report_dataset

    dataset = load_report_dataset(path)
    if split not in dataset:
        raise ValueError(f"{path}: no split {split!r} (it has {', '.join(dataset)})")

    def studies_of(name, rows_wanted=None):
        rows = dataset[name].with_format("arrow")
        ids = rows[:]["id"].to_pylist()
        counts = pyarrow.compute.list_value_length(rows[:]["images"]).to_pylist()
        wanted = range(len(ids)) if rows_wanted is None else rows_wanted
        return {row: Study(ids[row], [DatasetView(rows, row, view, f"{path}[{name}][{row}]")
                                      for view in range(counts[row] or 0)]) for row in wanted}

    studies = list(studies_of(split).values())
    seen = set()
    for study in studies:
        if study.study_id in seen:
            raise ValueError(f"{path}[{split}]: the id {study.study_id!r} repeats: each study needs its own id")
        seen.add(study.study_id)
    if with_priors:
        link_dataset_priors(dataset, split, studies, studies_of)
    return studies


def link_dataset_priors(dataset, split, studies, studies_of):
    """Sets each study's prior (and prior report) from the dataset's prior_id, wherever that study is."""
    where = {study_id: (name, row) for name, rows in dataset.items()
             for row, study_id in enumerate(rows.with_format("arrow")[:]["id"].to_pylist())}
    prior_ids = dataset[split].with_format("arrow")[:]["prior_id"].to_pylist()
    for study, prior_id in zip(studies, prior_ids):
        if not prior_id or prior_id not in where:
            continue
        name, row = where[prior_id]
        study.prior = studies_of(name, [row])[row]
        study.prior_report = dataset[name].with_format("arrow")[row]["report"][0].as_py() or None

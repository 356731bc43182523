"""The node's files: where instances, results and the database live under the storage folder, and how a file is
written so that it survives a crash before the node says it has it (data and folder entry fsynced)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modeling_cliptt5.data.atomic_writes import TEMP_MARK, atomic_path, remove_leftovers
from modeling_cliptt5.node.instances import is_uid

DATABASE_NAME = "node.sqlite3"


@dataclass(frozen=True)
class StorageLayout:
    """storage/instances/<Study Instance UID>/<SOP Instance UID>.dcm, storage/results/<SR SOP Instance UID>.dcm,
    storage/node.sqlite3. Only valid DICOM UIDs (digits and dots) become names: a peer never picks a path."""

    root: Path

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def database(self) -> Path:
        return self.root / DATABASE_NAME

    def instance_path(self, study_instance_uid: str, sop_instance_uid: str) -> Path:
        return self.instances / uid_name(study_instance_uid) / f"{uid_name(sop_instance_uid)}.dcm"

    def result_path(self, sop_instance_uid: str) -> Path:
        return self.results / f"{uid_name(sop_instance_uid)}.dcm"


def uid_name(uid: str) -> str:
    if not is_uid(uid):  # callers check first; this guard keeps any other text from ever naming a file
        raise ValueError(f"not a DICOM UID: {uid[:80]!r}")
    return uid


def write_durably(path: Path, data: bytes) -> Path:
    """Writes `data` to `path` whole or not at all, and returns only once the file and its folder entry are on the
    disk: a node killed (or a machine powered off) after this keeps the file."""
    make_folders(path.parent)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    sync_folder(path.parent)  # the rename itself
    return path


def make_folders(folder: Path) -> None:
    """mkdir -p, with each new folder's entry fsynced in its parent."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        sync_folder(created.parent)


def sync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def stored_files(folder: Path) -> list[Path]:
    """The complete .dcm files under `folder` (hidden temporary files of an interrupted write left out)."""
    return sorted(path for path in folder.rglob("*.dcm") if TEMP_MARK not in path.name)


def remove_interrupted_writes(layout: StorageLayout) -> list[str]:
    """Deletes the hidden temporary files a killed node left half-written (never acknowledged, never sent)."""
    return remove_leftovers(str(layout.root)) if layout.root.exists() else []

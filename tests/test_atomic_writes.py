"""Files and folders written whole or not at all, with the permissions a plain open() or mkdir() would give."""

import os
import stat

import pytest
from datasets import Dataset, DatasetDict

from modeling_cliptt5.data.atomic_writes import atomic_file, write_json_atomically
from modeling_cliptt5.data.schema import save_dataset_atomically


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "scores.json"
    write_json_atomically(path, {"bleu": 0.1})
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_file(path) as stream:
            stream.write('{"bleu": 0.')
            raise RuntimeError("killed half-way")
    assert path.read_bytes() == before
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["scores.json"]


def test_written_files_and_datasets_get_the_users_usual_permissions(tmp_path):
    reference_file, reference_folder = tmp_path / "plain.txt", tmp_path / "plain"
    reference_file.write_text("x")
    reference_folder.mkdir()
    with atomic_file(tmp_path / "drafts.jsonl") as stream:
        stream.write("{}\n")
    assert mode(tmp_path / "drafts.jsonl") == mode(reference_file)  # not mkstemp's 0600
    dataset = save_dataset_atomically(DatasetDict({"train": Dataset.from_dict({"id": ["a"]})}), tmp_path / "data")
    assert mode(dataset) == mode(reference_folder)  # not mkdtemp's 0700

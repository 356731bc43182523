"""cliptt5-generate over an archive: shared by real `accelerate launch` processes, killed and resumed from its journal,
a torn journal line, a rerun with other settings, every study's status in the output, a converted dataset as input."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, noise_image, subprocess_env
from dicom_files import grayscale_dicom
from modeling_cliptt5.cli import generate
from modeling_cliptt5.inference.archive import LOCK, journal_folder

STUDIES = 48
TOKENS = "40"  # the untrained tiny release never ends a draft: each study costs 40 decoding steps
ACCELERATE = Path(sys.executable).parent / "accelerate"


def two_cpu_processes():
    """accelerate launch of 2 CPU processes (NOTES.md: `--cpu` would start one), on a free port."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def journal_lines(folder):
    """{journal file name: [complete records]} (a torn last line left out)."""
    found = {}
    for path in sorted(Path(folder).glob("rank-*.jsonl")):
        data = path.read_bytes()
        found[path.name] = [json.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines()]
    return found


def process_tree(pid):
    """`pid` and its descendants (from /proc)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += process_tree(child)
    return found


def kill_tree(pid):
    """SIGKILL to the process group of `pid` and of each of its descendants: torchrun starts each worker in a session
    of its own, so killing the launcher's group alone would leave the workers drafting (and merging) on their own.
    Returns the pids it found."""
    groups, members = set(), process_tree(pid)
    for member in members:
        try:
            groups.add(os.getpgid(member))
        except ProcessLookupError:
            pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return members


def wait_gone(pids, timeout=60):
    """Waits until each of `pids` has exited with all its threads: a SIGKILLed worker that is not our child keeps the
    journal's lock and may finish one more write until its last thread is gone. A process whose first thread has
    exited shows as a zombie while torch's other threads are still being torn down, holding its files."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                threads = len(os.listdir(f"/proc/{pid}/task"))
            except (OSError, IndexError):
                break
            if state in ("Z", "X") and threads <= 1:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"process {pid} still runs {timeout} s after SIGKILL")


def wait_unlocked(folder, timeout=60):
    """Waits until no process holds the journal's lock (what a rerun takes first)."""
    import fcntl

    lock = Path(folder) / LOCK
    deadline = time.monotonic() + timeout
    while lock.exists():
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{lock} still locked {timeout} s after the run was killed"
                time.sleep(0.02)
                continue
            fcntl.flock(handle, fcntl.LOCK_UN)
            return


def killed_when_recorded(command, output, at_least, timeout=300):
    """Runs `command` in its own process group and SIGKILLs it, workers included, once the journal of `output` holds
    at least `at_least` records; returns (records per journal file, the command's stderr so far)."""
    folder = journal_folder(output)
    log = output.with_name("killed.log")
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                   stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                assert process.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
                if folder.is_dir() and sum(map(len, journal_lines(folder).values())) >= at_least:
                    break
                time.sleep(0.02)
            else:
                pytest.fail(f"no {at_least} records within {timeout} s:\n{log.read_text()[-3000:]}")
        finally:
            killed = kill_tree(process.pid)
            process.wait()
            wait_gone(killed)
            wait_unlocked(folder)
    return journal_lines(folder), log.read_text()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A folder of STUDIES small PNG studies (one file each)."""
    folder = tmp_path_factory.mktemp("archive") / "studies"
    folder.mkdir()
    for index in range(STUDIES):
        noise_image(index).save(folder / f"s{index:03d}.png")
    return folder


def draft_command(release, inputs, output, *more):
    return ["--model", str(release), str(inputs), "--output", str(output), "--max-new-tokens", TOKENS,
            "--batch-size", "1", "--device", "cpu", *more]


def test_a_killed_two_process_run_resumes_and_drafts_each_study_once(tiny_release_dir, archive, tmp_path, capsys):
    output = tmp_path / "drafts.jsonl"
    command = two_cpu_processes() + ["-m", "modeling_cliptt5.cli.generate"] + draft_command(tiny_release_dir, archive,
                                                                                         output)
    journals, log = killed_when_recorded(command, output, at_least=8)
    # both processes really ran, with one thread each on the shared cores, and shared the studies out
    assert "process 1 of 2: 24 studies to draft, 1 CPU thread(s)" in log
    assert "process 2 of 2: 24 studies to draft, 1 CPU thread(s)" in log
    assert sorted(journals) == ["rank-0.jsonl", "rank-1.jsonl"] and all(journals.values()), journals
    done = [row["id"] for rows in journals.values() for row in rows]
    assert 8 <= len(done) < STUDIES and len(set(done)) == len(done)
    assert not output.exists()

    # the rerun, here one process: it reads both processes' journals and drafts only what is missing
    assert generate.main(draft_command(tiny_release_dir, archive, output)) == 0
    err = capsys.readouterr().err
    assert f"resuming: {len(done)} of {STUDIES} studies already done" in err
    # records counted in the journal at the merge: none written twice
    assert f"{STUDIES - len(done)} records written by this run, {len(done)} by an earlier run" in err
    rows = read_jsonl(output)
    assert [row["id"] for row in rows] == [f"s{index:03d}" for index in range(STUDIES)]  # input order, each once
    assert all(row["status"] == "drafted" and row["reason"] == "" for row in rows)
    assert not journal_folder(output).exists()


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, tiny_release_dir, archive):
    """The journal of a one-process run killed once 5 studies were recorded (copied by each test that uses it)."""
    output = tmp_path_factory.mktemp("interrupted") / "drafts.jsonl"
    command = [sys.executable, "-m", "modeling_cliptt5.cli.generate"] + draft_command(tiny_release_dir, archive, output)
    journals, _ = killed_when_recorded(command, output, at_least=5)
    assert list(journals) == ["rank-0.jsonl"]
    return journal_folder(output)


def resume_here(interrupted_run, tmp_path):
    output = tmp_path / "drafts.jsonl"
    shutil.copytree(interrupted_run, journal_folder(output))
    return output, journal_folder(output) / "rank-0.jsonl"


def test_a_torn_last_line_is_dropped_and_that_study_drafted_again(tiny_release_dir, archive, interrupted_run,
                                                                  tmp_path, capsys):
    output, part = resume_here(interrupted_run, tmp_path)
    lines = part.read_bytes().splitlines(keepends=True)
    torn = json.loads(lines[-1])["id"]
    part.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # as a kill in the middle of the last write leaves it
    assert generate.main(draft_command(tiny_release_dir, archive, output)) == 0
    err = capsys.readouterr().err
    kept = len(lines) - 1
    assert "1 torn or damaged line(s) dropped" in err
    assert f"resuming: {kept} of {STUDIES} studies already done" in err
    assert f"{STUDIES - kept} records written by this run, {kept} by an earlier run" in err
    rows = read_jsonl(output)
    assert [row["id"] for row in rows] == [f"s{index:03d}" for index in range(STUDIES)]
    assert [row for row in rows if row["id"] == torn][0]["status"] == "drafted"


def test_a_rerun_with_other_settings_is_refused_and_restart_starts_over(tiny_release_dir, archive, interrupted_run,
                                                                        tmp_path, capsys):
    output, _ = resume_here(interrupted_run, tmp_path)
    shorter = draft_command(tiny_release_dir, archive, output)
    shorter[shorter.index("--max-new-tokens") + 1] = "8"
    with pytest.raises(SystemExit) as refused:
        generate.main(shorter)
    assert refused.value.code == 2
    (message,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert message.startswith("cliptt5-generate: error: ") and "max_new_tokens: 40 then, 8 now" in message
    assert "--restart" in message and str(journal_folder(output)) in message
    assert journal_folder(output).is_dir() and not output.exists()  # nothing touched

    assert generate.main(shorter + ["--restart"]) == 0
    err = capsys.readouterr().err
    assert "resuming" not in err and f"{STUDIES} records written by this run, 0 by an earlier run" in err
    rows = read_jsonl(output)
    assert len(rows) == STUDIES and all(len(row["report"].split()) <= 8 for row in rows)


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_the_journal(tiny_release_dir, archive,
                                                                                      interrupted_run, tmp_path,
                                                                                      capsys):
    import fcntl

    output, _ = resume_here(interrupted_run, tmp_path)
    with open(journal_folder(output) / "lock", "a") as held:  # as the main process of a run still going holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as refused:
            generate.main(draft_command(tiny_release_dir, archive, output))
    assert refused.value.code == 2
    assert f"another run is drafting into {output}" in capsys.readouterr().err
    assert len(journal_lines(journal_folder(output))["rank-0.jsonl"]) >= 5  # its records untouched


def test_refused_and_failed_studies_are_in_the_output_with_their_reason(tiny_release_dir, tmp_path, capsys):
    from pydicom.data import get_testdata_file

    folder = tmp_path / "inputs"
    folder.mkdir()
    noise_image(0).save(folder / "a_good.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "b_ct.dcm")  # refused: not a radiograph
    (folder / "c_empty.png").write_bytes(b"")  # failed: nothing to read
    grayscale_dicom(np.array(noise_image(1)), folder / "d_dx.dcm")
    for output in (tmp_path / "drafts.jsonl", tmp_path / "drafts.csv"):
        assert generate.main(["--model", str(tiny_release_dir), str(folder), "--output", str(output),
                              "--max-new-tokens", "4"]) == 1
        if output.suffix == ".csv":
            with open(output, newline="") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = read_jsonl(output)
        assert [(row["id"], row["status"]) for row in rows] == [
            ("a_good", "drafted"), ("b_ct", "refused"), ("c_empty", "failed"), ("d_dx", "drafted")]
        reasons = {row["id"]: row["reason"] for row in rows}
        assert reasons["a_good"] == reasons["d_dx"] == ""
        assert "b_ct.dcm: modality CT" in reasons["b_ct"] and "--any-modality" in reasons["b_ct"]
        assert "c_empty.png: empty file" in reasons["c_empty"]
        assert [row["report"] for row in rows if row["status"] != "drafted"] == ["", ""]
        assert "2 of 4 studies drafted" in capsys.readouterr().err.replace("\n", " ")


def test_a_converted_datasets_split_is_drafted_with_its_ids_images_and_priors(prior_release_dir, tmp_path, capsys):
    from datasets import Dataset, DatasetDict

    from conftest import model_draft_against
    from modeling_cliptt5.data.schema import link_priors, make_example, report_features, save_dataset_atomically

    images = tmp_path / "images"
    images.mkdir()
    for seed in range(6):
        noise_image(seed).save(images / f"{seed}.png")
    # patient p1: a study in train (the prior), two in test; p2: one test study without a prior; one unreadable
    rows = {"train": [make_example("p1-2020", [str(images / "0.png")], "Clear.", "Normal.", "train", "test",
                                   patient_id="p1", study_datetime="2020-01-01")],
            "test": [make_example("p1-2021", [str(images / "1.png")], "", "", "test", "test", patient_id="p1",
                                  study_datetime="2021-01-01"),
                     make_example("p2-2021", [str(images / "2.png")], "", "", "test", "test", patient_id="p2",
                                  study_datetime="2021-01-01"),
                     make_example("broken", [{"bytes": b"not an image", "path": None}], "", "", "test", "test"),
                     make_example("p1-2022", [str(images / "3.png")], "", "", "test", "test", patient_id="p1",
                                  study_datetime="2022-01-01")]}
    dataset = link_priors(DatasetDict({split: Dataset.from_list(examples, features=report_features())
                                       for split, examples in rows.items()}))
    folder = save_dataset_atomically(dataset, tmp_path / "converted")
    output = tmp_path / "drafts.jsonl"
    assert generate.main(["--model", str(prior_release_dir), "--dataset", folder, "--split", "test",
                          "--output", str(output), "--max-new-tokens", "8"]) == 1
    drafts = read_jsonl(output)
    assert [(row["id"], row["status"], row["prior_id"]) for row in drafts] == [
        ("p1-2021", "drafted", "p1-2020"), ("p2-2021", "drafted", ""), ("broken", "failed", ""),
        ("p1-2022", "drafted", "p1-2021")]
    assert "not an image" in drafts[2]["reason"] and drafts[0]["input_files"] == [f"{folder}[test][0].images[0]"]
    # each draft is the model's own for that row's image against that prior's image and report
    prior_report = dataset["train"][0]["report"]
    assert drafts[0]["report"] == model_draft_against(prior_release_dir, images / "1.png", images / "0.png",
                                                      prior_report, max_new_tokens=8)["text"]
    assert drafts[1]["report"] == model_draft_against(prior_release_dir, images / "2.png", max_new_tokens=8)["text"]
    assert "3 of 4 studies drafted from the test split of" in capsys.readouterr().err

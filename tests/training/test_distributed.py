"""Distributed training for real, with the shipped launch files: `accelerate launch` starts CPU processes (gloo).

- one machine, 2 processes (cpu_2proc.yaml): disjoint shards reshuffled every epoch, identical weights, every
  validation study once, one set of outputs written by the main process;
- two "machines" on loopback (multi_node.yaml, one process each): the same run, the same release; a killed machine
  ends the run with a message that says so, and --resume continues it to the same weights;
- FSDP (fsdp.yaml) on a machine without GPUs: refused at once with a message that says why; on one GPU (skipped
  without one): the same release as one_gpu.yaml's, loadable with the Auto classes, and resume.

The launched process is distributed_worker.py."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import subprocess_env
from training_helpers import make_tiny_dataset, tiny_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH_CONFIGS = REPO_ROOT / "configs" / "accelerate"
WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCH_TIMEOUT = 300


def launch_command(config_file, settings, results, *options, train_flags=()):
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH_CONFIGS / config_file),
            *options, str(WORKER), str(settings), str(results), *train_flags]


def launch_env(**extra):
    return {**subprocess_env(), "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO_ROOT / "tests"), **extra}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_machine(rank, port, settings, results, log, train_flags=(), **env):
    """One "machine" of the two: multi_node.yaml with its address on loopback and one process per machine. Its own
    session, so that killing it takes its launcher and worker alike."""
    command = launch_command("multi_node.yaml", settings, results, "--num_processes", "2", "--machine_rank",
                             str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                             "--mixed_precision", "no", train_flags=train_flags)
    return subprocess.Popen(command, cwd=REPO_ROOT, env=launch_env(**env), stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def run_two_machines(settings, results, logs, train_flags=()):
    """Both machines to the end; returns [(returncode, output)] for machine 0 and 1."""
    port = free_port()
    outputs = []
    handles = [open(logs / f"machine{rank}.log", "w") for rank in range(2)]
    machines = [start_machine(rank, port, settings, results, handles[rank], train_flags) for rank in range(2)]
    for machine, handle in zip(machines, handles):
        machine.wait(timeout=LAUNCH_TIMEOUT)
        handle.close()
    for rank, machine in enumerate(machines):
        outputs.append((machine.returncode, (logs / f"machine{rank}.log").read_text()))
    return outputs


def read_rank(results, rank=0):
    return json.loads((results / f"rank{rank}.json").read_text())


def read_ranks(results):
    return [read_rank(results, rank) for rank in range(2)]


def release_weights(run):
    return load_file(run / "best" / "model.safetensors")


def assert_same_weights(run_a, run_b, tolerance=1e-6):
    weights_a, weights_b = release_weights(run_a), release_weights(run_b)
    assert sorted(weights_a) == sorted(weights_b)
    worst = max((weights_a[name] - weights_b[name]).abs().max().item() for name in weights_a)
    assert worst <= tolerance, f"largest weight difference {worst}"


def assert_disjoint_shards(ranks):
    """8 steps x 2 studies on each rank over 2 epochs of 16 training studies: each epoch split between the ranks,
    another shuffle and split in the second epoch."""
    assert [r["world_size"] for r in ranks] == [2, 2] and sorted(r["rank"] for r in ranks) == [0, 1]
    trained = [[study for study in r["read_ids"] if study.startswith("train-")] for r in ranks]
    assert len(trained[0]) == len(trained[1]) == 16
    for epoch in (slice(0, 8), slice(8, 16)):
        shards = [set(reads[epoch]) for reads in trained]
        assert len(shards[0]) == len(shards[1]) == 8 and not shards[0] & shards[1]
    assert set(trained[0][:8]) != set(trained[0][8:])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 16 training studies, 2 per micro-batch on 2 ranks: 4 steps per epoch, 2 epochs. 5 validation studies in
    # batches of 2: Accelerate pads the last global batch [4] with 3 repeated studies.
    folder = tmp_path_factory.mktemp("distributed") / "data"
    return make_tiny_dataset(folder, sizes=(("train", 16), ("validation", 5), ("test", 1)))


def write_settings(folder, dataset, **overrides):
    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / "settings.yaml"
    settings.write_text(yaml.safe_dump(tiny_settings(dataset, folder / "run", batch_size=2, max_steps=8,
                                                     eval_every_steps=4, save_every_steps=2, log_every_steps=1,
                                                     eval_batch_size=2, **overrides)))
    (folder / "results").mkdir(exist_ok=True)
    return settings, folder / "results", folder / "run"


@pytest.fixture(scope="module")
def one_machine_run(dataset, tmp_path_factory):
    """(run folder, ranks' records, launcher output) of 2 processes on one machine."""
    settings, results, run = write_settings(tmp_path_factory.mktemp("one_machine"), dataset)
    command = launch_command("cpu_2proc.yaml", settings, results)
    finished = subprocess.run(command, cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True,
                              timeout=LAUNCH_TIMEOUT)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
    return run, read_ranks(results), finished.stdout


@pytest.fixture(scope="module")
def two_machine_run(dataset, tmp_path_factory):
    """(run folder, ranks' records, [(returncode, output)] per machine) of the same run on two machines."""
    folder = tmp_path_factory.mktemp("two_machines")
    settings, results, run = write_settings(folder, dataset)
    outputs = run_two_machines(settings, results, folder)
    assert [code for code, _ in outputs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    return run, read_ranks(results), outputs


def test_two_processes_train_disjoint_shards_to_identical_weights(one_machine_run):
    run, ranks, stdout = one_machine_run
    assert_disjoint_shards(ranks)
    validated = [[study for study in r["read_ids"] if study.startswith("validation-")] for r in ranks]
    assert len(validated[0]) == len(validated[1]) == 2 * 4  # 2 validations x 2 batches of 2 on each rank
    assert set(validated[0]) | set(validated[1]) == {f"validation-{index}" for index in range(5)}
    # gather_for_metrics dropped the padding: the loss counts every validation study once
    assert ranks[0]["validation_loss"] == ranks[1]["validation_loss"]
    assert ranks[0]["validation_loss"] == pytest.approx(ranks[0]["one_batch_validation_loss"], rel=1e-5)
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["step"] == 8  # gradients were all-reduced

    # Outputs were written once: one record per logged step, one state per save, one release.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 9))
    assert [r["epoch"] for r in records if "train/loss" in r] == [0] * 4 + [1] * 4
    assert sorted(os.listdir(run / "states")) == ["state-00000006", "state-00000008"]
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(run / "states" / "state-00000008"))
    assert (run / "best" / "model.safetensors").is_file()
    assert "2 process(es)" in stdout and stdout.count("done:") == 1


def test_a_run_with_priors_trains_through_micro_batches_without_a_follow_up(dataset, tmp_path):
    """In an archive with few priors most micro-batches hold no follow-up, so the prior's weights and the change head
    take no part in that rank's loss: DDP must not wait for their gradients (it stopped the run at the next step)."""
    import datasets

    from modeling_cliptt5.data.schema import link_priors, load_report_dataset, save_dataset_atomically
    from training_helpers import TINY_MODEL

    def one_patient_with_two_studies(rows, indices):  # train-0 and train-1; every other study is a first one
        return {"patient_id": ["p0" if rows["split"][0] == "train" and index < 2 else rows["id"][position]
                               for position, index in enumerate(indices)],
                "study_datetime": [f"2024-01-0{1 + index % 2}" for index in indices]}

    data = load_report_dataset(str(dataset))
    save_dataset_atomically(link_priors(datasets.DatasetDict({
        split: rows.map(one_patient_with_two_studies, batched=True, with_indices=True)
        for split, rows in data.items()})), str(tmp_path / "data"))
    settings, results, run = write_settings(tmp_path / "run", tmp_path / "data", model={**TINY_MODEL, "reads_prior": True})
    finished = subprocess.run(launch_command("cpu_2proc.yaml", settings, results), cwd=REPO_ROOT, env=launch_env(),
                              capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
    ranks = read_ranks(results)
    trained = [study for rank in ranks for study in rank["read_ids"] if study.startswith("train-")]
    assert trained.count("train-1") == 2  # the one follow-up, once per epoch: 14 of 16 micro-batches have none
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["step"] == 8
    assert json.loads((run / "best" / "config.json").read_text())["reads_prior"] is True


def test_two_machines_train_as_one_machine_with_two_processes(two_machine_run, one_machine_run):
    run, ranks, outputs = two_machine_run
    assert_disjoint_shards(ranks)
    assert [r["distributed_type"] for r in ranks] == ["MULTI_CPU", "MULTI_CPU"]  # DDP over gloo
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["step"] == 8
    one_machine_ranks = one_machine_run[1]
    assert [r["read_ids"] for r in ranks] == [r["read_ids"] for r in one_machine_ranks]  # the same shards
    assert_same_weights(run, one_machine_run[0])
    # the release and the log were written once, by the main process on machine 0
    assert "done:" in outputs[0][1] and "done:" not in outputs[1][1]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 9))


def test_a_killed_machine_ends_the_run_with_a_message_and_resume_continues_it(dataset, two_machine_run, tmp_path):
    settings, results, run = write_settings(tmp_path, dataset)
    port = free_port()
    logs = [open(tmp_path / f"machine{rank}.log", "w") for rank in range(2)]
    # Slow reads (0.2 s a study, ~0.5 s a step) leave time to kill machine 1 after the state of step 2.
    machines = [start_machine(rank, port, settings, results, logs[rank], CLIPTT5_TEST_READ_DELAY="0.2")
                for rank in range(2)]
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not (run / "states" / "state-00000002").is_dir():
            assert time.monotonic() < deadline and machines[0].poll() is None, "the run never saved step 2"
            time.sleep(0.05)
        # A machine going down takes its launcher and the worker the launcher started in a session of its own.
        os.kill(int((results / "rank1.pid").read_text()), signal.SIGKILL)
        os.killpg(machines[1].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        machines[0].wait(timeout=120)  # no hang: machine 0 notices and stops
        stopped_after = time.monotonic() - killed_at
    finally:
        for machine in machines:
            if machine.poll() is None:
                os.killpg(machine.pid, signal.SIGKILL)
                machine.wait()
        for log in logs:
            log.close()
    output = (tmp_path / "machine0.log").read_text()
    assert machines[0].returncode != 0, output[-3000:]
    assert "lost contact with another process of the run" in output, output[-3000:]
    assert "--resume" in output and stopped_after < 60
    assert "done:" not in output
    saved = sorted(os.listdir(run / "states"))
    assert saved and saved[-1] < "state-00000008"

    (tmp_path / "resumed").mkdir()
    outputs = run_two_machines(settings, results, tmp_path / "resumed", train_flags=["--resume"])
    assert [code for code, _ in outputs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert f"resumed from {run / 'states' / saved[-1]}" in outputs[0][1]
    assert read_ranks(results)[0]["step"] == 8
    assert_same_weights(run, two_machine_run[0])


def test_fsdp_without_gpus_is_refused_with_the_reason(dataset, tmp_path):
    """accelerate runs FSDP only on accelerator devices (on CPU it would quietly train with DDP instead)."""
    settings, results, run = write_settings(tmp_path, dataset)
    command = launch_command("fsdp.yaml", settings, results, "--num_processes", "2", "--mixed_precision", "no")
    finished = subprocess.run(command, cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0
    assert "FSDP needs GPUs" in finished.stderr and "cpu_2proc.yaml" in finished.stderr, finished.stderr[-3000:]
    assert not (run / "states").exists()


def gpu_run(dataset, folder, config_file, train_flags=()):
    """One process on one GPU with a shipped launch file, float32; returns the run folder."""
    settings, results, run = write_settings(folder, dataset, eval_every_steps=8, save_every_steps=4)
    command = launch_command(config_file, settings, results, "--num_processes", "1", "--mixed_precision", "no",
                             train_flags=train_flags)
    env = {key: value for key, value in launch_env().items() if key != "ACCELERATE_USE_CPU"}
    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
    return run, finished.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a GPU (accelerate shards only on accelerator "
                                                          "devices)")
def test_fsdp_on_one_gpu_trains_like_one_gpu_and_resumes(dataset, tmp_path):
    """fsdp.yaml as shipped (full state dicts), on one GPU: the release loads with the Auto classes and matches the
    one-GPU run's within 1e-4; with its last state removed, --resume from the state of step 4 gets there again."""
    from transformers import AutoModelForSeq2SeqLM

    plain, _ = gpu_run(dataset, tmp_path / "one_gpu", "one_gpu.yaml")
    sharded, _ = gpu_run(dataset, tmp_path / "fsdp", "fsdp.yaml")
    assert read_rank(tmp_path / "fsdp" / "results")["distributed_type"] == "FSDP"
    assert_same_weights(sharded, plain, tolerance=1e-4)
    final = release_weights(sharded)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(sharded / "best", trust_remote_code=True).state_dict()
    assert all(torch.equal(loaded[name], final[name]) for name in final)

    for leftover in ("best", "states/state-00000008"):
        shutil.rmtree(sharded / leftover)
    resumed, output = gpu_run(dataset, tmp_path / "fsdp", "fsdp.yaml", train_flags=["--resume"])
    assert "(step 4)" in output
    again = release_weights(resumed)
    assert max((again[name] - final[name]).abs().max().item() for name in final) <= 1e-5

"""DDP for real: `accelerate launch` starts 2 CPU processes (gloo) that train on disjoint shards, reshuffled every
epoch, end with identical weights, validate every study once and leave one set of outputs written by the main process.

This file is also the launched worker (`accelerate launch tests/training/test_ddp.py --worker SETTINGS RESULTS`)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def worker(settings_path, results_dir):
    """Runs stage-2 training as `train.py` would and writes what this rank saw to rank<N>.json; rank 0 adds the
    validation loss of the final weights computed in one batch on this process alone."""
    sys.path.insert(0, str(REPO_ROOT))
    import torch

    from modeling_cliptt5.training import data as training_data
    from modeling_cliptt5.data.schema import load_report_dataset
    from modeling_cliptt5.training.generation import train_generation
    from modeling_cliptt5.training.config import parse_config

    torch.set_num_threads(1)
    read_ids = []
    read_study = training_data.StudyDataset.__getitem__

    def recording_read(self, index):  # every study this rank read, training and validation
        example = read_study(self, index)
        read_ids.append(example["id"])
        return example

    training_data.StudyDataset.__getitem__ = recording_read
    config = parse_config(["--config", settings_path])
    result = train_generation(config)
    read_in_training = list(read_ids)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    rank = int(os.environ["RANK"])
    record = {"rank": rank, "world_size": int(os.environ["WORLD_SIZE"]), "read_ids": read_in_training,
              "weights": digest.hexdigest(), "step": result.step, "validation_loss": result.metrics["loss"]}
    if rank == 0:
        rows = load_report_dataset(config.dataset)[config.validation_split]
        studies = training_data.StudyDataset(rows, training_data.pixel_encoder(result.processor.image_processor, 1))
        batch = training_data.GenerationCollator(result.processor)([studies[index] for index in range(len(rows))])
        with torch.no_grad():
            loss = result.model.eval()(**training_data.model_inputs(batch, "cpu")).loss
        record["one_batch_validation_loss"] = loss.item()
    Path(results_dir, f"rank{rank}.json").write_text(json.dumps(record))


def test_two_processes_train_disjoint_shards_to_identical_weights(tmp_path):
    import pytest

    from conftest import subprocess_env
    from training_helpers import make_tiny_dataset, tiny_settings

    # 16 training studies, 2 per micro-batch on 2 ranks: 4 steps per epoch, 2 epochs. 5 validation studies in
    # batches of 2: Accelerate pads the last global batch [4] with 3 repeated studies.
    data = make_tiny_dataset(tmp_path / "data", sizes=(("train", 16), ("validation", 5), ("test", 1)))
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(tiny_settings(data, tmp_path / "run", batch_size=2, max_steps=8,
                                                     eval_every_steps=4, save_every_steps=2, log_every_steps=1,
                                                     eval_batch_size=2)))
    results = tmp_path / "results"
    results.mkdir()
    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO_ROOT / "tests")}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), str(Path(__file__)), "--worker",
               str(settings), str(results)]
    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]

    ranks = [json.loads((results / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2] and sorted(r["rank"] for r in ranks) == [0, 1]
    trained = [[study for study in r["read_ids"] if study.startswith("train-")] for r in ranks]
    assert len(trained[0]) == len(trained[1]) == 16  # 8 steps x 2 studies on each rank
    for epoch in (slice(0, 8), slice(8, 16)):  # each epoch's 16 studies, split between the ranks
        shards = [set(reads[epoch]) for reads in trained]
        assert len(shards[0]) == len(shards[1]) == 8 and not shards[0] & shards[1]
    assert set(trained[0][:8]) != set(trained[0][8:])  # another epoch, another shuffle and split
    validated = [[study for study in r["read_ids"] if study.startswith("validation-")] for r in ranks]
    assert len(validated[0]) == len(validated[1]) == 2 * 4  # 2 validations x 2 batches of 2 on each rank
    assert set(validated[0]) | set(validated[1]) == {f"validation-{index}" for index in range(5)}
    # gather_for_metrics dropped the padding: the loss counts every validation study once
    assert ranks[0]["validation_loss"] == ranks[1]["validation_loss"]
    assert ranks[0]["validation_loss"] == pytest.approx(ranks[0]["one_batch_validation_loss"], rel=1e-5)
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["step"] == 8  # gradients were all-reduced

    # Outputs were written once: one record per logged step, one state per save, one release.
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 9))
    assert [r["epoch"] for r in records if "train/loss" in r] == [0] * 4 + [1] * 4
    assert sorted(os.listdir(run / "states")) == ["state-00000006", "state-00000008"]
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(run / "states" / "state-00000008"))
    assert (run / "best" / "model.safetensors").is_file()
    assert "2 process(es)" in finished.stdout and finished.stdout.count("done:") == 1


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2], sys.argv[3])

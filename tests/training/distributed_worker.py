"""The process `accelerate launch` starts in the distributed tests: it trains as `train.py` does (same entry point,
same error messages) and writes what this rank saw to RESULTS/rank<N>.json (and its process id to
RESULTS/rank<N>.pid).

    accelerate launch ... tests/training/distributed_worker.py SETTINGS RESULTS [train.py flags]

CLIPTT5_TEST_READ_DELAY (seconds) slows every study read, so that a test can act while the run is in its steps."""

import hashlib
import json
import os
import sys
import time
from pathlib import Path


def main(settings_path, results_dir, train_flags):
    import torch

    from modeling_cliptt5.cli.train import run as train
    from modeling_cliptt5.data.schema import load_report_dataset
    from modeling_cliptt5.training import data as training_data
    from modeling_cliptt5.training.config import parse_config

    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", 0))  # a one-process launch sets none
    Path(results_dir, f"rank{rank}.pid").write_text(str(os.getpid()))  # the launcher starts it in its own session
    delay = float(os.environ.get("CLIPTT5_TEST_READ_DELAY", "0"))
    read_ids = []
    read_study = training_data.StudyDataset.__getitem__

    def recording_read(self, index):  # every study this rank read, training and validation
        example = read_study(self, index)
        read_ids.append(example["id"])
        time.sleep(delay)
        return example

    training_data.StudyDataset.__getitem__ = recording_read
    argv = ["--config", settings_path, *train_flags]
    result = train(argv)
    read_in_training = list(read_ids)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    from accelerate import PartialState

    record = {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", 1)), "read_ids": read_in_training,
              "distributed_type": PartialState().distributed_type.value,
              "weights": digest.hexdigest(), "step": result.step, "validation_loss": result.metrics["loss"]}
    if rank == 0:  # the validation loss of the final weights, computed in one batch on this process alone
        config = parse_config(argv)
        rows = load_report_dataset(config.dataset)[config.validation_split]
        studies = training_data.StudyDataset(rows, training_data.pixel_encoder(result.processor.image_processor, 1))
        batch = training_data.GenerationCollator(result.processor)([studies[index] for index in range(len(rows))])
        with torch.no_grad():
            device = next(result.model.parameters()).device
            loss = result.model.eval()(**training_data.model_inputs(batch, device)).loss
        record["one_batch_validation_loss"] = loss.item()
    Path(results_dir, f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

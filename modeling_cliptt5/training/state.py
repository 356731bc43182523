"""What a run leaves on disk, written so that a crash never leaves half a folder: states, releases, logs, plots."""

import json
import os
import re
import shutil

from modeling_cliptt5.data.atomic_writes import (
    atomic_file, atomic_path, cleaned_up_on_failure, replace_folder, temp_path_for, write_json_atomically,
)

STATE_PREFIX = "state-"
TRAINER_STATE_FILE = "trainer_state.json"
METRICS_LOG = "metrics.jsonl"


# --- resumable training states (accelerator.save_state) ------------------------------------------------------

def state_dir_for(states_dir, step):
    return os.path.join(states_dir, f"{STATE_PREFIX}{step:08d}")


def list_states(states_dir):
    """Complete states, oldest first (temporary folders are hidden and never match)."""
    pattern = re.compile(rf"^{STATE_PREFIX}(\d+)$")
    found = []
    if os.path.isdir(states_dir):
        for name in os.listdir(states_dir):
            match = pattern.match(name)
            if match and os.path.isfile(os.path.join(states_dir, name, TRAINER_STATE_FILE)):
                found.append((int(match.group(1)), os.path.join(states_dir, name)))
    return [path for _, path in sorted(found)]


def save_training_state(accelerator, states_dir, trainer_state, keep_last):
    """accelerator.save_state into a hidden folder on every rank (each writes its RNG state), then the main process
    adds trainer_state.json, renames it into place and deletes states beyond the last `keep_last`."""
    final_dir = state_dir_for(states_dir, trainer_state["step"])
    temp_dir = temp_path_for(final_dir)
    # A rank that fails (a full disk) stops the run; its launcher stops the others, and the half-written state is
    # deleted here or, after a kill, by the next run's remove_leftovers.
    with cleaned_up_on_failure(temp_dir, final_dir):
        if accelerator.is_main_process:
            shutil.rmtree(temp_dir, ignore_errors=True)
            os.makedirs(temp_dir)
        accelerator.wait_for_everyone()
        accelerator.save_state(temp_dir)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomically(os.path.join(temp_dir, TRAINER_STATE_FILE), trainer_state)
            replace_folder(temp_dir, final_dir)
            for old in list_states(states_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final_dir


def load_training_state(accelerator, state_dir):
    """Restores model, optimizer, registered scheduler and RNG states; returns the trainer_state.json mapping."""
    accelerator.load_state(state_dir)
    with open(os.path.join(state_dir, TRAINER_STATE_FILE), encoding="utf-8") as handle:
        return json.load(handle)


# --- metrics log and plot --------------------------------------------------------------------------------------

class MetricsLog:
    """Appends one JSON line per logged step to <output_dir>/metrics.jsonl (main process only)."""

    def __init__(self, output_dir, enabled=True):
        self.path = os.path.join(output_dir, METRICS_LOG)
        self.enabled = enabled

    def write(self, record):
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=float) + "\n")

    def read(self):
        if not os.path.isfile(self.path):
            return []
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def truncate_after(self, step):
        """On resume: forgets records of steps the killed run made after its last saved state."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        kept = [record for record in self.read() if record.get("step", 0) <= step]
        with atomic_file(self.path) as handle:
            handle.writelines(json.dumps(record) + "\n" for record in kept)


def draw_loss_curves(axis, records):
    """Training loss (every logged step) and validation loss (every evaluation) against step, on a matplotlib axis."""
    train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    validation = [(r["step"], r["validation/loss"]) for r in records if "validation/loss" in r]
    if train:
        axis.plot(*zip(*train), label="train loss", linewidth=1)
    if validation:
        axis.plot(*zip(*validation), "o-", label="validation loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.legend()


def plot_curves(records, path, metric_names=()):
    """Training and validation loss (and the given validation metrics) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    validation = [r for r in records if "validation/loss" in r]
    metric_names = [name for name in metric_names if any(f"validation/{name}" in r for r in validation)]
    figure, axes = plt.subplots(1, 1 + bool(metric_names), figsize=(6 + 5 * bool(metric_names), 4), squeeze=False)
    draw_loss_curves(axes[0][0], records)
    if metric_names:
        metric_axis = axes[0][1]
        for name in metric_names:
            points = [(r["step"], r[f"validation/{name}"]) for r in validation if f"validation/{name}" in r]
            metric_axis.plot(*zip(*points), "o-", label=name)
        metric_axis.set_xlabel("optimizer step")
        metric_axis.set_ylabel("validation metric")
        metric_axis.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    return path

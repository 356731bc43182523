"""What a run leaves on disk, written so that a crash never leaves half a folder: states, releases, logs, plots."""

import contextlib
import errno
import glob
import json
import os
import re
import shutil

STATE_PREFIX = "state-"
TRAINER_STATE_FILE = "trainer_state.json"
METRICS_LOG = "metrics.jsonl"
TEMP_MARK = ".tmp"


class DiskFullError(OSError):
    """A folder could not be written because the disk (or the user's quota) is full. Its hidden temporary copy was
    deleted and nothing was put in its place: a previous folder of that name is intact."""

    def __init__(self, folder, error):
        reason = getattr(error, "strerror", None) or "No space left on device"
        super().__init__(errno.ENOSPC, f"{folder}: not written, the disk is full ({reason}); nothing was replaced. "
                                       "Free some space and run again.")
        self.folder = folder

    def __str__(self):
        return self.strerror


DISK_FULL_MESSAGES = ("No space left on device", "os error 28", "Disk quota exceeded")
NEARLY_FULL_BYTES = 1 << 20


def free_bytes(path):
    """Bytes an unprivileged user may still write on the file system holding `path` (its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def is_disk_full(error, folder=None):
    """Whether `error` (an OSError, safetensors' or torch's own error) came from a full disk. torch.save says only
    "unexpected pos" about a short write, so with `folder` given, a failure on a nearly full disk counts too."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, Exception) and any(message in str(error) for message in DISK_FULL_MESSAGES):
        return True
    return folder is not None and isinstance(error, Exception) and free_bytes(folder) < NEARLY_FULL_BYTES


@contextlib.contextmanager
def cleaned_up_on_failure(temp_dir, final_dir):
    """Deletes `temp_dir` if the block fails; a full disk is reported as a `DiskFullError` naming `final_dir`."""
    try:
        yield
    except BaseException as error:
        disk_full = not isinstance(error, DiskFullError) and is_disk_full(error, temp_dir)  # before space is freed
        shutil.rmtree(temp_dir, ignore_errors=True)
        if disk_full:
            raise DiskFullError(final_dir, error) from error
        raise


def temp_path_for(final_path):
    """The hidden sibling a folder is written to before it is renamed into place (same name on every rank)."""
    parent, name = os.path.split(os.path.abspath(final_path))
    return os.path.join(parent, f".{name}{TEMP_MARK}")


def replace_folder(temp_dir, final_dir):
    """Renames a finished folder into place. An old folder is moved aside first and deleted last, so that at
    every instant `final_dir` is either absent, the old complete folder or the new complete one."""
    old_dir = None
    if os.path.exists(final_dir):
        old_dir = f"{temp_path_for(final_dir)}.old"
        shutil.rmtree(old_dir, ignore_errors=True)
        os.rename(final_dir, old_dir)
    os.rename(temp_dir, final_dir)
    if old_dir:
        shutil.rmtree(old_dir, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(final_dir):
    """`with atomic_folder(path) as temp:` write into temp; it becomes `path` only if the block finishes."""
    temp_dir = temp_path_for(final_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)
    with cleaned_up_on_failure(temp_dir, final_dir):
        os.makedirs(temp_dir)
        yield temp_dir
        replace_folder(temp_dir, final_dir)


def write_json_atomically(path, value):
    temp = f"{path}{TEMP_MARK}"
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=1, default=str)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise


def remove_leftovers(output_dir):
    """Deletes the hidden temporary folders and files a killed run left behind (main process only). A kill between
    replace_folder's two renames leaves the old complete folder aside and none in place: it is put back first."""
    removed = []
    for old_dir in glob.glob(os.path.join(output_dir, "**", f".*{TEMP_MARK}.old"), recursive=True):
        parent, name = os.path.split(old_dir)
        final_dir = os.path.join(parent, name[1:-len(f"{TEMP_MARK}.old")])
        if os.path.isdir(old_dir) and not os.path.exists(final_dir):
            os.rename(old_dir, final_dir)
    for path in glob.glob(os.path.join(output_dir, "**", f".*{TEMP_MARK}*"), recursive=True):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
        removed.append(path)
    return removed


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
        temp = f"{self.path}{TEMP_MARK}"
        with open(temp, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in kept)
        os.replace(temp, self.path)


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
    temp = f"{path}{TEMP_MARK}.png"
    figure.savefig(temp, dpi=100)
    plt.close(figure)
    os.replace(temp, path)
    return path

"""Files and folders written whole or not at all: a hidden temporary sibling renamed into place when complete,
deleted on failure (a full disk named as such), and the leftovers of a killed run cleaned up by the next one."""

import contextlib
import errno
import glob
import json
import os
import secrets
import shutil

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


@contextlib.contextmanager
def atomic_path(path):
    """`with atomic_path(path) as temporary:` write the file at `temporary` (a hidden sibling); it replaces `path`
    only if the block finishes, and is deleted otherwise, so a reader never sees half a file."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # A unique name the writer creates itself (not mkstemp's 0600 file): the result gets the user's usual
    # permissions, as a plain open() would give it.
    temporary = os.path.join(os.path.dirname(path),
                             f".{os.path.basename(path)}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_MARK}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


@contextlib.contextmanager
def atomic_file(path, mode="w", encoding="utf-8", **open_options):
    """`with atomic_file(path) as stream:` an open file (text, UTF-8 by default) written whole or not at all."""
    with atomic_path(path) as temporary:
        with open(temporary, mode, encoding=None if "b" in mode else encoding, **open_options) as stream:
            yield stream


def write_json_atomically(path, value, indent=1):
    with atomic_file(path) as stream:
        json.dump(value, stream, indent=indent, default=str)
        stream.write("\n")


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

"""Where a model's files are: a folder on this computer, or a Hub id, read from the Hugging Face cache when the Hub
cannot be reached. One resolver for every model a command names (a release, BiomedCLIP, T5, a tokenizer), so that a
mistyped folder or an air-gapped machine gets one line saying what is missing and how to bring it, not a traceback
about Hub repo ids after a minute of retries.

A Hub id resolves to its snapshot folder (`huggingface_hub.snapshot_download`): downloaded where the Hub answers,
else taken from the cache; with HF_HUB_OFFLINE=1 the network is never tried. A folder laid out as `hf download ID
--local-dir DIR` writes it serves as well as the id.
"""

import hashlib
import json
import os
from pathlib import Path

# The pretrained parts training starts from by default (init: pretrained; stage 1).
DEFAULT_CLIP_MODEL = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
DEFAULT_T5_MODEL = "t5-small"

# What a release needs, and what a T5 checkpoint or a tokenizer needs (a Hub repo may also hold TF, Flax and ONNX
# copies of its weights, each as large as the PyTorch one).
RELEASE_FILES = None  # everything: a release folder holds nothing else
TRANSFORMERS_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]


class ModelSourceError(ValueError):
    """A model that is neither a folder here nor a Hub id that can be reached: one line for the user."""


def is_offline():
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the Hub is not even tried."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in ("1", "ON",
                                                                                                    "YES", "TRUE")


def hub_snapshot(repo_id, allow_patterns=None):
    """The local snapshot folder of a Hub repo (downloaded, or from the cache), or a ModelSourceError saying why
    there is none."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=is_offline())
    except GatedRepoError:
        raise ModelSourceError("a gated Hub repository: log in with `hf auth login` after accepting its terms") \
            from None
    except RepositoryNotFoundError:
        raise ModelSourceError("no such repository on the Hub (or a private one: `hf auth login`)") from None
    except LocalEntryNotFoundError:
        reason = "HF_HUB_OFFLINE is set" if is_offline() else "the Hub cannot be reached"
        raise ModelSourceError(f"{reason} and the Hugging Face cache has no copy") from None


def local_model_folder(name, allow_patterns=TRANSFORMERS_FILES):
    """`name` as an absolute folder path: a folder here, or a Hub id's snapshot. ModelSourceError (the reason
    only) otherwise."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise ModelSourceError("a file, not a folder")
    if not is_hub_id(name):
        raise ModelSourceError("not a Hub id either")
    return hub_snapshot(str(name), allow_patterns)


def resolve_release(name):
    """A CLIP-T5 release folder (absolute) for a folder or Hub id the user named, or one line saying why not."""
    try:
        return local_model_folder(name, RELEASE_FILES)
    except ModelSourceError as error:
        raise ModelSourceError(f"no release folder at {name} (and not a Hub id that can be reached offline: "
                               f"{error})") from None


def resolve_pretrained(name, what, flag, allow_patterns=TRANSFORMERS_FILES):
    """A pretrained part for training (BiomedCLIP, T5, a tokenizer): its folder, or one line naming it, the command
    that fetches it on a machine with internet access, and the flag that takes the copied folder."""
    try:
        return local_model_folder(name, allow_patterns)
    except ModelSourceError as error:
        if not is_hub_id(name):
            raise ModelSourceError(f"{what}: no folder at {name} ({error})") from None
        folder = str(name).rstrip("/").rsplit("/", 1)[-1]
        raise ModelSourceError(
            f"{what} {name!r} cannot be loaded: not a folder here, and {error}. On a machine with internet access "
            f"run `hf download {name} --local-dir {folder}`, copy that folder here and pass {flag} PATH/{folder} "
            f"(docs/training.md, air-gapped training)") from None


def is_hub_id(name):
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(str(name))
    except HFValidationError:
        return False
    return True


def release_identity(folder):
    """{"name", "revision"} of a release folder, for exports to say which model drafted: a Hub snapshot's repo id and
    commit; else the training record's model name (the folder's name without one) and the first 16 hex digits of
    the SHA-256 of its weights (which change with every training run)."""
    folder = Path(folder)
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return {"name": folder.parent.parent.name.removeprefix("models--").replace("--", "/"),
                "revision": folder.name}
    info = folder / "release_info.json"
    name = (json.loads(info.read_text(encoding="utf-8")).get("model_name") if info.is_file() else None) or folder.name
    digest = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return {"name": name, "revision": f"sha256:{digest.hexdigest()[:16]}"}

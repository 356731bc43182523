"""A frozen image tower gives the same features every epoch: compute them once per image, then train from disk.

Features are `model.get_vision_features(pixels)` (everything computed from pixels before `clip_projection`),
stored in one memory-mapped .npy array [studies, views, tokens, channels] with an index from a hash of the
study's image bytes to its row. The folder is named by a fingerprint of the tower's weights, the image
preprocessing and the storage type, so a changed tower never reads stale features. Ranks compute disjoint
shares into the same file (output folders must be shared between ranks, as for checkpoints).

The same store keeps preprocessed images (`build_image_cache`) for a tower that trains on un-augmented images
(stage 1 with crop_scale_min=1): decoding a PNG and resizing it costs more than the small demo tower's step.
"""

import hashlib
import json
import os
import shutil
import time

import datasets
import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from modeling_cliptt5.training.data import choose_views
from modeling_cliptt5.data.atomic_writes import cleaned_up_on_failure, replace_folder, temp_path_for

FEATURES_FILE = "features.npy"
INDEX_FILE = "index.json"
INFO_FILE = "cache_info.json"
UNREADABLE_FILE = "unreadable.json"


def _image_bytes(image):
    if image.get("bytes") is not None:
        return image["bytes"]
    with open(image["path"], "rb") as handle:
        return handle.read()


def study_keys(rows, num_views, batch_size=256):
    """One key per row: a SHA-1 of the bytes of its first `num_views` images (None if it has fewer, or an
    image file cannot be read). Identical studies share a key and are computed once."""
    raw = rows.select_columns(["images"]).cast_column("images", datasets.List(datasets.Image(decode=False)))
    keys = []
    for chunk in raw.iter(batch_size=batch_size):
        for images in chunk["images"]:
            if len(images) < num_views:
                keys.append(None)
                continue
            digest = hashlib.sha1()
            try:
                for image in images[:num_views]:
                    digest.update(hashlib.sha1(_image_bytes(image)).digest())
            except OSError:
                keys.append(None)
                continue
            keys.append(digest.hexdigest())
    return keys


def cache_fingerprint(model, image_processor, dtype):
    """Hash of everything the cached features depend on."""
    digest = hashlib.sha1()
    towers = {"vision_model": model.vision_model}
    if model.visual_projection is not None:
        towers["visual_projection"] = model.visual_projection
    for prefix, module in towers.items():
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}.{name}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    settings = {
        "image_processor": image_processor.to_dict(),
        "image_tokens": model.config.image_tokens,
        "image_token_pooling": model.config.image_token_pooling,
        "num_views": model.config.num_views,
        "dtype": dtype,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Read side: `cache[key]` -> features of one study as a [views, tokens, channels] tensor."""

    def __init__(self, folder):
        self.folder = folder
        with open(os.path.join(folder, INDEX_FILE), encoding="utf-8") as handle:
            self.row_of_key = json.load(handle)
        with open(os.path.join(folder, UNREADABLE_FILE), encoding="utf-8") as handle:
            self.unreadable = set(json.load(handle))
        self.features = np.load(os.path.join(folder, FEATURES_FILE), mmap_mode="r")

    def covers(self, keys):
        """True when every key was computed here, or found unreadable here (and would be again)."""
        return all(key in self.row_of_key or key in self.unreadable for key in keys)

    def __contains__(self, key):
        return key in self.row_of_key

    def __len__(self):
        return len(self.row_of_key)

    def __getitem__(self, key):
        return torch.from_numpy(np.array(self.features[self.row_of_key[key]]))


def cached_encoder(cache, keys):
    """encode_images for StudyDataset: the study's cached features, looked up by the row's image hash."""
    def encode(row, index):
        key = keys[index]
        if key is None or key not in cache:
            raise KeyError(f"no cached features for study {row.get('id')} (its images could not be read)")
        return cache[key]
    return encode


def _feature_shape(config):
    tokens = config.num_image_tokens_per_view
    channels = config.clip_projection_dim if config.image_tokens == "pooled" else config.vision_config.hidden_size
    return (config.num_views, tokens, channels)


def build_feature_cache(model, image_processor, splits, cache_root, accelerator, batch_size=32, dtype="float16"):
    """Returns (FeatureCache, keys per split) of the frozen tower's vision features (see build_cache)."""
    def preprocess(views):
        return image_processor(views, return_tensors="pt")["pixel_values"]

    def encode(pixels):
        with torch.no_grad():
            return model.get_vision_features(pixels.to(next(model.parameters()).device)).float().cpu()

    was_training = model.training
    model.eval()
    try:
        return build_cache(splits, os.path.join(cache_root, cache_fingerprint(model, image_processor, dtype)),
                           accelerator, preprocess, encode, _feature_shape(model.config), model.config.num_views,
                           batch_size, dtype)
    finally:
        model.train(was_training)


def build_image_cache(transform, image_size, splits, cache_root, accelerator, batch_size=64, dtype="float16"):
    """Returns (FeatureCache, keys per split) of each study's first view through a deterministic `transform`
    (PIL RGB image -> [3, image_size, image_size] tensor), stored as [studies, 1, 3, image_size, image_size]."""
    from modeling_cliptt5.processing_cliptt5 import to_rgb_image

    def preprocess(views):
        return transform(to_rgb_image(views[0]))[None]

    fingerprint = hashlib.sha1(json.dumps({"transform": repr(transform), "dtype": dtype}).encode()).hexdigest()[:16]
    return build_cache(splits, os.path.join(cache_root, f"images-{fingerprint}"), accelerator, preprocess,
                       lambda pixels: pixels, (1, 3, image_size, image_size), 1, batch_size, dtype)


def build_cache(splits, folder, accelerator, preprocess, encode, shape, num_views, batch_size, dtype):
    """Returns (FeatureCache, keys per split): `encode(stacked preprocess(views))` for every study of `splits`.
    Reuses a complete cache in `folder` that holds every study; otherwise every rank computes its share of the
    studies into a hidden folder that the main process renames into place once complete."""
    started = time.perf_counter()
    cache_root = os.path.dirname(folder)
    keys_per_split = [study_keys(rows, num_views) for rows in splits]
    # The first row of each key is the one whose images are encoded.
    sources = {}
    for split_index, keys in enumerate(keys_per_split):
        for row_index, key in enumerate(keys):
            if key is not None and key not in sources:
                sources[key] = (split_index, row_index)
    if os.path.isfile(os.path.join(folder, INFO_FILE)):
        cache = FeatureCache(folder)
        if cache.covers(sources):
            return cache, keys_per_split

    ordered_keys = list(sources)
    temp_dir = temp_path_for(folder)
    features_path = os.path.join(temp_dir, FEATURES_FILE)
    if accelerator.is_main_process:
        shutil.rmtree(temp_dir, ignore_errors=True)
        os.makedirs(temp_dir)
        with cleaned_up_on_failure(temp_dir, folder):
            np.lib.format.open_memmap(features_path, mode="w+", dtype=dtype, shape=(len(ordered_keys), *shape))
            # The memory map is a sparse file: reserve its blocks now, so that a full disk is an error here and
            # not a SIGBUS half-way through encoding.
            with open(features_path, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.path.getsize(features_path))
    accelerator.wait_for_everyone()

    features = np.load(features_path, mmap_mode="r+")
    mine = list(range(accelerator.process_index, len(ordered_keys), accelerator.num_processes))
    image_rows = [rows.select_columns(["id", "images"]) for rows in splits]
    unreadable = []
    with tqdm(total=len(mine), desc="caching image features", unit="study",
              disable=not accelerator.is_local_main_process) as progress:
        for start in range(0, len(mine), batch_size):
            positions, pixels = [], []
            for position in mine[start:start + batch_size]:
                split_index, row_index = sources[ordered_keys[position]]
                try:
                    row = image_rows[split_index][row_index]
                    views = choose_views(row["images"], num_views, row["id"])
                    pixels.append(preprocess(views))
                    positions.append(position)
                except Exception:  # noqa: BLE001 - an unreadable study is left out; training skips and logs it
                    unreadable.append(ordered_keys[position])
            if positions:
                features[positions] = encode(torch.stack(pixels)).numpy().astype(dtype)
            progress.update(len(mine[start:start + batch_size]))
    features.flush()
    del features
    unreadable = set(gather_object(unreadable))  # every rank's unreadable studies
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        index = {key: row for row, key in enumerate(ordered_keys) if key not in unreadable}
        with open(os.path.join(temp_dir, INDEX_FILE), "w", encoding="utf-8") as handle:
            json.dump(index, handle)
        with open(os.path.join(temp_dir, UNREADABLE_FILE), "w", encoding="utf-8") as handle:
            json.dump(sorted(unreadable), handle)
        seconds = time.perf_counter() - started
        with open(os.path.join(temp_dir, INFO_FILE), "w", encoding="utf-8") as handle:
            json.dump({"studies": len(index), "unreadable": len(unreadable), "dtype": dtype, "shape": list(shape),
                       "build_seconds": round(seconds, 2)}, handle)
        os.makedirs(cache_root, exist_ok=True)
        replace_folder(temp_dir, folder)
        print(f"cached the features of {len(index)} studies in {seconds:.0f} s: {folder}")
    accelerator.wait_for_everyone()
    return FeatureCache(folder), keys_per_split

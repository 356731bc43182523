"""The feature cache gives the same loss as reading pixels, is reused, refuses stale features and skips bad images."""

import json

import pytest
import torch
from accelerate import Accelerator

from conftest import tiny_config, tiny_processor
from modeling_cliptt5 import CLIPT5ForConditionalGeneration
from modeling_cliptt5.data.schema import load_report_dataset
from modeling_cliptt5.training.feature_cache import build_feature_cache, cached_encoder, study_keys
from modeling_cliptt5.training.data import GenerationCollator, StudyDataset, model_inputs, pixel_encoder
from training_helpers import make_tiny_dataset, tiny_settings


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_test")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache_data") / "tiny"
    # train-1 and train-2 hold the same study twice (same bytes, one cache row); train-4 cannot be decoded
    make_tiny_dataset(folder, sizes=(("train", 8), ("validation", 3), ("test", 1)), bad_images=("train-4",))
    dataset = load_report_dataset(folder)
    rows = dataset["train"].to_list()
    rows[2]["images"] = rows[1]["images"]
    from datasets import Dataset, DatasetDict

    from modeling_cliptt5.data.schema import report_features

    return DatasetDict({"train": Dataset.from_list(rows, features=report_features()),
                        "validation": dataset["validation"]}), folder


def make_model(seed=0):
    torch.manual_seed(seed)
    return CLIPT5ForConditionalGeneration(tiny_config(dropout_rate=0.0)).eval()


def batch_loss(model, dataset, processor, input_name, indices):
    collate = GenerationCollator(processor, input_name)
    batch = collate([dataset[index] for index in indices])
    with torch.no_grad():
        return model(**model_inputs(batch, "cpu")).loss


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("float16", 2e-3)])
def test_cached_features_give_the_loss_of_the_pixels(tmp_path, data, tiny_tokenizer, dtype, tolerance):
    dataset, _ = data
    model, processor = make_model(), tiny_processor(tiny_tokenizer)
    train = dataset["train"]
    cache, (keys,) = build_feature_cache(model, processor.image_processor, [train], tmp_path, Accelerator(),
                                         batch_size=3, dtype=dtype)
    from_pixels = StudyDataset(train, pixel_encoder(processor.image_processor, 1))
    from_cache = StudyDataset(train.remove_columns(["images"]), cached_encoder(cache, keys))
    indices = [0, 1, 3, 5, 6, 7]
    uncached = batch_loss(model, from_pixels, processor, "pixel_values", indices)
    cached = batch_loss(model, from_cache, processor, "vision_features", indices)
    assert cached.item() == pytest.approx(uncached.item(), abs=tolerance, rel=tolerance)
    assert cache.features.dtype == dtype
    # Studies with identical images share a row; the undecodable study has none.
    assert keys[1] == keys[2] and len(cache) == 6 and keys[4] not in cache


def test_a_complete_cache_is_reused_and_a_changed_tower_gets_a_new_one(tmp_path, data, tiny_tokenizer, monkeypatch):
    dataset, _ = data
    model, processor = make_model(), tiny_processor(tiny_tokenizer)
    accelerator = Accelerator()
    first, _ = build_feature_cache(model, processor.image_processor, [dataset["train"]], tmp_path, accelerator)

    def no_recomputing(*args, **kwargs):
        raise AssertionError("features were recomputed although the cache holds them")

    monkeypatch.setattr(model, "get_vision_features", no_recomputing)
    again, _ = build_feature_cache(model, processor.image_processor, [dataset["train"]], tmp_path, accelerator)
    assert again.folder == first.folder
    monkeypatch.undo()

    with torch.no_grad():
        model.vision_model.layernorm.weight.add_(0.5)
    changed, _ = build_feature_cache(model, processor.image_processor, [dataset["train"]], tmp_path, accelerator)
    assert changed.folder != first.folder
    key = next(iter(first.row_of_key))
    assert not torch.allclose(changed[key].float(), first[key].float())
    assert not list(tmp_path.glob(".*"))  # no unfinished cache folder left behind
    info = json.loads((tmp_path / changed.folder.split("/")[-1] / "cache_info.json").read_text())
    assert info.pop("build_seconds") >= 0  # how long it took, for bench_scale.py
    assert info == {"studies": 6, "unreadable": 1, "dtype": "float16", "shape": [1, 17, 32]}


def test_study_keys_depend_on_the_image_bytes_only(data):
    dataset, _ = data
    keys = study_keys(dataset["train"], num_views=1)
    assert len(keys) == 8 and keys[1] == keys[2] and len(set(keys)) == 7
    assert study_keys(dataset["train"], num_views=2) == [None] * 8  # every study has one view


def test_training_from_the_cache_never_reads_pixels(tmp_path, data, monkeypatch):
    from modeling_cliptt5.training import generation as training
    from modeling_cliptt5.training.generation import train_generation
    from modeling_cliptt5.training.config import config_from_dict

    def no_pixels(*args, **kwargs):
        raise AssertionError("the cached run built a pixel reader")

    monkeypatch.setattr(training, "pixel_encoder", no_pixels)
    _, folder = data
    config = config_from_dict(tiny_settings(folder, tmp_path / "run", feature_cache=True, train_vision="frozen",
                                            max_steps=3, eval_every_steps=3, batch_size=2, max_bad_samples=5))
    result = train_generation(config)
    caches = list((tmp_path / "run" / "feature_cache").iterdir())
    assert len(caches) == 1 and json.loads((caches[0] / "cache_info.json").read_text())["unreadable"] == 1
    assert result.step == 3 and (tmp_path / "run" / "best" / "model.safetensors").is_file()
    # the release's summary of its training images came from the cache too (no pixel reader was built)
    assert (tmp_path / "run" / "best" / "ood_summary.safetensors").is_file()

"""The CPU fast path (modeling_cliptt5/inference/fast_inference.py): what it quantizes, and that it frees the weights file's
memory map without changing a number (its speed and its agreement with float32: benchmarks/bench_cpu_inference.py)."""

import copy
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from conftest import tiny_config
from modeling_cliptt5 import CLIPT5ForConditionalGeneration
from modeling_cliptt5.inference.fast_inference import MappedWeights, is_optimized, optimize_for_cpu, use_eager_t5_attention

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


@pytest.fixture(scope="module")
def paged_release_dir(tmp_path_factory):
    """Weights several memory pages long (a page is 4 KiB), so that pages are really handed back."""
    release = tmp_path_factory.mktemp("paged_release")
    torch.manual_seed(0)
    config = tiny_config(vocab_size=300, d_model=64, d_ff=256, d_kv=16, num_heads=4)
    CLIPT5ForConditionalGeneration(config).eval().save_pretrained(release)
    return release


def torch_quantize_dynamic(model):
    """The reference: torch's one-call dynamic quantization of every Linear, on a copy in ordinary memory."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = copy.deepcopy(model)
    use_eager_t5_attention(model)  # as optimize_for_cpu does
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def logits(model, pixel_values, decoder_input_ids):
    with torch.inference_mode():
        return model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids).logits


def test_layer_by_layer_quantization_equals_torchs_and_leaves_the_tied_embedding_alone(paged_release_dir):
    loaded = CLIPT5ForConditionalGeneration.from_pretrained(paged_release_dir).eval()
    reference = torch_quantize_dynamic(loaded)
    embedding = loaded.get_input_embeddings().weight.detach().clone()
    optimized = optimize_for_cpu(loaded)
    torch.manual_seed(1)
    pixel_values = torch.randn(3, 3, 32, 32)
    decoder_input_ids = torch.randint(0, 300, (3, 7))
    assert torch.equal(logits(optimized, pixel_values, decoder_input_ids),
                       logits(reference, pixel_values, decoder_input_ids))
    # lm_head shares its float weight with the embedding, whose pages were handed back after quantizing it.
    assert torch.equal(optimized.get_input_embeddings().weight, embedding)


@linux_only
def test_no_tensor_stays_in_the_weights_file_map(paged_release_dir):
    model = CLIPT5ForConditionalGeneration.from_pretrained(paged_release_dir).eval()
    mapped = MappedWeights()
    if not any(mapped._range_of(parameter) for parameter in model.parameters()):
        pytest.skip("this transformers version copies the weights out of model.safetensors itself")
    optimize_for_cpu(model)
    still_mapped = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()]
                    if mapped._range_of(tensor)]
    # An int8 layer keeps the float bias it was given (the map stayed open through those, once).
    biases = [module.bias() for module in model.modules() if isinstance(module, DynamicQuantizedLinear)]
    assert still_mapped == [] and not any(bias is not None and mapped._range_of(bias) for bias in biases)


def test_kept_layers_stay_float(paged_release_dir):
    model = optimize_for_cpu(CLIPT5ForConditionalGeneration.from_pretrained(paged_release_dir),
                             keep_float=("lm_head",))
    assert is_optimized(model) and type(model.lm_head) is nn.Linear
    assert type(model.decoder.block[0].layer[2].DenseReluDense.wo) is not nn.Linear


def test_optimized_t5_attends_eagerly_and_the_vision_tower_keeps_its_attention(paged_release_dir):
    model = CLIPT5ForConditionalGeneration.from_pretrained(paged_release_dir)
    vision_attention = model.vision_model.config._attn_implementation
    if not hasattr(model, "set_attn_implementation"):
        pytest.skip("transformers 4.x: T5 attention is eager only")
    optimize_for_cpu(model)
    assert model.config._attn_implementation == "eager"
    assert model.vision_model.config._attn_implementation == vision_attention

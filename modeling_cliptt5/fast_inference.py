"""The CPU fast path behind `generate.py --optimize`: int8 weights for every Linear layer, same image tokens.

Drafting on a CPU is bound by reading weights from memory: each decoding step reads the whole T5 decoder and
its 32k-word output layer. Dynamic int8 quantization (weights stored as int8 per output channel, activations
quantized per call; torch.ao.quantization.quantize_dynamic, the recipe of PyTorch's BERT dynamic-quantization
tutorial) reads 4x fewer bytes and runs fbgemm/oneDNN int8 kernels. It changes numerics only: the model
still sees all its image tokens (fewer tokens would need retraining). benchmarks/bench_cpu_inference.py
measures its speed, memory and token agreement with float32.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def optimize_for_cpu(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Returns `model` (float32, eval mode) with every nn.Linear replaced by an int8 dynamic-quantized Linear.

    In place by default, so a freshly loaded model is not held twice in memory. Embeddings and layer norms stay
    float32. The result runs on CPU only.
    """
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as error:  # deprecated since torch 2.10; still shipped in the versions we support
        raise ImportError(
            f"--optimize needs torch.ao.quantization.quantize_dynamic, which torch {torch.__version__} lacks"
        ) from error
    model = model.to(device="cpu", dtype=torch.float32).eval()
    with warnings.catch_warnings():
        # torch announces the move of this API to torchao; the kernels it uses are the supported ones.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # Per-channel weight scales: one scale per output row keeps rows with small weights precise.
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=inplace)


def is_optimized(model: nn.Module) -> bool:
    """True when the model holds int8 dynamic-quantized Linear layers (made by `optimize_for_cpu`)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return any(isinstance(module, DynamicQuantizedLinear) for module in model.modules())

"""The CPU fast path behind `cliptt5-generate --optimize`: int8 weights for the Linear layers, same image tokens.

`load_for_cpu` picks the engine: ONNX Runtime (onnx_inference.py: the same int8 weights, each decoding step one
graph call instead of ~100 eager operations, every generate() setting), or, where onnxruntime is not installed,
the PyTorch model with the int8 layers made here.

Drafting on a CPU is bound by reading weights from memory: each decoding step reads the whole T5 decoder and
its 32k-word output layer. Dynamic int8 quantization (weights stored as int8 per output channel, activations
quantized per call; torch.ao.nn.quantized.dynamic.Linear, the layer of PyTorch's BERT dynamic-quantization
tutorial) reads 4x fewer bytes and runs fbgemm/oneDNN int8 kernels. It changes numerics only: the model
still sees all its image tokens (fewer tokens would need retraining). benchmarks/bench_cpu_inference.py
measures its speed, memory and token agreement with float32.

Memory: `from_pretrained` leaves the weights in a memory map of model.safetensors; every page read counts
towards the process's resident memory until the map is closed. Quantizing all layers at once would read the
whole file (560 MiB for the full-size model) while the int8 copies are made, so layers are quantized one at
a time, the pages of each float weight are handed back to the kernel once it is quantized, and the float
tensors that remain (embeddings, norms) are copied out of the map, which then closes.
"""

from __future__ import annotations

import ctypes
import fnmatch
import mmap
import warnings
from pathlib import Path

import torch
from torch import nn


def optimize_for_cpu(model: nn.Module, keep_float: tuple[str, ...] = ()) -> nn.Module:
    """Returns `model` (float32, eval mode, changed in place) with its nn.Linear layers int8 dynamic-quantized.

    `keep_float`: names or fnmatch patterns of Linear layers that stay float32 ("lm_head", "decoder.block.5.*").
    Embeddings and layer norms stay float32. The result runs on CPU only.
    """
    try:
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig
    except ImportError as error:  # deprecated since torch 2.10; still shipped in the versions we support
        raise ImportError(
            f"--optimize needs torch.ao.nn.quantized.dynamic.Linear, which torch {torch.__version__} lacks"
        ) from error
    model = model.to(device="cpu", dtype=torch.float32).eval()
    use_eager_t5_attention(model)
    mapped = MappedWeights()
    linears = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and not any(fnmatch.fnmatchcase(name, kept) for kept in keep_float)]
    with warnings.catch_warnings():
        # torch announces the move of this API to torchao; the kernels it uses are the supported ones.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        for name, linear in linears:
            # Per-channel weight scales: one scale per output row keeps rows with small weights precise.
            linear.qconfig = per_channel_dynamic_qconfig
            mapped.copy_out(linear.bias)  # the int8 layer keeps the float bias tensor itself, not a copy
            quantized = DynamicQuantizedLinear.from_float(linear)
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, quantized)
            mapped.release_pages(linear.weight)
    for tensor in [*model.parameters(), *model.buffers()]:  # embeddings, norms, kept layers
        mapped.copy_out(tensor)
    return model


def load_for_cpu(release_folder):
    """The model `--optimize` drafts with: an OnnxCLIPT5 (every generate() setting, on ONNX Runtime), or, when
    onnxruntime is not installed, the PyTorch model with int8 Linear layers, with a warning saying so. Both have
    `config`, `generation_config`, `device` and `generate()`. `release_folder`: a local folder (model_sources)."""
    from transformers import AutoModelForSeq2SeqLM

    from modeling_cliptt5.inference.onnx_inference import OnnxCLIPT5

    try:
        return OnnxCLIPT5.from_pretrained(release_folder)
    except ImportError as error:
        warnings.warn(f"{error}; drafting with PyTorch int8 weights instead (about 2.5x slower)", stacklevel=2)
    model = AutoModelForSeq2SeqLM.from_pretrained(release_folder, trust_remote_code=False)  # see load_release
    return optimize_for_cpu(model)


def use_eager_t5_attention(model: nn.Module) -> None:
    """T5's attention as plain matmuls; the ViT keeps its attention implementation.

    torch's CPU SDPA kernel opens a parallel region for each of the 12 tiny one-query attentions of a decoding
    step, which made greedy decoding up to 7x slower when other processes share the 2 cores (measured); on an
    idle core both take the same time. transformers 4.x's T5 has eager attention only.
    """
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation({"": "eager", "vision_config": model.vision_model.config._attn_implementation})


def is_optimized(model: nn.Module) -> bool:
    """True when the model holds int8 dynamic-quantized Linear layers (made by `optimize_for_cpu`)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return any(isinstance(module, DynamicQuantizedLinear) for module in model.modules())


class MappedWeights:
    """The memory maps of *.safetensors files in this process (Linux /proc; elsewhere none are found)."""

    def __init__(self):
        self.ranges = []  # (start, end, clean): clean = no page was written since it was mapped
        try:
            smaps = Path("/proc/self/smaps").read_text().splitlines()
        except OSError:
            return
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:  # a mapping's header line: "start-end perms ... path"
                start, end = (int(value, 16) for value in fields[0].split("-"))
                is_weights = fields[-1].endswith(".safetensors")
            elif fields[0] == "Private_Dirty:" and is_weights:
                self.ranges.append((start, end, fields[1] == "0"))

    def _range_of(self, tensor):
        address = tensor.data_ptr()
        return next((entry for entry in self.ranges if entry[0] <= address < entry[1]), None)

    def release_pages(self, tensor):
        """Drops the tensor's whole pages from resident memory. Only for a clean map: the kernel reads the same
        bytes back from the file if they are used again (a tied weight), so nothing changes but memory."""
        found = self._range_of(tensor)
        if found is None or not found[2] or not hasattr(mmap, "MADV_DONTNEED"):
            return
        first = -(-tensor.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
        last = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED)

    def copy_out(self, tensor):
        """Moves a parameter or buffer that lives in a map into ordinary memory: the map, and the pages read
        from it, go away once no tensor refers to it."""
        if tensor is not None and self._range_of(tensor) is not None:
            tensor.data = tensor.data.clone()

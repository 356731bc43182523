"""A loaded release and the engines it drafts with.

Drafting needs one call from an engine: `generate_with_findings`, the draft's token ids, what the finding head says
and the images' vectors for the OOD summary, from one pass of the image tower. Two engines implement it:
`TorchEngine` (the transformers model, float or with int8 layers) and `OnnxEngine` (the `--optimize` graphs on ONNX
Runtime, onnx_inference.py). `Release` holds the engine with what else a release brings (processor, OOD summary,
name and revision), so that nothing is attached to the transformers model and nothing asks which engine it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class DraftingEngine(Protocol):
    """What drafting asks of an engine. `model`: the object with transformers' `generate()` (a
    CLIPT5ForConditionalGeneration, or onnx_inference.OnnxCLIPT5); `name`: how it drafts, for logs and exports."""

    model: Any
    name: str

    def generate_with_findings(self, pixel_values, input_ids=None, attention_mask=None, findings=None,
                               **generate_kwargs):
        """(token ids as generate() returns them, CLIPT5FindingOutput or None without a finding head, image vectors
        [studies, views, dim] for the OOD summary). `findings`: as CLIPT5ForConditionalGeneration.generate takes
        them, replacing the head's decisions in the guidance."""


class TorchEngine:
    """The transformers model drafts: float weights, or int8 Linear layers (fast_inference.optimize_for_cpu, the
    `--optimize` path where onnxruntime is not installed)."""

    def __init__(self, model):
        from modeling_cliptt5.inference.fast_inference import is_optimized

        self.model = model
        self.name = "PyTorch int8" if is_optimized(model) else "PyTorch"

    def generate_with_findings(self, pixel_values, input_ids=None, attention_mask=None, findings=None,
                               **generate_kwargs):
        from modeling_cliptt5.inference.ood import image_vectors

        model = self.model
        has_head = model.finding_head is not None
        if findings is not None and not has_head:
            raise ValueError("this model has no finding head: it cannot take findings")
        vision_features = model.get_vision_features(pixel_values)
        head = model.predict_findings(vision_features=vision_features) if has_head else None
        guidance = {"findings": findings} if has_head else {}
        sequences = model.generate(vision_features=vision_features, input_ids=input_ids,
                                   attention_mask=attention_mask, **guidance, **generate_kwargs)
        return sequences, head, image_vectors(vision_features)


class OnnxEngine:
    """The `--optimize` graphs on ONNX Runtime (onnx_inference.OnnxCLIPT5): its encoder graph computes the head's
    output and the image vectors with the image tokens."""

    def __init__(self, model):
        self.model = model
        self.name = f"ONNX Runtime {model.weights}"

    def generate_with_findings(self, pixel_values, input_ids=None, attention_mask=None, findings=None,
                               **generate_kwargs):
        return self.model.generate_with_findings(pixel_values, input_ids, attention_mask, findings, **generate_kwargs)


@dataclass
class Release:
    """A release loaded for drafting (drafting.load_release): its engine, processor, OOD summary (ood.py; None for
    releases without one), the local folder, and its identity ({"name", "revision"}, model_sources.release_identity)
    for exports to say which model drafted."""

    engine: DraftingEngine
    processor: Any
    ood_summary: Any = None
    folder: Path | None = None
    identity: dict = field(default_factory=dict)

    @property
    def model(self):
        """The object with generate() (see DraftingEngine.model)."""
        return self.engine.model

    @property
    def config(self):
        return self.engine.model.config

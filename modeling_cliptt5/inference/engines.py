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


@dataclass
class EngineOutput:
    """What an engine's generate_with_findings returns for a batch of studies."""

    sequences: Any  # token ids, as generate() returns them
    head: Any = None  # CLIPT5FindingOutput, None without a finding head
    vectors: Any = None  # [studies, views, dim] image vectors for the OOD summary (ood.image_vectors)
    guidance: Any = None  # [studies, findings] 1 / 0: the findings each draft followed (with a finding head)


class DraftingEngine(Protocol):
    """What drafting asks of an engine. `model`: the object with transformers' `generate()` (a
    CLIPT5ForConditionalGeneration, or onnx_inference.OnnxCLIPT5); `name`: how it drafts, for logs and exports."""

    model: Any
    name: str

    def generate_with_findings(self, pixel_values, input_ids=None, attention_mask=None, findings=None, prior=None,
                               **generate_kwargs):
        """An EngineOutput from one pass of the image tower and the finding head. `findings`: as
        CLIPT5ForConditionalGeneration.generate takes them, replacing the head's decisions in the guidance;
        `prior`: the prior studies' inputs (CLIPT5Processor's prior_* tensors) for a release that reads them."""


class TorchEngine:
    """The transformers model drafts: float weights, or int8 Linear layers (fast_inference.optimize_for_cpu, the
    `--optimize` path where onnxruntime is not installed)."""

    def __init__(self, model):
        from modeling_cliptt5.inference.fast_inference import is_optimized

        self.model = model
        self.name = "PyTorch int8" if is_optimized(model) else "PyTorch"

    def generate_with_findings(self, pixel_values, input_ids=None, attention_mask=None, findings=None, prior=None,
                               **generate_kwargs):
        from modeling_cliptt5.inference.ood import image_vectors
        from modeling_cliptt5.modeling_cliptt5 import followed_findings

        model = self.model
        prior = prior or {}
        if findings is not None and model.finding_head is None:
            raise ValueError("this model has no finding head: it cannot take findings")
        vision_features = model.get_vision_features(pixel_values)
        if model.finding_head is None:
            sequences = model.generate(vision_features=vision_features, input_ids=input_ids,
                                       attention_mask=attention_mask, **prior, **generate_kwargs)
            return EngineOutput(sequences, vectors=image_vectors(vision_features))
        # The head runs once: its decisions (or the caller's findings) become the guidance tokens of the encoder
        # inputs generate() starts from, and the draft's record says which findings it followed.
        head = model.predict_findings(vision_features=vision_features)
        given = None if findings is None else model.findings_tensor(findings, len(vision_features))
        followed = followed_findings(head.present, given)
        statuses = followed if model.finding_embeddings is not None else None
        inputs_embeds, mask = model.encoder_inputs(vision_features, statuses, input_ids, attention_mask,
                                                   model.prior_inputs(len(vision_features), statuses, vision_features,
                                                                      **prior))
        sequences = model.generate(inputs_embeds=inputs_embeds, attention_mask=mask, **generate_kwargs)
        return EngineOutput(sequences, head, image_vectors(vision_features), followed)


class OnnxEngine:
    """The `--optimize` graphs on ONNX Runtime (onnx_inference.OnnxCLIPT5): its encoder graph computes the head's
    output and the image vectors with the image tokens."""

    def __init__(self, model):
        self.model = model
        self.name = f"ONNX Runtime {model.weights}"

    def generate_with_findings(self, pixel_values, input_ids=None, attention_mask=None, findings=None, prior=None,
                               **generate_kwargs):
        from modeling_cliptt5.modeling_cliptt5 import findings_to_tensor, followed_findings

        sequences, head, vectors = self.model.generate_with_findings(pixel_values, input_ids, attention_mask, findings,
                                                                     prior=prior, **generate_kwargs)
        if head is None:
            return EngineOutput(sequences, vectors=vectors)
        names = self.model.config.finding_labels
        given = None if findings is None else findings_to_tensor(findings, names, len(pixel_values))
        return EngineOutput(sequences, head, vectors, followed_findings(head.present, given))


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

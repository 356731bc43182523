"""Does a study look like the release's training images? A compact summary of the training images in the vision
tower's feature space, written into the release, and a score per study against it.

Each image becomes one vector: the mean and the standard deviation over its vision-tower tokens (what the finding
head and T5 read). The summary is a principal-component model of the training vectors (mean, top components and
their variances, the average variance left over), so its size does not grow with the data: a squared Mahalanobis
distance in the kept components plus the leftover distance scaled by the leftover variance, divided by the
vector's size. A study scores the highest of its views. Scores of the validation studies give the quantiles a
study is compared with; a study beyond the 99th percentile of validation is flagged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from modeling_cliptt5.data.atomic_writes import atomic_path

OOD_FILE = "ood_summary.safetensors"
QUANTILE_LEVELS = (0.5, 0.9, 0.95, 0.99, 0.999)
FLAG_LEVEL = 0.99
MAX_COMPONENTS = 64
FEATURES = "mean and standard deviation over the vision tower's image tokens, per view"


def image_vectors(vision_features: torch.Tensor) -> torch.Tensor:
    """[batch, views, tokens, channels] vision features -> [batch, views, 2 * channels]."""
    features = vision_features.float()
    return torch.cat([features.mean(dim=2), features.std(dim=2, unbiased=False)], dim=-1)


@dataclass
class OODSummary:
    mean: torch.Tensor  # [dim]
    basis: torch.Tensor  # [components, dim], orthonormal rows
    variances: torch.Tensor  # [components]
    residual_variance: float
    quantiles: dict  # {level: validation study score}
    training_images: int
    validation_studies: int

    @property
    def threshold(self) -> float:
        return self.quantiles[FLAG_LEVEL]

    def image_scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> [...]: 1 on average for a training image in the kept components, more when unlike them."""
        centred = vectors.float() - self.mean
        projected = centred @ self.basis.T
        leftover = centred - projected @ self.basis
        distance = (projected.square() / self.variances).sum(-1) + leftover.square().sum(-1) / self.residual_variance
        return distance / self.mean.numel()

    def study_scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """[studies, views, dim] -> [studies]: a study is as unfamiliar as its least familiar view."""
        return self.image_scores(vectors).amax(dim=-1)

    def flags(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > self.threshold

    def save(self, folder) -> Path:
        """Writes OOD_FILE into `folder` through a temporary name (never half-written)."""
        from safetensors.torch import save_file

        path = Path(folder) / OOD_FILE
        tensors = {"mean": self.mean, "basis": self.basis, "variances": self.variances,
                   "residual_variance": torch.tensor([self.residual_variance])}
        metadata = {"format": "pt", "features": FEATURES, "quantiles": json.dumps({str(k): v for k, v in
                                                                                   self.quantiles.items()}),
                    "flag_level": str(FLAG_LEVEL), "training_images": str(self.training_images),
                    "validation_studies": str(self.validation_studies)}
        with atomic_path(path) as temporary:
            save_file({name: tensor.contiguous().float() for name, tensor in tensors.items()}, temporary,
                      metadata=metadata)
        return path


def load_summary(folder) -> OODSummary | None:
    """The release's summary, or None for a release written without one (older releases)."""
    path = Path(folder) / OOD_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    return OODSummary(mean=tensors["mean"], basis=tensors["basis"], variances=tensors["variances"],
                      residual_variance=float(tensors["residual_variance"][0]),
                      quantiles={float(k): v for k, v in json.loads(metadata["quantiles"]).items()},
                      training_images=int(metadata["training_images"]),
                      validation_studies=int(metadata["validation_studies"]))


def fit_summary(training_vectors: torch.Tensor, validation_vectors: torch.Tensor,
                max_components: int = MAX_COMPONENTS) -> OODSummary:
    """training_vectors [images, dim] and validation_vectors [studies, views, dim] -> the summary."""
    training_vectors = training_vectors.double()
    count, dim = training_vectors.shape
    if count < 3:
        raise ValueError(f"an OOD summary needs at least 3 training images, got {count}")
    mean = training_vectors.mean(0)
    _, singular, directions = torch.linalg.svd(training_vectors - mean, full_matrices=False)
    variances = singular.square() / (count - 1)
    components = min(max_components, count // 4 or 1, dim - 1)
    # What the kept components leave, averaged over all remaining dimensions (a floor keeps it finite).
    floor = float(variances[0]) * 1e-6 + 1e-12
    residual = max(float(variances[components:].sum()) / (dim - components), floor)
    summary = OODSummary(mean=mean.float(), basis=directions[:components].float(),
                         variances=variances[:components].clamp_min(floor).float(), residual_variance=residual,
                         quantiles={}, training_images=count, validation_studies=len(validation_vectors))
    scores = summary.study_scores(validation_vectors)
    summary.quantiles = {level: float(torch.quantile(scores, level)) for level in QUANTILE_LEVELS}
    return summary


@torch.inference_mode()
def vectors_of_rows(encode, rows, features_of, batch_size=64, max_rows=None) -> torch.Tensor:
    """[studies, views, dim] for dataset rows: `encode(row, index)` gives a study's model input (pixel_values
    [views, 3, H, W], or cached vision features), `features_of(batch)` the vision features of a stacked batch."""
    count = len(rows) if max_rows is None else min(len(rows), max_rows)
    vectors = []
    for start in range(0, count, batch_size):
        studies = []
        for index in range(start, min(start + batch_size, count)):
            try:
                studies.append(encode(rows[index], index))
            except Exception:  # an unreadable study (training skipped it too) has no place in the summary
                continue
        if studies:
            vectors.append(image_vectors(features_of(torch.stack(studies))).cpu())
    if not vectors:
        raise ValueError("no readable study to summarise")
    return torch.cat(vectors)

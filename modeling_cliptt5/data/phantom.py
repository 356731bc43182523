"""Synthetic chest radiograph phantoms with paired reports and truth labels: the demo and test data (not real patients).

Every image is drawn from random numbers (numpy + PIL) by a deterministic generator; no patient data is involved.
The conventions of a standard PA chest radiograph are kept:

* air is dark, soft tissue and bone are bright;
* the patient's RIGHT is on the image LEFT (the patient faces the viewer): a "left pleural effusion" whitens the
  lower zone on the image's right-hand side; a lead "R" marker sits in the image's top-left corner;
* the right hemidiaphragm is higher than the left, the heart bulges to the patient's left, the gastric bubble
  sits under the left hemidiaphragm.

Findings are drawn big and contrasted enough to survive resizing to 64-128 px. The report is written from the
same truth in radiology language, and `labels_from_report` reads such a report back into `PHANTOM_LABELS`.

A patient can also have several studies over time (`generate_series`; `make_phantom_dataset` with
`max_studies_per_patient` above 1): one anatomy, placed and exposed anew at each study, whose findings evolve from
one study to the next. A follow-up's report compares with the prior study as radiologists write it ("Increased right
pleural effusion, now moderate.", "Interval removal of the endotracheal tube.") and its labels add change labels
such as "pleural_effusion:right:increased" (`PHANTOM_CHANGES`, `change_labels`).
"""

import contextlib
import dataclasses
import datetime
import functools
import io
import math
import multiprocessing
import os
import re
import zlib

import numpy as np
from PIL import Image, ImageDraw

from modeling_cliptt5.data.schema import SPLITS, link_priors, make_example, report_features

SOURCE = "synthetic-phantom"
SIDES = ("right", "left")
SIZES = ("small", "moderate", "large")
DEVICES = ("endotracheal_tube", "enteric_tube", "right_jugular_line", "left_subclavian_line")
LOBES = {"right": ("upper lobe", "middle lobe", "lower lobe"), "left": ("upper lobe", "lingula", "lower lobe")}
NODULE_MAX_CM = 3.0  # a nodule is < 3 cm, a mass > 3 cm (Fleischner Society glossary)

PHANTOM_LABELS = (
    "cardiomegaly",
    "pleural_effusion:left", "pleural_effusion:right",
    "pneumothorax:left", "pneumothorax:right",
    "consolidation:left", "consolidation:right",
    "nodule:left", "nodule:right",
    "mass:left", "mass:right",
    "support_device",
)
# How a finding differs from the patient's prior study in the data: change labels are "{finding}:{side}:{change}"
# ("pleural_effusion:right:increased") or "{finding}:{change}" for cardiomegaly and support_device.
PHANTOM_CHANGES = ("new", "increased", "decreased", "resolved", "unchanged")


@dataclasses.dataclass(frozen=True)
class PhantomFindings:
    """What one phantom study shows; the default is a normal study. Sides are the patient's."""

    cardiomegaly: bool = False
    pleural_effusion: tuple = ()  # ((side, size), ...), size in SIZES
    pneumothorax: tuple = ()  # ((side, size), ...)
    consolidation: tuple = ()  # ((side, lobe), ...), lobe in LOBES[side]
    lesion: tuple = ()  # ((kind, side, lobe, size_cm), ...): kind "nodule" (< 3 cm) or "mass" (> 3 cm)
    devices: tuple = ()  # names from DEVICES

    def labels(self):
        labels = {"cardiomegaly"} if self.cardiomegaly else set()
        labels |= {f"pleural_effusion:{side}" for side, _ in self.pleural_effusion}
        labels |= {f"pneumothorax:{side}" for side, _ in self.pneumothorax}
        labels |= {f"consolidation:{side}" for side, _ in self.consolidation}
        labels |= {f"{kind}:{side}" for kind, side, _, _ in self.lesion}
        if self.devices:
            labels.add("support_device")
        return sorted(labels)


def sample_findings(rng):
    """Draws a plausible mix (about a third of studies normal; effusions go with big hearts, pneumothoraces with lines)."""
    cardiomegaly = bool(rng.random() < 0.22)
    devices = _sample_devices(rng) if rng.random() < 0.17 else ()
    effusion = ()
    if rng.random() < (0.35 if cardiomegaly else 0.15):
        sides = (("right",), ("left",), ("right", "left"))[rng.choice(3, p=(0.35, 0.3, 0.35))]
        effusion = tuple((side, SIZES[rng.integers(3)]) for side in sides)
    pneumothorax = ()
    free_sides = [side for side in SIDES if side not in dict(effusion)]  # no hydropneumothorax in this phantom
    if free_sides and rng.random() < (0.15 if devices else 0.07):
        pneumothorax = ((free_sides[rng.integers(len(free_sides))], SIZES[rng.integers(3)]),)
    consolidation = ()
    if rng.random() < 0.17:
        places = [(side, lobe) for side in SIDES for lobe in LOBES[side]]
        count = 2 if rng.random() < 0.15 else 1
        consolidation = tuple(sorted(places[i] for i in rng.choice(len(places), size=count, replace=False)))
    lesion = _sample_lesion(rng) if rng.random() < 0.14 else ()
    return PhantomFindings(cardiomegaly, effusion, pneumothorax, consolidation, lesion, devices)


def _sample_devices(rng):
    line = ("right_jugular_line", "left_subclavian_line")[rng.integers(2)]
    devices = (("endotracheal_tube",), (line,), ("endotracheal_tube", line))[rng.integers(3)]
    if "endotracheal_tube" in devices and rng.random() < 0.5:
        devices = ("endotracheal_tube", "enteric_tube") + devices[1:]
    return devices


def _sample_lesion(rng):
    side = SIDES[rng.integers(2)]
    lobe = LOBES[side][rng.integers(3)]
    if rng.random() < 0.6:
        return (("nodule", side, lobe, round(float(rng.uniform(1.6, NODULE_MAX_CM - 0.2)), 1)),)
    # the gap around 3 cm keeps the two apart even after resizing to 64 px
    return (("mass", side, lobe, round(float(rng.uniform(NODULE_MAX_CM + 0.8, 7.0)), 1)),)


# --------------------------------------------------------------------------------------------------------------
# Follow-up studies: findings evolve from the prior study's, and the changes are named as reports name them
# --------------------------------------------------------------------------------------------------------------

def _follow_up_findings(prior, rng):
    """The findings of the patient's next study. A finding seen before persists (sized ones may grow or shrink by one
    step) or resolves, new ones may appear; cardiomegaly and lesions stay once present, devices come and go as a set.
    The rates are tuned so that every change occurs often in a few thousand studies."""
    cardiomegaly = prior.cardiomegaly or bool(rng.random() < 0.07)
    if prior.devices:
        devices = () if rng.random() < 0.3 else prior.devices
    else:
        devices = _sample_devices(rng) if rng.random() < 0.1 else ()
    pneumothorax = _next_sizes(prior.pneumothorax, rng, resolve=0.2, same=0.2)
    effusion = _next_sizes(prior.pleural_effusion, rng, resolve=0.2, same=0.4)
    # New ones only where the prior had none (else a change of size), and no hydropneumothorax.
    for side in SIDES:
        if side not in dict(prior.pleural_effusion) and side not in dict(pneumothorax) \
                and rng.random() < (0.12 if cardiomegaly else 0.05):
            effusion += ((side, SIZES[rng.integers(3)]),)
    free_sides = [side for side in SIDES if side not in dict(effusion) and side not in dict(prior.pneumothorax)]
    if free_sides and not pneumothorax and rng.random() < (0.18 if devices else 0.09):
        pneumothorax = ((free_sides[rng.integers(len(free_sides))], SIZES[rng.integers(3)]),)
    consolidation = ()
    for side in SIDES:  # per side: the same lobes stay, all resolve, or one lobe is newly involved
        lobes = [place for place in prior.consolidation if place[0] == side]
        if lobes:
            consolidation += () if rng.random() < 0.4 else tuple(lobes)
        elif rng.random() < 0.06:
            consolidation += ((side, LOBES[side][rng.integers(3)]),)
    lesion = prior.lesion or (_sample_lesion(rng) if rng.random() < 0.03 else ())
    return PhantomFindings(cardiomegaly, tuple(sorted(effusion)), pneumothorax, tuple(sorted(consolidation)), lesion,
                           devices)


def _next_sizes(sized, rng, resolve, same):
    """Sized findings ((side, size), ...) at the next study: each resolves (with probability `resolve`, and when a
    small one shrinks), keeps its size (`same` of the rest) or grows or shrinks one step (a large one stays large)."""
    persisting = []
    for side, size in sized:
        draw = rng.random()
        if draw < resolve:
            continue
        step = 0 if draw < resolve + same * (1 - resolve) else (1 if rng.random() < 0.5 else -1)
        index = SIZES.index(size) + step
        if index >= 0:
            persisting.append((side, SIZES[min(index, len(SIZES) - 1)]))
    return tuple(persisting)


def _presence_change(before, now):
    return "unchanged" if before and now else "new" if now else "resolved"


def _changes(prior, findings):
    """[(finding, side or None, change)] between two `PhantomFindings` of one patient, a finding at a time: sized
    findings compare their size, consolidation is compared per side, devices as a set."""
    changes = []
    if prior.cardiomegaly or findings.cardiomegaly:
        changes.append(("cardiomegaly", None, _presence_change(prior.cardiomegaly, findings.cardiomegaly)))
    if prior.devices or findings.devices:
        changes.append(("support_device", None, _presence_change(prior.devices, findings.devices)))
    for finding in ("pleural_effusion", "pneumothorax"):
        before, now = dict(getattr(prior, finding)), dict(getattr(findings, finding))
        for side in SIDES:
            if side in before and side in now:
                step = SIZES.index(now[side]) - SIZES.index(before[side])
                changes.append((finding, side, "increased" if step > 0 else "decreased" if step < 0 else "unchanged"))
            elif side in before or side in now:
                changes.append((finding, side, _presence_change(side in before, side in now)))
    for side in SIDES:
        before = any(place[0] == side for place in prior.consolidation)
        now = any(place[0] == side for place in findings.consolidation)
        if before or now:
            changes.append(("consolidation", side, _presence_change(before, now)))
    for kind in ("nodule", "mass"):
        for side in SIDES:
            before = any(lesion[:2] == (kind, side) for lesion in prior.lesion)
            now = any(lesion[:2] == (kind, side) for lesion in findings.lesion)
            if before or now:
                changes.append((kind, side, _presence_change(before, now)))
    return changes


def change_labels(prior, findings):
    """The change labels of a study against its prior: "pleural_effusion:right:increased", "cardiomegaly:unchanged",
    ... (change in PHANTOM_CHANGES), sorted. A resolved finding has its change label and no presence label."""
    return sorted(f"{finding}:{side}:{change}" if side else f"{finding}:{change}"
                  for finding, side, change in _changes(prior, findings))


# --------------------------------------------------------------------------------------------------------------
# The patient: anatomy and exposure, drawn from its own random stream so findings can be toggled on one patient
# --------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Patient:
    size: int
    cx: float  # midline (x, px)
    width: float  # half-width of the inner rib cage (px)
    height: float  # lung apex to costophrenic angle (px)
    apex_y: float
    dome_height: float  # how far the right dome rises above the costophrenic angles (px)
    left_dome_drop: float  # the left hemidiaphragm sits lower (px)
    body_width: float  # half-width of the torso (soft tissue)
    cardiothoracic_ratio: float
    heart_tilt: float  # radians
    lung_air: float  # how much darker aerated lung is than soft tissue
    rib_shift: tuple  # small vertical rib offsets (right, left)
    thorax_cm: float  # inner thoracic width in cm: gives the pixel spacing
    gastric_bubble: bool
    gain: float
    offset: float
    gamma: float
    noise_sigma: float
    texture: np.ndarray  # lung parenchyma texture (size x size)
    vessels: np.ndarray  # pulmonary vessel tree (size x size)
    noise: np.ndarray  # detector noise (size x size)

    @property
    def px_per_cm(self):
        return 2 * self.width / self.thorax_cm

    @property
    def costophrenic_y(self):
        return self.apex_y + self.height

    @property
    def carina_y(self):
        return self.apex_y + 0.3 * self.height


def _sample_patient(rng, size):
    scale = rng.uniform(0.88, 1.04)
    patient = _Patient(
        size=size,
        cx=size * (0.5 + rng.normal(0, 0.012)),
        width=size * 0.36 * scale,
        height=size * 0.56 * scale * rng.uniform(0.95, 1.05),
        apex_y=size * (0.17 + rng.normal(0, 0.012) + 0.3 * (1.0 - scale)),
        dome_height=size * rng.uniform(0.05, 0.075),
        left_dome_drop=size * rng.uniform(0.01, 0.03),
        body_width=size * 0.36 * scale * rng.uniform(1.16, 1.3),
        cardiothoracic_ratio=rng.uniform(0.38, 0.46),
        heart_tilt=math.radians(rng.uniform(15, 30)),
        lung_air=rng.uniform(0.3, 0.38),
        rib_shift=(size * rng.normal(0, 0.006), size * rng.normal(0, 0.006)),
        thorax_cm=rng.uniform(27, 32),
        gastric_bubble=bool(rng.random() < 0.7),
        gain=rng.uniform(0.9, 1.1),
        offset=rng.uniform(-0.04, 0.04),
        gamma=rng.uniform(0.8, 1.2),
        noise_sigma=rng.uniform(0.008, 0.025),
        texture=sum(weight * (1 - np.abs(_smooth_noise(rng, max(4, int(size * fraction)), size)))
                    for weight, fraction in ((0.6, 1 / 16), (0.4, 1 / 6))),
        vessels=None,
        noise=rng.standard_normal((size, size), dtype=np.float32),
    )
    patient.vessels = _vessel_tree(rng, patient)
    return patient


def _positioned(patient, rng):
    """The same patient at another study: shifted by a few whole pixels (the texture and vessels with it) and exposed
    anew (window, gamma, detector noise)."""
    reach = max(1, round(0.012 * patient.size))
    dx, dy = (int(shift) for shift in rng.integers(-reach, reach + 1, size=2))
    return dataclasses.replace(
        patient, cx=patient.cx + dx, apex_y=patient.apex_y + dy,
        texture=np.roll(patient.texture, (dy, dx), axis=(0, 1)), vessels=np.roll(patient.vessels, (dy, dx), axis=(0, 1)),
        gain=rng.uniform(0.9, 1.1), offset=rng.uniform(-0.04, 0.04), gamma=rng.uniform(0.8, 1.2),
        noise_sigma=rng.uniform(0.008, 0.025), noise=rng.standard_normal((patient.size, patient.size), dtype=np.float32))


def _smooth_noise(rng, cells, size):
    """Smooth random field: Gaussian noise on a coarse cells x cells grid, upsampled to size x size."""
    return _upsample(rng.standard_normal((cells, cells), dtype=np.float32), size)


def _upsample(small, size):
    """Separable interpolation with a smoothstep weight (C1-smooth, no grid creases), in plain numpy indexing."""
    low, high, weight = _interpolation_taps(small.shape[0], size)
    rows = small[low] * (1 - weight)[:, None] + small[high] * weight[:, None]
    return rows[:, low] * (1 - weight) + rows[:, high] * weight


@functools.lru_cache(maxsize=32)
def _interpolation_taps(cells, size):
    position = np.clip((np.arange(size) + 0.5) * (cells / size) - 0.5, 0, cells - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, cells - 1)
    fraction = position - low
    return low, high, (fraction * fraction * (3 - 2 * fraction)).astype(np.float32)


def _vessel_tree(rng, patient):
    """Pulmonary vessels fanning out of each hilum and thinning towards the periphery: the lung markings.

    Drawn at half resolution and upsampled, which also softens the lines like a blur would.
    """
    half, scale = patient.size // 2, patient.size / 512
    canvas = Image.new("L", (half, half), 0)
    draw = ImageDraw.Draw(canvas)

    turns = iter(rng.uniform(0.25, 0.55, size=140).tolist())  # drawn in bulk: 14 forks x 5 trunks x 2 sides
    shrinks = iter(rng.uniform(0.6, 0.8, size=140).tolist())

    def branch(start, angle, sign, length, width, depth):
        end = (start[0] + sign * length * math.cos(angle), start[1] + length * math.sin(angle))
        draw.line([start, end], fill=int(120 + 135 * min(1.0, width / (3 * scale))), width=max(1, round(width)))
        if depth:
            for turn in (-1, 1):
                branch(end, angle + turn * next(turns), sign, length * next(shrinks), width * 0.65, depth - 1)

    for side in SIDES:
        hilum_x, hilum_y = _lung_point(patient, side, 0.45, 0.05)
        for angle in np.linspace(-1.3, 1.3, 5) + rng.normal(0, 0.12, 5):  # 0 = straight out, negative = upwards
            branch((hilum_x / 2, hilum_y / 2), float(angle), _side_sign(side), 0.14 * patient.width, 3.5 * scale, 3)
    return _upsample(np.asarray(canvas, dtype=np.float32) * (1 / 255), patient.size)


# --------------------------------------------------------------------------------------------------------------
# Geometry helpers (broadcast: x is a row (1, S), y a column (S, 1))
# --------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _grid(size):
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    return coords[None, :], coords[:, None]


def _ramp(signed_distance, width):
    """Soft step from 0 to 1 across `width` px around distance 0 (anti-aliased edges without a blur)."""
    step = signed_distance * (1.0 / width)
    step += 0.5
    return np.clip(step, 0.0, 1.0, out=step)


def _ellipse(x, y, cx, cy, rx, ry, edge, angle=0.0):
    dx, dy = x - cx, y - cy
    if angle:
        cos, sin = math.cos(angle), math.sin(angle)
        dx, dy = dx * cos + dy * sin, dy * cos - dx * sin
    radius = np.sqrt((dx * (1.0 / rx)) ** 2 + (dy * (1.0 / ry)) ** 2)  # (np.hypot is ~20x slower)
    return _ramp((1.0 - radius) * min(rx, ry), edge)


def _window(size, left, right, top, bottom):
    """Row and column slices of a bounding box, clipped to the image."""
    return (slice(max(0, int(top)), min(size, math.ceil(bottom))),
            slice(max(0, int(left)), min(size, math.ceil(right))))


def _add_ellipse(target, amount, cx, cy, rx, ry, edge):
    """Adds amount * (ellipse mask) to a full-size image, computing it only in the ellipse's bounding box."""
    rows, cols = _window(target.shape[0], cx - rx - edge, cx + rx + edge, cy - ry - edge, cy + ry + edge)
    x, y = _grid(target.shape[0])
    target[rows, cols] += amount * _ellipse(x[:, cols], y[rows], cx, cy, rx, ry, edge)


def _segment_distance(x, y, start, end):
    (x0, y0), (x1, y1) = start, end
    vx, vy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * vx + (y - y0) * vy) * (1.0 / (vx * vx + vy * vy)), 0.0, 1.0)
    return np.sqrt((x - x0 - t * vx) ** 2 + (y - y0 - t * vy) ** 2)


def _side_sign(side):
    """Patient's right is the image's left: x decreases towards the patient's right."""
    return -1.0 if side == "right" else 1.0


def _dome_y(patient, side):
    top = patient.costophrenic_y - patient.dome_height
    return top + (patient.left_dome_drop if side == "left" else 0.0)


def _lung_edges(patient, t):
    """Medial and lateral lung borders (distance from the midline, px) at relative height t (0 apex, 1 base)."""
    t = np.clip(t, 0.0, 1.0)
    lateral = patient.width * (1.0 - 0.6 * (1.0 - t) ** 3.5)
    medial = patient.width * (0.13 + 0.05 * t)
    # The apex is a rounded cap: both borders close in on its centre over the top 8% of the height.
    centre, cap = 0.3 * patient.width, np.sqrt(np.clip(t * (1 / 0.08), 0.0, 1.0))
    return centre + (medial - centre) * cap, centre + (lateral - centre) * cap


def _lung_point(patient, side, t, p):
    """Image (x, y) of the point at relative height t and relative medial-to-lateral position p in one lung."""
    medial, lateral = _lung_edges(patient, t)
    distance = float(medial + p * (lateral - medial))
    return patient.cx + _side_sign(side) * distance, patient.apex_y + t * patient.height


def _lung_field(patient, side, d, y, medial, lateral, edge):
    """Soft mask of one lung: rounded apex, convex lateral wall, diaphragm dome below, mediastinum medially."""
    w = patient.width
    dome_top, dome_peak = _dome_y(patient, side), 0.5 * w
    depth = patient.costophrenic_y - dome_top
    # The dome falls steeply into the lateral costophrenic angle and gently towards the heart.
    diaphragm = dome_top + np.where(d > dome_peak, depth * ((d - dome_peak) * (1 / (w - dome_peak))) ** 2,
                                    0.45 * depth * ((dome_peak - d) * (1 / dome_peak)) ** 2)
    return (_ramp(lateral - d, edge) * _ramp(d - medial, edge)
            * _ramp(y - patient.apex_y, edge) * _ramp(diaphragm - y, edge))


def _polyline(size, points, width):
    """Mask (0..1) of a drawn polyline: tubes and catheters."""
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line([(float(px), float(py)) for px, py in points], fill=255,
                                width=max(1, round(width)), joint="curve")
    return np.asarray(canvas, dtype=np.float32) * (1 / 255)


# Lead "R" marker (5x7 bitmap), placed on the patient's right, i.e. the image's left.
_R_GLYPH = np.array([[1, 1, 1, 1, 0], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 0],
                     [1, 0, 1, 0, 0], [1, 0, 0, 1, 0], [1, 0, 0, 0, 1]], dtype=np.float32)

# Where findings sit in a lung: ranges of relative height t and relative medial-to-lateral position p per lobe.
_LOBE_PLACES = {
    "upper lobe": ((0.18, 0.36), (0.35, 0.7)),
    "middle lobe": ((0.56, 0.7), (0.1, 0.35)),  # against the right heart border
    "lingula": ((0.56, 0.7), (0.1, 0.35)),  # against the left heart border
    "lower lobe": ((0.72, 0.86), (0.45, 0.8)),  # lateral to the heart, which hides the medial base
}
_EFFUSION_HEIGHT = {"small": (0.15, 0.2), "moderate": (0.26, 0.34), "large": (0.42, 0.52)}  # of lung height
_PNEUMOTHORAX_DEPTH = {"small": (0.24, 0.3), "moderate": (0.33, 0.42), "large": (0.46, 0.58)}  # of lung width


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------

def _render(patient, findings, shape_rng):
    """Draws the radiograph as a density map (bright = attenuating), then applies the patient's exposure.

    `shape_rng(key)` gives the random stream for the exact shape of one finding ("pleural_effusion:left",
    "consolidation:right:lower lobe", ...): a single study draws them all from one stream in turn, a series from one
    stream per finding, so that a finding keeps its shape while it persists.
    """
    size, cx, w, h = patient.size, patient.cx, patient.width, patient.height
    x, y = _grid(size)
    edge = max(1.0, 1.5 * size / 256)
    dx = np.abs(x - cx)

    # Soft tissue: neck, sloping shoulders, torso; thicker (brighter) in the middle than at the flanks.
    widening = np.clip((y - (patient.apex_y - 0.08 * h)) * (1 / (0.3 * h)) + 0.5, 0, 1) ** 0.6
    body_half = 0.3 * w + (patient.body_width - 0.3 * w) * widening
    thickness = np.sqrt(np.clip(1.0 - (dx / body_half) ** 2, 0, 1))
    density = (0.42 + 0.16 * thickness) * _ramp(body_half - dx, 2 * edge)
    # Spine, with vertebral end plates every ~9.5% of the lung height.
    density += _ramp(0.085 * w - dx, 2 * edge) * (0.08 + 0.015 * np.cos((y - patient.apex_y) * (2 * math.pi / (0.095 * h))))
    if patient.gastric_bubble:
        _add_ellipse(density, -0.18, cx + 0.45 * w, _dome_y(patient, "left") + 0.07 * h, 0.13 * w, 0.045 * h, 2 * edge)

    # Everything inside the rib cage is drawn in its bounding box only (about half of the image): it is most of the work.
    thorax = _window(size, cx - 1.15 * w, cx + 1.15 * w, patient.apex_y - 0.12 * h, patient.costophrenic_y + 0.15 * h)
    density[thorax] += _lungs_and_findings(patient, findings, shape_rng, thorax, edge)
    density[thorax] += _bones(patient, thorax, edge)
    airways = _window(size, cx - 0.35 * w, cx + 0.35 * w, 0, patient.carina_y + 0.16 * h)
    density[airways] += _airways(patient, airways, edge)
    if findings.devices:
        density += _devices(patient, findings.devices, shape_rng)

    # Exposure: window, gamma, detector noise; then the lead marker.
    image = np.clip(patient.offset + patient.gain * (density + 0.03) * (1 / 0.75), 0, 1) ** patient.gamma
    image += patient.noise_sigma * patient.noise
    marker_scale = max(1, round(size / 110))
    glyph = np.kron(_R_GLYPH, np.ones((marker_scale, marker_scale), np.float32))
    corner = int(0.05 * size)
    image[corner:corner + glyph.shape[0], corner:corner + glyph.shape[1]] += glyph
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _lungs_and_findings(patient, findings, shape_rng, window, edge):
    """Density to add inside the thorax window: aerated lungs (negative), heart, hila, airways and the findings."""
    cx, w, h = patient.cx, patient.width, patient.height
    x, y = _grid(patient.size)
    x, y = x[:, window[1]], y[window[0]]
    shape = (y.shape[0], x.shape[1])
    t = (y - patient.apex_y) * (1 / h)
    medial, lateral = _lung_edges(patient, t)

    # Heart: a tilted ellipse, a third right of the midline and two thirds left; its base sinks into the diaphragm.
    ctr = shape_rng("cardiomegaly").uniform(0.56, 0.66) if findings.cardiomegaly else patient.cardiothoracic_ratio
    tilt = patient.heart_tilt
    heart_rx = ctr * w / math.sqrt(math.cos(tilt) ** 2 + 0.49 * math.sin(tilt) ** 2)  # tilted width = ctr * 2w
    heart = _ellipse(x, y, cx + 0.32 * heart_rx, _dome_y(patient, "left") - 0.21 * heart_rx,
                     heart_rx, 0.7 * heart_rx, 2 * edge, angle=tilt)
    aortic_knob = _ellipse(x, y, cx + 0.16 * w, patient.apex_y + 0.27 * h, 0.085 * w, 0.075 * w, 2 * edge)
    outside_mediastinum = (1.0 - heart) * (1.0 - aortic_knob)

    # `air` (1 = fully aerated) is what makes lung dark; findings take air away or add it.
    air = np.zeros(shape, np.float32)
    markings = np.zeros(shape, np.float32)
    density = np.zeros(shape, np.float32)
    fluid = {side: shape_rng(f"pleural_effusion:{side}").uniform(*_EFFUSION_HEIGHT[name])
             for side, name in findings.pleural_effusion}
    collapse = {side: shape_rng(f"pneumothorax:{side}").uniform(*_PNEUMOTHORAX_DEPTH[name])
                for side, name in findings.pneumothorax}
    for side in SIDES:
        d = _side_sign(side) * (x - cx)
        lung = _lung_field(patient, side, d, y, medial, lateral, edge) * outside_mediastinum
        lung_markings = lung
        if side in fluid:
            # Fluid layers at the base and climbs the lateral wall (meniscus); its top fades (PA projection).
            p = (d - medial) / np.maximum(lateral - medial, 1.0)
            level = patient.costophrenic_y - fluid[side] * h * (0.55 + 0.6 * np.clip(p, 0, 1) ** 2)
            layer = _ramp(y - level, 0.12 * h) * _ramp(d - 0.05 * w, edge) * _ramp(1.08 * w - d, edge)
            lung = lung * (1.0 - 0.95 * layer)
            lung_markings = lung
            density += 0.08 * layer * _ramp(patient.costophrenic_y + 0.04 * h - y, 0.1 * h)
        if side in collapse:
            # The visceral pleural line is pulled away from the lateral wall and apex; no markings beyond it.
            g = collapse[side]
            p = (d - medial) / np.maximum(lateral - medial, 1.0)
            boundary = np.minimum((1.0 - g * (1.15 - 0.45 * t)) - p, (t - 0.45 * g) * 1.6)
            pleural_space = _ramp(-boundary, 0.02) * lung
            line = np.clip(1.0 - np.abs(boundary) * (1 / 0.012), 0, 1) * lung
            lung_markings = lung * (1.0 - pleural_space)
            air += 0.35 * pleural_space
            density += 0.05 * lung_markings + 0.12 * line
        markings += lung_markings
        air += lung * (1.0 - 0.25 * np.clip(t, 0, 1) ** 2)  # bases are greyer (breasts, thicker soft tissue)

    for side, lobe in findings.consolidation:
        rng = shape_rng(f"consolidation:{side}:{lobe}")
        (t_lo, t_hi), (p_lo, p_hi) = _LOBE_PLACES[lobe]
        t_c = min(rng.uniform(t_lo, t_hi), 0.92 - fluid.get(side, 0.0))  # stay above any fluid
        p_c = rng.uniform(p_lo, p_hi) * (1.0 - collapse.get(side, 0.0))  # stay inside a collapsed lung
        px, py = _lung_point(patient, side, t_c, p_c)
        rx, ry = rng.uniform(0.14, 0.2) * h, rng.uniform(0.1, 0.15) * h
        ragged = 0.35 * _smooth_noise(rng, max(4, patient.size // 16), patient.size)[window]
        patch = _ramp(1.0 - np.sqrt(((x - px) * (1 / rx)) ** 2 + ((y - py) * (1 / ry)) ** 2) + ragged, 0.25)
        air *= 1.0 - patch * (0.68 + 0.17 * np.clip(ragged * 3, -1, 1))  # mottled, not uniform
        markings *= 1.0 - patch

    for kind, side, lobe, size_cm in findings.lesion:
        rng = shape_rng(f"{kind}:{side}:{lobe}")
        (t_lo, t_hi), (p_lo, p_hi) = _LOBE_PLACES[lobe]
        t_c = min(rng.uniform(t_lo, t_hi), 0.9 - fluid.get(side, 0.0))
        p_c = rng.uniform(p_lo, p_hi) * (1.0 - collapse.get(side, 0.0))
        radius = 0.5 * size_cm * patient.px_per_cm
        px, py = _lung_point(patient, side, t_c, p_c)
        px = cx + _side_sign(side) * max(abs(px - cx), 0.2 * w + radius)  # clear of the mediastinum
        lobulated = 1.0 + (0.1 * _smooth_noise(rng, 6, patient.size)[window] if kind == "mass" else 0.0)
        sphere = 1.0 - ((x - px) ** 2 + (y - py) ** 2) / (radius * lobulated) ** 2
        density += 0.22 * np.sqrt(np.clip(sphere, 0, 1)) + 0.1 * _ramp(sphere * radius, edge)

    density -= patient.lung_air * np.clip(air, 0, 1.35)
    density += (0.025 * patient.texture[window] + 0.1 * patient.vessels[window]) * np.clip(markings, 0, 1)
    for side in SIDES:
        hilum_x, hilum_y = _lung_point(patient, side, 0.44, 0.05)
        density += 0.07 * _ellipse(x, y, hilum_x, hilum_y, 0.1 * w, 0.13 * w, 4 * edge)
    return density + 0.04 * heart * _ramp(_dome_y(patient, "left") - y, 0.1 * h)


def _airways(patient, window, edge):
    """Trachea from the neck down to the carina, then the main bronchi (the right one steeper and shorter)."""
    w, h = patient.width, patient.height
    x, y = _grid(patient.size)
    x, y = x[:, window[1]], y[window[0]]
    carina = (patient.cx + 0.01 * w, patient.carina_y)
    airway = _ramp(0.065 * w - np.abs(x - carina[0]), edge) * _ramp(carina[1] - y, edge)
    for side, (reach_x, reach_y) in (("right", (0.2, 0.09)), ("left", (0.28, 0.13))):
        end = (carina[0] + _side_sign(side) * reach_x * w, carina[1] + reach_y * h)
        airway = np.maximum(airway, _ramp(0.045 * w - _segment_distance(x, y, carina, end), edge))
    return -0.1 * airway


def _bones(patient, window, edge):
    """Posterior and anterior ribs and the clavicles (density to add inside the thorax window)."""
    w, h = patient.width, patient.height
    x, y = _grid(patient.size)
    x, y = x[:, window[1]], y[window[0]]
    dx = np.abs(x - patient.cx)
    lateral = _lung_edges(patient, (y - patient.apex_y) * (1 / h))[1]
    shift = np.where(x < patient.cx, patient.rib_shift[0], patient.rib_shift[1]).astype(np.float32)
    r = dx * (1 / w)
    ribcage = _ramp(lateral + 0.05 * w - dx, 2 * edge) * _ramp(dx - 0.09 * w, 2 * edge)
    ribcage *= _ramp(patient.costophrenic_y + 0.13 * h - y, 0.04 * h)  # fade out at the window's lower edge
    # Posterior ribs rise a little from the spine, then curve down along the lateral wall; spacing grows downwards.
    posterior = (y - shift - (patient.apex_y - 0.04 * h) - h * (-0.12 * r + 0.3 * r ** 3)) * (1 / (1.02 * h))
    q = 10.0 * np.clip(posterior, 0, None) ** 0.85
    fraction = q - np.floor(q)
    spacing = 0.1 * h
    rib = _ramp(fraction * spacing, edge) * _ramp((0.38 - fraction) * spacing, edge) * _ramp(10.0 - q, 0.5)
    cortex = 1.0 + 0.6 * (np.abs(fraction - 0.19) > 0.12)  # rib margins are brighter than the marrow
    density = 0.045 * rib * cortex * ribcage * _ramp(posterior, 0.01)
    # Anterior ribs run down towards the sternum and fade where cartilage takes over.
    anterior = (y - shift - (patient.apex_y + 0.04 * h) - 0.25 * h * (1.0 - r)) * (1 / (0.9 * h))
    qa = 6.0 * np.clip(anterior, 0, None)
    fraction_a = qa - np.floor(qa)
    anterior_rib = _ramp(fraction_a * (0.15 * h), edge) * _ramp((0.35 - fraction_a) * (0.15 * h), edge)
    density += 0.03 * anterior_rib * _ramp(6.0 - qa, 0.3) * _ramp(dx - 0.4 * w, 8 * edge) * ribcage
    # Clavicles: from the sternal notch up and out to the shoulders, over the lung apices.
    clavicle_y = patient.apex_y + 0.1 * h - 0.16 * h * r + 0.03 * h * np.sin(math.pi * r)
    clavicle = (_ramp(0.014 * patient.size - np.abs(y - clavicle_y), edge) * _ramp(dx - 0.08 * w, edge)
                * _ramp(0.95 * w - dx, 4 * edge))
    return density + 0.13 * clavicle


def _devices(patient, devices, shape_rng):
    """Radiopaque tubes and catheters (density to add); zero when there are none."""
    size, cx, w, h = patient.size, patient.cx, patient.width, patient.height
    if not devices:
        return 0.0
    px_cm, line_width = patient.px_per_cm, 3.0 * size / 256  # ~1 px after resizing to 96 px: still visible
    density = np.zeros((size, size), np.float32)
    left_dome = _dome_y(patient, "left")
    if "endotracheal_tube" in devices:
        tip_y = patient.carina_y - shape_rng("endotracheal_tube").uniform(3.0, 6.0) * px_cm  # 3-6 cm above the carina
        density += 0.05 * _polyline(size, [(cx, 0), (cx + 0.01 * w, tip_y)], 0.9 * px_cm)
        density += 0.35 * _polyline(size, [(cx - 0.2 * px_cm, 0), (cx + 0.01 * w - 0.2 * px_cm, tip_y)],
                                    0.8 * line_width)
    if "enteric_tube" in devices:
        path = [(cx + 0.03 * w, 0), (cx + 0.04 * w, patient.carina_y), (cx + 0.1 * w, left_dome),
                (cx + 0.4 * w, left_dome + 0.12 * h)]
        density += 0.3 * _polyline(size, path, line_width)
    tip = (cx - 0.08 * w, patient.carina_y + shape_rng("central_line").uniform(0.02, 0.1) * h)  # in the superior vena cava
    if "right_jugular_line" in devices:
        path = [(cx - 0.32 * w, 0), (cx - 0.2 * w, patient.apex_y), (cx - 0.1 * w, patient.apex_y + 0.18 * h), tip]
        density += 0.3 * _polyline(size, path, line_width)
    if "left_subclavian_line" in devices:
        path = [(cx + w, patient.apex_y + 0.05 * h), (cx + 0.35 * w, patient.apex_y + 0.08 * h),
                (cx - 0.05 * w, patient.apex_y + 0.17 * h), tip]
        density += 0.3 * _polyline(size, path, line_width)
    return density


# --------------------------------------------------------------------------------------------------------------
# Reports: the same truth in radiology language, phrasing drawn at random
# --------------------------------------------------------------------------------------------------------------

_DEVICE_SENTENCES = {
    "endotracheal_tube": ("Endotracheal tube terminates above the carina.",
                          "The endotracheal tube tip projects over the mid trachea.",
                          "Endotracheal tube in standard position above the carina."),
    "enteric_tube": ("Enteric tube courses below the diaphragm with its tip in the stomach.",
                     "Nasogastric tube tip in the stomach."),
    "right_jugular_line": ("Right internal jugular central venous catheter with its tip in the superior vena cava.",
                           "Right IJ central line terminates in the SVC."),
    "left_subclavian_line": ("Left subclavian central venous catheter with its tip in the superior vena cava.",
                             "Left subclavian central line terminates in the SVC."),
}


def _location(side, lobe):
    """("in the right upper lobe", "right upper lobe") style phrases; the lingula needs no side."""
    if lobe == "lingula":
        return "in the lingula", "lingular"
    return f"in the {side} {lobe}", f"{side} {lobe}"


def _capitalize(sentence):
    return sentence[:1].upper() + sentence[1:]


def write_report(findings, rng):
    """Returns (findings_text, impression_text) for a `PhantomFindings`; every positive appears in both sections."""
    def pick(*options):
        return options[rng.integers(len(options))]

    body, impression = [], []
    for device in findings.devices:
        body.append(pick(*_DEVICE_SENTENCES[device]))

    heart = (pick("The heart is enlarged.", "Cardiomegaly.", "The cardiac silhouette is enlarged.",
                  "Enlargement of the cardiac silhouette.", "The heart is enlarged, with a cardiothoracic ratio above 0.5.")
             if findings.cardiomegaly else _normal_heart(pick))
    heart_first = rng.random() < 0.4
    if heart_first:
        body.append(heart)

    for side, lobe in findings.consolidation:
        where, adjective = _location(side, lobe)
        body.append(_capitalize(pick(f"focal consolidation {where}.", f"there is airspace opacity {where}, concerning for pneumonia.",
                                     f"patchy {adjective} airspace disease.", f"{adjective} consolidation.")))
        impression.append(_capitalize(pick(f"{adjective} pneumonia.", f"{adjective} consolidation, likely pneumonia.",
                                           f"airspace disease {where}, compatible with pneumonia.")))
    for kind, side, lobe, size_cm in findings.lesion:
        where, adjective = _location(side, lobe)
        if kind == "nodule":
            body.append(_capitalize(pick(f"a {size_cm} cm nodule {where}.", f"there is a {size_cm} cm rounded nodule {where}.",
                                         f"{adjective} pulmonary nodule measuring {size_cm} cm.")))
            impression.append(_capitalize(pick(f"{size_cm} cm {adjective} nodule. Recommend chest CT for further evaluation.",
                                               f"{adjective} pulmonary nodule; CT recommended.")))
        else:
            body.append(_capitalize(pick(f"a {size_cm} cm mass {where}.", f"there is a {size_cm} cm lobulated mass {where}.",
                                         f"{adjective} mass measuring {size_cm} cm.")))
            impression.append(_capitalize(pick(f"{size_cm} cm {adjective} mass, concerning for malignancy. CT chest recommended.",
                                               f"{adjective} mass; further evaluation with CT recommended.")))
    body.append(_lung_negatives(pick, not findings.consolidation, not findings.lesion))

    for side, size in findings.pneumothorax:
        body.append(pick(f"There is a {size} {side} pneumothorax.",
                         f"{_capitalize(size)} {side} pneumothorax, with the visceral pleural line displaced from the chest wall "
                         "and no lung markings beyond it.",
                         f"A visceral pleural line is seen in the {side} hemithorax with absent markings peripherally, "
                         f"consistent with a {size} pneumothorax."))
        impression.append(pick(f"{_capitalize(size)} {side} pneumothorax.", f"{_capitalize(side)} pneumothorax."))
    effusion = dict(findings.pleural_effusion)
    if len(effusion) == 2:
        right, left = effusion["right"], effusion["left"]
        if right == left:
            body.append(pick(f"{_capitalize(right)} bilateral pleural effusions.", f"Bilateral {right} pleural effusions.",
                             f"There are {right} pleural effusions bilaterally."))
        else:
            body.append(pick(f"{_capitalize(right)} right and {left} left pleural effusions.",
                             f"Bilateral pleural effusions, {right} on the right and {left} on the left."))
        impression.append(pick("Bilateral pleural effusions.", f"{_capitalize(right)} right and {left} left pleural effusions."))
    for side, size in effusion.items() if len(effusion) == 1 else ():
        options = [f"{_capitalize(size)} {side} pleural effusion.", f"There is a {size} {side} pleural effusion.",
                   f"A {size} pleural effusion is present on the {side}."]
        if size != "large":  # a large effusion does more than blunt the angle
            options += [f"{_capitalize(size)} {side} pleural effusion with blunting of the {side} costophrenic angle.",
                        f"Blunting of the {side} costophrenic angle with a meniscus, consistent with a {size} pleural effusion."]
        body.append(pick(*options))
        impression.append(pick(f"{_capitalize(size)} {side} pleural effusion.", f"{_capitalize(side)} pleural effusion."))
    body.append(_pleural_negatives(pick, not effusion, not findings.pneumothorax))

    if not heart_first:
        body.append(heart)
    body += _closing_sentences(pick)

    if findings.cardiomegaly:
        impression.append(pick("Cardiomegaly.", "Enlarged cardiac silhouette."))
    if findings.devices:
        impression.append(pick("Support devices in satisfactory position.", "Lines and tubes in expected position."))
    impression.append(_normal_impression(pick, findings))
    return " ".join(part for part in body if part), " ".join(part for part in impression if part)


# Sentences for what a study does not show, shared by first and follow-up reports (the follow-up report uses them
# for findings absent from both studies). Each returns "" where it has nothing to say.

def _normal_heart(pick):
    return pick("Heart size is normal.", "The cardiac silhouette is normal in size.", "Normal heart size.",
                "The heart is not enlarged.", "The cardiomediastinal silhouette is within normal limits.")


def _lung_negatives(pick, no_consolidation, no_lesion):
    if no_consolidation and no_lesion:
        return pick("The lungs are clear.", "No focal consolidation.", "The lungs are clear without focal consolidation.",
                    "No focal airspace opacity.", "The lungs are clear. No suspicious pulmonary nodule or mass.")
    if no_consolidation:
        return pick("No focal consolidation.", "No airspace consolidation.", "")
    if no_lesion:
        return pick("No pulmonary nodule or mass.", "")
    return ""


def _pleural_negatives(pick, no_effusion, no_pneumothorax):
    if no_effusion and no_pneumothorax:
        return pick("No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
                    "No pneumothorax or pleural effusion.", "No effusion or pneumothorax.")
    if no_effusion:
        return pick("No pleural effusion.", "There is no pleural effusion.", "The costophrenic angles are sharp.")
    if no_pneumothorax:
        return pick("No pneumothorax.", "There is no pneumothorax.")
    return ""


def _closing_sentences(pick):
    return [pick("", "", "The mediastinal contours are normal.", "Mediastinal contours are unremarkable."),
            pick("", "No acute osseous abnormality.", "The visualized osseous structures are unremarkable.",
                 "Osseous structures are intact.")]


def _normal_impression(pick, findings):
    """A normal impression when the study shows nothing acute, else ""."""
    if findings.pleural_effusion or findings.pneumothorax or findings.consolidation or findings.lesion:
        return ""
    options = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.", "No acute intrathoracic process.")
    return pick(*options, *(("Normal chest radiograph.",) if not findings.labels() else ()))


_DEVICE_NAMES = {  # (noun, where its tip lies when in place)
    "endotracheal_tube": ("endotracheal tube", "with its tip above the carina"),
    "enteric_tube": ("enteric tube", "with its tip in the stomach"),
    "right_jugular_line": ("right internal jugular central venous catheter", "with its tip in the superior vena cava"),
    "left_subclavian_line": ("left subclavian central venous catheter", "with its tip in the superior vena cava"),
}


def _listed(words):
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _with_article(noun):
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def write_follow_up_report(findings, prior, rng, comparison=None):
    """(findings_text, impression_text) of a study read against the patient's prior study (both `PhantomFindings`).

    Every change (`change_labels`) is one sentence in each section, its change word beside the finding and side it
    is about ("Increased right pleural effusion, now moderate.", "Interval removal of the endotracheal tube."), so
    that a reader of single sentences can pair them; findings absent from both studies get the negative sentences
    of a first report. `comparison` opens the findings with a sentence naming the earlier study; None draws one of
    the usual openings (often none).
    """
    def pick(*options):
        return options[rng.integers(len(options))]

    changes = _changes(prior, findings)
    if comparison is None:
        comparison = pick("", "", "Comparison is made with the prior study.", "Compared with the prior radiograph.")
    body, impression = [comparison], []

    def state(sentences):
        body.extend(sentences[0])
        impression.extend(sentences[1])

    for finding, _, change in changes:
        if finding == "support_device":
            state(_device_change(change, prior.devices if change == "resolved" else findings.devices, pick))
    heart_body, heart_impression = next(
        (_heart_change(change, pick) for finding, _, change in changes if finding == "cardiomegaly"),
        ([_normal_heart(pick)], []))
    heart_first = rng.random() < 0.4
    if heart_first:
        body += heart_body

    for finding, side, change in changes:
        shown = prior if change == "resolved" else findings
        if finding == "consolidation":
            state(_consolidation_change(change, side, [lobe for place, lobe in shown.consolidation if place == side],
                                        pick))
        elif finding in ("nodule", "mass"):
            state(_lesion_change(change, *next(lesion for lesion in shown.lesion if lesion[:2] == (finding, side)),
                                 pick))
    body.append(_lung_negatives(pick, not prior.consolidation and not findings.consolidation,
                                not prior.lesion and not findings.lesion))

    for finding, noun, plural_noun in (("pneumothorax", "pneumothorax", "pneumothoraces"),
                                       ("pleural_effusion", "pleural effusion", "pleural effusions")):
        sides = {side: change for name, side, change in changes if name == finding}
        state(_sized_changes(noun, plural_noun, sides, dict(getattr(findings, finding)), pick))
    body.append(_pleural_negatives(pick, not prior.pleural_effusion and not findings.pleural_effusion,
                                   not prior.pneumothorax and not findings.pneumothorax))
    if not heart_first:
        body += heart_body
    body += _closing_sentences(pick)

    impression += heart_impression
    impression.append(_normal_impression(pick, findings))
    return " ".join(part for part in body if part), " ".join(part for part in impression if part)


# Each of these returns one change as ([findings sentences], [impression sentences]).

def _device_change(change, devices, pick):
    """`devices`: the set placed (new), removed (resolved) or still there (unchanged)."""
    if change == "new":
        nouns = [_DEVICE_NAMES[device][0] for device in devices]
        return ([pick(f"Interval placement of {_with_article(noun)} {tip}.", f"New {noun} {tip}.")
                 for noun, tip in (_DEVICE_NAMES[device] for device in devices)],
                [pick(f"Interval placement of {_listed([_with_article(noun) for noun in nouns])}.",
                      f"New {_listed(nouns)} in satisfactory position.")])
    nouns = _listed([_DEVICE_NAMES[device][0] for device in devices])
    has, is_ = ("has", "is") if len(devices) == 1 else ("have", "are")
    if change == "resolved":
        return ([pick(f"Interval removal of the {nouns}.", f"The {nouns} {has} been removed.",
                      "Support devices have been removed.")],
                [pick(f"Interval removal of the {nouns}.", "Support devices removed.")])
    return ([pick("Support devices are unchanged in position.", f"Unchanged position of the {nouns}.",
                  f"The {nouns} {is_} unchanged in position.")],
            [pick("Support devices unchanged.", "Lines and tubes unchanged in position.", f"Unchanged {nouns}.")])


def _heart_change(change, pick):
    if change == "new":
        return ([pick("New cardiomegaly.", "New enlargement of the cardiac silhouette.",
                      "The cardiac silhouette is newly enlarged.")],
                [pick("New cardiomegaly.", "Newly enlarged cardiac silhouette.")])
    if change == "resolved":
        return ["The cardiac silhouette is no longer enlarged."], ["Cardiomegaly has resolved."]
    return ([pick("Unchanged cardiomegaly.", "Stable cardiomegaly.", "Stable enlargement of the cardiac silhouette.",
                  "The enlarged cardiac silhouette is unchanged.")],
            [pick("Unchanged cardiomegaly.", "Stable cardiomegaly.")])


def _consolidation_change(change, side, lobes, pick):
    places = [_location(side, lobe) for lobe in lobes]
    where, adjective = " and ".join(place[0] for place in places), " and ".join(place[1] for place in places)
    if change == "new":
        return ([pick(f"New consolidation {where}.", f"New airspace opacity {where}, concerning for pneumonia.",
                      f"Interval development of {adjective} consolidation.")],
                [pick(f"New {adjective} consolidation, likely pneumonia.", f"New {adjective} pneumonia.")])
    if change == "resolved":
        return ([pick(f"Interval resolution of the {adjective} consolidation.",
                      f"The previously seen {adjective} consolidation has resolved.",
                      f"The {adjective} airspace opacity has resolved.")],
                [pick(f"Resolved {adjective} pneumonia.", f"Interval resolution of the {adjective} consolidation.")])
    return ([pick(f"Unchanged consolidation {where}.", f"Stable {adjective} airspace opacity.",
                  f"The {adjective} consolidation is unchanged.")],
            [pick(f"Unchanged {adjective} consolidation.", f"Stable {adjective} airspace disease.")])


def _lesion_change(change, kind, side, lobe, size_cm, pick):
    where, adjective = _location(side, lobe)
    noun = "pulmonary nodule" if kind == "nodule" else "mass"
    if change == "new":
        workup = ("Recommend chest CT for further evaluation." if kind == "nodule"
                  else "Concerning for malignancy; CT chest recommended.")
        return ([pick(f"New {size_cm} cm {kind} {where}.", f"New {adjective} {noun} measuring {size_cm} cm.")],
                [pick(f"New {size_cm} cm {adjective} {kind}.", f"New {adjective} {noun}.") + " " + workup])
    if change == "resolved":
        return [f"The previously seen {adjective} {kind} has resolved."], [f"Resolved {adjective} {kind}."]
    return ([pick(f"Unchanged {size_cm} cm {kind} {where}.", f"Stable {adjective} {noun} measuring {size_cm} cm.")],
            [pick(f"Unchanged {size_cm} cm {adjective} {kind}.", f"Stable {adjective} {noun}.")])


def _sized_changes(noun, plural_noun, changes, now, pick):
    """Effusions or pneumothoraces against the prior (`changes`: side -> change, `now`: side -> size): one statement
    per side, or one "bilateral" statement when both sides share the change and the size."""
    if len(changes) == 2 and changes["right"] == changes["left"] and now.get("right") == now.get("left"):
        statements = [("bilateral", changes["right"], now.get("right"))]
    else:
        statements = [(side, changes[side], now.get(side)) for side in SIDES if side in changes]
    body, impression = [], []
    for where, change, size in statements:
        plural = where == "bilateral"
        name = f"{where} {plural_noun if plural else noun}"
        article, has, is_ = ("", "have", "are") if plural else ("a ", "has", "is")
        if change == "new":
            body.append(pick(f"New {size} {name}.", f"Interval development of {article}{size} {name}.",
                             f"There {is_} {article}new {size} {name}."))
            impression.append(pick(f"New {size} {name}.", f"New {name}."))
        elif change in ("increased", "decreased"):
            verb = change[:-1]  # increase / decrease
            body.append(pick(f"{_capitalize(change)} {name}, now {size}.", f"The {name} {has} {change}, now {size}.",
                             f"Interval {verb} in the {name}, now {size}."))
            impression.append(pick(f"{_capitalize(change)} {name}.", f"{_capitalize(change)} {name}, now {size}."))
        elif change == "unchanged":
            body.append(pick(f"Unchanged {size} {name}.", f"Stable {size} {name}.", f"The {size} {name} {is_} unchanged."))
            impression.append(pick(f"Unchanged {name}.", f"Stable {size} {name}."))
        else:
            body.append(pick(f"Interval resolution of the {name}.", f"The previously seen {name} {has} resolved.",
                             f"The {name} {is_} no longer seen."))
            impression.append(pick(f"Resolved {name}.", f"Interval resolution of the {name}."))
    return body, impression


# --------------------------------------------------------------------------------------------------------------
# Reading a phantom-style report back into labels (negation- and side-aware rules)
# --------------------------------------------------------------------------------------------------------------

_CLAUSE_BREAK = re.compile(r"(?<!\d)\.(?!\d)|[;:\n]|\bbut\b|\bhowever\b")  # "2.5 cm" keeps its decimal point
_NEGATION = re.compile(r"\b(?:no|not|without|negative for|free of|absence of)\b")
# A negation stops at these (NegEx-style pseudo-terminators): "..., no markings beyond it, consistent with a
# pneumothorax" still asserts the pneumothorax.
_NEGATION_END = re.compile(r"\b(?:consistent with|compatible with|concerning for|suggestive of|which)\b")
# A finding gone since the prior study ("Interval resolution of the right pleural effusion.", "The endotracheal tube
# has been removed.", "... is no longer seen"): nothing in that clause is present.
_GONE = re.compile(r"\b(?:resolution|resolved|removal|removed|no longer)\b")
_SIDE_WORD = re.compile(r"\b(?:left|right|bilateral|bilaterally|both|lingula|lingular)\b")
_MENTIONS = (
    ("cardiomegaly", re.compile(r"\bcardiomegaly\b|\b(?:heart|cardiac silhouette)\b[^.;]*?\benlarged\b"
                                r"|\benlarge(?:d|ment)\b[\w ]*?\b(?:heart|cardiac)\b")),
    ("pleural_effusion", re.compile(r"\beffusions?\b")),
    ("pneumothorax", re.compile(r"\bpneumothora(?:x|ces)\b")),
    ("consolidation", re.compile(r"\bconsolidation\b|\bairspace (?:opacity|opacities|disease)\b|\bpneumonia\b|\binfiltrates?\b")),
    ("nodule", re.compile(r"\bnodules?\b|\bnodular opacity\b")),
    ("mass", re.compile(r"\bmass(?:es)?\b")),
    ("support_device", re.compile(r"\b(?:endotracheal|enteric|nasogastric|feeding) tube|\bet tube\b|\bng tube\b"
                                  r"|\bcentral (?:venous )?(?:line|catheter)|\bcatheter\b|\bpicc\b"
                                  r"|\bsupport devices?\b|\b(?:lines?|tubes?) (?:and|or) (?:lines?|tubes?)\b")),
)
_SIDED = {"pleural_effusion", "pneumothorax", "consolidation", "nodule", "mass"}


def _negated_spans(clause):
    if _GONE.search(clause):
        return [(0, len(clause))]
    spans = []
    for cue in _NEGATION.finditer(clause):
        end = _NEGATION_END.search(clause, cue.end())
        spans.append((cue.start(), end.start() if end else len(clause)))
    return spans


def _sides(clause, spans, plural):
    sides = set()
    for word in _SIDE_WORD.finditer(clause):
        if any(start <= word.start() < end for start, end in spans):
            continue  # "no left effusion" says nothing about where a finding is
        name = word.group()
        sides |= {"right": {"right"}, "left": {"left"}, "lingula": {"left"}, "lingular": {"left"}}.get(name, set(SIDES))
    return sides or (set(SIDES) if plural else set())  # "pleural effusions" with no side: both


def labels_from_report(text):
    """Reads a phantom-style report (either section or both, possibly model-drafted) back into `PHANTOM_LABELS`.

    Sentence-level rules: a mention counts unless it lies inside a negation ("no", "without", "not", ...) that no
    "consistent with"/"concerning for" has ended, or its clause says it is gone since the prior study ("resolved",
    "removal", "no longer"); new, increased, decreased and unchanged findings are present. Sided findings take the
    side words of their clause, with "bilateral" meaning both sides. One finding per sentence is what the generator
    writes and what this expects.
    """
    labels = set()
    for clause in _CLAUSE_BREAK.split((text or "").lower()):
        spans = _negated_spans(clause)
        for finding, pattern in _MENTIONS:
            for mention in pattern.finditer(clause):
                if any(start <= mention.end() - 1 < end for start, end in spans):
                    continue
                if finding not in _SIDED:
                    labels.add(finding)
                    continue
                plural = mention.group().endswith(("s", "ces")) and not mention.group().endswith("mass")
                labels |= {f"{finding}:{side}" for side in _sides(clause, spans, plural)}
    return sorted(labels)


# --------------------------------------------------------------------------------------------------------------
# Studies and datasets
# --------------------------------------------------------------------------------------------------------------

def generate_study(rng_or_seed, image_size=256, findings=None):
    """One synthetic study: {"image": uint8 HxW array, "findings": str, "impression": str, "labels": [str]}.

    The patient (anatomy, exposure, noise), the findings, their exact shapes and the report wording come from
    four separate random streams, so passing `findings` (a `PhantomFindings`) with the same seed draws the same
    patient with other findings: that is how the tests check that a finding changes the image where it should.
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    patient_rng, findings_rng, shape_rng, report_rng = (np.random.default_rng(seed)
                                                        for seed in rng.integers(0, 2 ** 63, size=4))
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px to draw a chest, got {image_size}")
    patient = _sample_patient(patient_rng, int(image_size))
    if findings is None:
        findings = sample_findings(findings_rng)
    findings_text, impression_text = write_report(findings, report_rng)
    return {"image": _render(patient, findings, lambda key: shape_rng), "findings": findings_text,
            "impression": impression_text, "labels": findings.labels()}


def generate_series(rng_or_seed, num_studies, image_size=256):
    """One synthetic patient's studies over time, oldest first: a list of dicts with generate_study's keys and
    "truth" (the `PhantomFindings` drawn), "study_datetime" (ISO text) and "days_after_prior" (None for the first).

    One anatomy throughout, placed a few px differently and exposed anew at each study; the first study's findings
    are drawn as for a single study, each later one's evolve from its prior's (`_follow_up_findings`), and a finding
    keeps its exact shape while it persists. The first study is on a random date in 2020-2024, each later one 1-365
    days after its prior, each at a random time of day. A follow-up's report states every change against the prior
    (`write_follow_up_report`) and its labels add the change labels (`change_labels`). The first study reads as a
    first study: mostly the single-study report, some saying there is no prior, and about 10% comparing with an
    outside radiograph that is not in the data (present findings worded "unchanged", presence labels only), as real
    archives do. The first studies of a series do not depend on `num_studies`.
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    patient_seed, findings_seed, shape_seed, report_seed, visit_seed = rng.integers(0, 2 ** 63, size=5)
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px to draw a chest, got {image_size}")
    if num_studies < 1:
        raise ValueError(f"num_studies must be at least 1, got {num_studies}")
    patient = _sample_patient(np.random.default_rng(patient_seed), int(image_size))
    findings_rng, report_rng, visit_rng = (np.random.default_rng(seed) for seed in (findings_seed, report_seed, visit_seed))

    def shape_rng(key):  # one stream per finding: a persisting finding is drawn the same at every study
        return np.random.default_rng([shape_seed, zlib.crc32(key.encode())])

    first_days = (datetime.date(2025, 1, 1) - datetime.date(2020, 1, 1)).days  # the first study: any day of 2020-2024
    studies, prior, prior_day = [], None, None
    for _ in range(num_studies):
        if prior is None:
            day = datetime.date(2020, 1, 1) + datetime.timedelta(days=int(visit_rng.integers(first_days)))
            findings = sample_findings(findings_rng)
            findings_text, impression_text = _first_study_report(findings, day.year, report_rng)
            labels = findings.labels()
        else:
            day = prior_day + datetime.timedelta(days=int(visit_rng.integers(1, 366)))
            findings = _follow_up_findings(prior, findings_rng)
            findings_text, impression_text = write_follow_up_report(findings, prior, report_rng)
            labels = sorted(findings.labels() + change_labels(prior, findings))
        moment = datetime.datetime.combine(day, datetime.time()) + datetime.timedelta(
            minutes=int(visit_rng.integers(24 * 60)))
        studies.append({
            "image": _render(_positioned(patient, visit_rng), findings, shape_rng), "findings": findings_text,
            "impression": impression_text, "labels": labels, "truth": findings, "study_datetime": moment.isoformat(),
            "days_after_prior": None if prior is None else (day - prior_day).days})
        prior, prior_day = findings, day
    return studies


def _first_study_report(findings, year, rng):
    """A first study's report: the single-study report, about 30% of them opening with "No prior study for
    comparison.", and about 10% read against an outside radiograph of an earlier year that is not in the data."""
    choice = rng.random()
    if choice < 0.1:
        earlier = year - int(rng.integers(1, 4))
        comparison = ("Comparison to an outside radiograph from {}.", "Compared with an outside chest radiograph "
                      "from {}.", "Comparison with an outside radiograph dated {}.")[rng.integers(3)]
        return write_follow_up_report(findings, findings, rng, comparison=comparison.format(earlier))
    findings_text, impression_text = write_report(findings, rng)
    if choice < 0.4:
        opening = ("No prior study for comparison.", "No prior for comparison.",
                   "No prior studies available for comparison.")[rng.integers(3)]
        findings_text = f"{opening} {findings_text}"
    return findings_text, impression_text


def encode_png(image):
    """PNG bytes of a uint8 grayscale image (deterministic: same pixels, same bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def study_id(index):
    return f"phantom-{index:06d}"


def patient_id(index):
    return f"phantom-patient-{index:06d}"


def series_study_id(patient, number):
    """The id of study `number` (1 = the first) of phantom patient `patient`: "phantom-000012-2"."""
    return f"{study_id(patient)}-{number}"


def _split_counts(num_studies, split_fractions):
    """Studies per split from the fractions; a split with a non-zero fraction gets at least one study when there are
    enough studies."""
    if len(split_fractions) != 3 or min(split_fractions) < 0 or not math.isclose(sum(split_fractions), 1.0):
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1 (train, validation, test), "
                         f"got {split_fractions}")
    counts = [round(fraction * num_studies) for fraction in split_fractions]
    counts[0] += num_studies - sum(counts)  # rounding leftovers go to train
    for index, fraction in enumerate(split_fractions):
        if fraction > 0 and counts[index] == 0 and max(counts) > 1:
            counts[counts.index(max(counts))] -= 1
            counts[index] = 1
    return counts


def assign_splits(num_studies, seed=0, split_fractions=(0.8, 0.1, 0.1)):
    """Split name per study index: counts from the fractions, studies shuffled by `seed`.

    A split with a non-zero fraction gets at least one study when there are enough studies.
    """
    counts = _split_counts(num_studies, split_fractions)
    order = np.random.default_rng([seed, 1]).permutation(num_studies)  # stream [seed, 1]: the split shuffle
    splits = [""] * num_studies
    for split, start, stop in zip(SPLITS, np.cumsum([0] + counts[:2]), np.cumsum(counts)):
        for index in order[start:stop]:
            splits[index] = split
    return splits


def assign_patient_splits(studies_per_patient, seed=0, split_fractions=(0.8, 0.1, 0.1)):
    """Split name per patient, so that no patient has studies in two splits: the patients, shuffled by `seed`, each
    join the split furthest below its share of the studies (assign_splits' counts), so the splits' study counts come
    out within a patient's studies of the fractions."""
    targets = _split_counts(sum(studies_per_patient), split_fractions)
    counts, splits = [0, 0, 0], [""] * len(studies_per_patient)
    for patient in np.random.default_rng([seed, 1]).permutation(len(studies_per_patient)):
        index = int(np.argmax([target - count for target, count in zip(targets, counts)]))
        splits[patient] = SPLITS[index]
        counts[index] += studies_per_patient[patient]
    return splits


PARALLEL_MIN_STUDIES = 4000


def default_num_proc(num_studies):
    """Worker processes worth starting to draw `num_studies`: a spawned worker first imports the package (about 4 s
    on 2 cores), which only a few thousand studies repay (measured at 128 px on 2 cores: 1,600 studies took 4.3 s in
    one process and 6.7 s with two workers; the demo's 16,000 went from 47 s to 32 s)."""
    return (os.cpu_count() or 1) if num_studies >= PARALLEL_MIN_STUDIES else 1


def _draw_study_png(seed, image_size, index):
    """Study `index` of a phantom dataset with its image as PNG bytes (a top-level function: worker processes
    receive it by name)."""
    study = generate_study(np.random.default_rng([seed, 0, index]), image_size)
    study["image"] = encode_png(study["image"])
    return study


def _patient_stream(seed, patient, max_studies_per_patient):
    """Phantom patient `patient`'s random stream ([seed, 2, patient]) and how many studies it has (1 to the maximum,
    each as likely)."""
    rng = np.random.default_rng([seed, 2, patient])
    return rng, int(rng.integers(1, max_studies_per_patient + 1))


def _draw_series_png(seed, image_size, max_studies_per_patient, work):
    """The studies of one phantom patient, work = (patient, how many of its studies to draw), with PNG bytes (a
    top-level function: worker processes receive it by name)."""
    patient, num_studies = work
    rng, _ = _patient_stream(seed, patient, max_studies_per_patient)
    studies = generate_series(rng, num_studies, image_size)
    for study in studies:
        study["image"] = encode_png(study["image"])
    return studies


def make_phantom_dataset(num_studies, seed=0, image_size=256, split_fractions=(0.8, 0.1, 0.1),
                         report_target="both", progress=False, num_proc=1, max_studies_per_patient=1):
    """A `datasets.DatasetDict` (train/validation/test) of phantom studies in the schema of `data.schema.report_features()`.

    With `max_studies_per_patient` 1, every study is its own patient (patient, date and prior columns empty): study i
    is drawn from seed [seed, 0, i] and splits are disjoint sets of studies. Above 1, patients have 1 to that many
    studies (each count as likely; the last patient is cut short to make `num_studies`), drawn by `generate_series`
    from seed [seed, 2, patient] with ids "phantom-000012-2" (patient 12's second study), patient ids, study dates
    and each study's prior (`schema.link_priors`); splits are disjoint sets of patients with about the fractions of
    the studies (`assign_patient_splits`). Either way a study is the same whatever `num_studies` is (a patient cut
    short has its first studies), and the same arguments give the same PNG bytes with any `num_proc` (worker processes drawing in
    parallel; `default_num_proc` says how many pay off). A split that gets no study is left out. `progress=True`
    shows a tqdm bar.
    """
    import datasets  # the schema needs it; generate_study and labels_from_report need only numpy and PIL
    from tqdm.auto import tqdm

    if num_studies < 1:
        raise ValueError(f"num_studies must be at least 1, got {num_studies}")
    if max_studies_per_patient < 1:
        raise ValueError(f"max_studies_per_patient must be at least 1, got {max_studies_per_patient}")
    series = max_studies_per_patient > 1
    if series:
        # Work units are whole patients, so that any number of worker processes draws the same series.
        studies_per_patient, drawn = [], 0
        while drawn < num_studies:
            count = min(_patient_stream(seed, len(studies_per_patient), max_studies_per_patient)[1], num_studies - drawn)
            studies_per_patient.append(count)
            drawn += count
        units = list(enumerate(studies_per_patient))
        splits = assign_patient_splits(studies_per_patient, seed, split_fractions)
        draw = functools.partial(_draw_series_png, seed, image_size, max_studies_per_patient)
    else:
        units = range(num_studies)
        splits = assign_splits(num_studies, seed, split_fractions)
        draw = functools.partial(_draw_study_png, seed, image_size)
    rows = {split: [] for split in SPLITS}
    with contextlib.ExitStack() as stack:
        if num_proc > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(num_proc))
            results = pool.imap(draw, units, chunksize=64)  # in order
        else:
            results = map(draw, units)
        bar = stack.enter_context(tqdm(total=num_studies, desc="drawing phantom studies", unit="study",
                                       disable=not progress))
        for index, result in enumerate(results):
            if series:
                for number, study in enumerate(result, start=1):
                    rows[splits[index]].append(make_example(
                        series_study_id(index, number), [{"bytes": study["image"], "path": None}], study["findings"],
                        study["impression"], splits[index], SOURCE, report_target=report_target, labels=study["labels"],
                        patient_id=patient_id(index), study_datetime=study["study_datetime"]))
                bar.update(len(result))
            else:
                rows[splits[index]].append(make_example(
                    study_id(index), [{"bytes": result["image"], "path": None}], result["findings"], result["impression"],
                    splits[index], SOURCE, report_target=report_target, labels=result["labels"]))
                bar.update()
    features = report_features()
    info = datasets.DatasetInfo(description="Synthetic chest radiograph phantoms drawn by modeling_cliptt5.data.phantom: "
                                            "not real patients; for demos and tests only.", features=features)
    # A split with no study is left out: `datasets` saves an empty split without a data file and cannot load it.
    dataset = datasets.DatasetDict({
        split: datasets.Dataset.from_list(rows[split], features=features, info=info.copy(), split=split)
        for split in SPLITS if rows[split]})
    return link_priors(dataset) if series else dataset

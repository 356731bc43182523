"""Draft reports for image files: collect the inputs, group views into studies, run the model batch by batch.

cliptt5-generate is the command line over these functions; a notebook or a service can call them directly
(`load_release`, then `draft_reports`).

Imports stay light until a model is loaded (torch and transformers inside the functions that need them), so that
the command's --help answers at once.

Studies and views
- `group_studies(files, study_by)`:
  "none"   - every file is its own study (its id: the file name without suffix);
  "folder" - the files of one folder are the views of one study (its id: the folder name);
  "prefix" - files in one folder whose names agree up to the last "_" or "-" are one study
             ("s123_frontal.png" + "s123_lateral.png" -> study "s123"; a name without "_" or "-" stands alone).
  Views are ordered by file name, then (when read) frontal first where DICOM headers name the views
  (images/views.py); a study of several images none of whose headers names a frontal view gets a warning that
  says which one is taken as the frontal.
- `fit_views(study, num_views)`: a model reads a fixed number of views. A study with fewer views repeats its
  views in order (frontal only, 2-view model -> frontal, frontal); a study with more keeps the first
  `num_views`. Both say so in a warning.
- A view that cannot be read is reported and left out; its study goes on with the views that remain.
- A view is a file path or anything with a `name` and `read_bytes()` (a converted dataset's image:
  inference.archive.DatasetView).

Every study gets one record: drafted, refused (on purpose: not a radiograph by its DICOM header, unlike the training
images with `refuse_ood`) or failed (no view could be read, the model failed on its batch), the last two with the
reason (`DraftedReport.status`, `.error`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from modeling_cliptt5.images.image_io import DEFAULT_MAX_PIXELS, ImageReadError, is_dicom, open_image
from modeling_cliptt5.images.image_source import ImageRefused
from modeling_cliptt5.images.views import frontal_first, header_view
from modeling_cliptt5.inference.model_sources import resolve_release

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")
STUDY_GROUPINGS = ("folder", "prefix", "none")
# generate() keywords that override the heads' decisions on the prior study (the model's generate() takes them)
PRIOR_OVERRIDES = ("prior_findings", "prior_changes")


@dataclass
class Study:
    """One study: its id and the files of its views, in the order the model will see them; for a release that reads
    priors, the patient's prior study (`priors.link_priors`, or named) and its report, where known."""

    study_id: str
    files: list[Path]
    warnings: list[str] = field(default_factory=list)
    prior: Study | None = None
    prior_report: str | None = None


@dataclass
class DraftedReport:
    """The one record of a draft, made once by `draft_batch` (and given its study by `draft_reports`), or the reason
    there is none (`error`, and `refused`: on purpose rather than a failure). The command's JSONL/CSV rows (`row`), the
    page and its exports read it."""

    study_id: str = ""
    files: list[Path] = field(default_factory=list)
    report: str = ""  # the whole text, FINDINGS: ... IMPRESSION: ...
    findings: str | None = None
    impression: str | None = None
    seconds: float = 0.0  # this study's share of its batch: reading, preprocessing and generation
    engine: str = ""  # how it was drafted: "PyTorch", "ONNX Runtime int8", ... (engines.py)
    # The draft never wrote its end token: it stopped at the token limit (max_new_tokens), cut off mid-report or
    # caught in a repeating loop. A reader should know before reading it.
    truncated: bool = False
    # Sentences the draft says again in the same section (evaluation/repetition.py): degenerate output to check
    repeated_sentences: int = 0
    error: str | None = None
    refused: bool = False  # `error` is a refusal (not a radiograph, --refuse-ood), not a failure to read or draft
    # The prior study the draft compared with ("" for none: the draft was written as a first study)
    prior_id: str = ""
    # With a finding head: each finding's probability, those at or above their threshold, the findings the draft
    # followed (as generation used them: the head's decisions, or the caller's where given), and where the draft's
    # text and those findings disagree (None when no rule reader knows the label set)
    finding_probabilities: dict | None = None
    predicted_findings: list | None = None
    guidance: list | None = None
    disagreements: list | None = None
    finding_maps: object = None  # [views, findings, grid, grid] tensor, for the page's heatmaps
    # With the release's OOD summary: how unlike the training images the study is, whether that is beyond the
    # 99th percentile of its validation studies (the threshold)
    ood_score: float | None = None
    ood_flag: bool | None = None
    ood_threshold: float | None = None

    @property
    def status(self) -> str:
        """"drafted", "refused" or "failed" (the last two with `error` as the reason)."""
        if self.error is None:
            return "drafted"
        return "refused" if self.refused else "failed"

    def row(self, with_labels=False):
        """The study's JSONL/CSV row: id, status and reason ("" for a draft), files, text, flags and timing, the
        rule labeler's labels (`with_labels`), the finding head's output and the OOD score where the release has
        them. A study refused or failed has an empty report."""
        row = {"id": self.study_id, "status": self.status, "reason": self.error or "",
               "input_files": [str(path) for path in self.files], "report": self.report,
               "findings": self.findings, "impression": self.impression, "truncated": self.truncated,
               "repeated_sentences": self.repeated_sentences, "seconds": round(self.seconds, 3),
               "prior_id": self.prior_id}
        if with_labels:
            row.update(finding_labels(self.report))
        if self.finding_probabilities is not None:
            row.update(finding_probabilities=self.finding_probabilities, predicted_findings=self.predicted_findings,
                       disagreements=self.disagreements)
        if self.ood_score is not None:
            row.update(ood_score=self.ood_score, ood_flag=self.ood_flag)
        return row


def looks_like_image(path: Path) -> bool:
    """Image suffix, or a suffix-less DICOM file (PACS exports often have names like IM0001)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as handle:
            return is_dicom(handle.read(132))
    except OSError:
        return False


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (searched recursively) and glob patterns -> (image files in order, errors for inputs
    that name nothing). A file named directly is kept whatever its suffix, so that its reader can say what is
    wrong with it; files found in folders or by patterns are kept when they look like images."""
    files, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and looks_like_image(p))
            if not found:
                errors.append(f"{item}: folder holds no PNG, JPEG or DICOM files")
            files.extend(found)
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            found = [p for p in found if looks_like_image(p)]
            if not found:
                errors.append(f"{item}: no image files match this pattern")
            files.extend(found)
        else:
            errors.append(f"{item}: file not found")
    unique = list(dict.fromkeys(files))  # a file named twice (e.g. by a folder and a pattern) is drafted once
    return unique, errors


def study_key(path: Path, study_by: str) -> tuple[str, str]:
    """(grouping key, study id) of one file under a grouping rule (see the module docstring)."""
    if study_by == "none":
        return str(path), path.stem
    if study_by == "folder":
        return str(path.parent), path.parent.name or str(path.parent)
    if study_by == "prefix":
        cut = max(path.stem.rfind("_"), path.stem.rfind("-"))
        prefix = path.stem[:cut] if cut > 0 else path.stem
        return str(path.parent / prefix), prefix
    raise ValueError(f"study_by must be one of {STUDY_GROUPINGS}, got {study_by!r}")


def group_studies(files: list[Path], study_by: str) -> list[Study]:
    """Groups files into studies, in order of first appearance; views within a study in file-name order."""
    groups: dict[str, Study] = {}
    for path in files:
        key, study_id = study_key(path, study_by)
        groups.setdefault(key, Study(study_id, [])).files.append(path)
    studies = list(groups.values())
    for study in studies:
        study.files.sort(key=lambda path: path.name)
    make_ids_unique(studies, study_by)
    return studies


def make_ids_unique(studies: list[Study], study_by: str) -> None:
    """Two folders can hold studies with the same name: prefix a repeated id with the folder above it."""
    counts: dict[str, int] = {}
    for study in studies:
        counts[study.study_id] = counts.get(study.study_id, 0) + 1
    for study in studies:
        if counts[study.study_id] > 1:
            folder = study.files[0].parent.parent if study_by == "folder" else study.files[0].parent
            study.study_id = f"{folder.name}/{study.study_id}"


def fit_views(files: list, num_views: int, study_id: str) -> tuple[list, str | None]:
    """Repeats or trims a study's views to the model's `num_views`; returns (views, warning or None)."""
    if len(files) == num_views:
        return list(files), None
    if len(files) < num_views:
        views = [files[i % len(files)] for i in range(num_views)]
        return views, f"{study_id}: {len(files)} view(s), the model reads {num_views}: repeating views in order"
    return list(files[:num_views]), (
        f"{study_id}: {len(files)} views, the model reads {num_views}: using the first {num_views} (frontal first "
        f"where the headers name the views, else by file name)"
    )


def open_view(view, max_pixels: int, any_modality: bool, on_doubt):
    """(image, the view named by its DICOM header or "") of a file path or a dataset's view (`name`, `read_bytes()`)."""
    source = view if isinstance(view, (str, os.PathLike)) else view.read_bytes()
    image = open_image(source, name=str(view), max_pixels=max_pixels, any_modality=any_modality, on_doubt=on_doubt)
    return image, header_view(source)


def read_study_images(study: Study, num_views: int, max_pixels: int, any_modality: bool = False,
                      frontal: str | None = None) -> tuple[list, list[ImageReadError]]:
    """Opens the study's views, leaving out unreadable ones; returns (images fitted to num_views, errors: an
    ImageReadError each, "FILE: REASON" as text; an ImageRefused for a file refused on purpose).

    `frontal`: a file-name pattern (fnmatch, e.g. "*_pa.*") naming the study's frontal image, which then comes first
    whatever the headers say (views.frontal_first). The readers' doubts about a file (a DICOM without Modality,
    another body part...) join `study.warnings`, and so does a pattern that matches none of the study's files."""
    images, used, views, errors = [], [], [], []
    for path in study.files:
        try:
            image, view = open_view(path, max_pixels, any_modality, study.warnings.append)
        except ImageReadError as error:
            errors.append(error)
            continue
        images.append(image)
        used.append(path)
        views.append(view)
    if not images:
        return [], errors
    # The headers, not the file names, say which view is the frontal one (images/views.py), unless told otherwise.
    names = [path.name for path in used]
    chosen = next((name for name in names if fnmatch.fnmatch(name, frontal)), None) if frontal else None
    if frontal and chosen is None:
        study.warnings.append(f"{study.study_id}: no file matches --frontal {frontal!r}: the headers (else the file "
                              "names) order the views")
    pairs, _, note = frontal_first(list(zip(images, used)), views, names, chosen)
    if note:
        study.warnings.append(f"{study.study_id}: {note}")
    images, used = [image for image, _ in pairs], [path for _, path in pairs]
    images, warning = fit_views(images, num_views, study.study_id)
    if warning:
        study.warnings.append(warning)
    study.files = used
    return images, errors


def load_release(path_or_id, device="cpu", dtype="float32", optimize=False):
    """The `Release` (engines.py) of a CLIP-T5 release folder or Hub id: its engine (`load_model`; `optimize`: the
    CPU fast path, ONNX Runtime where installed), AutoProcessor, OOD summary and identity. What cliptt5-generate,
    the page and the demo draft with."""
    from transformers import AutoProcessor

    from modeling_cliptt5.inference.engines import OnnxEngine, Release, TorchEngine
    from modeling_cliptt5.inference.model_sources import release_identity
    from modeling_cliptt5.inference.onnx_inference import OnnxCLIPT5
    from modeling_cliptt5.inference.ood import load_summary

    folder = resolve_release(path_or_id)
    model = load_model(folder, device, dtype, optimize)
    engine = OnnxEngine(model) if isinstance(model, OnnxCLIPT5) else TorchEngine(model)
    return Release(engine, AutoProcessor.from_pretrained(folder, trust_remote_code=False),
                   ood_summary=load_summary(folder), folder=Path(folder), identity=release_identity(folder))


def load_model(path_or_id, device="cpu", dtype="float32", optimize=False):
    """The model of a CLIP-T5 release folder or Hub id, through AutoConfig / AutoModelForSeq2SeqLM: the one model
    loader (load_release, the fast path's export and the benchmarks use it). A name that is neither a folder nor a
    Hub id that can be reached raises model_sources.ModelSourceError, one line. This package registers CLIP-T5
    with the Auto classes, so they build its own classes and no code saved in the release runs. (transformers 5
    prefers such registered classes even with trust_remote_code=True, 4.x would run the release's files: passing
    False keeps the two alike. Without the package, a release loads from its own code files with
    trust_remote_code=True: tests/test_remote_code.py.)

    `optimize`: the CPU fast path (fast_inference.load_for_cpu: an onnx_inference.OnnxCLIPT5, or the PyTorch model
    with int8 layers). Raises ValueError for a folder of another model type, or `optimize` with another device or
    dtype."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from modeling_cliptt5 import register_auto_classes
    from modeling_cliptt5.configuration_cliptt5 import CLIPT5Config

    register_auto_classes()
    folder = resolve_release(path_or_id)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    if config.model_type != CLIPT5Config.model_type:
        raise ValueError(f"{path_or_id} holds a {config.model_type!r} model, not a CLIP-T5 release")
    if optimize and (device != "cpu" or dtype != "float32"):
        raise ValueError(f"--optimize is a CPU path with int8 weights; drop it, or use --device cpu and "
                         f"--dtype float32 (got {device}, {dtype})")
    if optimize:
        from modeling_cliptt5.inference.fast_inference import load_for_cpu

        return load_for_cpu(folder)
    return AutoModelForSeq2SeqLM.from_pretrained(folder, config=config, dtype=getattr(torch, dtype),
                                                 trust_remote_code=False).eval().to(device)


def stopped_at_limit(sequences, eos_token_id):
    """[drafts] bool: True where a generated sequence holds no end token, i.e. generation stopped at the length
    limit (beams and padding keep the end token of a finished draft)."""
    import torch

    ends = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    return ~torch.isin(sequences, torch.tensor(ends, dtype=sequences.dtype)).any(dim=1)


def draft_batch(release, images: list, prompt: str | None, generate_kwargs: dict,
                findings: list | None = None, priors: list | None = None) -> list[DraftedReport]:
    """Images (one per study, or a list of views per study) -> a DraftedReport per study, without its study id,
    files and time (draft_reports adds them). `findings` (one entry per study, see
    CLIPT5ForConditionalGeneration.findings_tensor) replace the finding head's decisions in the guidance. `priors`
    (a release that reads them): one (images or None, report or None) per study, or None for a study without;
    `generate_kwargs` may hold prior_findings and prior_changes, as the model's generate() takes them."""
    import torch

    from modeling_cliptt5.evaluation.findings import disagreements, text_reader
    from modeling_cliptt5.evaluation.repetition import report_repeats

    model, processor = release.model, release.processor
    prior_inputs = {}
    if priors and any(prior is not None for prior in priors):
        prior_images = [None if prior is None else prior[0] for prior in priors]
        prior_reports = [None if prior is None else prior[1] for prior in priors]
        with warnings.catch_warnings():  # read_prior has said which study's prior report is truncated
            warnings.filterwarnings("ignore", message="prior report of")
            prior_inputs = processor(prior_images=prior_images if any(image is not None for image in prior_images)
                                     else None, prior_reports=prior_reports if any(prior_reports) else None,
                                     return_tensors="pt")
    inputs = processor(images=images, text=[prompt] * len(images) if prompt else None, return_tensors="pt")
    inputs = {name: tensor.to(model.device) for name, tensor in inputs.items()}
    prior = {name: tensor.to(model.device) for name, tensor in prior_inputs.items()}
    # The caller's overrides of the heads' decisions on the prior (generate()'s prior_findings, prior_changes) are
    # read where the prior's tokens are built, with the rest of the prior: the engines take them there
    generate_kwargs = dict(generate_kwargs)
    prior.update({name: generate_kwargs.pop(name) for name in PRIOR_OVERRIDES if name in generate_kwargs})
    with torch.inference_mode():
        output = release.engine.generate_with_findings(**inputs, findings=findings, prior=prior, **generate_kwargs)
    ends = generate_kwargs.get("eos_token_id", model.generation_config.eos_token_id)
    drafts = [DraftedReport(report=text["text"], findings=text["findings"], impression=text["impression"],
                            engine=release.engine.name, truncated=truncated,
                            repeated_sentences=report_repeats(text["text"]))
              for text, truncated in zip(processor.batch_decode_reports(output.sequences),
                                         stopped_at_limit(output.sequences, ends).tolist())]
    summary = release.ood_summary
    if summary is not None:
        scores = summary.study_scores(output.vectors)
        for draft, score, flag in zip(drafts, scores.tolist(), summary.flags(scores).tolist()):
            draft.ood_score, draft.ood_flag, draft.ood_threshold = round(score, 3), flag, round(summary.threshold, 3)
    head = output.head
    if head is None:
        return drafts
    names = list(model.config.finding_labels)
    reader = text_reader(names)
    for study, draft in enumerate(drafts):
        followed = output.guidance[study].tolist()
        draft.finding_probabilities = {name: round(float(p), 4) for name, p in zip(names, head.probabilities[study])}
        draft.predicted_findings = [name for name, flag in zip(names, head.present[study].tolist()) if flag]
        draft.guidance = [name for name, flag in zip(names, followed) if flag]
        draft.disagreements = disagreements(followed, draft.report, names, reader)
        draft.finding_maps = head.maps[study].cpu()
    return drafts


def draft_reports(
    release,
    studies: list[Study],
    batch_size: int = 4,
    prompt: str | None = None,
    generate_kwargs: dict | None = None,
    max_pixels: int | None = None,
    on_error=None,
    on_warning=None,
    any_modality: bool = False,
    refuse_ood: bool = False,
    frontal: str | None = None,
):
    """Yields a `DraftedReport` per study, in batches of `batch_size` studies.

    A study whose views are all unreadable (or all refused: not radiographs), or a batch the model fails on, yields
    reports with `error` set (`status` "failed", or "refused" for a refusal); the other studies go on.
    `on_error(message)` hears about each unreadable view and failed batch ("FILE: REASON"), `on_warning(message)`
    about each study whose views were repeated or trimmed and each file the readers doubt. `any_modality`: read
    DICOM objects that are not projection radiographs too (dicom.check_radiograph).
    `refuse_ood`: a study the release's OOD summary flags is refused: `error` (and on_error) instead of its draft.
    `frontal`: a file-name pattern naming each study's frontal image (read_study_images).
    """
    generate_kwargs = generate_kwargs or {}
    on_error = on_error or (lambda message: None)
    on_warning = on_warning or (lambda message: None)
    num_views = release.config.num_views
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    for start in range(0, len(studies), batch_size):
        started = time.perf_counter()
        ready, batch_images, batch_priors = [], [], []
        for study in studies[start : start + batch_size]:
            images, errors = read_study_images(study, num_views, max_pixels, any_modality, frontal)
            for error in errors:
                on_error(str(error))
            for message in study.warnings:
                on_warning(message)
            if not images:
                # refused when every view was refused on purpose (a CT slice...), failed when one could not be read
                yield DraftedReport(study.study_id, study.files,
                                    error="no readable image: " + "; ".join(map(str, errors)),
                                    refused=all(isinstance(error, ImageRefused) for error in errors))
                continue
            ready.append(study)
            batch_images.append(images if num_views > 1 else images[0])
            batch_priors.append(read_prior(release, study, max_pixels, any_modality, frontal, on_error, on_warning))
        if not ready:
            continue
        try:
            drafts = draft_batch(release, batch_images, prompt, generate_kwargs, priors=batch_priors)
        except Exception as error:  # one failing batch (e.g. out of memory) must not stop the run
            message = f"generation failed for this batch ({type(error).__name__}: {error})"
            for study in ready:
                on_error(f"{study.study_id}: {message}")
                yield DraftedReport(study.study_id, study.files, error=message)
            continue
        seconds = (time.perf_counter() - started) / len(ready)  # each study's share of its batch
        for study, draft, prior in zip(ready, drafts, batch_priors):
            if refuse_ood and draft.ood_flag:
                message = ood_refusal(draft.ood_score, draft.ood_threshold)
                on_error(f"{study.study_id}: {message}")
                yield DraftedReport(study.study_id, study.files, error=message, refused=True,
                                    ood_score=draft.ood_score, ood_flag=True, ood_threshold=draft.ood_threshold)
                continue
            yield dataclasses.replace(draft, study_id=study.study_id, files=study.files, seconds=seconds,
                                      prior_id=prior_name(study) if prior is not None else "")


def prior_name(study):
    """How a draft's record names the prior it read: the prior study's id, or "(prior report)" for a report alone."""
    return study.prior.study_id if study.prior is not None else "(prior report)"


def read_prior(release, study, max_pixels, any_modality=False, frontal=None, on_error=None, on_warning=None):
    """(prior images or None, prior report or None) for `study`, or None when it has no prior or the release does not
    read one (a warning says so). A prior image that cannot be read leaves the prior report alone; a report longer
    than the release reads is truncated, with a warning."""
    on_error = on_error or (lambda message: None)
    on_warning = on_warning or (lambda message: None)
    if study.prior is None and not study.prior_report:
        return None
    what = prior_name(study)
    config = release.config
    if not config.reads_prior:
        on_warning(f"{study.study_id}: this release does not read a prior study: drafted without {what}, as a first "
                   "study")
        return None
    images = None
    if study.prior is not None:
        images, errors = read_study_images(study.prior, config.num_views, max_pixels, any_modality, frontal)
        for error in errors:
            on_error(f"{study.study_id}: prior {error}")
        images = (images if config.num_views > 1 else images[0]) if images else None
    report = study.prior_report or None
    if report:
        tokens = len(release.processor.tokenizer(report)["input_ids"])
        if tokens > config.max_prior_report_tokens:
            on_warning(f"{study.study_id}: the prior report of {what} has {tokens} tokens; this release reads the "
                       f"first {config.max_prior_report_tokens}")
    return None if images is None and report is None else (images, report)


def ood_refusal(score, threshold):
    return (f"not drafted: unlike this model's training images (ood_score {score:.2f}, beyond {threshold:.2f}, the "
            f"99th percentile of its validation studies; --refuse-ood)")


TRUNCATED_WARNING = ("This draft stopped at the token limit (max_new_tokens) without ending: it may be cut off or "
                     "repeat itself.")


def ood_warning(score, threshold):
    return (f"This image looks unlike the images this model was trained on (ood_score {score:.2f}, beyond "
            f"{threshold:.2f}, the 99th percentile of its validation studies): the draft may be meaningless.")


def finding_labels(report: str) -> dict:
    """CheXpert observations the (approximate, rule-based) labeler finds positive or uncertain in a draft."""
    from modeling_cliptt5.evaluation.labeler import label_report  # only needed with --labels

    if not report.strip():
        return {"labels": [], "uncertain_labels": []}  # an empty draft states nothing, not "No Finding"
    statuses = label_report(report)
    return {
        "labels": [name for name, status in statuses.items() if status == 1],
        "uncertain_labels": [name for name, status in statuses.items() if status == -1],
    }

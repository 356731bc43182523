"""A released CLIP-T5 and its processor, drafting the report of the one study shown on the page, against its prior
study where the release reads one."""

import dataclasses
from pathlib import Path

from modeling_cliptt5.images.image_io import DEFAULT_MAX_PIXELS
from modeling_cliptt5.inference.drafting import Study, draft_batch, fit_views, load_release, read_prior

STUDY_ID = "this study"  # how view warnings name the study on the page


class ReportDrafter:
    """Drafts the report of one study (a DraftedReport) with the release's generation settings."""

    def __init__(self, release, name="model"):
        self.release = release  # inference.engines.Release: engine, processor, OOD summary, identity
        self.name = name
        self.drafts_made = 0

    @classmethod
    def from_pretrained(cls, path_or_id, optimize=False):
        """Load a release folder or Hub id as cliptt5-generate does (inference.load_release); `optimize`: its CPU
        fast path (`cliptt5-generate --optimize`)."""
        release = load_release(path_or_id, optimize=optimize)
        return cls(release, name=f"{path_or_id}{f' ({release.engine.name})' if optimize else ''}")

    @property
    def model(self):
        """What drafts: the transformers model, or the fast path's ONNX Runtime model."""
        return self.release.model

    @property
    def processor(self):
        return self.release.processor

    @property
    def num_views(self):
        """Images the model reads per study, frontal first."""
        return self.model.config.num_views

    @property
    def default_prompt(self):
        """The prompt the model was trained with, or None for image-only training."""
        return self.model.config.prompt

    @property
    def finding_labels(self):
        """The finding head's labels ([] without a head)."""
        return list(self.model.config.finding_labels) if self.model.config.finding_head else []

    @property
    def takes_findings(self):
        """True when the draft follows findings (the head's, or a reader's correction of them)."""
        return self.model.config.uses_finding_guidance

    @property
    def reads_prior(self):
        """True when the release reads the prior study (config.reads_prior); another drafts every study as a first."""
        return bool(getattr(self.model.config, "reads_prior", False))

    def read_prior(self, files=(), report="", name="the prior study", max_pixels=DEFAULT_MAX_PIXELS,
                   any_modality=False):
        """(the prior as draft_batch takes it, or None; notes for the reader) of the prior's image files (frontal
        first) and report, read as cliptt5-generate reads a prior (inference.drafting.read_prior): None for nothing
        given, or for a release that does not read priors (a note says it drafts as a first study); a note for a
        report longer than the release reads and for a prior image that cannot be read. `name` names the prior."""
        report = (report or "").strip()
        if not files and not report:
            return None, []
        prior = Study(name, [Path(path) for path in files])
        notes = []
        read = read_prior(self.release, Study(STUDY_ID, [], prior=prior, prior_report=report or None), max_pixels,
                          any_modality, on_error=notes.append, on_warning=notes.append)
        return read, [note[0].upper() + note[1:] for note in notes]

    def draft(self, images, prompt=None, findings=None, prior=None, prior_id=""):
        """(report, warning or None) for one study: `images` are its views in order (PIL), `prompt` optional,
        `findings` (the names the reader marks present) replace the finding head's in the guidance, `prior` (images
        or None, report or None; read_prior) is the prior study the draft compares with, named `prior_id`. The report
        is the drafting record (inference.drafting.DraftedReport); its prior_id is "" for a first study.

        Views are fitted to the model as cliptt5-generate does (inference.fit_views): too few are repeated in
        order, extra ones are left out; the warning says which. With a finding head the report carries its
        probabilities, the findings the draft followed, the disagreements and the heatmaps (draft_batch).
        """
        views, warning = fit_views(list(images), self.num_views, STUDY_ID)
        study = views if self.num_views > 1 else views[0]
        given = None if findings is None or not self.takes_findings else [list(findings)]
        # a release without priors is never given one (read_prior has told the reader it drafts as a first study)
        priors = None if prior is None or not self.reads_prior else [prior]
        report = draft_batch(self.release, [study], (prompt or "").strip() or None, {}, given, priors)[0]
        self.drafts_made += 1
        return dataclasses.replace(report, prior_id=prior_id if priors else ""), warning

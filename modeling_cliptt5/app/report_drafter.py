"""A released CLIP-T5 and its processor, drafting the report of the one study shown on the page."""

from modeling_cliptt5.inference.drafting import draft_batch, fit_views, load_release

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

    def draft(self, images, prompt=None, findings=None):
        """(report, warning or None) for one study: `images` are its views in order (PIL), `prompt` optional,
        `findings` (the names the reader marks present) replace the finding head's in the guidance. The report is
        the drafting record (inference.drafting.DraftedReport).

        Views are fitted to the model as cliptt5-generate does (inference.fit_views): too few are repeated in
        order, extra ones are left out; the warning says which. With a finding head the report carries its
        probabilities, the findings the draft followed, the disagreements and the heatmaps (draft_batch).
        """
        views, warning = fit_views(list(images), self.num_views, STUDY_ID)
        study = views if self.num_views > 1 else views[0]
        given = None if findings is None or not self.takes_findings else [list(findings)]
        report = draft_batch(self.release, [study], (prompt or "").strip() or None, {}, given)[0]
        self.drafts_made += 1
        return report, warning

"""A released CLIP-T5 and its processor, drafting the report of the one study shown on the page."""

from transformers import AutoModelForSeq2SeqLM, AutoProcessor

from .inference import draft_batch, fit_views

STUDY_ID = "this study"  # how view warnings name the study on the page


class ReportDrafter:
    """Drafts {"text", "findings", "impression"} for one study with the release's generation settings."""

    def __init__(self, model, processor, name="model"):
        self.model = model
        self.processor = processor
        self.name = name
        self.drafts_made = 0

    @classmethod
    def from_pretrained(cls, path_or_id, optimize=False):
        """Load a release folder or Hub id (its code comes with it: trust_remote_code).

        `optimize`: the CPU fast path of `generate.py --optimize` (fast_inference.load_for_cpu).
        """
        processor = AutoProcessor.from_pretrained(path_or_id, trust_remote_code=True)
        if optimize:
            from .fast_inference import fast_path_name, load_for_cpu

            model = load_for_cpu(path_or_id, trust_remote_code=True)
            return cls(model, processor, name=f"{path_or_id} ({fast_path_name(model)})")
        model = AutoModelForSeq2SeqLM.from_pretrained(path_or_id, trust_remote_code=True).eval()
        return cls(model, processor, name=str(path_or_id))

    @property
    def num_views(self):
        """Images the model reads per study, frontal first."""
        return self.model.config.num_views

    @property
    def default_prompt(self):
        """The prompt the model was trained with, or None for image-only training."""
        return self.model.config.prompt

    def draft(self, images, prompt=None):
        """(report, warning or None) for one study: `images` are its views in order (PIL), `prompt` optional.

        Views are fitted to the model as generate.py does (inference.fit_views): too few are repeated in
        order, extra ones are left out; the warning says which.
        """
        views, warning = fit_views(list(images), self.num_views, STUDY_ID)
        study = views if self.num_views > 1 else views[0]
        report = draft_batch(self.model, self.processor, [study], (prompt or "").strip() or None, {})[0]
        self.drafts_made += 1
        return report, warning

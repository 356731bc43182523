"""CLIP-T5 processor: BiomedCLIP's image preprocessing plus the T5 tokenizer, and the report text format the model
is trained on ("FINDINGS: ... IMPRESSION: ...": format_report) and decoded by (split_report_sections)."""

import json
import os
import re
import warnings

import numpy as np
from PIL import Image
import transformers
from transformers import BatchFeature
from transformers.image_utils import valid_images
from transformers.pipelines.image_text_to_text import Chat, ImageTextToTextPipeline, ReturnType
from transformers.processing_utils import ProcessorMixin

try:  # transformers 5: the PIL backend reproduces open_clip's eval transform exactly (torchvision's is off by 1/255)
    from transformers import CLIPImageProcessorPil as _PilCLIPImageProcessor
except ImportError:  # transformers 4: CLIPImageProcessor is the PIL implementation
    from transformers import CLIPImageProcessor as _PilCLIPImageProcessor

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

# BiomedCLIP's open_clip preprocess config: OpenAI CLIP mean/std, bicubic resize of the shortest side, center crop.
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

FINDINGS_HEADER = "FINDINGS:"
IMPRESSION_HEADER = "IMPRESSION:"
REPORT_TARGETS = ("findings", "impression", "both")

_SECTION_PATTERN = re.compile(r"\b(FINDINGS|IMPRESSION)\s*:", flags=re.IGNORECASE)

# Chats (`processor.apply_chat_template`, the image-text-to-text pipeline) -> the prompt: the text parts of the user
# messages, joined by spaces ("" when there are none: the image alone). The image parts become the study's images.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(parts=[]) -%}"
    "{%- for message in messages if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{%- set ns.parts = ns.parts + [message['content']] -%}"
    "{%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}"
    "{%- set ns.parts = ns.parts + [part['text']] -%}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- ns.parts | map('trim') | reject('equalto', '') | join(' ') -}}"
)


def format_report(findings, impression, target="both"):
    """Builds the training target text from the two sections.

    target="both" writes section headers so that decoding can split the draft again;
    "findings" or "impression" return that section alone, without a header (R2Gen style).
    """
    findings = (findings or "").strip()
    impression = (impression or "").strip()
    if target == "findings":
        return findings
    if target == "impression":
        return impression
    if target != "both":
        raise ValueError(f"report target must be one of {REPORT_TARGETS}, got {target!r}")
    parts = []
    if findings:
        parts.append(f"{FINDINGS_HEADER} {findings}")
    if impression:
        parts.append(f"{IMPRESSION_HEADER} {impression}")
    return " ".join(parts)


def split_report_sections(text):
    """Returns {"findings": str|None, "impression": str|None} from a report with section headers.

    A report without any header is returned as findings (what R2Gen-style models produce).
    """
    text = (text or "").strip()
    matches = list(_SECTION_PATTERN.finditer(text))
    if not matches:
        return {"findings": text or None, "impression": None}
    sections = {"findings": None, "impression": None}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end():end].strip()
        name = match.group(1).lower()
        if body:
            sections[name] = body if sections[name] is None else f"{sections[name]} {body}"
    return sections


def to_rgb_image(image):
    """PIL image or numpy array (8/16-bit or float grayscale, RGB, RGBA) -> 8-bit RGB PIL image.

    Radiographs often arrive as 16-bit or 12-bit grayscale: they are stretched linearly from their own
    [min, max] to [0, 255] (a full-range window), since PIL's own 16-bit -> RGB conversion clips at 255.
    Float arrays are taken to be in [0, 1]. Alpha is dropped.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("RGB", "L"):
            return image.convert("RGB")
        if image.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
            return image.convert("RGB")
        image = np.asarray(image)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"an image must be HxW, HxWx3 or HxWx4, got an array of shape {array.shape}")
    if array.ndim == 3:
        array = array[..., :3]
    if array.dtype == np.uint8:
        pass
    elif np.issubdtype(array.dtype, np.floating):
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = ((array.astype(np.float64) - low) * scale + 0.5).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype {array.dtype}")
    return Image.fromarray(array).convert("RGB")


class CLIPT5ImageProcessor(_PilCLIPImageProcessor):
    """CLIP's image processor with BiomedCLIP's settings, taking radiographs in any bit depth (see `to_rgb_image`)."""

    _auto_class = "AutoImageProcessor"  # as register_for_auto_class() sets it: a release carries this file

    def __init__(self, **kwargs):
        defaults = {
            "size": {"shortest_edge": 224},
            "crop_size": {"height": 224, "width": 224},
            "resample": Image.BICUBIC,
            "image_mean": OPENAI_CLIP_MEAN,
            "image_std": OPENAI_CLIP_STD,
            "do_convert_rgb": True,
        }
        super().__init__(**{**defaults, **kwargs})

    def preprocess(self, images, **kwargs):
        if isinstance(images, (list, tuple)):
            images = [to_rgb_image(image) for image in images]
        else:
            images = to_rgb_image(images)
        return super().preprocess(images, **kwargs)


class CLIPT5Processor(ProcessorMixin):
    """Turns studies (one image or several views each), optional prompts and reports into model inputs.

    - images: one image, a list with one image per study, or a list of lists (the views of each study);
      PIL images or numpy arrays.
    - text: the optional prompt (str or one per study), truncated to `max_prompt_tokens` with a warning; an empty
      prompt is masked out (as training masks studies without one), so "" is the image alone.
    - reports: target reports for training; become `labels` with padding set to -100.
    - prior_images / prior_reports (models that read a prior, `config.reads_prior`): one entry per study, None where
      a study has none; become `prior_pixel_values` + `prior_image_mask` and `prior_input_ids` +
      `prior_attention_mask` (prior reports truncated to `max_prior_report_tokens` with a warning).
    """

    attributes = ["image_processor", "tokenizer"]
    _auto_class = "AutoProcessor"  # as register_for_auto_class() sets it: a release carries this file
    if TRANSFORMERS_MAJOR < 5:  # 5 finds both through the Auto classes and warns that these are deprecated
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"

        @classmethod
        def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
            # As 4.x's ProcessorMixin does, but asking for the slow image processor by default: without `use_fast`,
            # AutoImageProcessor logs "Using a slow image processor as `use_fast` is unset ..." at every load. Ours is
            # the PIL one on purpose (open_clip's transform exactly) and has no fast variant.
            from transformers import AutoImageProcessor, AutoTokenizer

            image_processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path,
                                                                 **{"use_fast": False, **kwargs})
            return [image_processor, AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)]

    def save_pretrained(self, save_directory, *args, **kwargs):
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        # transformers 5 names a tokenizers-library tokenizer "TokenizersBackend", a class 4.x does not have (its
        # AutoProcessor refuses the folder); 5 reads the 4.x name, PreTrainedTokenizerFast, as the same class.
        config_path = os.path.join(save_directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as handle:
                tokenizer_config = json.load(handle)
            if tokenizer_config.get("tokenizer_class") == "TokenizersBackend":
                tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
                with open(config_path, "w", encoding="utf-8") as handle:
                    json.dump(tokenizer_config, handle, indent=2, ensure_ascii=False)
        return saved

    def __init__(self, image_processor=None, tokenizer=None, max_prompt_tokens=128, max_report_tokens=256,
                 max_prior_report_tokens=128, **kwargs):
        self.max_prompt_tokens = max_prompt_tokens
        self.max_report_tokens = max_report_tokens
        self.max_prior_report_tokens = max_prior_report_tokens
        kwargs["chat_template"] = kwargs.get("chat_template") or CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, reports=None, prior_images=None, prior_reports=None,
                 return_tensors="pt", **kwargs):
        encoding = {}
        if images is not None:
            encoding["pixel_values"] = self._preprocess_studies(images, return_tensors)
        if prior_images is not None:
            encoding.update(self._preprocess_priors(prior_images, return_tensors))
        if prior_reports is not None:
            encoding.update(self._tokenize_prior_reports(prior_reports, return_tensors))
        if text is not None:
            prompts = self.tokenizer(
                [text] if isinstance(text, str) else list(text),
                padding=True,
                truncation=True,
                max_length=self.max_prompt_tokens,
                return_overflowing_tokens=False,
                return_tensors=return_tensors,
            )
            self._warn_if_truncated(text, prompts["input_ids"])
            mask = prompts["attention_mask"]
            for index, prompt in enumerate([text] if isinstance(text, str) else text):
                if not prompt.strip():  # no prompt: masked out, as training masks a study without one
                    mask[index] = [0] * len(mask[index]) if isinstance(mask[index], list) else 0
            encoding["input_ids"] = prompts["input_ids"]
            encoding["attention_mask"] = mask
        if reports is not None:
            targets = self.tokenizer(
                [reports] if isinstance(reports, str) else list(reports),
                padding=True,
                truncation=True,
                max_length=self.max_report_tokens,
                return_tensors=return_tensors,
            )
            labels = targets["input_ids"]
            labels[targets["attention_mask"] == 0] = -100  # padding does not count in the loss
            encoding["labels"] = labels
        return BatchFeature(encoding, tensor_type=None)

    def _preprocess_studies(self, images, return_tensors):
        """Returns [batch, 3, H, W] for single images per study, [batch, views, 3, H, W] for lists of views."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        has_views = any(isinstance(study, (list, tuple)) for study in images)
        if not has_views:
            return self.image_processor(list(images), return_tensors=return_tensors)["pixel_values"]
        views = {len(study) if isinstance(study, (list, tuple)) else 1 for study in images}
        if len(views) != 1:
            raise ValueError(f"every study must have the same number of views, got {sorted(views)}")
        flat = [view for study in images for view in (study if isinstance(study, (list, tuple)) else [study])]
        pixel_values = self.image_processor(flat, return_tensors=return_tensors)["pixel_values"]
        return pixel_values.reshape(len(images), views.pop(), *pixel_values.shape[1:])

    def _preprocess_priors(self, prior_images, return_tensors):
        """One prior per study (an image, a list of views, or None) -> prior_pixel_values, with zeros where a study
        has no prior, and prior_image_mask [batch] (1: this study has a prior image)."""
        if not isinstance(prior_images, (list, tuple)):
            prior_images = [prior_images]
        given = [prior for prior in prior_images if prior is not None]
        if not given:
            return {}
        stacked, mask = fill_missing(self._preprocess_studies(given, return_tensors),
                                     [prior is not None for prior in prior_images])
        return {"prior_pixel_values": stacked, "prior_image_mask": mask}

    def _tokenize_prior_reports(self, prior_reports, return_tensors):
        """One prior report per study (None or "" where a study has none) -> prior_input_ids, prior_attention_mask."""
        reports = [prior_reports] if isinstance(prior_reports, str) else list(prior_reports)
        if not any(report and report.strip() for report in reports):
            return {}
        texts = [report or "" for report in reports]
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_prior_report_tokens,
                                return_tensors=return_tensors)
        self._warn_if_truncated(texts, tokens["input_ids"], self.max_prior_report_tokens, "prior report",
                                "max_prior_report_tokens")
        mask = tokens["attention_mask"]
        for index, report in enumerate(texts):
            if not report.strip():  # no prior report: masked out entirely
                mask[index] = 0
        return {"prior_input_ids": tokens["input_ids"], "prior_attention_mask": mask}

    def _warn_if_truncated(self, text, input_ids, limit=None, what="prompt", setting="max_prompt_tokens"):
        limit = self.max_prompt_tokens if limit is None else limit
        texts = [text] if isinstance(text, str) else list(text)
        for prompt, ids in zip(texts, input_ids):
            full_length = len(self.tokenizer(prompt)["input_ids"])
            if full_length > limit:
                warnings.warn(f"{what} of {full_length} tokens truncated to {setting}={limit}", stacklevel=3)

    def batch_decode_reports(self, sequences):
        """Generated ids -> [{"text", "findings", "impression"}] (sections are None when the report has none)."""
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return [{"text": text.strip(), **split_report_sections(text)} for text in texts]

    def decode_report(self, sequence):
        """One generated sequence -> {"text", "findings", "impression"}."""
        return self.batch_decode_reports([sequence])[0]

    def sentence_token_ids(self):
        """The tokenizer's token ids that NoRepeatSentenceLogitsProcessor reads, as a release's generation config
        carries them: tokens that end a sentence (their text ends with . ! or ?, not right after a digit), tokens
        that end with a digit (a period after one is a decimal point) and the section headers' token sequences."""
        texts = [self.tokenizer.decode([index]).strip() for index in range(len(self.tokenizer))]
        headers = {tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                   for header in (FINDINGS_HEADER, IMPRESSION_HEADER) for text in (header, f" {header}")}
        return {"sentence_end_token_ids": [index for index, text in enumerate(texts)
                                           if text.endswith((".", "!", "?")) and not text[:-1][-1:].isdigit()],
                "number_token_ids": [index for index, text in enumerate(texts) if text[-1:].isdigit()],
                "section_token_ids": sorted(list(header) for header in headers if header)}

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["pixel_values", "input_ids", "attention_mask"]


def fill_missing(values, present):
    """Values of the studies that have one ([given, ...]) and a bool per study -> (values [studies, ...] with zeros
    where a study has none, mask [studies] 1 / 0): a prior's inputs as the model takes them, batched with studies
    that have no prior."""
    import torch

    mask = torch.tensor(present, dtype=torch.long)
    stacked = torch.zeros((len(present), *values.shape[1:]), dtype=values.dtype)
    stacked[mask.bool()] = values
    return stacked, mask


def _image_locations(images):
    """A path or URL, or a list of them: what transformers' image pipelines take beside images themselves."""
    items = images if isinstance(images, (list, tuple)) else [images]
    return bool(items) and all(isinstance(item, (str, os.PathLike)) for item in items)


class CLIPT5ReportPipeline(ImageTextToTextPipeline):
    """`pipeline("image-text-to-text", model=release, trust_remote_code=True)` (config.custom_pipelines): an image
    alone drafts its report, and a prompt is optional (`text=`, or a chat). The output is the report alone: an
    encoder-decoder never writes its prompt back, so nothing is stripped from the report and, unless
    `return_full_text=True`, nothing is glued onto it. Chats get the report as a new assistant message. Images are
    PIL images, arrays, or file paths and URLs (loaded by the pipeline's `load_images`), as in transformers' image
    pipelines."""

    def __call__(self, images=None, text=None, **kwargs):
        if text is None and images is not None and (valid_images(images) or _image_locations(images)):
            text = [""] * len(images) if isinstance(images, (list, tuple)) else ""
        return super().__call__(images, text, **kwargs)

    def _forward(self, model_inputs, generate_kwargs=None):
        outputs = super()._forward(model_inputs, generate_kwargs)
        outputs["input_ids"] = outputs["input_ids"][:, :0]  # the report holds no prompt tokens to strip
        return outputs

    def postprocess(self, model_outputs, return_type=None, **kwargs):
        if return_type is None:
            chat = isinstance(model_outputs["prompt_text"], Chat)
            return_type = ReturnType.FULL_TEXT if chat else ReturnType.NEW_TEXT
        return super().postprocess(model_outputs, return_type=return_type, **kwargs)


__all__ = ["CLIPT5Processor", "CLIPT5ImageProcessor", "CLIPT5ReportPipeline", "to_rgb_image"]

"""CLIP-T5 configuration: a T5 config plus the vision tower and the image-token settings."""

from transformers import T5Config, ViTConfig

# BiomedCLIP's image tower (open_clip_config.json of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224):
# timm vit_base_patch16_224, whose final LayerNorm uses eps 1e-6.
BIOMEDCLIP_VISION_DEFAULTS = {
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}

IMAGE_TOKEN_CHOICES = ("patch", "pooled")
PROJECTOR_CHOICES = ("linear", "mlp")
FINDING_GUIDANCE_CHOICES = ("embeddings", "none")

# The 14 observations of the CheXpert labeler (Irvin et al. 2019), in its order: the finding head's default label
# set, and what modeling_cliptt5.labeler reads in report text.
CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)


class CLIPT5Config(T5Config):
    r"""
    Configuration of [`CLIPT5ForConditionalGeneration`]. All T5 arguments (d_model, num_layers, vocab_size, ...)
    are accepted as in [`T5Config`]; the defaults are t5-small's.

    Args:
        vision_config (`dict` or `ViTConfig`, *optional*):
            The image tower. Defaults to BiomedCLIP's ViT-B/16 (224 px, patch 16, hidden 768, 12 layers).
        clip_projection_dim (`int`, *optional*, defaults to 512):
            Output size of CLIP's image projection (768 -> 512, no bias, as in BiomedCLIP).
        image_tokens (`str`, *optional*, defaults to `"patch"`):
            `"patch"`: every token of the vision tower (CLS + patches) goes to T5.
            `"pooled"`: one token, the CLIP image embedding (projected CLS), as the seed paper's wording suggests.
        image_token_pooling (`int`, *optional*, defaults to 1):
            Average-pool the patch grid by this factor per side before projection (2 -> 196 patches become 49,
            plus CLS = 50 tokens). Only for `image_tokens="patch"`.
        projector_type (`str`, *optional*, defaults to `"linear"`):
            `clip_projection` as one Linear or a 2-layer MLP (Linear-GELU-Linear, as in LLaVA-1.5).
        num_views (`int`, *optional*, defaults to 1):
            Images per study (IU X-ray has a frontal and a lateral view). Views > 1 get learned view embeddings.
        prompt (`str`, *optional*):
            Default text prompt placed after the image tokens; None means image only.
        max_prompt_tokens (`int`, *optional*, defaults to 128):
            Longest prompt the model accepts; the processor truncates longer prompts with a warning.
        finding_head (`bool`, *optional*, defaults to `False`):
            Add the finding head: per-patch logits of each finding over the image tokens, pooled per finding over
            patches and views, so that one head gives each finding's probability and its heatmap. Releases made
            without it load and draft as before.
        finding_labels (`list[str]`, *optional*):
            The head's findings, in order. Defaults to the 14 CheXpert observations (`CHEXPERT_OBSERVATIONS`).
        finding_head_hidden (`int`, *optional*, defaults to 0):
            Width of the head's hidden layer (0: one Linear per patch token).
        finding_pooling_sharpness (`float`, *optional*, defaults to 5.0):
            r of the log-sum-exp pooling over patches, (1/r) log mean exp(r * logit): small r tends to the mean
            (findings that fill the image), large r to the maximum (a nodule in one patch).
        finding_thresholds (`list[float]`, *optional*):
            Probability at or above which a finding counts as present; fitted per finding on validation data by
            training (0.5 each by default).
        finding_guidance (`str`, *optional*, defaults to `"embeddings"`):
            `"embeddings"`: each finding's status (present / absent) enters the T5 encoder after the image tokens as
            a learned embedding, so the report follows the head (or findings the caller passes); `"none"`: the head
            only scores, the report does not see it.
        finding_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the head's binary cross-entropy beside the report loss when `finding_targets` are given.
        finding_positive_weights (`list[float]`, *optional*):
            Per-finding weight of positive examples in that loss (training sets it from label frequencies so that
            rare findings count); 1.0 each by default.
        report_vocabulary (`list[int]`, *optional*):
            The token ids a report may contain (the tokens of the training reports and the special tokens): in
            evaluation mode every other token's logit is the lowest float, so drafts use these alone, and the fast
            path's step graph computes only these rows of the output layer (the report vocabulary of a real corpus
            is a few thousand of t5-small's 32,128 tokens, and the output layer is over a third of a decoding
            step's weights). None, the default: the whole vocabulary. Set by `cliptt5-release --report-vocabulary`.
        reads_prior (`bool`, *optional*, defaults to `False`):
            The T5 encoder also reads the patient's prior study, after the current image and its finding guidance:
            a token saying whether there is a prior (a missing prior is an input, not silence), the prior's image
            tokens and its finding head's decisions (each marked as the prior's by a learned embedding), and the
            prior report's tokens. Releases made without it load and draft as before and refuse a prior.
        max_prior_report_tokens (`int`, *optional*, defaults to 128):
            Longest prior report the model reads; the processor truncates longer ones with a warning.
        change_head (`bool`, *optional*, defaults to `False`):
            With `reads_prior` and finding guidance: a small head compares each finding between the prior image and
            the current one (smaller, the same, larger), and a finding present in both enters T5 as one of three
            course tokens by that comparison instead of one ("present in both"), so that a draft can say that an
            effusion has increased. Trained on the change labels of follow-up studies
            ("pleural_effusion:right:increased").
        change_head_hidden (`int`, *optional*, defaults to 128):
            Width of the change head's hidden layer.
        change_head_patch_channels (`int`, *optional*, defaults to 0):
            Channels each patch's difference between the two images is reduced to before the change head reads all
            of them (where an edge has moved; the demo: 32); 0 reads only the per-finding pooled tokens.
        change_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the change head's cross-entropy beside the report loss when `change_targets` are given.
    """

    model_type = "cliptt5"
    # What register_for_auto_class() sets: save_pretrained then copies this file into a release (remote code).
    _auto_class = "AutoConfig"
    sub_configs = {"vision_config": ViTConfig}

    def __init__(
        self,
        vision_config=None,
        clip_projection_dim=512,
        image_tokens="patch",
        image_token_pooling=1,
        projector_type="linear",
        num_views=1,
        prompt=None,
        max_prompt_tokens=128,
        finding_head=False,
        finding_labels=None,
        finding_head_hidden=0,
        finding_pooling_sharpness=5.0,
        finding_thresholds=None,
        finding_guidance="embeddings",
        finding_loss_weight=1.0,
        finding_positive_weights=None,
        report_vocabulary=None,
        reads_prior=False,
        max_prior_report_tokens=128,
        change_head=False,
        change_head_hidden=128,
        change_head_patch_channels=0,
        change_loss_weight=1.0,
        **kwargs,
    ):
        if vision_config is None:
            vision_config = dict(BIOMEDCLIP_VISION_DEFAULTS)
        if isinstance(vision_config, dict):
            vision_config = ViTConfig(**{**BIOMEDCLIP_VISION_DEFAULTS, **vision_config})
        if image_tokens not in IMAGE_TOKEN_CHOICES:
            raise ValueError(f"image_tokens must be one of {IMAGE_TOKEN_CHOICES}, got {image_tokens!r}")
        if projector_type not in PROJECTOR_CHOICES:
            raise ValueError(f"projector_type must be one of {PROJECTOR_CHOICES}, got {projector_type!r}")
        if int(num_views) < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        grid = vision_config.image_size // vision_config.patch_size
        if int(image_token_pooling) < 1 or grid % int(image_token_pooling):
            raise ValueError(
                f"image_token_pooling must divide the {grid}x{grid} patch grid, got {image_token_pooling}"
            )
        self.finding_head = bool(finding_head)
        self.finding_labels = list(finding_labels) if finding_labels else (
            list(CHEXPERT_OBSERVATIONS) if self.finding_head else [])
        if self.finding_head:
            _check_finding_settings(self.finding_labels, finding_thresholds, finding_positive_weights,
                                    finding_guidance, image_tokens)
        elif finding_labels:
            raise ValueError("finding_labels are given but finding_head is False: set finding_head=True to add the head")
        count = len(self.finding_labels)
        self.finding_head_hidden = int(finding_head_hidden)
        self.finding_pooling_sharpness = float(finding_pooling_sharpness)
        self.finding_thresholds = [float(value) for value in finding_thresholds] if finding_thresholds else [0.5] * count
        self.finding_guidance = finding_guidance
        self.finding_loss_weight = float(finding_loss_weight)
        self.finding_positive_weights = ([float(value) for value in finding_positive_weights]
                                         if finding_positive_weights else [1.0] * count)
        self.vision_config = vision_config
        self.clip_projection_dim = int(clip_projection_dim)
        self.image_tokens = image_tokens
        self.image_token_pooling = int(image_token_pooling)
        self.projector_type = projector_type
        self.num_views = int(num_views)
        self.prompt = prompt
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.report_vocabulary = sorted({int(token) for token in report_vocabulary}) if report_vocabulary else None
        self.reads_prior = bool(reads_prior)
        if int(max_prior_report_tokens) < 1:
            raise ValueError(f"max_prior_report_tokens must be >= 1, got {max_prior_report_tokens}")
        self.max_prior_report_tokens = int(max_prior_report_tokens)
        self.change_head = bool(change_head)
        if self.change_head and not (self.reads_prior and self.finding_head and finding_guidance == "embeddings"):
            raise ValueError("change_head compares the finding head's findings with the prior's: it needs "
                             "reads_prior=True, finding_head=True and finding_guidance='embeddings'")
        self.change_head_hidden = int(change_head_hidden)
        self.change_head_patch_channels = int(change_head_patch_channels)
        self.change_loss_weight = float(change_loss_weight)
        # T5Config() defaults leave decoder_start_token_id unset and generate() then refuses to run;
        # T5 checkpoints start decoding with the pad token (id 0).
        kwargs.setdefault("decoder_start_token_id", kwargs.get("pad_token_id", 0))
        # transformers 5 records an untied T5 head as scale_decoder_outputs=False (and always writes
        # tie_word_embeddings=True); transformers 4 only knows tie_word_embeddings.
        if kwargs.get("scale_decoder_outputs") is False:
            kwargs["tie_word_embeddings"] = False
        # A model class registers for one auto class only; a release should answer AutoModel too.
        model_entry = "modeling_cliptt5.CLIPT5ForConditionalGeneration"
        kwargs["auto_map"] = {
            "AutoConfig": "configuration_cliptt5.CLIPT5Config",
            "AutoModel": model_entry,
            "AutoModelForSeq2SeqLM": model_entry,
            "AutoModelForImageTextToText": model_entry,
            **(kwargs.get("auto_map") or {}),
        }
        # pipeline("image-text-to-text", model=release, trust_remote_code=True) (or with no task named) builds the
        # release's own pipeline: image alone or with a prompt, the report alone as output.
        kwargs["custom_pipelines"] = {
            "image-text-to-text": {"impl": "processing_cliptt5.CLIPT5ReportPipeline",
                                   "pt": ["AutoModelForImageTextToText"], "type": "multimodal"},
            **(kwargs.get("custom_pipelines") or {}),
        }
        super().__init__(**kwargs)
        if self.report_vocabulary:
            _check_report_vocabulary(self.report_vocabulary, self.vocab_size, self.eos_token_id)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As PretrainedConfig.from_pretrained, but refuses a folder that is not a CLIP-T5 release, instead of
        silently building a model whose image tower and projection would be random."""
        config_dict, _ = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path} is not a CLIP-T5 release: its config.json has model_type "
                f"{model_type!r}, expected {cls.model_type!r} (build one with cliptt5-convert-biomedclip)"
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def uses_finding_guidance(self):
        """True when the head's findings (or the caller's) enter the T5 encoder."""
        return self.finding_head and self.finding_guidance == "embeddings"

    @property
    def num_image_tokens_per_view(self):
        """Tokens one image contributes to the T5 encoder input."""
        if self.image_tokens == "pooled":
            return 1
        grid = self.vision_config.image_size // self.vision_config.patch_size
        return 1 + (grid // self.image_token_pooling) ** 2


def _check_finding_settings(labels, thresholds, positive_weights, guidance, image_tokens):
    """ValueErrors naming the setting, for a finding head that could not work as configured."""
    if len(set(labels)) != len(labels):
        repeated = sorted({name for name in labels if labels.count(name) > 1})
        raise ValueError(f"finding_labels must be distinct, {repeated} repeat")
    for name, values in (("finding_thresholds", thresholds), ("finding_positive_weights", positive_weights)):
        if values and len(values) != len(labels):
            raise ValueError(f"{name} has {len(values)} values for {len(labels)} finding_labels")
    if thresholds and not all(0.0 <= float(value) <= 1.0 for value in thresholds):
        raise ValueError(f"finding_thresholds must be probabilities in [0, 1], got {thresholds}")
    if guidance not in FINDING_GUIDANCE_CHOICES:
        raise ValueError(f"finding_guidance must be one of {FINDING_GUIDANCE_CHOICES}, got {guidance!r}")
    if image_tokens != "patch":
        raise ValueError("the finding head reads the patch tokens: it needs image_tokens='patch'")


def _check_report_vocabulary(tokens, vocab_size, eos_token_id):
    """ValueErrors for a report vocabulary that names tokens the model does not have, or that could never end a
    draft."""
    if tokens[0] < 0 or tokens[-1] >= vocab_size:
        raise ValueError(f"report_vocabulary holds token ids outside the vocabulary (0 to {vocab_size - 1}): "
                         f"{tokens[0]} to {tokens[-1]}")
    ends = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    if ends and not set(ends) & set(tokens):
        raise ValueError(f"report_vocabulary lacks the end-of-sequence token {ends}: a draft could never end")

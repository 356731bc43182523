"""CLIP-T5: BiomedCLIP image tokens, projected to T5's width, read by a T5 encoder-decoder that writes the report.

The image tower is transformers' `ViTModel` (BiomedCLIP's timm ViT-B/16 converts to it exactly, see
cliptt5-convert-biomedclip), so a release needs only torch and transformers. Image tokens meet the
language model as in transformers' LLaVA / BLIP-2: they are projected (`clip_projection`) and enter the T5
encoder through `inputs_embeds`, followed by the token embeddings of an optional text prompt.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, T5ForConditionalGeneration, ViTModel
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.utils import ModelOutput

from .configuration_cliptt5 import CLIPT5Config

try:  # transformers >= 5: these helpers leave weights that were loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # transformers 4.x initialises only missing weights itself
    init = nn.init


class CLIPT5Projector(nn.Module):
    """Maps vision-tower tokens to T5's d_model (Linear, or Linear-GELU-Linear as in LLaVA-1.5), adding a learned
    view embedding when a study has several views, so T5 can tell the frontal from the lateral image."""

    def __init__(self, config):
        super().__init__()
        in_features = config.clip_projection_dim if config.image_tokens == "pooled" else config.vision_config.hidden_size
        if config.projector_type == "linear":
            self.layers = nn.Sequential(nn.Linear(in_features, config.d_model))
        else:
            self.layers = nn.Sequential(
                nn.Linear(in_features, config.d_model), nn.GELU(), nn.Linear(config.d_model, config.d_model)
            )
        self.view_embeddings = nn.Embedding(config.num_views, config.d_model) if config.num_views > 1 else None

    def forward(self, vision_features):
        """[batch, views, tokens, channels] -> [batch, views * tokens, d_model]."""
        image_embeds = self.layers(vision_features)
        if self.view_embeddings is not None:
            image_embeds = image_embeds + self.view_embeddings.weight[None, :, None, :]
        return image_embeds.flatten(1, 2)


class CLIPT5FindingHead(nn.Module):
    """Finding logits per patch token, pooled per finding over the patches of every view by log-sum-exp.

    The per-patch logits are the finding's heatmap; the pooled logit is the study's. Log-sum-exp pooling with
    sharpness r, (1/r) log mean exp(r * logit), lies between the mean (a large heart fills many patches) and the
    maximum (a nodule sits in one), as in multiple-instance learning on radiographs."""

    def __init__(self, in_features, num_findings, hidden=0, sharpness=5.0):
        super().__init__()
        if hidden:
            self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, num_findings))
        else:
            self.layers = nn.Sequential(nn.Linear(in_features, num_findings))
        self.sharpness = sharpness

    def forward(self, vision_features):
        """[batch, views, 1 + patches, channels] (CLS first) -> (logits [batch, findings],
        patch logits [batch, views, patches, findings])."""
        patch_logits = self.layers(vision_features[:, :, 1:])
        flat = patch_logits.flatten(1, 2).float()
        pooled = (torch.logsumexp(self.sharpness * flat, dim=1) - math.log(flat.shape[1])) / self.sharpness
        return pooled.to(patch_logits.dtype), patch_logits


class CLIPT5ChangeHead(nn.Module):
    """How each finding present in both studies has changed since the prior: smaller, the same or larger (an
    effusion's or a pneumothorax's extent). Each study's patch tokens are pooled per finding, weighted by where the
    finding head looks for it (its heatmap, a softmax over the patches), and a small MLP reads the two pooled vectors,
    their difference and (with `patch_channels`) the difference of every patch between the two images, each reduced
    to a few channels: where an edge has moved, which pooling averages away (a pneumothorax's, measured). That part
    assumes the two images roughly aligned, as a patient's films in the same projection are. Left to T5 alone, a
    size change between two images was barely learnt in the demo's budget (docs/benchmarks.md)."""

    def __init__(self, in_features, num_findings, hidden, patches=0, patch_channels=0):
        super().__init__()
        self.patch_differences = nn.Linear(in_features, patch_channels) if patches and patch_channels else None
        extra = patches * patch_channels if self.patch_differences is not None else 0
        self.inputs = nn.Linear(3 * in_features + extra, hidden)
        self.findings = nn.Embedding(num_findings, hidden)  # which finding is compared
        self.output = nn.Linear(hidden, 3)

    @staticmethod
    def pooled(vision_features, patch_logits):
        """[batch, views, 1 + patches, channels], [batch, views, patches, findings] -> [batch, findings, channels]."""
        weights = torch.softmax(patch_logits.detach().flatten(1, 2).float(), dim=1).to(vision_features.dtype)
        return torch.einsum("bpf,bpc->bfc", weights, vision_features[:, :, 1:].flatten(1, 2))

    def forward(self, vision_features, patch_logits, prior_vision_features, prior_patch_logits):
        """-> logits [batch, findings, 3] (smaller, same, larger)."""
        current = self.pooled(vision_features, patch_logits)
        prior = self.pooled(prior_vision_features, prior_patch_logits)
        parts = [current, prior, current - prior]
        if self.patch_differences is not None:  # [batch, views * patches * patch_channels], the same for each finding
            moved = self.patch_differences(vision_features[:, :, 1:] - prior_vision_features[:, :, 1:]).flatten(1)
            parts.append(moved[:, None].expand(-1, current.shape[1], -1))
        hidden = self.inputs(torch.cat(parts, dim=-1)) + self.findings.weight
        return self.output(nn.functional.gelu(hidden))


class CLIPT5PriorEmbeddings(nn.Module):
    """What marks the prior study in the T5 encoder's input: one token saying whether the study has a prior (so that
    "no prior" is something the model reads, not an absence it must infer), a learned embedding added to each kind
    of prior token (its image tokens, its finding tokens, its report), so that T5 tells them from the current
    study's, and (with finding guidance) one token per finding for its course between the two studies: absent in
    both, new, gone, present in both. Reading that pair is what a change statement needs first; left to T5 across
    two far-apart sets of finding tokens, it was learnt poorly in the demo's budget (docs/benchmarks.md)."""

    NO_PRIOR, PRIOR = 0, 1
    IMAGE, FINDINGS, REPORT = 0, 1, 2

    def __init__(self, d_model, num_findings=0, changes=False):
        super().__init__()
        self.status = nn.Embedding(2, d_model)
        self.kinds = nn.Embedding(3, d_model)
        # finding f, prior status p, current status c -> row 4 f + 2 p + c
        self.courses = nn.Embedding(4 * num_findings, d_model) if num_findings else None
        # With a change head, a finding present in both adds its change (smaller, the same, larger): one embedding
        # per change shared by all findings, so that "larger" learns from every finding's growth at once (one row per
        # finding and change was followed less well by the drafts: docs/benchmarks.md#priors).
        self.changes = nn.Embedding(3, d_model) if changes and num_findings else None

    def course_tokens(self, prior_statuses, statuses, changes=None):
        """[batch, findings] 0/1 of the prior and of the current study (and, with a change head, each finding's
        change: 0 smaller, 1 the same, 2 larger) -> [batch, findings, d_model]."""
        offsets = torch.arange(statuses.shape[1], device=statuses.device) * 4
        prior_statuses, statuses = prior_statuses.long().to(statuses.device), statuses.long()
        tokens = self.courses(offsets + 2 * prior_statuses + statuses)
        if changes is not None:
            in_both = (prior_statuses * statuses)[..., None].to(tokens.dtype)
            tokens = tokens + in_both * self.changes(changes.long().to(statuses.device))
        return tokens


def findings_to_tensor(findings, names, batch):
    """Findings given by a caller -> [batch, findings] long: 1 present, 0 absent, -1 for the head to decide.

    `findings`: a tensor of that shape, or one entry per study: a list of the names present (every other finding
    absent), or a dict {name: True / False} (findings not named are left to the head). Unknown names are a
    ValueError naming them."""
    if torch.is_tensor(findings):
        if tuple(findings.shape) != (batch, len(names)):
            raise ValueError(f"findings must have shape [{batch}, {len(names)}] (studies, findings), "
                             f"got {tuple(findings.shape)}")
        if not torch.isin(findings, torch.tensor([-1, 0, 1], device=findings.device)).all():
            raise ValueError("findings must hold 1 (present), 0 (absent) or -1 (the head decides)")
        return findings.long()
    if len(findings) != batch:
        raise ValueError(f"{len(findings)} findings entries for {batch} studies: pass one per study")
    unknown = sorted({name for study in findings for name in study} - set(names))
    if unknown:
        raise ValueError(f"unknown finding name(s) {unknown}; this model's findings are {list(names)}")
    rows = []
    for study in findings:
        if isinstance(study, dict):
            rows.append([int(bool(study[name])) if name in study else -1 for name in names])
        else:
            rows.append([int(name in study) for name in names])
    return torch.tensor(rows, dtype=torch.long)


def followed_findings(decided, given=None):
    """[batch, findings] 1 / 0: the finding head's decisions (`decided`), replaced by a caller's `given` ([batch,
    findings] 1 / 0, -1 = keep the head's; see `findings_to_tensor`) where given: the findings a draft follows."""
    decided = decided.long()
    return decided if given is None else torch.where(given >= 0, given.to(decided.device), decided)


def refuse_prior(config, prior):
    """A ValueError naming the prior inputs given (`prior`: {name: tensor or None}) to a model whose config does not
    read a prior study; nothing for one that does, or when none is given."""
    given = [name for name, value in prior.items() if value is not None]
    if given and not config.reads_prior:
        raise ValueError("this model does not read a prior study (config.reads_prior is False): draft without "
                         f"{', '.join(given)}")


def refuse_prior_overrides(config, has_prior_images, prior_findings=None, prior_changes=None, prior_image_mask=None):
    """A ValueError for what describes a prior image the model cannot use (both engines refuse alike): without prior
    images, a prior_image_mask or an override of the heads' decisions on the prior; prior_findings for a model
    without finding guidance; prior_changes for one without a change head."""
    if not has_prior_images and any(value is not None for value in (prior_image_mask, prior_changes, prior_findings)):
        raise ValueError("prior_image_mask, prior_changes and prior_findings describe the prior image: pass "
                         "prior_pixel_values (or prior_vision_features)")
    if prior_findings is not None and not config.uses_finding_guidance:
        raise ValueError("prior_findings given to a model without finding guidance (config.finding_guidance)")
    if prior_changes is not None and not config.change_head:
        raise ValueError("prior_changes given to a model without a change head (config.change_head)")


def finding_bce(logits, targets, positive_weights=None):
    """Binary cross-entropy of finding logits [batch, findings] against 1 / 0 targets, positives weighted per finding
    (`positive_weights`, [findings]); targets of -100 (an uncertain label, say) do not count."""
    targets = targets.to(logits.device).float()
    counted = (targets != -100).float()
    weights = None if positive_weights is None else positive_weights.to(logits.device)
    losses = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.clamp(min=0), pos_weight=weights,
                                                            reduction="none")
    return (losses * counted).sum() / counted.sum().clamp(min=1)


@dataclass
class CLIPT5FindingOutput(ModelOutput):
    """What the finding head says about each study.

    logits / probabilities: [batch, findings]; present: [batch, findings] bool, probability >= the finding's
    threshold; maps: [batch, views, findings, grid, grid], each patch's probability of the finding (its heatmap)."""

    logits: Optional[torch.FloatTensor] = None
    probabilities: Optional[torch.FloatTensor] = None
    present: Optional[torch.BoolTensor] = None
    maps: Optional[torch.FloatTensor] = None


@dataclass
class CLIPT5Seq2SeqLMOutput(Seq2SeqLMOutput):
    """Seq2SeqLMOutput plus the finding head's logits, and its loss when `finding_targets` were given (`loss` is then
    the report loss plus `finding_loss_weight` times it), and the change head's loss when `change_targets` were given
    (added to `loss` times `change_loss_weight`)."""

    finding_logits: Optional[torch.FloatTensor] = None
    finding_loss: Optional[torch.FloatTensor] = None
    change_loss: Optional[torch.FloatTensor] = None


class NoRepeatSentenceLogitsProcessor(LogitsProcessor):
    """Keeps a draft from saying a sentence twice in one section ("Unchanged right middle lobe mass. Unchanged right
    middle lobe mass. ..."), the loop small report generators fall into, and leaves phrases alone: an IMPRESSION
    restates its FINDINGS in the same words, and one section names "right middle lobe" for a mass and again for a
    consolidation, where `no_repeat_ngram_size` would force other words.

    At each step, a token that would end the sentence being written as an exact copy of an earlier sentence of the
    same section is banned. Sentences end with one of `sentence_end_token_ids`, except right after one of
    `number_token_ids` (a decimal point: "2.3 cm"); a section starts after any of the `section_token_ids` sequences
    (its header's tokens); the first token of each row is the decoder start token and is skipped.
    """

    def __init__(self, sentence_end_token_ids, section_token_ids=(), number_token_ids=()):
        self.sentence_ends = set(sentence_end_token_ids)
        self.sections = [tuple(header) for header in section_token_ids if header]
        self.numbers = set(number_token_ids)
        # The last step's rows -> their state: a row is a row of the step before with one token more (beam search
        # reorders them), so each step reads one token per row instead of the whole row again
        self.states = {}

    def next_state(self, state, token):
        """(said, current) after one more token: `said` maps each sentence of the current section, without its last
        token, to the tokens it ended with; `current` is the sentence being written."""
        said, current = state
        if token in self.sentence_ends and current and current[-1] not in self.numbers:
            return {**said, current: said.get(current, frozenset()) | {token}}, ()
        current = current + (token,)
        if any(current[-len(header):] == header for header in self.sections):
            return {}, ()
        return said, current

    def __call__(self, input_ids, scores):
        states = {}
        for row, ids in enumerate(input_ids.tolist()):
            key = tuple(ids)
            state = self.states.get(key[:-1])
            if state is None:
                state = ({}, ())
                for token in key[1:]:
                    state = self.next_state(state, token)
            else:
                state = self.next_state(state, key[-1])
            states[key] = state
            said, current = state
            copies = said.get(current)
            if copies:
                scores[row, list(copies)] = -float("inf")
        self.states = states
        return scores


def use_sentence_repeat_guard(generation_config, token_ids, on=True):
    """Sets `no_repeat_sentence` (on or off) in a generation config, with the tokenizer's ids the guard reads
    (`token_ids`: CLIPT5Processor.sentence_token_ids()). setattr, not update(): GenerationConfig.update() skips
    attributes the config does not have yet."""
    for name, value in {"no_repeat_sentence": on, **token_ids}.items():
        setattr(generation_config, name, value)


def with_sentence_repeat_guard(generation_config, kwargs):
    """generate()'s keyword arguments, with a NoRepeatSentenceLogitsProcessor added where the generation config (a
    `generation_config` argument, else the model's) sets `no_repeat_sentence` (a release's generation_config.json
    carries it with the tokenizer's token ids: CLIPT5Processor.sentence_token_ids); `no_repeat_sentence=False` in a
    call turns it off for that call."""
    config = kwargs.get("generation_config") or generation_config
    kwargs = dict(kwargs)
    if not kwargs.pop("no_repeat_sentence", getattr(config, "no_repeat_sentence", False)):
        return kwargs
    sentence_ends = getattr(config, "sentence_end_token_ids", None)
    if not sentence_ends:
        raise ValueError("no_repeat_sentence needs the tokenizer's sentence_end_token_ids in the generation config "
                         "(use_sentence_repeat_guard(generation_config, processor.sentence_token_ids()))")
    processors = LogitsProcessorList(kwargs.get("logits_processor") or [])
    processors.append(NoRepeatSentenceLogitsProcessor(sentence_ends, getattr(config, "section_token_ids", ()),
                                                      getattr(config, "number_token_ids", ())))
    kwargs["logits_processor"] = processors
    return kwargs


class CLIPT5ForConditionalGeneration(T5ForConditionalGeneration):
    """T5ForConditionalGeneration whose encoder reads image tokens (and an optional prompt) instead of text alone.

    `forward(pixel_values=..., labels=...)` gives the usual seq2seq loss; `generate(pixel_values=...)` drafts a
    report from the image alone; every option of `generate()` keeps its meaning. A model with `config.reads_prior`
    also takes the patient's prior study: `prior_pixel_values` (its image) and `prior_input_ids` (its report), each
    optional, per study (`prior_image_mask`, `prior_attention_mask` say which studies have one).
    """

    config_class = CLIPT5Config
    _no_split_modules = ["T5Block", "ViTLayer"]
    # What register_for_auto_class() sets: save_pretrained copies this file into a release. The config's auto_map
    # names this class for AutoModel and AutoModelForImageTextToText too (one auto class per class otherwise).
    _auto_class = "AutoModelForSeq2SeqLM"

    def __init__(self, config):
        super().__init__(config)
        self.vision_model = ViTModel(config.vision_config, add_pooling_layer=False)
        # CLIP's image projection (768 -> 512, no bias): kept only when T5 reads the pooled CLIP embedding.
        self.visual_projection = (
            nn.Linear(config.vision_config.hidden_size, config.clip_projection_dim, bias=False)
            if config.image_tokens == "pooled"
            else None
        )
        self.clip_projection = CLIPT5Projector(config)
        if config.finding_head:
            self.finding_head = CLIPT5FindingHead(config.vision_config.hidden_size, len(config.finding_labels),
                                                  config.finding_head_hidden, config.finding_pooling_sharpness)
        else:
            self.finding_head = None
        # One learned token per finding and status (absent 0, present 1), read by the T5 encoder after the image.
        self.finding_embeddings = (nn.Embedding(2 * len(config.finding_labels), config.d_model)
                                   if config.uses_finding_guidance else None)
        self.prior_embeddings = (CLIPT5PriorEmbeddings(config.d_model, len(config.finding_labels)
                                                       if config.uses_finding_guidance else 0, config.change_head)
                                 if config.reads_prior else None)
        self.change_head = (CLIPT5ChangeHead(config.vision_config.hidden_size, len(config.finding_labels),
                                             config.change_head_hidden,
                                             config.num_views * (config.num_image_tokens_per_view - 1),
                                             config.change_head_patch_channels)
                            if config.change_head else None)
        self._report_vocabulary_mask = None  # made on first use, on the logits' device
        self.post_init()

    def _init_weights(self, module):
        # Leaf modules are initialised before their parents and a weight is initialised only once (transformers
        # v5), so the projection layers are matched here, as leaves: a rule on CLIPT5Projector itself would come
        # too late and leave them at T5's default std of initializer_factor (1.0), ten times too large.
        if isinstance(module, nn.Linear) and any(module is layer for layer in self._projection_layers()):
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and (
                module is getattr(getattr(self, "clip_projection", None), "view_embeddings", None)
                or module is getattr(getattr(self, "change_head", None), "findings", None)):
            init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.Embedding) and any(module is table for table in self._token_tables()):
            init.normal_(module.weight, mean=0.0, std=1.0)  # the scale of T5's own token embeddings
        else:
            super()._init_weights(module)

    def _token_tables(self):
        """The embeddings of the tokens this model adds to T5's input: finding guidance, the prior's markers."""
        prior = getattr(self, "prior_embeddings", None)  # (T5's __init__ runs post_init() before they exist)
        tables = [getattr(self, "finding_embeddings", None)] + ([prior.status, prior.kinds, prior.courses,
                                                                 prior.changes] if prior else [])
        return [table for table in tables if table is not None]

    def _projection_layers(self):
        # T5's __init__ already runs post_init(), before these modules exist
        projector, visual_projection = getattr(self, "clip_projection", None), getattr(self, "visual_projection", None)
        head, change_head = getattr(self, "finding_head", None), getattr(self, "change_head", None)
        layers = []
        for module in (projector, head):
            if module is not None:
                layers += [layer for layer in module.layers if isinstance(layer, nn.Linear)]
        if change_head is not None:
            layers += [change_head.inputs, change_head.output] + (
                [change_head.patch_differences] if change_head.patch_differences is not None else [])
        return layers + ([visual_projection] if visual_projection is not None else [])

    def _check_pixel_values(self, pixel_values):
        """Returns pixel_values as [batch, views, channels, height, width] or raises a ValueError saying why not."""
        vision = self.config.vision_config
        expected = f"[batch, {vision.num_channels}, {vision.image_size}, {vision.image_size}]"
        if self.config.num_views > 1:
            expected += f" or [batch, {self.config.num_views}, {vision.num_channels}, {vision.image_size}, {vision.image_size}]"
        if not torch.is_tensor(pixel_values) or pixel_values.dim() not in (4, 5):
            shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a tensor of shape {expected}, got {shape}")
        given_shape = tuple(pixel_values.shape)
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)
        _, views, channels, height, width = pixel_values.shape
        if channels != vision.num_channels or height != vision.image_size or width != vision.image_size:
            raise ValueError(f"pixel_values must have shape {expected} (use CLIPT5Processor), got {given_shape}")
        if views != self.config.num_views:
            raise ValueError(
                f"this model reads {self.config.num_views} view(s) per study, pixel_values has {views}"
            )
        return pixel_values

    def get_vision_features(self, pixel_values):
        """Vision-tower tokens before `clip_projection`: [batch, views, tokens, channels].

        This is all the model computes from pixels, so a frozen tower's output can be cached and passed back as
        `vision_features=` to `forward` / `generate`.
        """
        pixel_values = self._check_pixel_values(pixel_values)
        batch, views = pixel_values.shape[:2]
        images = pixel_values.flatten(0, 1).to(self.vision_model.dtype)
        hidden = self.vision_model(pixel_values=images).last_hidden_state  # after the final LayerNorm
        if self.config.image_tokens == "pooled":
            # open_clip's BiomedCLIP embedding: the CLS token after the final norm, through the image projection
            tokens = self.visual_projection(hidden[:, :1])
        else:
            tokens = self._pool_patch_tokens(hidden)
        return tokens.unflatten(0, (batch, views))

    def _pool_patch_tokens(self, hidden):
        """Average-pools the patch grid by `image_token_pooling` per side; the CLS token is kept as it is."""
        factor = self.config.image_token_pooling
        if factor == 1:
            return hidden
        cls_token, patches = hidden[:, :1], hidden[:, 1:]
        grid = int(patches.shape[1] ** 0.5)
        patches = patches.transpose(1, 2).unflatten(2, (grid, grid))
        patches = nn.functional.avg_pool2d(patches, factor).flatten(2).transpose(1, 2)
        return torch.cat([cls_token, patches], dim=1)

    def get_image_features(self, pixel_values):
        """Image tokens as T5 sees them: [batch, views * tokens, d_model]."""
        return self.clip_projection(self.get_vision_features(pixel_values))

    def predict_findings(self, pixel_values=None, vision_features=None):
        """The finding head's probabilities, present/absent decisions (the release's thresholds) and heatmaps for a
        batch of studies (a `CLIPT5FindingOutput`); pass pixel_values or cached vision_features."""
        if self.finding_head is None:
            raise ValueError("this model has no finding head (config.finding_head is False)")
        if vision_features is None:
            if pixel_values is None:
                raise ValueError("predict_findings needs pixel_values (or cached vision_features)")
            vision_features = self.get_vision_features(pixel_values)
        return self.finding_output(*self.finding_head(vision_features.to(self.dtype)))

    def finding_output(self, logits, patch_logits):
        """The head's logits [batch, findings] and patch logits [batch, views, patches, findings] -> a
        CLIPT5FindingOutput (probabilities, present at the config's thresholds, maps per view and finding)."""
        probabilities = torch.sigmoid(logits.float())
        vision = self.config.vision_config
        grid = vision.image_size // vision.patch_size // self.config.image_token_pooling
        maps = torch.sigmoid(patch_logits.float()).transpose(2, 3).unflatten(3, (grid, grid))
        return CLIPT5FindingOutput(logits=logits, probabilities=probabilities,
                                   present=probabilities >= self._thresholds(probabilities.device), maps=maps)

    def _thresholds(self, device):
        return torch.tensor(self.config.finding_thresholds, device=device)

    def findings_tensor(self, findings, batch):
        """Findings given by a caller -> [batch, findings] long: 1 present, 0 absent, -1 for the head to decide
        (see `findings_to_tensor`)."""
        if self.finding_embeddings is None:
            raise ValueError("this model does not take findings: it has no finding head with guidance "
                             "(config.finding_head / finding_guidance)")
        return findings_to_tensor(findings, self.config.finding_labels, batch)

    def finding_tokens(self, statuses):
        """[batch, findings] 0/1 -> the guidance tokens [batch, findings, d_model]."""
        offsets = torch.arange(statuses.shape[1], device=statuses.device) * 2
        return self.finding_embeddings(offsets + statuses.long())

    def guidance_statuses(self, finding_logits, given=None):
        """Each finding's status for the guidance tokens: the head's decision (probability >= threshold), replaced
        by `given` ([batch, findings] 1 / 0, -1 = keep the head's) where given."""
        decided = torch.sigmoid(finding_logits.detach().float()) >= self._thresholds(finding_logits.device)
        return followed_findings(decided, given)

    def build_encoder_inputs(self, pixel_values=None, input_ids=None, attention_mask=None, vision_features=None,
                             findings=None, finding_logits=None, **prior):
        """Returns (inputs_embeds, attention_mask) for the T5 encoder: image tokens, then (with guidance) one token per
        finding and its status, then (with `config.reads_prior`) the prior study (see `prior_inputs`; `prior` holds
        its `prior_*` arguments), then the prompt tokens. `findings` (see `findings_tensor`) override the head's
        decisions; `finding_logits`, when already computed, save running the head again."""
        if vision_features is None:
            if pixel_values is None:
                raise ValueError("CLIP-T5 needs an image: pass pixel_values (or cached vision_features)")
            vision_features = self.get_vision_features(pixel_values)
        batch = vision_features.shape[0]
        statuses = None
        if self.finding_embeddings is not None:
            if finding_logits is None:
                finding_logits, _ = self.finding_head(vision_features.to(self.dtype))
            given = None if findings is None else self.findings_tensor(findings, batch)
            statuses = self.guidance_statuses(finding_logits, given)
        elif findings is not None:
            self.findings_tensor(findings, batch)  # raises: this model takes no findings
        return self.encoder_inputs(vision_features, statuses, input_ids, attention_mask,
                                   self.prior_inputs(batch, statuses, vision_features, **prior))

    def prior_inputs(self, batch, statuses=None, vision_features=None, **prior):
        """(embeds [batch, tokens, d_model], mask [batch, tokens]) of the prior study for the T5 encoder (see
        `prior_tokens`; `statuses`: the current study's guidance; `vision_features`: the current study's, which a
        change head compares with the prior's), or None for a model without `config.reads_prior`, which refuses a
        prior (ValueError)."""
        refuse_prior(self.config, prior)
        return self.prior_tokens(batch, statuses, vision_features, **prior) if self.config.reads_prior else None

    def change_logits(self, vision_features, prior_vision_features, prior_patch_logits=None):
        """The change head's logits [batch, findings, 3] (smaller, the same, larger since the prior) from the two
        studies' vision features (and the finding head's patch logits on the prior, when already computed)."""
        if self.change_head is None:
            raise ValueError("this model has no change head (config.change_head is False)")
        features, prior_features = vision_features.to(self.dtype), prior_vision_features.to(self.dtype)
        if prior_patch_logits is None:
            prior_patch_logits = self.finding_head(prior_features)[1]
        return self.change_head(features, self.finding_head(features)[1], prior_features, prior_patch_logits)

    def prior_tokens(self, batch, statuses=None, vision_features=None, prior_pixel_values=None,
                     prior_vision_features=None, prior_image_mask=None, prior_input_ids=None,
                     prior_attention_mask=None, prior_changes=None, prior_findings=None):
        """(embeds [batch, tokens, d_model], mask [batch, tokens]) of the prior study: the prior status token (prior
        or no prior), then, when given, the prior image's tokens and (with guidance) each finding's course from the
        finding head's decision on the prior image (or `prior_findings`, as `findings` for the current study) to the
        current study's guidance (`statuses`, [batch, findings] 0/1) and, with a change head, for a finding present
        in both, its change (it needs the current study's `vision_features`; `prior_changes` [batch, findings],
        0 smaller, 1 the same, 2 larger, -1 for the head to decide, overrides it, as `findings` do the finding head),
        then the prior report's tokens.

        prior_pixel_values (or cached prior_vision_features): the prior's images, shaped as pixel_values;
        prior_image_mask [batch] 1 / 0 says which studies have one (default: all). prior_input_ids /
        prior_attention_mask: the prior report (CLIPT5Processor's `prior_reports`); a study whose mask is all 0 has
        none. A study with neither gets the "no prior" token alone (the rest is masked out)."""
        embeddings = self.prior_embeddings
        kinds = embeddings.kinds.weight.to(self.dtype)
        parts, masks = [], []
        has_prior = None
        refuse_prior_overrides(self.config, prior_vision_features is not None or prior_pixel_values is not None,
                               prior_findings, prior_changes, prior_image_mask)
        if prior_vision_features is None and prior_pixel_values is not None:
            prior_vision_features = self.get_vision_features(prior_pixel_values)
        if prior_vision_features is not None:
            if prior_vision_features.shape[0] != batch:
                raise ValueError(f"{prior_vision_features.shape[0]} prior images for {batch} studies: pass one per "
                                 "study (prior_image_mask 0 where a study has none)")
            features = prior_vision_features.to(self.dtype)
            image_mask = (torch.ones(batch, dtype=torch.long, device=features.device) if prior_image_mask is None
                          else prior_image_mask.long().to(features.device))
            parts.append(self.clip_projection(features) + kinds[embeddings.IMAGE])
            if self.finding_embeddings is not None:
                if statuses is None:
                    raise ValueError("a prior image's finding tokens compare with the current study's findings: "
                                     "pass its guidance statuses")
                prior_logits, prior_patch_logits = self.finding_head(features)
                given = None if prior_findings is None else self.findings_tensor(prior_findings, batch)
                prior_statuses = self.guidance_statuses(prior_logits, given)
                changes = None
                if self.change_head is not None:
                    if vision_features is None:
                        raise ValueError("the change head compares the prior image with the current one: pass the "
                                         "current study's vision_features")
                    changes = self.change_logits(vision_features, features, prior_patch_logits).argmax(dim=-1)
                    if prior_changes is not None:
                        given = prior_changes.long().to(changes.device)
                        changes = torch.where(given >= 0, given, changes)
                parts.append(embeddings.course_tokens(prior_statuses, statuses, changes)
                             .to(self.dtype) + kinds[embeddings.FINDINGS])
            masks += [image_mask[:, None].expand(-1, part.shape[1]) for part in parts]
            has_prior = image_mask
        else:
            # Masked places for the prior image's tokens and guidance keep the report's tokens where they are with
            # a prior image (T5's attention bias depends on relative positions), so every layout drafts alike.
            places = self.config.num_views * self.config.num_image_tokens_per_view
            if self.finding_embeddings is not None:
                places += len(self.config.finding_labels)
            parts.append(kinds.new_zeros(batch, places, kinds.shape[1]))
            masks.append(torch.zeros(batch, places, dtype=torch.long, device=kinds.device))
        if prior_input_ids is not None:
            if prior_input_ids.shape[0] != batch:
                raise ValueError(f"{prior_input_ids.shape[0]} prior reports for {batch} studies: pass one per study "
                                 "(an all-0 prior_attention_mask where a study has none)")
            if prior_input_ids.shape[1] > self.config.max_prior_report_tokens:
                raise ValueError(f"prior report has {prior_input_ids.shape[1]} tokens, more than "
                                 f"max_prior_report_tokens={self.config.max_prior_report_tokens}; CLIPT5Processor "
                                 "truncates prior reports to that length")
            report_mask = (torch.ones_like(prior_input_ids) if prior_attention_mask is None
                           else prior_attention_mask.to(prior_input_ids.device)).long()
            parts.append(self.get_input_embeddings()(prior_input_ids) + kinds[embeddings.REPORT])
            masks.append(report_mask)
            has_report = report_mask.amax(dim=1)
            has_prior = has_report if has_prior is None else torch.maximum(has_prior, has_report.to(has_prior.device))
        device = embeddings.status.weight.device
        # The batch size taken from a tensor (not torch.zeros(batch)) keeps it a dimension when the graph is exported.
        status = (has_prior.to(device) if has_prior is not None
                  else torch.zeros_like(embeddings.status.weight[:1, 0], dtype=torch.long).expand(batch))
        status_token = embeddings.status(status)[:, None].to(self.dtype)
        embeds = torch.cat([status_token] + [part.to(status_token.device) for part in parts], dim=1)
        mask = torch.cat([torch.ones_like(status[:, None])] + [m.to(status.device) for m in masks], dim=1)
        return embeds, mask

    def encoder_inputs(self, vision_features, statuses=None, input_ids=None, attention_mask=None, prior_embeds=None):
        """(inputs_embeds, attention_mask) from vision features, the guidance statuses (with guidance), the prior
        study's (embeds, mask) (with `config.reads_prior`, see `prior_inputs`) and the prompt."""
        image_embeds = self.clip_projection(vision_features.to(self.dtype))
        batch = image_embeds.shape[0]
        if statuses is not None:
            image_embeds = torch.cat([image_embeds, self.finding_tokens(statuses).to(image_embeds.dtype)], dim=1)
        image_mask = torch.ones(batch, image_embeds.shape[1], dtype=torch.long, device=image_embeds.device)
        if prior_embeds is not None:
            image_embeds = torch.cat([image_embeds, prior_embeds[0].to(image_embeds.dtype)], dim=1)
            image_mask = torch.cat([image_mask, prior_embeds[1].to(image_mask.device)], dim=1)
        if input_ids is None:
            return image_embeds, image_mask
        if input_ids.shape[0] != batch:
            raise ValueError(f"{input_ids.shape[0]} prompts for {batch} images: pass one prompt per study")
        if input_ids.shape[1] > self.config.max_prompt_tokens:
            raise ValueError(
                f"prompt has {input_ids.shape[1]} tokens, more than max_prompt_tokens="
                f"{self.config.max_prompt_tokens}; CLIPT5Processor truncates prompts to that length"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompt_embeds = self.get_input_embeddings()(input_ids)
        inputs_embeds = torch.cat([image_embeds, prompt_embeds], dim=1)
        return inputs_embeds, torch.cat([image_mask, attention_mask.to(image_mask.dtype)], dim=1)

    def forward(
        self,
        pixel_values=None,
        input_ids=None,
        attention_mask=None,
        vision_features=None,
        encoder_outputs=None,
        inputs_embeds=None,
        findings=None,
        finding_targets=None,
        change_targets=None,
        prior_pixel_values=None,
        prior_vision_features=None,
        prior_image_mask=None,
        prior_input_ids=None,
        prior_attention_mask=None,
        prior_changes=None,
        prior_findings=None,
        **kwargs,
    ):
        r"""
        pixel_values (`torch.FloatTensor` of shape `[batch, 3, H, W]` or `[batch, views, 3, H, W]`):
            Images from CLIPT5Processor. Not needed when `encoder_outputs` are given (as `generate()` does after
            its first step) or when `vision_features` (cached `get_vision_features` output) are given.
        input_ids, attention_mask:
            The optional text prompt that follows the image tokens (padded prompts need their mask).
        findings (models with a finding head and guidance):
            The findings the report should follow, instead of the head's decisions (see `findings_tensor`;
            -1 leaves a finding to the head). Training passes the true findings here for some studies.
        finding_targets (`torch.FloatTensor` of shape `[batch, findings]`):
            1 / 0 per finding for the head's loss; -100 leaves a finding out of it (an uncertain label, say).
        change_targets (`torch.LongTensor` of shape `[batch, findings]`, models with `config.change_head`):
            Each finding's change since the prior image for the change head's loss: 0 smaller, 1 the same, 2 larger;
            -100 leaves it out (a finding not in both studies, a study without a prior image).
        prior_pixel_values, prior_vision_features, prior_image_mask, prior_input_ids, prior_attention_mask
        (models with `config.reads_prior`):
            The patient's prior study: its images (or cached features) and its report, see `prior_inputs`.
        prior_changes (`torch.LongTensor` of shape `[batch, findings]`, models with `config.change_head`):
            Each finding's change since the prior (0 smaller, 1 the same, 2 larger) for the course tokens instead of
            the change head's (-1 leaves it to the head); training passes the true changes for some studies.
        prior_findings (models with `config.reads_prior` and guidance):
            The prior study's findings for the course tokens instead of the finding head's decisions on the prior image
            (as `findings`); training passes the prior's true findings where it passes the current study's.
        Other arguments (labels, decoder_input_ids, ...) are T5ForConditionalGeneration's.
        """
        finding_logits = None
        if encoder_outputs is None and inputs_embeds is None:
            if self.finding_head is not None:
                if vision_features is None:
                    if pixel_values is None:
                        raise ValueError("CLIP-T5 needs an image: pass pixel_values (or cached vision_features)")
                    vision_features = self.get_vision_features(pixel_values)
                finding_logits, _ = self.finding_head(vision_features.to(self.dtype))
            inputs_embeds, attention_mask = self.build_encoder_inputs(
                pixel_values, input_ids, attention_mask, vision_features, findings, finding_logits,
                prior_pixel_values=prior_pixel_values, prior_vision_features=prior_vision_features,
                prior_image_mask=prior_image_mask, prior_input_ids=prior_input_ids,
                prior_attention_mask=prior_attention_mask, prior_changes=prior_changes, prior_findings=prior_findings)
        outputs = super().forward(
            input_ids=None,
            attention_mask=attention_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        if self.config.report_vocabulary is not None and not self.training and outputs.logits is not None:
            outputs.logits = outputs.logits.masked_fill(~self.report_vocabulary_mask(outputs.logits.device),
                                                        torch.finfo(outputs.logits.dtype).min)
        if finding_logits is None:
            return outputs
        finding_loss = None if finding_targets is None else self.finding_loss(finding_logits, finding_targets)
        change_loss = None
        if change_targets is not None:
            if prior_vision_features is None and prior_pixel_values is not None:
                prior_vision_features = self.get_vision_features(prior_pixel_values)
            if prior_vision_features is None:
                raise ValueError("change_targets need the prior image (prior_pixel_values or prior_vision_features)")
            change_loss = self.change_loss(self.change_logits(vision_features, prior_vision_features), change_targets)
        fields = {name: value for name, value in outputs.items()}
        for loss, weight in ((finding_loss, self.config.finding_loss_weight),
                             (change_loss, self.config.change_loss_weight)):
            if loss is not None:
                fields["loss"] = weight * loss if fields.get("loss") is None else fields["loss"] + weight * loss
        return CLIPT5Seq2SeqLMOutput(**fields, finding_logits=finding_logits, finding_loss=finding_loss,
                                     change_loss=change_loss)

    def report_vocabulary_mask(self, device):
        """[vocab_size] bool, True for the tokens of config.report_vocabulary: the only tokens a draft may use.
        Applied in evaluation mode only, so that training still learns from any report."""
        mask = self._report_vocabulary_mask
        if mask is None or mask.device != device:
            mask = torch.zeros(self.config.vocab_size, dtype=torch.bool, device=device)
            mask[torch.tensor(self.config.report_vocabulary, device=device)] = True
            self._report_vocabulary_mask = mask
        return mask

    def change_loss(self, change_logits, change_targets):
        """Cross-entropy of the change head over the findings with a target (-100 elsewhere); 0 when none has one."""
        targets = change_targets.long().to(change_logits.device).flatten()
        if not (targets != -100).any():
            return change_logits.sum() * 0.0  # keeps the head in the graph (DDP expects every parameter's gradient)
        return nn.functional.cross_entropy(change_logits.flatten(0, 1).float(), targets, ignore_index=-100)

    def finding_loss(self, finding_logits, finding_targets):
        """The head's loss (finding_bce), positives weighted per finding by config.finding_positive_weights."""
        return finding_bce(finding_logits, finding_targets, torch.tensor(self.config.finding_positive_weights))

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, vision_features=None, findings=None,
                 prior_pixel_values=None, prior_vision_features=None, prior_image_mask=None, prior_input_ids=None,
                 prior_attention_mask=None, prior_changes=None, prior_findings=None, **kwargs):
        """Drafts reports. `generate(pixel_values=...)` needs no text; a prompt (input_ids) is optional.

        With a finding head and guidance, the report follows the head's findings, or `findings` where the caller
        gives them (a list of the names present per study, a {name: bool} dict per study, or a [batch, findings]
        tensor of 1 / 0 / -1; see `findings_tensor`): a reader who corrects a finding gets a report that follows
        the correction. With `config.reads_prior`, the prior study's image (`prior_pixel_values`) and report
        (`prior_input_ids`, from CLIPT5Processor's `prior_images` / `prior_reports`) are read too; without them the
        model reads "no prior"; `prior_findings` (as `findings`) and `prior_changes` override the heads' findings
        on the prior image and changes since it. All keyword arguments of `GenerationMixin.generate` (num_beams,
        do_sample, max_new_tokens, no_repeat_ngram_size, generation_config, ...) work as usual, and
        `no_repeat_sentence` (a release's default: no sentence twice in a section, NoRepeatSentenceLogitsProcessor)
        can be turned off with `no_repeat_sentence=False`.
        """
        kwargs = with_sentence_repeat_guard(self.generation_config, kwargs)
        if pixel_values is None and vision_features is None:
            if "inputs_embeds" in kwargs or "encoder_outputs" in kwargs:
                # The guidance and the prior are read when the encoder inputs are built: given here, they would be
                # silently ignored
                ignored = [name for name, value in (
                    ("findings", findings), ("prior_pixel_values", prior_pixel_values),
                    ("prior_vision_features", prior_vision_features), ("prior_image_mask", prior_image_mask),
                    ("prior_input_ids", prior_input_ids), ("prior_attention_mask", prior_attention_mask),
                    ("prior_changes", prior_changes), ("prior_findings", prior_findings)) if value is not None]
                if ignored:
                    raise ValueError(f"{', '.join(ignored)} cannot go with inputs_embeds or encoder_outputs: they "
                                     "are read when the encoder inputs are built from pixel_values or "
                                     "vision_features")
                return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            raise ValueError("CLIP-T5 drafts a report from an image: pass pixel_values (or vision_features)")
        inputs_embeds, attention_mask = self.build_encoder_inputs(
            pixel_values, input_ids, attention_mask, vision_features, findings,
            prior_pixel_values=prior_pixel_values, prior_vision_features=prior_vision_features,
            prior_image_mask=prior_image_mask, prior_input_ids=prior_input_ids,
            prior_attention_mask=prior_attention_mask, prior_changes=prior_changes, prior_findings=prior_findings)
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


__all__ = ["CLIPT5ChangeHead", "CLIPT5FindingHead", "CLIPT5FindingOutput", "CLIPT5ForConditionalGeneration",
           "CLIPT5PriorEmbeddings", "CLIPT5Projector", "CLIPT5Seq2SeqLMOutput", "NoRepeatSentenceLogitsProcessor",
           "use_sentence_repeat_guard"]

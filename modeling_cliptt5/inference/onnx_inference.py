"""The CPU fast path behind `cliptt5-generate --optimize`: CLIP-T5 exported to ONNX and run by ONNX Runtime.

Why not the PyTorch model with int8 weights alone (fast_inference.py)? Per decoding step, t5-small's decoder
does ~100 small operations, and in eager PyTorch their Python overhead is about half of a step. ONNX Runtime runs
the same step as one graph call (benchmarks/bench_cpu_inference.py). Three graphs are exported from the loaded
model, with its own modules:
- the vision tower: pixels -> the image's vision features. It is its own graph so that a prior image's tower runs
  only for the studies that have a prior (a first study's would be masked out anyway);
- the encoder: vision features (and an optional prompt; for a release that reads priors, the prior's features and
  report) -> image tokens -> T5 encoder, plus every decoder layer's cross-attention keys and values, which stay
  the same for the whole draft; with a finding head, the graph also gives the head's probabilities and heatmaps,
  and takes the findings a caller sets (-1: the head decides), so that the guidance tokens follow a reader's
  correction;
- one decoding step: the last token and the self-attention cache -> next-token logits and the grown cache.
Each attention is written as one fused node (onnx_attention.py). Weights are then int8-quantized per output channel
(onnxruntime.quantization.quantize_dynamic), or kept float32 with `weights="float32"`.

Decoding is transformers' own `generate()` (GenerationMixin) driving the step graph (OnnxStepModel): greedy,
beam search, sampling, penalties, length rules and stopping mean what they mean for the PyTorch model, and with
float32 graphs give its tokens. Export runs once per release in a child process (the float model and the
exporter's copy of it would otherwise stay in the drafting process's peak memory) and is cached on disk.

Needs the `fast` extra: onnxruntime and onnx (the exporter writes through it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from modeling_cliptt5.configuration_cliptt5 import CLIPT5Config
from modeling_cliptt5.inference.onnx_attention import fused_attention
from modeling_cliptt5.inference.ood import image_vectors

EXPORT_FORMAT = 8  # bump when the graphs' inputs or outputs change: cached exports are then made again
WEIGHT_CHOICES = ("int8", "float32")
VISION_FILE, ENCODER_FILE, STEP_FILE = "vision.onnx", "encoder.onnx", "decoder_step.onnx"
MIN_ONNXRUNTIME = (1, 24)  # as the `fast` extra requires


def _import_onnxruntime():
    """onnxruntime with its telemetry off, or an ImportError saying what to install (load_for_cpu then falls back
    to PyTorch int8). Every use of onnxruntime here (sessions, and the quantizer's in the export's child process)
    goes through this, because the package sends nothing off this computer: onnxruntime >= 1.29 on Linux starts a
    telemetry uploader when it is imported (DNS lookups of mobile.events.data.microsoft.com some seconds later,
    with or without sessions). Only ORT_DISABLE_TELEMETRY=1, set before the import, stops it (measured with strace);
    disable_telemetry_events() covers an onnxruntime somebody else imported first, for its later events."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:  # the export passes v5's cache classes and 4D masks
        raise ImportError(f"the ONNX fast path needs transformers >= 5, found {transformers.__version__}")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # inherited by the export's child process too
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("--optimize runs the model with ONNX Runtime: pip install 'cliptt5[fast]' "
                          "(onnxruntime and onnx)") from error
    onnxruntime.disable_telemetry_events()
    found = tuple(int(part) for part in onnxruntime.__version__.split(".")[:2])
    if found < MIN_ONNXRUNTIME:  # older ones refuse the int8 graphs' ConvInteger (int8 weights) when a session loads
        raise ImportError(f"--optimize needs onnxruntime >= {'.'.join(map(str, MIN_ONNXRUNTIME))}, found "
                          f"{onnxruntime.__version__}: pip install 'cliptt5[fast]'")
    return onnxruntime


# --------------------------------------------------------------------------------------------------------------
# Export: the model's own modules, traced into two graphs
# --------------------------------------------------------------------------------------------------------------

def additive_mask(mask):
    """[batch, keys] 1/0 -> [batch, 1, 1, keys] 0/-inf-like, the form attention adds to its scores. Handing T5 this
    4D mask makes transformers use it as it is; its own mask builders trace the lengths as constants."""
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


def _cross_attentions(model):
    return [block.layer[1].EncDecAttention for block in model.decoder.block]


class VisionGraph(nn.Module):
    """pixel_values -> vision features (CLIPT5ForConditionalGeneration.get_vision_features)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_vision_features(pixel_values)


class EncoderGraph(nn.Module):
    """vision features, prompt ids and mask (with a finding head and guidance, the caller's findings: 1 / 0, -1 for
    the head's decision; for a release that reads priors, the prior's vision features, image mask, report ids and
    mask) ->
    encoder hidden states' mask, each decoder layer's cross keys/values (and the head's probabilities and heatmaps).
    A zero-length prompt ([batch, 0]) means no prompt, a prior image mask of 0 and an all-0 report mask no prior:
    one graph serves all."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.input_names = encoder_input_names(model.config)

    def forward(self, *inputs):
        model = self.model
        named = dict(zip(self.input_names, inputs))
        vision_features, prompt_ids, prompt_mask = (named["vision_features"], named["prompt_ids"],
                                                    named["prompt_mask"])
        head_outputs, statuses = (), None
        if model.finding_head is not None:
            logits, patch_logits = model.finding_head(vision_features)
            head = model.finding_output(logits, patch_logits)
            head_outputs = (head.probabilities, head.maps)
            if model.finding_embeddings is not None:
                statuses = model.guidance_statuses(logits, named["findings"])
        prior = None
        if model.config.reads_prior:
            prior = model.prior_inputs(vision_features.shape[0], statuses, vision_features,
                                       prior_vision_features=named["prior_vision_features"],
                                       prior_image_mask=named["prior_image_mask"],
                                       prior_input_ids=named["prior_ids"], prior_attention_mask=named["prior_mask"],
                                       prior_findings=named.get("prior_findings"),
                                       prior_changes=named.get("prior_changes"))
        inputs_embeds, _ = model.encoder_inputs(vision_features, statuses, prompt_ids, prompt_mask, prior)
        # The same mask as encoder_inputs', made so that the exporter keeps the batch size an input dimension
        # (it turns torch.ones(batch, ...) into a constant of the traced batch size).
        prior_mask = prior[1] if prior is not None else prompt_mask[:, :0]
        image_tokens = inputs_embeds.shape[1] - prompt_ids.shape[1] - prior_mask.shape[1]
        image_mask = torch.ones(1, image_tokens, dtype=torch.long).expand(prompt_mask.shape[0], -1)
        attention_mask = torch.cat([image_mask, prior_mask.long(), prompt_mask], dim=1)
        hidden = model.get_encoder()(inputs_embeds=inputs_embeds,
                                     attention_mask=additive_mask(attention_mask)).last_hidden_state
        heads_first = (hidden.shape[0], hidden.shape[1], -1, model.config.d_kv)
        cross = []
        for attention in _cross_attentions(model):
            cross += [attention.k(hidden).view(heads_first).transpose(1, 2),
                      attention.v(hidden).view(heads_first).transpose(1, 2)]
        return (attention_mask, *cross, *head_outputs, image_vectors(vision_features))


def encoder_input_names(config):
    """The encoder graph's inputs, in order, for a release's config."""
    names = ["vision_features", "prompt_ids", "prompt_mask"]
    if config.uses_finding_guidance:
        names.append("findings")
    if config.reads_prior:
        names += ["prior_vision_features", "prior_image_mask", "prior_ids", "prior_mask"]
        if config.uses_finding_guidance:  # the prior's findings and changes as the caller sets them (-1: the heads')
            names.append("prior_findings")
        if config.change_head:
            names.append("prior_changes")
    return names


class DecoderStepGraph(nn.Module):
    """One greedy step through the model's own forward: last token, encoder mask, caches -> logits, grown caches.
    With a report vocabulary (config.report_vocabulary) the logits are those tokens' alone, from a copy of their
    rows of the output layer: the full layer is then unused and left out of the graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        vocabulary = model.config.report_vocabulary
        self.report_head = None
        if vocabulary is not None:
            self.report_head = nn.Linear(model.config.d_model, len(vocabulary), bias=False)
            self.report_head.weight.data = model.lm_head.weight.data[torch.tensor(vocabulary)].clone()

    def forward(self, decoder_input_ids, encoder_attention_mask, *caches):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        layers = self.model.config.num_decoder_layers
        self_cache, cross_cache = DynamicCache(), DynamicCache()
        for layer in range(layers):
            keys, values, cross_keys, cross_values = caches[4 * layer: 4 * layer + 4]
            for part, part_keys, part_values in ((self_cache, keys, values), (cross_cache, cross_keys, cross_values)):
                part.update(part_keys, part_values, layer)
                # The cache holds the graph's inputs themselves: update() concatenates them to an empty tensor, a
                # copy of every cross-attention key and value at every step that the traced graph would keep.
                part.layers[layer].keys, part.layers[layer].values = part_keys, part_values
        cache = EncoderDecoderCache(self_cache, cross_cache)
        for layer in range(layers):
            cache.is_updated[layer] = True  # cross keys/values come from the encoder graph: not recomputed
        batch, encoder_length = encoder_attention_mask.shape
        # Only its shape is read: every layer takes its cross keys/values from the cache.
        encoder_hidden = torch.zeros(batch, encoder_length, self.model.config.d_model)
        # The new token sees every earlier one: an all-zero additive mask over the cache and itself.
        decoder_mask = additive_mask(torch.ones(batch, caches[0].shape[2] + 1))
        outputs = self.model(encoder_outputs=(encoder_hidden,), attention_mask=additive_mask(encoder_attention_mask),
                             decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_mask,
                             past_key_values=cache, use_cache=True, output_hidden_states=self.report_head is not None)
        if self.report_head is None:
            logits = outputs.logits[:, -1]
        else:
            hidden = outputs.decoder_hidden_states[-1][:, -1]
            if self.model.config.scale_decoder_outputs:  # T5 scales before a tied output layer (transformers 5)
                hidden = hidden * self.model.config.d_model ** -0.5
            logits = self.report_head(hidden)
        grown = []
        for layer in range(layers):
            grown += [self_cache.layers[layer].keys, self_cache.layers[layer].values]
        return (logits, *grown)


def _cache_names(layers):
    return [f"{kind}.{layer}" for layer in range(layers)
            for kind in ("self_keys", "self_values", "cross_keys", "cross_values")]


def export_graphs(model, folder, weights="int8"):
    """Writes VISION_FILE, ENCODER_FILE and STEP_FILE for `model` into `folder` (float32 graphs, then quantized for
    int8)."""
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.to(device="cpu", dtype=torch.float32).eval()
    config = model.config
    layers, heads, head_size = config.num_decoder_layers, config.num_heads, config.d_kv
    views = () if config.num_views == 1 else (config.num_views,)
    size = config.vision_config.image_size
    pixel_values = torch.zeros(2, *views, 3, size, size)
    prompt_ids = torch.ones(2, 3, dtype=torch.long)
    prompt_mask = torch.ones(2, 3, dtype=torch.long)
    with torch.no_grad():
        vision_features = model.get_vision_features(pixel_values)
    example = {"vision_features": vision_features, "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
               "findings": torch.full((2, len(config.finding_labels)), -1, dtype=torch.long),
               "prior_vision_features": vision_features,
               "prior_image_mask": torch.tensor([1, 0]), "prior_ids": torch.ones(2, 3, dtype=torch.long),
               "prior_mask": torch.tensor([[1, 1, 1], [0, 0, 0]]),
               "prior_findings": torch.full((2, len(config.finding_labels)), -1, dtype=torch.long),
               "prior_changes": torch.full((2, len(config.finding_labels)), -1, dtype=torch.long)}
    input_names = encoder_input_names(config)
    encoder_inputs = tuple(example[name] for name in input_names)
    encoder_axes = {"vision_features": {0: "batch"}, "prompt_ids": {0: "batch", 1: "prompt"},
                    "prompt_mask": {0: "batch", 1: "prompt"}, "image_vectors": {0: "batch"}, "findings": {0: "batch"},
                    "prior_vision_features": {0: "batch"}, "prior_image_mask": {0: "batch"},
                    "prior_ids": {0: "batch", 1: "prior_report"}, "prior_mask": {0: "batch", 1: "prior_report"},
                    "prior_findings": {0: "batch"}, "prior_changes": {0: "batch"}}
    encoder_axes = {name: axes for name, axes in encoder_axes.items()
                    if name in input_names or name == "image_vectors"}
    head_names = []
    if model.finding_head is not None:
        head_names = ["finding_probabilities", "finding_maps"]
        encoder_axes.update({name: {0: "batch"} for name in head_names})
    cross_names = [name for name in _cache_names(layers) if name.startswith("cross")]
    float_folder = folder / "float32" if weights == "int8" else folder
    float_folder.mkdir(exist_ok=True)
    # Each attention one fused node (onnx_attention.py): a step of one token is otherwise mostly small nodes.
    with torch.no_grad(), warnings.catch_warnings(), fused_attention(model):
        warnings.simplefilter("ignore")  # the TorchScript exporter's and T5's deprecation notices
        # The wrappers in eval mode: the exporter puts a module back in the mode it found it in, and a new
        # nn.Module is in training mode, which would switch the model's dropout on for the caller.
        encoder_graph, step_graph = EncoderGraph(model).eval(), DecoderStepGraph(model).eval()
        torch.onnx.export(VisionGraph(model).eval(), (pixel_values,), str(float_folder / VISION_FILE),
                          input_names=["pixel_values"], output_names=["vision_features"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "vision_features": {0: "batch"}},
                          opset_version=17, dynamo=False)
        encoder_outputs = encoder_graph(*encoder_inputs)
        torch.onnx.export(
            encoder_graph, encoder_inputs, str(float_folder / ENCODER_FILE),
            input_names=input_names,
            output_names=["encoder_attention_mask", *cross_names, *head_names, "image_vectors"],
            dynamic_axes={**encoder_axes, "encoder_attention_mask": {0: "batch", 1: "encoder"},
                          **{name: {0: "batch", 2: "encoder"} for name in cross_names}},
            opset_version=17, dynamo=False,
        )
        caches = []
        for layer in range(layers):
            past = torch.zeros(2, heads, 1, head_size)
            caches += [past, past, encoder_outputs[1 + 2 * layer], encoder_outputs[2 + 2 * layer]]
        grown_names = [f"grown_{kind}.{layer}" for layer in range(layers) for kind in ("self_keys", "self_values")]
        torch.onnx.export(
            step_graph, (torch.zeros(2, 1, dtype=torch.long), encoder_outputs[0], *caches),
            str(float_folder / STEP_FILE),
            input_names=["decoder_input_ids", "encoder_attention_mask", *_cache_names(layers)],
            output_names=["logits", *grown_names],
            dynamic_axes={"decoder_input_ids": {0: "batch"}, "encoder_attention_mask": {0: "batch", 1: "encoder"},
                          "logits": {0: "batch"},
                          **{name: {0: "batch", 2: "past" if name.startswith("self") else "encoder"}
                             for name in _cache_names(layers)},
                          **{name: {0: "batch", 2: "grown"} for name in grown_names}},
            opset_version=17, dynamo=False,
        )
    if weights == "int8":
        _import_onnxruntime()  # telemetry off before the quantizer starts its sessions
        from onnxruntime.quantization import QuantType, quantize_dynamic

        logging.disable(logging.WARNING)  # its advice to run shape pre-processing, meant for static quantization
        try:
            for name in (VISION_FILE, ENCODER_FILE, STEP_FILE):
                # Per-channel int8 weights (one scale per output row), activations quantized per call: as
                # torch's dynamic quantization in fast_inference.py.
                quantize_dynamic(float_folder / name, folder / name, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.disable(logging.NOTSET)
        shutil.rmtree(float_folder)


# --------------------------------------------------------------------------------------------------------------
# Export cache: one folder per release file and weight choice
# --------------------------------------------------------------------------------------------------------------

def default_cache_dir():
    return Path(os.environ.get("CLIPT5_ONNX_CACHE", Path.home() / ".cache" / "cliptt5" / "onnx"))


def export_key(release_folder, weights):
    """Changes when the release's weights or config change (path, size and modification time of its files)."""
    release_folder = Path(release_folder).resolve()
    parts = [str(release_folder), weights, str(EXPORT_FORMAT), torch.__version__]
    for name in ("model.safetensors", "config.json"):
        stat = (release_folder / name).stat()
        parts += [name, str(stat.st_size), str(stat.st_mtime_ns)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def exported_folder(release_folder, weights="int8", cache_dir=None):
    """The cached export of a local release folder; made (in a child process) when missing. Returns its path."""
    release_folder = Path(release_folder).resolve()  # the child runs in another folder
    if not (release_folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{release_folder}: no model.safetensors (--optimize needs a local release folder "
                                "or a downloaded hub snapshot)")
    target = Path(cache_dir or default_cache_dir()) / export_key(release_folder, weights)
    if (target / "done.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        print(f"exporting {release_folder} to ONNX ({weights}) once, into {target} ...", file=sys.stderr, flush=True)
        command = [sys.executable, "-m", "modeling_cliptt5.cli.export_onnx", str(release_folder), str(building),
                   "--weights", weights]
        completed = subprocess.run(command, capture_output=True, text=True,
                                   cwd=Path(__file__).resolve().parents[2],  # the source tree, for a run without install
                                   env={**os.environ, "ORT_DISABLE_TELEMETRY": "1"})  # before anything imports it
        if completed.returncode != 0:
            raise RuntimeError(f"ONNX export of {release_folder} failed:\n{completed.stderr[-3000:]}")
        (building / "done.json").write_text(json.dumps({"release": str(release_folder.resolve()), "weights": weights}))
        try:
            os.replace(building, target)
        except OSError:  # another process finished the same export first: keep theirs
            if not (target / "done.json").is_file():
                raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------------------------
# Drafting with the two graphs
# --------------------------------------------------------------------------------------------------------------

def full_vocabulary_logits(logits, vocabulary, vocab_size):
    """The step graph's logits [batch, tokens] spread over the whole vocabulary: with a report vocabulary (an
    array of its token ids), every other token gets the lowest float, as the PyTorch model's masked logits."""
    if vocabulary is None:
        return logits
    full = np.full((logits.shape[0], vocab_size), np.finfo(np.float32).min, np.float32)
    full[:, vocabulary] = logits
    return full


class StepSessions:
    """The step graph's sessions, one per shape of draft: rows (studies x beams) and encoder length. A session told
    its graph's batch and encoder dimensions (free dimension overrides) folds the shape arithmetic that the
    exporter leaves for every reshape of the attention heads (402 nodes a step become 314; 100 steps 5-9% faster,
    docs/benchmarks.md). The cache length is the one dimension left free. A new shape costs a session (~0.3 s and
    its own packed weights, ~50 MB); the `keep` most recently used are kept: a run's batch and its last, smaller
    one, or greedy and beam drafts on the page."""

    def __init__(self, path, threads, keep=2):
        self.path, self.threads, self.keep = str(path), threads, keep
        self.sessions = {}  # (rows, encoder length) -> InferenceSession, least recently used first

    def session(self, rows, encoder_length):
        import onnxruntime

        key = (rows, encoder_length)
        session = self.sessions.pop(key, None)
        if session is None:
            options = session_options(self.threads)
            options.add_free_dimension_override_by_name("batch", rows)
            options.add_free_dimension_override_by_name("encoder", encoder_length)
            session = onnxruntime.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
            while len(self.sessions) >= self.keep:
                del self.sessions[next(iter(self.sessions))]
        self.sessions[key] = session
        return session

    def run(self, feeds):
        """The step graph's outputs for `feeds`, by the session of their shape."""
        rows, encoder_length = feeds["encoder_attention_mask"].shape
        return self.session(rows, encoder_length).run(None, feeds)


def session_options(threads):
    """ONNX Runtime's options for each of a draft's sessions: `threads` for each operator, one operator at a time.

    Each session has its own worker threads, which by default spin for a while after a run, waiting for the next.
    A draft runs the vision, encoder and step sessions one after another, so the last one's spinning workers took
    a core from the next: the next draft's vision graph ran ~50% slower, a greedy draft ~20% (docs/benchmarks.md).
    Stopping them at the end of each run costs a step nothing measurable (the steps' own workers still spin between
    the operators of a run)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class OnnxStepModel(PreTrainedModel, GenerationMixin):
    """A decoder whose forward is one call of the step graph, so that GenerationMixin.generate drives it as it
    drives the PyTorch model. The encoder graph runs first: `start_drafts` hands over its cross-attention keys and
    values (one row per study), which are repeated at the first step for the rows generate() gives each study
    (beams, returned sequences; it keeps them adjacent). The self-attention caches are the step graph's own output
    arrays, fed back as they are; beam search reorders them through `_reorder_cache`. generate() is given
    `encoder_outputs` whose only use is their shape: it never calls an encoder, and its own cache object stays
    empty."""

    config_class = CLIPT5Config
    main_input_name = "input_ids"
    # The graph holds the attention: whatever implementation the config names (a model's config says "sdpa" once
    # it has run) is no concern of this class.
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = True

    def __init__(self, config, step_sessions):
        super().__init__(config)
        self.step_sessions = step_sessions
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # generate() reads device and dtype off it
        self.vocabulary = None if config.report_vocabulary is None else np.array(config.report_vocabulary)
        self.cross = self.caches = None
        self.post_init()

    def get_encoder(self):
        return None

    def start_drafts(self, cross):
        """Takes the encoder graph's cross keys and values [keys_0, values_0, keys_1, ...]; empty self caches."""
        self.cross = list(cross)
        self.caches = [array[:, :, :0] for array in self.cross]
        self.fixed_feeds = None

    def end_drafts(self):
        self.cross = self.caches = self.fixed_feeds = None

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """What a step reads: the tokens so far (the graph takes the last), the encoder mask, and generate()'s own
        cache object, handed back untouched. GenerationMixin's general version also clones the ids and builds
        position ids and 4D masks at every step, none of which the graph takes (~10% of a greedy step's Python)."""
        inputs = {"decoder_input_ids": input_ids, "attention_mask": attention_mask}
        for name in ("cache", "past_key_values"):  # transformers 5's name, then 4.x's
            if name in kwargs:
                inputs[name] = kwargs[name]
        return inputs

    def forward(self, decoder_input_ids=None, attention_mask=None, encoder_outputs=None, **kwargs):
        batch = decoder_input_ids.shape[0]
        if self.fixed_feeds is None or self.cross[0].shape[0] != batch:
            # First step: the cross keys/values repeated for generate()'s rows, and with the encoder mask made
            # numpy once, as they stay the same for the whole draft
            if self.cross[0].shape[0] != batch:
                self.cross = [np.repeat(array, batch // array.shape[0], axis=0) for array in self.cross]
                self.caches = [array[:, :, :0] for array in self.cross]
            self.fixed_feeds = {"encoder_attention_mask": attention_mask.numpy().astype(np.int64)}
            for layer in range(self.config.num_decoder_layers):
                self.fixed_feeds[f"cross_keys.{layer}"] = self.cross[2 * layer]
                self.fixed_feeds[f"cross_values.{layer}"] = self.cross[2 * layer + 1]
        feeds = {**self.fixed_feeds, "decoder_input_ids": decoder_input_ids[:, -1:].numpy().astype(np.int64)}
        for layer in range(self.config.num_decoder_layers):
            feeds[f"self_keys.{layer}"], feeds[f"self_values.{layer}"] = self.caches[2 * layer: 2 * layer + 2]
        logits, *self.caches = self.step_sessions.run(feeds)
        logits = full_vocabulary_logits(logits, self.vocabulary, self.config.vocab_size)
        output = Seq2SeqLMOutput(logits=torch.from_numpy(logits)[:, None])
        # transformers 5 calls the cache `cache`, 4.x `past_key_values`: generate() gets its own back
        for name in ("cache", "past_key_values"):
            if name in kwargs:
                output[name] = kwargs[name]
        return output

    def _reorder_cache(self, cache, beam_idx):
        """Beam search's reordering of the rows, applied to the self-attention caches (both majors call it). Rows
        that stay where they are (often, as beams keep their order) cost no copy."""
        rows = beam_idx.numpy()
        if not np.array_equal(rows, np.arange(len(rows))):
            self.caches = [array.take(rows, axis=0) for array in self.caches]
        return cache


class OnnxCLIPT5:
    """CLIP-T5 on ONNX Runtime with the model's `config`, `generation_config`, `device` and `generate()`.

    Drop-in for `inference.draft_reports` and the page's drafter: `generate(pixel_values=..., input_ids=...,
    attention_mask=..., findings=..., **generate_kwargs)` takes every keyword of the PyTorch model's generate()
    and returns token ids as it does (decoder start token first, <pad> after a finished draft).
    """

    def __init__(self, folder, config, generation_config, threads=None, weights="int8"):
        onnxruntime = _import_onnxruntime()
        threads = threads or torch.get_num_threads()
        options = session_options(threads)
        self.vision_session = onnxruntime.InferenceSession(str(Path(folder) / VISION_FILE), options,
                                                           providers=["CPUExecutionProvider"])
        self.encoder_session = onnxruntime.InferenceSession(str(Path(folder) / ENCODER_FILE), options,
                                                            providers=["CPUExecutionProvider"])
        self.step_sessions = StepSessions(Path(folder) / STEP_FILE, threads)
        self.config = config
        self.decoder = OnnxStepModel(config, self.step_sessions)
        self.decoder.generation_config = generation_config
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.name_or_path = str(folder)
        self.weights = weights

    @property
    def generation_config(self):
        return self.decoder.generation_config

    @classmethod
    def from_pretrained(cls, release_folder, weights="int8", cache_dir=None, threads=None):
        """Loads a local release folder's graphs, exporting them first if the cache (`cache_dir`, default
        $CLIPT5_ONNX_CACHE or ~/.cache/cliptt5/onnx) has none for its current weights."""
        from transformers import GenerationConfig

        _import_onnxruntime()  # before exporting: says what is missing instead of failing in the export
        folder = exported_folder(release_folder, weights, cache_dir)
        return cls(folder, CLIPT5Config.from_pretrained(release_folder),
                   GenerationConfig.from_pretrained(release_folder), threads, weights)

    def start(self, pixel_values, input_ids=None, attention_mask=None, findings=None, prior=None):
        """Runs the vision and encoder graphs; returns the decoder step's inputs (empty self-attention caches), with a finding
        head its CLIPT5FindingOutput (else None), and the images' vectors for the OOD summary (ood.image_vectors).
        `prior`: CLIPT5Processor's prior_* tensors, for a release that reads a prior."""
        from modeling_cliptt5.modeling_cliptt5 import CLIPT5FindingOutput, findings_to_tensor

        batch = pixel_values.shape[0]
        if input_ids is None:  # no prompt: a zero-length one
            input_ids = torch.zeros(batch, 0, dtype=torch.long)
            attention_mask = torch.zeros(batch, 0, dtype=torch.long)
        elif attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        config = self.config
        vision_features = self.vision_features(pixel_values)
        feeds = {"vision_features": vision_features, "prompt_ids": input_ids.numpy().astype(np.int64),
                 "prompt_mask": attention_mask.numpy().astype(np.int64)}
        if config.uses_finding_guidance:
            given = (torch.full((batch, len(config.finding_labels)), -1, dtype=torch.long) if findings is None
                     else findings_to_tensor(findings, config.finding_labels, batch))
            feeds["findings"] = given.numpy().astype(np.int64)
        elif findings is not None:
            raise ValueError("this model does not take findings: it has no finding head with guidance")
        feeds.update(self.prior_feeds(vision_features, prior or {}))
        encoder_mask, *outputs, vectors = self.encoder_session.run(None, feeds)
        head = None
        if config.finding_head:
            *cross, probabilities, maps = outputs
            probabilities = torch.from_numpy(probabilities)
            thresholds = torch.tensor(config.finding_thresholds)
            head = CLIPT5FindingOutput(logits=torch.logit(probabilities), probabilities=probabilities,
                                       present=probabilities >= thresholds, maps=torch.from_numpy(maps))
        else:
            cross = outputs
        empty = np.zeros((batch, config.num_heads, 0, config.d_kv), np.float32)
        feeds = {"encoder_attention_mask": encoder_mask}
        for layer in range(config.num_decoder_layers):
            feeds.update({f"self_keys.{layer}": empty, f"self_values.{layer}": empty,
                          f"cross_keys.{layer}": cross[2 * layer], f"cross_values.{layer}": cross[2 * layer + 1]})
        return feeds, head, torch.from_numpy(vectors)

    def vision_features(self, pixel_values):
        """The vision graph's features [batch, views, tokens, channels] (numpy) of these images."""
        return self.vision_session.run(None, {"pixel_values": pixel_values.float().numpy()})[0]

    def prior_feeds(self, vision_features, prior):
        """The encoder graph's prior inputs: the given ones, with zeros and 0 masks standing in for a missing prior
        image or report (the graph always reads both; masked, they are no input). The vision tower runs for the
        prior images that are there, and not at all for a batch of first studies."""
        from modeling_cliptt5.modeling_cliptt5 import refuse_prior

        refuse_prior(self.config, prior)
        if not self.config.reads_prior:
            return {}
        batch = vision_features.shape[0]
        images, image_mask = prior.get("prior_pixel_values"), prior.get("prior_image_mask")
        if images is None:
            if image_mask is not None:  # as the model refuses it
                raise ValueError("prior_image_mask without prior_pixel_values")
            image_mask = torch.zeros(batch, dtype=torch.long)
        elif image_mask is None:
            image_mask = torch.ones(batch, dtype=torch.long)
        features = np.zeros_like(vision_features)
        rows = image_mask.nonzero().flatten()
        if images is not None and len(rows):
            features[rows.numpy()] = self.vision_features(images[rows])
        ids, mask = prior.get("prior_input_ids"), prior.get("prior_attention_mask")
        if ids is None:  # one masked token: the graph's report length is never 0
            ids, mask = torch.zeros(batch, 1, dtype=torch.long), torch.zeros(batch, 1, dtype=torch.long)
        elif mask is None:
            mask = torch.ones_like(ids)
        feeds = {"prior_vision_features": features, "prior_image_mask": image_mask.numpy().astype(np.int64),
                 "prior_ids": ids.numpy().astype(np.int64), "prior_mask": mask.numpy().astype(np.int64)}
        feeds.update(self.prior_overrides(batch, images is not None, prior.get("prior_findings"),
                                          prior.get("prior_changes")))
        return feeds

    def prior_overrides(self, batch, has_images, prior_findings, prior_changes):
        """The encoder graph's prior_findings and prior_changes: the caller's, as the PyTorch model takes them, -1
        (the heads decide) where not given; refused as the model refuses them."""
        from modeling_cliptt5.modeling_cliptt5 import findings_to_tensor, refuse_prior_overrides

        config, shape = self.config, (batch, len(self.config.finding_labels))
        refuse_prior_overrides(config, has_images, prior_findings, prior_changes)
        feeds = {}
        if config.uses_finding_guidance:
            given = (torch.full(shape, -1) if prior_findings is None
                     else findings_to_tensor(prior_findings, config.finding_labels, batch))
            feeds["prior_findings"] = given.numpy().astype(np.int64)
        if config.change_head:
            given = torch.full(shape, -1) if prior_changes is None else torch.as_tensor(prior_changes)
            if tuple(given.shape) != shape:
                raise ValueError(f"prior_changes must have shape [{batch}, {shape[1]}] (studies, findings), "
                                 f"got {tuple(given.shape)}")
            feeds["prior_changes"] = given.numpy().astype(np.int64)
        return feeds

    def step(self, feeds, tokens):
        """Next-token logits [batch, vocab] (numpy) after `tokens` [batch]; grows the caches in `feeds`."""
        logits, *grown = self.step_sessions.run({**feeds, "decoder_input_ids": tokens[:, None].astype(np.int64)})
        for layer in range(self.config.num_decoder_layers):
            feeds[f"self_keys.{layer}"], feeds[f"self_values.{layer}"] = grown[2 * layer], grown[2 * layer + 1]
        return full_vocabulary_logits(logits, self.decoder.vocabulary, self.config.vocab_size)

    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, findings=None, prior_pixel_values=None,
                 prior_image_mask=None, prior_input_ids=None, prior_attention_mask=None, prior_changes=None,
                 prior_findings=None, **generate_kwargs):
        prior = {"prior_pixel_values": prior_pixel_values, "prior_image_mask": prior_image_mask,
                 "prior_input_ids": prior_input_ids, "prior_attention_mask": prior_attention_mask,
                 "prior_changes": prior_changes, "prior_findings": prior_findings}
        return self.generate_with_findings(pixel_values, input_ids, attention_mask, findings, prior=prior,
                                           **generate_kwargs)[0]

    def predict_findings(self, pixel_values):
        """The finding head's CLIPT5FindingOutput for these images (the encoder graph computes it)."""
        if not self.config.finding_head:
            raise ValueError("this model has no finding head (config.finding_head is False)")
        return self.start(pixel_values)[1]

    def generate_with_findings(self, pixel_values=None, input_ids=None, attention_mask=None, findings=None,
                               prior=None, **generate_kwargs):
        """(token ids as generate() returns them, the finding head's CLIPT5FindingOutput or None, the images' OOD
        vectors) from one encoder graph call; `findings` as CLIPT5ForConditionalGeneration.generate takes them,
        `prior` the prior_* tensors of CLIPT5Processor."""
        from modeling_cliptt5.modeling_cliptt5 import with_sentence_repeat_guard

        if pixel_values is None:
            raise ValueError("CLIP-T5 drafts a report from an image: pass pixel_values")
        feeds, head, vectors = self.start(pixel_values, input_ids, attention_mask, findings, prior)
        layers = self.config.num_decoder_layers
        self.decoder.start_drafts([feeds[f"cross_{kind}.{layer}"] for layer in range(layers)
                                   for kind in ("keys", "values")])
        encoder_mask = torch.from_numpy(feeds["encoder_attention_mask"])
        generate_kwargs = with_sentence_repeat_guard(self.decoder.generation_config, generate_kwargs)
        threads = torch.get_num_threads()
        # generate()'s own tensor work is small; torch's idle worker threads would spin against ONNX Runtime's on
        # the same cores (measured on 2 cores: greedy 1.33 s with 2 torch threads, 0.80 s with 1)
        torch.set_num_threads(1)
        try:
            sequences = self.decoder.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=torch.zeros(*encoder_mask.shape, 1)),
                attention_mask=encoder_mask, **generate_kwargs)
        finally:
            torch.set_num_threads(threads)
            self.decoder.end_drafts()
        return sequences, head, vectors

    def teacher_forced_logits(self, pixel_values, decoder_input_ids):
        """Logits [batch, length, vocab] for given decoder inputs, as the model's forward gives them."""
        feeds, *_ = self.start(pixel_values)
        ids = decoder_input_ids.numpy()
        return torch.from_numpy(np.stack([self.step(feeds, ids[:, position]) for position in range(ids.shape[1])], 1))

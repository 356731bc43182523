"""CPU inference benchmark of the full-size CLIP-T5 (ViT-B/16 + t5-small): eager float32 against the fast path.

The fast path (generate.py --optimize) is onnx_int8, for every decoding setting (transformers' generate() drives
the ONNX step graph); int8 (PyTorch) is its fallback where onnxruntime is not installed.

Measures, on this machine's CPU with --threads threads (default 2):
- latency per study of greedy and beam-3 decoding of exactly --new-tokens tokens (min = max new tokens, so every
  variant does the same work) at batch 1 and batch 8, median of --runs runs; variants take turns within each run
  in one process, so a machine that gets busier or quieter affects them alike, each after an untimed 8-token
  warm-up;
- peak RSS of each variant in a fresh process that loads a saved release as generate.py does and drafts once;
- greedy-token agreement with float32 over fixed, varied inputs (synthetic phantom radiographs): free-running
  (positions where the tokens are equal, and the share of each sequence before the first difference), and
  teacher-forced (the same prefix for both, argmax compared at every position: numerics alone, without the
  cascade a single early difference causes in free-running decoding).

Without --model the weights are random (T5 / ViT initialisation, seeded): such a model writes repetitive tokens,
so the free-running numbers flatter it; the teacher-forced positions use fixed random token sequences as context,
and the median top-1 margin printed beside them shows how close its decisions are. With --model RELEASE the
release's own weights are measured, and teacher forcing uses the release's drafts.

Examples:
  python benchmarks/bench_cpu_inference.py                      # all variants, writes the JSON below
  python benchmarks/bench_cpu_inference.py --runs 5 --variants fp32 int8
  python benchmarks/bench_cpu_inference.py --model path/to/release --skip-latency
"""

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration, CLIPT5ImageProcessor
from modeling_cliptt5.inference.drafting import load_model
from modeling_cliptt5.inference.fast_inference import optimize_for_cpu
from modeling_cliptt5.inference.onnx_inference import OnnxCLIPT5, export_graphs, exported_folder
from modeling_cliptt5.data.phantom import generate_study
from modeling_cliptt5.training.report_vocabulary import report_token_ids, training_reports

VARIANTS = ("fp32", "bf16", "int8", "onnx_fp32", "onnx_int8", "onnx_int8_vocab")
VARIANT_NOTES = {
    "fp32": "eager float32 (the baseline)",
    "bf16": "eager bfloat16 weights and activations",
    "int8": "--optimize without onnxruntime: PyTorch, dynamic int8 Linear, float32 elsewhere, eager T5 attention",
    "onnx_fp32": "ONNX Runtime, float32 weights: encoder graph + one-step decoder graph driven by generate()",
    "onnx_int8": "generate.py --optimize: ONNX Runtime, per-channel int8 weights (quantize_dynamic)",
    "onnx_int8_vocab": "onnx_int8 of the release limited to a report vocabulary (cliptt5-release "
                       "--report-vocabulary): the step graph holds only those rows of the output layer",
}
ONNX_VARIANTS = {"onnx_fp32": "float32", "onnx_int8": "int8", "onnx_int8_vocab": "int8"}
# Random weights have no reports to take a vocabulary from: this many token ids, spread over the vocabulary (a report
# corpus uses a few thousand of t5-small's 32,128 tokens: IU X-ray's reports have 1,531 distinct words).
RANDOM_VOCABULARY_SIZE = 4096
# Scenario name -> (batch size, beams).
SCENARIOS = {"greedy_b1": (1, 1), "beam3_b1": (1, 3), "greedy_b8": (8, 1), "beam3_b8": (8, 3)}
# Seconds per study at batch 1 (100 tokens), peak RSS in MiB, and the share of equal tokens.
TARGETS = {"greedy_b1_seconds": 0.20, "beam3_b1_seconds": 0.35, "peak_rss_mib": 600, "greedy_agreement": 0.99}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a CLIP-T5 release folder (default: full-size architecture, random weights)")
    parser.add_argument("--model-note", help="what --model is (how it was trained), written into the JSON")
    parser.add_argument("--report-vocabulary", metavar="DATASET",
                        help="with --model: onnx_int8_vocab takes the tokens of this converted dataset's train-split "
                             f"reports (without --model: {RANDOM_VOCABULARY_SIZE} token ids spread over the "
                             "vocabulary)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--runs", type=int, default=3, help="timed runs per scenario; the median is reported")
    parser.add_argument("--new-tokens", type=int, default=100, help="tokens decoded per study (default: 100)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    parser.add_argument("--agreement-inputs", type=int, default=16, help="phantom images for the agreement check")
    parser.add_argument("--skip-latency", action="store_true", help="only memory and agreement")
    parser.add_argument("--skip-rss", action="store_true", help="no fresh-process memory measurement")
    parser.add_argument("--rss-python", default=sys.executable,
                        help="interpreter for the memory runs, e.g. a venv with CPU-only torch (the CUDA build's "
                             "libraries alone take ~0.4 GiB more)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "cpu_inference.json")
    parser.add_argument("--rss-worker", nargs=2, metavar=("VARIANT", "RELEASE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def random_full_size_model(seed=0):
    """CLIPT5Config() defaults: BiomedCLIP's ViT-B/16 and t5-small's dimensions (146.7 M parameters)."""
    torch.manual_seed(seed)
    return CLIPT5ForConditionalGeneration(CLIPT5Config()).eval()


def base_model(model_path):
    """The model every variant is made from: random full-size weights, or a release loaded as generate.py does."""
    return random_full_size_model() if model_path is None else load_model(model_path)


def benchmark_vocabulary(model_path, config, dataset=None):
    """The report vocabulary onnx_int8_vocab is limited to (see --report-vocabulary)."""
    if model_path is None:
        spread = np.linspace(0, config.vocab_size - 1, RANDOM_VOCABULARY_SIZE).round().astype(int).tolist()
        return sorted({config.pad_token_id, config.eos_token_id, 2, *spread})
    if dataset is None:
        raise SystemExit("onnx_int8_vocab with --model needs --report-vocabulary DATASET (the release's reports)")
    from transformers import AutoTokenizer

    return report_token_ids(AutoTokenizer.from_pretrained(model_path), training_reports(dataset))


def limited(model, vocabulary):
    """A copy of `model` whose drafts use `vocabulary` alone (config.report_vocabulary)."""
    model = copy.deepcopy(model)
    model.config.report_vocabulary = vocabulary
    return model


def make_variant(model, variant, folder, threads, vocabulary=None):
    if variant in ONNX_VARIANTS:
        weights = ONNX_VARIANTS[variant]
        model = limited(model, vocabulary) if variant == "onnx_int8_vocab" else copy.deepcopy(model)
        export_graphs(model, Path(folder) / variant, weights)
        return OnnxCLIPT5(Path(folder) / variant, model.config, model.generation_config, threads, weights)
    model = copy.deepcopy(model)
    if variant == "fp32":
        return model.float()
    if variant == "bf16":
        return model.to(torch.bfloat16)
    if variant == "int8":
        return optimize_for_cpu(model)
    raise ValueError(variant)


def phantom_pixel_values(count, image_size, seed=1000):
    """Varied, realistic-looking inputs: synthetic radiographs with different findings, processed as BiomedCLIP's."""
    processor = CLIPT5ImageProcessor(size={"shortest_edge": image_size},
                                     crop_size={"height": image_size, "width": image_size})
    images = [generate_study(seed + index, image_size=256)["image"] for index in range(count)]
    return processor(images, return_tensors="pt")["pixel_values"]


def decode(model, pixel_values, new_tokens, num_beams, exact_length=True):
    """Greedy or beam decoding; exact_length decodes exactly `new_tokens` tokens: no token ends a draft.
    Not min_new_tokens: its logits processor searches the whole vocabulary for the end token at every step
    (measured here: ~2 ms a step, 0.2 s of a 100-token draft), work no draft pays."""
    length = {"eos_token_id": None} if exact_length else {}
    with torch.inference_mode():
        return model.generate(pixel_values=pixel_values.to(model.dtype), max_new_tokens=new_tokens,
                              num_beams=num_beams, do_sample=False, **length)


# --------------------------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------------------------

def measure_latency(models, pixel_values, runs, new_tokens):
    """{variant: {scenario: seconds per study}}, medians over `runs`; variants alternate inside every run."""
    times = {variant: {name: [] for name in ["encode_b1", *SCENARIOS]} for variant in models}
    for variant, model in models.items():  # warm-up: first calls allocate and pick kernels
        decode(model, pixel_values[:1], 4, 1)
    for run in range(runs):
        for name, (batch, beams) in SCENARIOS.items():
            for variant, model in models.items():
                # A few untimed tokens first: the variant before this one left its own weights in the CPU caches,
                # while a user drafting study after study runs one engine (measured: ONNX int8 greedy 100 tokens
                # took ~25% longer right after PyTorch float32 decoding than after a short warm-up).
                decode(model, pixel_values[:1], 8, 1)
                started = time.perf_counter()
                decode(model, pixel_values[:batch], new_tokens, beams)
                times[variant][name].append((time.perf_counter() - started) / batch)
                print(f"  run {run + 1}/{runs} {name:10s} {variant:9s} {times[variant][name][-1]:7.3f} s/study",
                      flush=True)
        for variant, model in models.items():
            started = time.perf_counter()
            encode(model, pixel_values[:1])
            times[variant]["encode_b1"].append(time.perf_counter() - started)
    return {variant: {name: statistics.median(values) if values else None for name, values in scenarios.items()}
            for variant, scenarios in times.items()}


def encode(model, pixel_values):
    """Image tower and T5 encoder (ONNX: also the cross-attention keys and values)."""
    if isinstance(model, OnnxCLIPT5):
        return model.start(pixel_values)
    with torch.inference_mode():
        return model.get_encoder()(inputs_embeds=model.get_image_features(pixel_values.to(model.dtype)))


# --------------------------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------------------------

def first_difference_share(tokens, reference):
    """Mean share of each sequence that matches before the first differing token."""
    equal = (tokens == reference).int()
    return (equal.cumprod(dim=1).sum(dim=1).float() / equal.shape[1]).mean().item()


def teacher_forced_argmax(model, pixel_values, decoder_input_ids):
    if isinstance(model, OnnxCLIPT5):
        return model.teacher_forced_logits(pixel_values, decoder_input_ids)
    with torch.inference_mode():
        logits = model(pixel_values=pixel_values.to(model.dtype), decoder_input_ids=decoder_input_ids).logits
    return logits.float()


def over(mask, values, reduce):
    """`reduce` of the masked values, NaN when the mask is empty (e.g. drafts that are all end-of-sequence)."""
    selected = values[mask]
    return reduce(selected.float()).item() if selected.numel() else float("nan")


def padded_pair(tokens, reference, pad_id):
    """Both sequences padded to one length, and the mask of positions where either has a token."""
    length = max(tokens.shape[1], reference.shape[1])
    tokens = torch.nn.functional.pad(tokens, (0, length - tokens.shape[1]), value=pad_id)
    reference = torch.nn.functional.pad(reference, (0, length - reference.shape[1]), value=pad_id)
    return tokens, reference, (tokens != pad_id) | (reference != pad_id)


def measure_agreement(models, pixel_values, new_tokens, random_weights):
    """Free-running and teacher-forced greedy agreement of every variant with fp32 (for a variant limited to a
    report vocabulary, with fp32 limited to the same tokens).

    Random weights: exactly `new_tokens` tokens per input. A release: drafts stop at end-of-sequence as in use;
    positions are those where either draft has a token (the shorter one counts as padding there).
    """
    fp32 = models["fp32"]
    pad_id = fp32.config.pad_token_id
    exact = random_weights

    def reference(model, context=None):
        """fp32's drafts [batch, new tokens], the teacher-forcing context and its mask, and fp32's logits there."""
        tokens = decode(model, pixel_values, new_tokens, 1, exact)[:, 1:]
        if context is None:
            if random_weights:
                # A random model's drafts repeat a few tokens: give it varied contexts instead.
                generator = torch.Generator().manual_seed(0)
                context = torch.randint(3, model.config.vocab_size, tokens.shape, generator=generator)
                context_mask = torch.ones_like(context, dtype=torch.bool)
            else:
                context, context_mask = tokens, tokens != pad_id
        else:
            context, context_mask = context
        start = torch.full((tokens.shape[0], 1), model.config.decoder_start_token_id)
        decoder_input_ids = torch.cat([start, context[:, :-1]], dim=1)
        return tokens, (context, context_mask), decoder_input_ids, teacher_forced_argmax(model, pixel_values,
                                                                                         decoder_input_ids)

    whole = reference(fp32)
    reference_tokens, (_, context_mask), _, reference_logits = whole
    top2 = reference_logits.topk(2, dim=-1).values
    real = reference_tokens.flatten() if random_weights else reference_tokens[reference_tokens != pad_id]
    results = {
        "inputs": int(pixel_values.shape[0]),
        "positions": int(context_mask.sum()),
        "reference_distinct_sequences": len({tuple(row.tolist()) for row in reference_tokens}),
        "reference_mean_distinct_tokens_per_sequence": float(np.mean([len(set(row.tolist()))
                                                                       for row in reference_tokens])),
        "reference_distinct_tokens_overall": len(set(real.tolist())),
        "reference_median_top1_margin": over(context_mask, top2[..., 0] - top2[..., 1], torch.median),
        "variants": {},
    }
    for variant, model in models.items():
        if variant == "fp32":
            continue
        vocabulary = model.config.report_vocabulary
        # The same teacher-forcing context for every variant: fp32's own drafts, or the random tokens.
        reference_tokens, (_, context_mask), decoder_input_ids, reference_logits = (
            whole if vocabulary is None else reference(limited(fp32, vocabulary), whole[1]))
        tokens, padded_reference, mask = padded_pair(decode(model, pixel_values, new_tokens, 1, exact)[:, 1:],
                                                     reference_tokens, pad_id)
        if exact:
            mask = torch.ones_like(mask)  # every one of the forced tokens counts, <pad> included
        equal = tokens == padded_reference
        logits = teacher_forced_argmax(model, pixel_values, decoder_input_ids)
        forced_equal = logits.argmax(-1) == reference_logits.argmax(-1)
        kept = logits > torch.finfo(torch.float32).min  # a limited vocabulary's other tokens are not compared
        top2 = reference_logits.topk(2, dim=-1).values
        results["variants"][variant] = {
            "reference": "fp32" if vocabulary is None else f"fp32 limited to the same {len(vocabulary)} tokens",
            # How close the reference's decisions are: a smaller margin lets int8's rounding flip more of them.
            "reference_median_top1_margin": over(context_mask, top2[..., 0] - top2[..., 1], torch.median),
            "free_running_positions_equal": over(mask, equal, torch.mean),
            "free_running_share_before_first_difference": first_difference_share(tokens, padded_reference),
            "free_running_sequences_identical": int(equal.all(dim=1).sum()),
            "teacher_forced_argmax_equal": over(context_mask, forced_equal, torch.mean),
            "teacher_forced_max_abs_logit_difference": over(context_mask[..., None] & kept,
                                                            (logits - reference_logits).abs(), torch.max),
        }
    return results


# --------------------------------------------------------------------------------------------------------------
# Memory: one fresh process per variant
# --------------------------------------------------------------------------------------------------------------

def memory_kib(field):
    """VmHWM (peak) or VmRSS of this process. Not getrusage: Linux carries ru_maxrss over fork and exec, so a child
    would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_worker(variant, release, threads, new_tokens):
    """Loads the release as generate.py does, drafts greedy b1, beam-3 b1 and beam-3 b8 once, prints memory
    as JSON (MiB). ONNX variants load graphs exported beforehand (the export runs once per release, in a child
    process of its own: generate.py's first --optimize run)."""
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    imported = memory_kib("VmHWM") / 1024
    if variant == "onnx_fp32":  # the one loader's fast path has int8 weights
        model = OnnxCLIPT5.from_pretrained(release, "float32", threads=threads)
    elif variant in ONNX_VARIANTS:
        model = load_model(release, optimize=True)
    else:
        model = load_model(release, dtype="bfloat16" if variant == "bf16" else "float32")
    if variant == "int8":
        model = optimize_for_cpu(model)
    loaded = memory_kib("VmHWM") / 1024
    image_size = model.config.vision_config.image_size
    pixel_values = torch.randn(8, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    decode(model, pixel_values[:1], new_tokens, 1)
    after_greedy_b1 = memory_kib("VmHWM") / 1024
    decode(model, pixel_values[:1], new_tokens, 3)
    after_beam3_b1 = memory_kib("VmHWM") / 1024  # the peak of drafting one study at a time
    decode(model, pixel_values, new_tokens, 3)
    print(json.dumps({"variant": variant, "python": sys.executable, "torch": torch.__version__,
                      "after_imports_mib": imported, "peak_after_load_mib": loaded,
                      "peak_after_greedy_b1_mib": after_greedy_b1, "peak_after_beam3_b1_mib": after_beam3_b1,
                      "peak_rss_mib": memory_kib("VmHWM") / 1024}))


def limited_release(release, folder, vocabulary):
    """A copy of `release` limited to `vocabulary` (its config changed, its weights linked, not copied)."""
    folder.mkdir()
    for path in Path(release).iterdir():
        if path.is_file() and path.name != "config.json":
            os.link(path, folder / path.name)
    config = CLIPT5Config.from_pretrained(release)
    config.report_vocabulary = vocabulary
    config.save_pretrained(folder)
    return folder


def measure_rss(variants, model_path, threads, new_tokens, python, vocabulary=None):
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        release = model_path
        if release is None:
            release = Path(folder) / "random_release"
            random_full_size_model().save_pretrained(release)
        releases = {variant: release for variant in variants}
        if "onnx_int8_vocab" in variants:
            releases["onnx_int8_vocab"] = limited_release(release, Path(folder) / "limited_release", vocabulary)
        # Write the files out now: pages still waiting for writeback count as written ("dirty") in a process
        # that maps them, and optimize_for_cpu only hands back the pages of an unwritten map (measured:
        # PyTorch int8 peaked at 1,170 MiB right after the save, 660-680 MiB once the file was on disk).
        os.sync()
        # The source tree on the path: --rss-python's environment need not have the package installed.
        environment = {**os.environ, "CLIPT5_ONNX_CACHE": str(Path(folder) / "onnx"),
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        for variant, release in releases.items():
            if variant in ONNX_VARIANTS:
                exported_folder(release, ONNX_VARIANTS[variant], Path(folder) / "onnx")
            command = [python, __file__, "--rss-worker", variant, str(release), "--threads", str(threads),
                       "--new-tokens", str(new_tokens)]
            completed = subprocess.run(command, capture_output=True, text=True, env=environment)
            if completed.returncode != 0:
                raise RuntimeError(f"memory run of {variant} failed:\n{completed.stderr[-2000:]}")
            results[variant] = json.loads(completed.stdout.strip().splitlines()[-1])
            values = results[variant]
            print(f"  {variant:9s} peak RSS {values['peak_rss_mib']:6.0f} MiB: imports {values['after_imports_mib']:.0f}, "
                  f"after load {values['peak_after_load_mib']:.0f}, after greedy b1 "
                  f"{values['peak_after_greedy_b1_mib']:.0f}, after beam-3 b1 {values['peak_after_beam3_b1_mib']:.0f} "
                  f"(torch {values['torch']})", flush=True)
    return results


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------

def print_table(latency, rss, agreement):
    if latency:
        names = ["encode_b1", *SCENARIOS]
        print("\nseconds per study (median); ratio to fp32 in brackets")
        print(f"{'variant':10s}" + "".join(f"{name:>18s}" for name in names) + f"{'peak RSS MiB b1 / b8':>22s}")
        for variant, values in latency.items():
            cells = "".join(f"{'-':>18s}" if values[name] is None else
                            f"{values[name]:9.3f} [{values[name] / latency['fp32'][name]:4.2f}]  " for name in names)
            memory = (f"{rss[variant]['peak_after_beam3_b1_mib']:8.0f} / {rss[variant]['peak_rss_mib']:.0f}"
                      if variant in rss else "")
            print(f"{variant:10s}{cells}{memory}")
    elif rss:
        for variant, values in rss.items():
            print(f"{variant:10s} peak RSS {values['peak_rss_mib']:.0f} MiB")
    if agreement:
        print(f"\nagreement with fp32 over {agreement['inputs']} phantom inputs, {agreement['positions']} positions "
              f"(fp32 drafts: {agreement['reference_distinct_sequences']} distinct sequences, "
              f"{agreement['reference_mean_distinct_tokens_per_sequence']:.1f} distinct tokens each, "
              f"{agreement['reference_distinct_tokens_overall']} overall; "
              f"median top-1 margin {agreement['reference_median_top1_margin']:.3f})")
        for variant, values in agreement["variants"].items():
            print(f"{variant:10s} free-running equal {values['free_running_positions_equal']:.4f}, "
                  f"before first difference {values['free_running_share_before_first_difference']:.4f}, "
                  f"identical sequences {values['free_running_sequences_identical']}/{agreement['inputs']}; "
                  f"teacher-forced argmax equal {values['teacher_forced_argmax_equal']:.4f} (against "
                  f"{values['reference']}, median top-1 margin {values['reference_median_top1_margin']:.3f})")


def fast_path_targets(variant, latency, rss, agreement):
    """{target: {"value", "target", "met"}} of one fast-path variant, for what was measured."""
    targets = {}
    if latency:
        for name, scenario in (("greedy_b1_seconds", "greedy_b1"), ("beam3_b1_seconds", "beam3_b1")):
            value = latency[variant][scenario]
            targets[name] = {"value": value, "target": TARGETS[name], "met": value <= TARGETS[name]}
    if rss:  # batch 1, as the speed targets: one study at a time, greedy and beam-3
        value = rss[variant]["peak_after_beam3_b1_mib"]
        targets["peak_rss_b1_mib"] = {"value": value, "target": TARGETS["peak_rss_mib"],
                                      "met": value <= TARGETS["peak_rss_mib"]}
    # Two readings of "identical tokens on >= 99% of positions": in free-running drafts (one early different
    # choice changes the rest of a draft), and per decision given the same prefix (teacher-forced).
    for name, key in (("greedy_agreement", "free_running_positions_equal"),
                      ("greedy_agreement_teacher_forced", "teacher_forced_argmax_equal")):
        equal = agreement["variants"][variant][key]
        targets[name] = {"value": equal, "target": TARGETS["greedy_agreement"],
                         "met": equal >= TARGETS["greedy_agreement"]}
    if agreement["reference_distinct_tokens_overall"] <= 2:
        # fp32 repeats one token whatever the input: free-running agreement says nothing about the numerics.
        targets["greedy_agreement"].update(met=None, note="not measurable: fp32 drafts are one repeated token")
    return targets


def write_json_atomically(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        json.dump(payload, stream, indent=2)
    os.replace(temporary, path)


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    args = parse_args(argv)
    if args.rss_worker:
        rss_worker(*args.rss_worker, args.threads, args.new_tokens)
        return 0
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    variants = ["fp32"] + [variant for variant in args.variants if variant != "fp32"]  # fp32 is the reference
    started = time.perf_counter()
    base = base_model(args.model)
    vocabulary = (benchmark_vocabulary(args.model, base.config, args.report_vocabulary)
                  if "onnx_int8_vocab" in variants else None)
    # Kept until the end: the step graph's sessions are made as new shapes of draft come (StepSessions).
    export_folder = tempfile.TemporaryDirectory()
    models = {variant: make_variant(base, variant, export_folder.name, args.threads, vocabulary)
              for variant in variants}
    image_size = base.config.vision_config.image_size
    pixel_values = phantom_pixel_values(max(args.agreement_inputs, 8), image_size)

    print(f"CPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}; "
          f"{'random weights' if args.model is None else args.model}", flush=True)
    latency = {}
    if not args.skip_latency:
        print(f"latency ({args.runs} runs, {args.new_tokens} new tokens):", flush=True)
        latency = measure_latency(models, pixel_values, args.runs, args.new_tokens)
    print("agreement:", flush=True)
    agreement = measure_agreement(models, pixel_values[: args.agreement_inputs], args.new_tokens, args.model is None)
    del models, base
    export_folder.cleanup()
    rss = {}
    if not args.skip_rss:
        print("peak memory (fresh process per variant):", flush=True)
        rss = measure_rss(variants, args.model, args.threads, args.new_tokens, args.rss_python, vocabulary)

    print_table(latency, rss, agreement)
    # The fast path (generate.py --optimize): ONNX Runtime int8, whole and limited to a report vocabulary.
    targets = {variant: fast_path_targets(variant, latency, rss, agreement)
               for variant in ("onnx_int8", "onnx_int8_vocab") if variant in variants}
    for variant, measured in targets.items():
        print(f"\nfast-path targets ({variant}): " + "; ".join(
            f"{name} {value['value']:.3f} (target {value['target']}: "
            f"{value.get('note') or ('met' if value['met'] else 'NOT met')})" for name, value in measured.items()))
    payload = {
        "machine": {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "rss_python": args.rss_python},
        "model": args.model or "random weights, CLIPT5Config() defaults (ViT-B/16 + t5-small dims)",
        "model_note": args.model_note,
        "new_tokens": args.new_tokens, "runs": args.runs,
        "variants": {variant: VARIANT_NOTES[variant] for variant in variants},
        "latency_seconds_per_study": latency, "peak_rss": rss, "agreement": agreement,
        "targets": targets,
        "elapsed_seconds": time.perf_counter() - started,
    }
    write_json_atomically(args.output, payload)
    print(f"\nwrote {args.output} in {payload['elapsed_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

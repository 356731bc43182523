"""CLIP-T5 side by side with the peer a Hugging Face user would pick for image-to-text, on this CPU.

The peer is transformers' VisionEncoderDecoderModel with a ViT-B/16 encoder and a 6-layer GPT-2 decoder (the
CvT2DistilGPT2 / vit-gpt2 captioning shape), eager float32 and through optimum's ONNX Runtime export (float32, and
int8 after onnxruntime's quantize_dynamic, per channel, as CLIP-T5's fast path). CLIP-T5 is full size (ViT-B/16 +
t5-small), eager float32 and `--optimize` (ONNX Runtime int8). All weights are random (seeded): the work per token
is what is compared, not the reports.

Each variant drafts at batch 1 exactly --new-tokens tokens (no token ends a draft), greedy and
beam 3, with --threads threads, in a process of its own that loads the model, warms up and times one greedy and
one beam-3 draft; variants take turns within each of --runs runs, so a machine that gets busier or quieter affects
them alike. Medians and the ratio to CLIP-T5 eager float32 are printed; the JSON goes to --output.

optimum's export needs transformers 4.x: the peer's variants run in a second environment, made on first use from
requirements/peers.txt (--peers-python names another).

    python benchmarks/bench_peers.py                 # about 10 minutes on 2 cores, the first time 5 more
    python benchmarks/bench_peers.py --runs 5 --new-tokens 50
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PEERS_ENV = REPO_ROOT / ".venv-peers"
VARIANTS = {  # name -> (environment, what it is)
    "cliptt5_fp32": ("this", "CLIP-T5 eager float32 (PyTorch)"),
    "cliptt5_onnx_int8": ("this", "CLIP-T5 --optimize: ONNX Runtime int8, generate() driving the step graph"),
    "peer_fp32": ("peers", "ViT-B/16 + GPT-2 (6 layers) VisionEncoderDecoderModel, eager float32"),
    "peer_ort_fp32": ("peers", "the same through optimum's ORTModelForVision2Seq, float32"),
    "peer_ort_int8": ("peers", "the same, int8 weights (onnxruntime quantize_dynamic, per channel)"),
}
BASELINE = "cliptt5_fp32"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant; the median is reported")
    parser.add_argument("--new-tokens", type=int, default=100, help="tokens drafted per study (default: 100)")
    parser.add_argument("--threads", type=int, default=2, help="threads per variant (default: 2)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "cliptt5" / "bench_peers",
                        help="where the random models and their ONNX exports are kept between runs")
    parser.add_argument("--peers-python", type=Path, default=PEERS_ENV / "bin" / "python",
                        help=f"python of the peers' environment (default: {PEERS_ENV}/bin/python, made if missing)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "peers.json")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "WORK_DIR"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the models (built in the process that times them, saved once) ------------------------------------------------

def cliptt5_release(work_dir):
    """A full-size CLIP-T5 with random weights, saved once (as bench_cpu_inference.py builds it)."""
    folder = work_dir / "cliptt5"
    if not (folder / "config.json").is_file():
        from bench_cpu_inference import random_full_size_model

        random_full_size_model().save_pretrained(folder)
    return folder


def peer_model_folder(work_dir):
    """ViT-B/16 (224 px) + a 6-layer GPT-2 decoder with cross-attention, random weights, saved once."""
    import torch
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    folder = work_dir / "peer"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
            ViTConfig(image_size=224, patch_size=16), GPT2Config(n_layer=6, add_cross_attention=True))
        config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = 50256  # GPT-2's <|endoftext|>
        VisionEncoderDecoderModel(config).eval().save_pretrained(folder)
    return folder


def peer_onnx_folder(work_dir, weights):
    """optimum's export of the peer (once), and its int8 copy (once)."""
    from optimum.onnxruntime import ORTModelForVision2Seq

    exported = work_dir / "peer_onnx_fp32"
    if not (exported / "config.json").is_file():
        ORTModelForVision2Seq.from_pretrained(peer_model_folder(work_dir), export=True).save_pretrained(exported)
    if weights == "float32":
        return exported
    quantized = work_dir / "peer_onnx_int8"
    if not (quantized / "config.json").is_file():
        import shutil

        from onnxruntime.quantization import QuantType, quantize_dynamic

        shutil.copytree(exported, quantized, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data"))
        for graph in exported.glob("*.onnx"):
            quantize_dynamic(graph, quantized / graph.name, weight_type=QuantType.QInt8, per_channel=True)
    return quantized


def load(variant, work_dir, threads):
    """(model, pixel_values) of one variant."""
    import torch

    if variant.startswith("cliptt5"):  # loaded as generate.py and the page load it, --optimize or not
        from modeling_cliptt5.inference.drafting import load_model

        os.environ["CLIPT5_ONNX_CACHE"] = str(work_dir / "cliptt5_onnx")
        torch.set_num_threads(threads)
        model = load_model(cliptt5_release(work_dir), optimize=variant == "cliptt5_onnx_int8")
    elif variant == "peer_fp32":
        from transformers import VisionEncoderDecoderModel

        model = VisionEncoderDecoderModel.from_pretrained(peer_model_folder(work_dir)).eval()
    else:
        import onnxruntime
        from optimum.onnxruntime import ORTModelForVision2Seq

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # What --optimize's sessions are given (onnx_inference.session_options): the encoder's and the decoder's
        # workers stop spinning at the end of each run instead of taking a core from the next session
        options.add_session_config_entry("session.force_spinning_stop", "1")
        weights = "int8" if variant.endswith("int8") else "float32"
        model = ORTModelForVision2Seq.from_pretrained(peer_onnx_folder(work_dir, weights), session_options=options)
    pixel_values = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return model, pixel_values


def worker(variant, work_dir, new_tokens, threads):
    """Times one greedy and one beam-3 draft of exactly `new_tokens` tokens; prints {"greedy": s, "beam3": s}."""
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    model, pixel_values = load(variant, Path(work_dir), threads)
    times = {}
    with torch.inference_mode():
        # Exactly `new_tokens` tokens: no token ends a draft (as bench_cpu_inference.decode; min_new_tokens would add
        # its logits processor's search of the whole vocabulary at every step, work no draft pays).
        for name, beams in (("greedy", 1), ("beam3", 3)):
            model.generate(pixel_values=pixel_values, max_new_tokens=8, eos_token_id=None, num_beams=beams,
                           do_sample=False)  # warm-up: first calls allocate and pick kernels
            started = time.perf_counter()
            tokens = model.generate(pixel_values=pixel_values, max_new_tokens=new_tokens, eos_token_id=None,
                                    num_beams=beams, do_sample=False)
            times[name] = time.perf_counter() - started
            assert tokens.shape[-1] >= new_tokens, tokens.shape  # the same work for every variant
    print(json.dumps(times))


# --- the runs -----------------------------------------------------------------------------------------------------

def peers_python(path):
    """The peers' environment's python, made from requirements/peers.txt when it is missing."""
    if path.exists():
        return path
    if path != PEERS_ENV / "bin" / "python":
        raise SystemExit(f"{path}: no such python")
    print(f"making the peers' environment {PEERS_ENV} (requirements/peers.txt) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_ENV)], check=True)
    subprocess.run([str(path), "-m", "pip", "install", "--quiet", "-r", str(REPO_ROOT / "requirements" / "peers.txt")],
                   check=True)
    return path


def run_variant(python, variant, args):
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if VARIANTS[variant][0] == "peers":
        env["PYTHONPATH"] = ""  # this package is not needed, nor this environment's transformers
    completed = subprocess.run([str(python), str(Path(__file__).resolve()), "--worker", variant, str(args.work_dir),
                                "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)],
                               capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if completed.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.new_tokens, args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    pythons = {"this": Path(sys.executable)}
    if any(VARIANTS[variant][0] == "peers" for variant in args.variants):
        pythons["peers"] = peers_python(args.peers_python)
    times = {variant: {"greedy": [], "beam3": []} for variant in args.variants}
    for run in range(args.runs):
        for variant in args.variants:
            result = run_variant(pythons[VARIANTS[variant][0]], variant, args)
            for name, seconds in result.items():
                times[variant][name].append(seconds)
            print(f"run {run + 1}/{args.runs} {variant:18s} greedy {result['greedy']:6.2f} s  beam-3 "
                  f"{result['beam3']:6.2f} s", flush=True)
    medians = {variant: {name: statistics.median(values) for name, values in runs.items()}
               for variant, runs in times.items()}
    base = medians.get(BASELINE)
    print(f"\nbatch 1, {args.new_tokens} new tokens, {args.threads} threads, median of {args.runs} (seconds per study)")
    print(f"{'variant':20s} {'greedy':>15s} {'beam 3':>15s}   what")
    for variant, values in medians.items():
        cells = [f"{values[name]:6.2f}" + (f" ({values[name] / base[name]:.2f}x)" if base else "")
                 for name in ("greedy", "beam3")]
        print(f"{variant:20s} {cells[0]:>15s} {cells[1]:>15s}   {VARIANTS[variant][1]}")
    result = {"new_tokens": args.new_tokens, "threads": args.threads, "runs": args.runs, "batch": 1,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "variants": {variant: {"note": VARIANTS[variant][1], "seconds": times[variant],
                                     "median_seconds": medians[variant],
                                     **({"ratio_to_cliptt5_fp32": {name: medians[variant][name] / base[name]
                                                                    for name in base}} if base else {})}
                           for variant in args.variants}}
    from modeling_cliptt5.data.atomic_writes import write_json_atomically

    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(args.output, result, indent=1)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

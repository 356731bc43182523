"""What each install costs on disk: fresh virtual environments built the way the README says, their sizes, and
whether CUDA libraries, torchvision or open_clip came along.

    python benchmarks/bench_install_size.py                       # PyTorch's CPU index (download.pytorch.org)
    python benchmarks/bench_install_size.py --cpu-torch /path/to/torch-2.13.0+cpu-....whl --installs draft

`--cpu-torch` is what the first pip line installs ("torch" from PyTorch's CPU index by default; a wheel file where
that index cannot be reached). Each install: that CPU torch first, then the package with its extras, as a user
would run it; the figures go to benchmarks/results/install_size.json.
"""

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
INSTALLS = {
    # what a drafting workstation needs: cliptt5-generate with DICOM and --optimize, and the page
    "draft": {"first": ["{cpu_torch}"], "extras": "draft"},
    # training on a CPU machine (the README's second line: torch and torchvision from the same CPU index)
    "train": {"first": ["{cpu_torch}", "{cpu_torchvision}"], "extras": "train,dicom,eval,fast,app"},
    # the README's earlier advice: CPU torch alone first, so the extras bring torchvision, and with it a newer torch
    "train_torch_alone_first": {"first": ["{cpu_torch}"], "extras": "train,dicom,eval,fast,app"},
}


# In the new environment: a tiny random release drafted by the installed command, with --optimize (ONNX Runtime)
SMOKE = """
import subprocess, sys, tempfile
from pathlib import Path
from PIL import Image
from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration
from modeling_cliptt5.training.tokenizer import train_report_tokenizer
from modeling_cliptt5.processing_cliptt5 import CLIPT5ImageProcessor, CLIPT5Processor
folder = Path(tempfile.mkdtemp())
tokenizer = train_report_tokenizer(["FINDINGS: The lungs are clear. IMPRESSION: Normal."] * 20, vocab_size=120)
config = CLIPT5Config(vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64),
                      clip_projection_dim=16, vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_heads=4,
                      num_layers=1)
CLIPT5ForConditionalGeneration(config).save_pretrained(folder / "release")
CLIPT5Processor(image_processor=CLIPT5ImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                tokenizer=tokenizer).save_pretrained(folder / "release")
Image.new("L", (40, 40), 90).save(folder / "study.png")
command = [str(Path(sys.executable).parent / "cliptt5-generate"), "--model", "release", "study.png", "--optimize",
           "--max-new-tokens", "4"]
finished = subprocess.run(command, cwd=folder, capture_output=True, text=True)
print(finished.returncode, "ONNX Runtime int8" in finished.stderr)
"""


def folder_mib(folder):
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file() and not path.is_symlink()) / 2**20


def install(name, spec, args, workdir):
    venv = Path(workdir) / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    started = time.perf_counter()
    first = [part.format(cpu_torch=args.cpu_torch, cpu_torchvision=args.cpu_torchvision) for part in spec["first"]]
    first = [token for part in first for token in shlex.split(part)]
    if first and "--index-url" not in first and args.cpu_torch == "torch":
        first += ["--index-url", CPU_INDEX]
    subprocess.run(pip + first, check=True)
    subprocess.run(pip + [f"{REPO_ROOT}[{spec['extras']}]"], check=True)
    seconds = time.perf_counter() - started
    listed = json.loads(subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                                       check=True, capture_output=True, text=True).stdout)
    names = {entry["name"].lower(): entry["version"] for entry in listed}
    smoke = subprocess.run([str(venv / "bin" / "python"), "-c", SMOKE], capture_output=True, text=True,
                           env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}).stdout.split()
    site = next((venv / "lib").glob("python*/site-packages"))
    nvidia = sum(folder_mib(path) for path in site.glob("nvidia*")) + sum(folder_mib(path) for path in
                                                                          site.glob("cuda*"))
    return {"extras": spec["extras"], "first": first, "venv_MiB": round(folder_mib(venv)),
            "nvidia_cuda_MiB": round(nvidia), "torch": names.get("torch"), "torchvision": names.get("torchvision"),
            "open_clip_torch": names.get("open_clip_torch") or names.get("open-clip-torch"),
            "install_seconds": round(seconds),
            "drafts_with_optimize": smoke == ["0", "True"],
            "open_clip_imports": None if not names.get("open_clip_torch") else subprocess.run(
                [str(venv / "bin" / "python"), "-c", "import open_clip"], capture_output=True).returncode == 0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-torch", default="torch", help="the CPU torch to install first (default: torch from "
                                                              f"{CPU_INDEX})")
    parser.add_argument("--cpu-torchvision", default="torchvision", help="the CPU torchvision for the train install")
    parser.add_argument("--installs", nargs="+", choices=sorted(INSTALLS), default=["draft", "train"])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "install_size.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.installs:
            results[name] = install(name, INSTALLS[name], args, workdir)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    args.output.write_text(json.dumps({**previous, **results}, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

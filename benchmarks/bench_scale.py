"""How the work grows with the data: conversion, the feature cache and stage-2 training at 1 k, 4 k and 16 k studies,
then what a MIMIC-CXR-sized run would cost.

    python benchmarks/bench_scale.py                                  # ~35 min on 2 CPU cores, ~5 GB of disk
    python benchmarks/bench_scale.py --sizes 100 200 --work-dir /tmp/scale --no-doc   # a quick try

Each size gets its own image folder of 512 px JPEGs (the Kaggle MIMIC-CXR set's size) with phantom report text, and
three commands, each in a fresh process as a user runs them, timed, with its peak RSS from the kernel (wait4):
  1. `convert_imagefolder` -> the dataset folder (records/s, bytes on disk);
  2. `train.py` for 1 step with `feature_cache`: builds the cache (build time from its cache_info.json, bytes);
  3. `train.py` for --steps steps from that cache (samples/s from metrics.jsonl; the run's time outside its steps,
     "overhead": start-up with the cache index's hashing and the report passes, the final validation, the release).
The growth series uses the demo's architecture (configs/demo.yaml: 64 px ViT, small T5), so that 16 k studies fit
the time; one more row runs steps 2 and 3 with the full-size model (ViT-B/16 + t5-small shapes, random weights) on
the smallest size, which gives the per-study costs the extrapolation uses. Each quantity is fitted as
seconds = fixed + per_study x studies (least squares); the largest relative residual says how linear it is.

Writes benchmarks/results/scale.json and the measured tables and extrapolation into docs/scale.md.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from bench_converters import radiograph_like_jpeg  # a sibling script: benchmarks/ is on sys.path when run

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "scale.json"
SCALE_DOC = REPO_ROOT / "docs" / "scale.md"
TABLES_BEGIN, TABLES_END = "<!-- bench_scale tables -->", "<!-- /bench_scale tables -->"

# MIMIC-CXR 2.0 (JPG): 377,110 images of 227,835 studies (Johnson et al., 2019); the extrapolation counts a study
# as its frontal image, as a one-view model reads it.
MIMIC_STUDIES = 227_835
MIMIC_IMAGES = 377_110
# One H100, bf16, full-size stage 2 from cached features: 374 samples/s, measured in an earlier session (not on
# this machine); no GPU was available for this benchmark.
EARLIER_H100_SAMPLES_PER_SECOND = 374


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000], help="studies per size")
    parser.add_argument("--no-full-size", action="store_true",
                        help="leave out the full-size model's row (run on the smallest size)")
    parser.add_argument("--steps", type=int, default=60, help="timed training steps, demo model (default: 60)")
    parser.add_argument("--full-size-steps", type=int, default=8, help="timed training steps, full-size model")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/bench_scale"),
                        help="scratch folder (deleted size by size unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the images, datasets and caches")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/scale.md's tables")
    return parser.parse_args(argv)


# --- the data --------------------------------------------------------------------------------------------------

def make_image_folder(folder, studies, seed=0):
    """`studies` JPEGs and a metadata.jsonl of phantom reports (findings + impression, varied wording)."""
    from modeling_cliptt5.data.phantom import sample_findings, write_report

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in tqdm(range(studies), desc=f"writing {studies} JPEGs", unit="image"):
        name = f"images/s{50000000 + index}.jpg"
        (folder / name).write_bytes(radiograph_like_jpeg(rng, 512, mode="L"))
        findings, impression = write_report(sample_findings(rng), rng)
        lines.append(json.dumps({"file_name": name, "findings": findings, "impression": impression}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def folder_bytes(folder):
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


# --- one command, measured -------------------------------------------------------------------------------------

def run_measured(command, log_path):
    """(seconds, peak RSS MiB, peak private MiB) of a command run in a fresh process; its output goes to log_path.

    Peak RSS (the kernel's, from wait4) counts the pages of memory-mapped files the process has touched: the
    converted dataset's Arrow files and the feature cache. Those are the page cache, which the kernel takes back
    under pressure; the private (anonymous) memory, polled from /proc every 0.1 s, is what must fit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    private_peak = 0
    with open(log_path, "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            private_peak = max(private_peak, private_mib(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"bench_scale: {' '.join(map(str, command))} failed (exit {process.returncode}); see {log_path}")
    return seconds, usage.ru_maxrss / 1024, private_peak  # Linux reports ru_maxrss in KiB


def private_mib(pid):
    """The process's anonymous resident memory (RssAnon), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0


def training_settings(dataset, output_dir, cache_dir, full_size, steps):
    """configs/demo.yaml (or the full-size model) with this run's data, length and no validation beyond the end."""
    settings = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    settings.update(dataset=str(dataset), output_dir=str(output_dir), feature_cache=True,
                    feature_cache_dir=str(cache_dir), max_steps=steps, num_epochs=1000, warmup_steps=1,
                    eval_every_steps=10 ** 9, eval_max_samples=8, generation_max_new_tokens=8, log_every_steps=1,
                    save_every_steps=10 ** 9, ood_summary=False, log_with="none", num_workers=0,
                    finding_labels="chexpert", init_vision_from="", mixed_precision="no")
    if full_size:  # CLIPT5Config's defaults: BiomedCLIP's ViT-B/16 and t5-small shapes, random weights
        settings.update(model={"image_tokens": "patch", "image_token_pooling": 1, "projector_type": "mlp"},
                        batch_size=8, tokenizer_vocab_size=8000, max_report_tokens=256)
    return settings


def train_measured(dataset, work, name, full_size, steps, logs):
    """(cache build, training) measurements of one model on one dataset."""
    cache_dir, results = work / f"cache-{name}", {}
    for phase, phase_steps in (("cache", 1), ("train", steps)):
        output_dir = work / f"run-{name}-{phase}"
        settings_path = work / f"{name}-{phase}.yaml"
        settings = training_settings(dataset, output_dir, cache_dir, full_size, phase_steps)
        settings_path.write_text(yaml.safe_dump(settings))
        seconds, rss, private = run_measured([sys.executable, "train.py", "--config", str(settings_path)],
                                             logs / f"{work.name}-{name}-{phase}.log")
        results[phase] = {"seconds": seconds, "peak_rss_mib": rss, "peak_private_mib": private, "output_dir": output_dir,
                          "batch": settings["batch_size"] * settings.get("gradient_accumulation_steps", 1)}
    (cache_folder,) = [path for path in cache_dir.iterdir() if path.is_dir()]
    info = json.loads((cache_folder / "cache_info.json").read_text())
    records = [json.loads(line) for line in (results["train"]["output_dir"] / "metrics.jsonl").read_text().splitlines()]
    rates = [record["train/samples_per_second"] for record in records if "train/samples_per_second" in record]
    rate = statistics.median(rates[1:] or rates)  # the first window holds the first step's warm-up
    # one step per log window: its seconds are its samples over its samples per second
    steps_seconds = sum(results["train"]["batch"] / window_rate for window_rate in rates)
    return {
        "cache": {"studies": info["studies"], "build_seconds": info["build_seconds"],
                  "bytes": folder_bytes(cache_folder), "run_seconds": results["cache"]["seconds"],
                  "peak_rss_mib": results["cache"]["peak_rss_mib"],
                  "peak_private_mib": results["cache"]["peak_private_mib"]},
        "train": {"samples_per_second": rate, "steps": steps, "run_seconds": results["train"]["seconds"],
                  "overhead_seconds": results["train"]["seconds"] - steps_seconds,
                  "peak_rss_mib": results["train"]["peak_rss_mib"],
                  "peak_private_mib": results["train"]["peak_private_mib"]},
    }


def measure_size(studies, args, logs, full_size_too):
    work = args.work_dir / f"n{studies}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    make_image_folder(work / "source", studies)
    source_bytes = folder_bytes(work / "source")
    dataset = work / "dataset"
    seconds, rss, private = run_measured([sys.executable, "-m", "modeling_cliptt5.cli.convert_imagefolder",
                                          str(work / "source"), "--output", str(dataset)],
                                         logs / f"n{studies}-convert.log")
    row = {"studies": studies, "source_bytes": source_bytes,
           "convert": {"seconds": seconds, "records_per_second": studies / seconds, "bytes": folder_bytes(dataset),
                       "peak_rss_mib": rss, "peak_private_mib": private},
           "demo_model": train_measured(dataset, work, "demo", False, args.steps, logs)}
    if full_size_too:
        row["full_size_model"] = train_measured(dataset, work, "full", True, args.full_size_steps, logs)
    if not args.keep:
        shutil.rmtree(work)
    return row


# --- growth and extrapolation ----------------------------------------------------------------------------------

def linear_fit(sizes, values):
    """(fixed, per_study, largest relative residual) of values ~ fixed + per_study x sizes."""
    per_study, fixed = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    predicted = fixed + per_study * np.asarray(sizes, float)
    worst = max(abs(p - v) / abs(v) for p, v in zip(predicted, values) if v)
    return float(fixed), float(per_study), float(worst)


def growth(rows):
    sizes = [row["studies"] for row in rows]
    quantities = {
        "convert seconds": [row["convert"]["seconds"] for row in rows],
        "dataset bytes": [row["convert"]["bytes"] for row in rows],
        "cache build seconds (demo model)": [row["demo_model"]["cache"]["build_seconds"] for row in rows],
        "cache bytes (demo model)": [row["demo_model"]["cache"]["bytes"] for row in rows],
        "training overhead seconds (demo model)": [row["demo_model"]["train"]["overhead_seconds"] for row in rows],
    }
    fits = {name: dict(zip(("fixed", "per_study", "largest_relative_residual"), linear_fit(sizes, values)))
            for name, values in quantities.items()} if len(rows) >= 2 else {}
    parts = {"convert": lambda row: row["convert"], "cache build": lambda row: row["demo_model"]["cache"],
             "training": lambda row: row["demo_model"]["train"]}
    flat = {f"{name} {kind}": [part(row)[f"peak_{kind}_mib"] for row in rows]
            for name, part in parts.items() for kind in ("private", "rss")}
    return fits, flat


def extrapolate(rows, fits):
    """MIMIC-CXR-sized costs from the per-study slopes (conversion, disk) and the full-size row (cache, training)."""
    full = next((row for row in rows if "full_size_model" in row), None)
    estimate = {"studies": MIMIC_STUDIES, "images": MIMIC_IMAGES}
    if fits:
        estimate["convert_hours"] = (fits["convert seconds"]["fixed"]
                                     + fits["convert seconds"]["per_study"] * MIMIC_STUDIES) / 3600
        estimate["dataset_gb"] = fits["dataset bytes"]["per_study"] * MIMIC_STUDIES / 1e9
    if full is not None:
        cache, train = full["full_size_model"]["cache"], full["full_size_model"]["train"]
        estimate["cache_gb"] = cache["bytes"] / cache["studies"] * MIMIC_STUDIES / 1e9
        estimate["cache_build_hours_cpu"] = cache["build_seconds"] / cache["studies"] * MIMIC_STUDIES / 3600
        estimate["epoch_hours_cpu"] = MIMIC_STUDIES / train["samples_per_second"] / 3600
        estimate["epoch_hours_1_gpu"] = MIMIC_STUDIES / EARLIER_H100_SAMPLES_PER_SECOND / 3600
        estimate["epoch_hours_8_gpus_if_linear"] = estimate["epoch_hours_1_gpu"] / 8
    return estimate


# --- output ----------------------------------------------------------------------------------------------------

def mib(value):
    return f"{value / 2 ** 20:,.1f}"


def memory(measured):
    return f"{measured['peak_private_mib']:,.0f} / {measured['peak_rss_mib']:,.0f}"


def tables(result):
    rows, fits, flat, estimate = result["rows"], result["fits"], result["flat"], result["mimic_estimate"]
    lines = ["Memory columns are peak private / peak RSS in MiB (RSS adds the memory-mapped files' pages).", "",
             "| studies | convert s | records/s | dataset MiB | convert memory | cache build s | cache MiB | "
             "cache run memory | train samples/s | train overhead s | train memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        convert, cache, train = row["convert"], row["demo_model"]["cache"], row["demo_model"]["train"]
        lines.append(f"| {row['studies']:,} | {convert['seconds']:.1f} | {convert['records_per_second']:.0f} | "
                     f"{mib(convert['bytes'])} | {memory(convert)} | {cache['build_seconds']:.1f} | "
                     f"{mib(cache['bytes'])} | {memory(cache)} | {train['samples_per_second']:.1f} | "
                     f"{train['overhead_seconds']:.1f} | {memory(train)} |")
    for row in rows:
        if "full_size_model" not in row:
            continue
        cache, train = row["full_size_model"]["cache"], row["full_size_model"]["train"]
        lines += ["", f"Full-size model (ViT-B/16 + t5-small shapes) on the {row['studies']:,}-study dataset:", "",
                  "| cache build s | s per study | cache MiB | cache run memory | train samples/s | train overhead s | "
                  "train memory |", "|---|---|---|---|---|---|---|",
                  f"| {cache['build_seconds']:.1f} | {cache['build_seconds'] / cache['studies']:.3f} | "
                  f"{mib(cache['bytes'])} | {memory(cache)} | {train['samples_per_second']:.2f} | "
                  f"{train['overhead_seconds']:.1f} | {memory(train)} |"]
    if fits:
        lines += ["", "Linear fits, value = fixed + per study x studies:", "",
                  "| quantity | fixed | per study | largest relative residual |", "|---|---|---|---|"]
        for name, fit in fits.items():
            lines.append(f"| {name} | {fit['fixed']:,.2f} | {fit['per_study']:,.5g} | "
                         f"{fit['largest_relative_residual']:.1%} |")
    lines += ["", "Peak memory (MiB) by size, " + ", ".join(f"{row['studies']:,}" for row in rows) + ":", ""]
    lines += [f"- {name}: " + " / ".join(f"{value:.0f}" for value in values) for name, values in flat.items()]
    lines += ["", f"MIMIC-CXR size ({estimate['studies']:,} studies, {estimate['images']:,} images), estimated:", ""]
    described = [("convert_hours", "conversion, hours on this CPU", "{:.2f}"),
                 ("dataset_gb", "converted dataset, GB (frontal JPEGs as stored)", "{:.1f}"),
                 ("cache_gb", "full-size feature cache, GB (float16)", "{:.0f}"),
                 ("cache_build_hours_cpu", "full-size feature cache, hours on this CPU", "{:.1f}"),
                 ("epoch_hours_cpu", "one full-size training epoch, hours on this CPU", "{:.1f}"),
                 ("epoch_hours_1_gpu", f"one epoch on one H100 at its earlier measured "
                                       f"{EARLIER_H100_SAMPLES_PER_SECOND} samples/s, hours", "{:.2f}"),
                 ("epoch_hours_8_gpus_if_linear", "one epoch on 8 GPUs if DDP scaled linearly (not measured), hours",
                  "{:.2f}")]
    lines += [f"- {text}: {form.format(estimate[key])}" for key, text, form in described if key in estimate]
    return "\n".join(lines)


def write_doc(result):
    text = SCALE_DOC.read_text()
    begin, end = text.index(TABLES_BEGIN) + len(TABLES_BEGIN), text.index(TABLES_END)
    SCALE_DOC.write_text(text[:begin] + "\n" + tables(result) + "\n" + text[end:])


def main(argv=None):
    args = parse_args(argv)
    logs = args.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, studies in enumerate(sorted(args.sizes)):
        rows.append(measure_size(studies, args, logs, full_size_too=index == 0 and not args.no_full_size))
        print(json.dumps(rows[-1], default=str))
    fits, flat = growth(rows)
    result = {"rows": rows, "fits": fits, "flat": flat, "mimic_estimate": extrapolate(rows, fits),
              "machine": f"{os.cpu_count()} CPU cores"}
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(tables(result))
    if not args.no_doc:
        write_doc(result)
    print(f"wrote {RESULTS}" + ("" if args.no_doc else f" and {SCALE_DOC}"))


if __name__ == "__main__":
    main()

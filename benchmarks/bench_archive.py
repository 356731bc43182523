"""Drafting an archive with cliptt5-generate: studies per second with 1 and 2 CPU processes, and resuming after a kill.

The model is the full-size architecture (CLIPT5Config() defaults: ViT-B/16 + t5-small dims, 146.7 M parameters) with
random weights, saved as a release with a report tokenizer (nothing is downloaded); its generation config has no end
token, so that every draft is exactly --new-tokens tokens (random weights would otherwise stop at random lengths).
The studies are --studies phantom chest films (modeling_cliptt5.data.phantom), 512 px PNGs, one per study.

Measured, for each engine (--optimize: ONNX Runtime int8, the fast path; eager with --eager) and process count:
- wall: the whole command, start-up included (imports, loading, for 2 processes accelerate's launch);
- drafting: studies per second from the first record in the journal to the last (the benchmark polls the journal
  every 20 ms), i.e. once the processes are drafting.
A run of 1 process is plain `python -m modeling_cliptt5.cli.generate` (torch's threads: all cores); 2 processes are
`accelerate launch --multi_gpu --num_processes 2 ...` (1 thread each on 2 cores).
Resume: a run of 2 processes is killed (SIGKILL, workers included) once half the studies are recorded; the same
command then runs again: the time from its start to its first new record and to its end, what it says it resumed,
and how many studies were drafted twice (records written by both runs minus the studies).

The machine's cores are shared: the load average before and after is in the JSON. Each figure is one run.

Example:
  python benchmarks/bench_archive.py                     # --optimize, 48 studies, writes benchmarks/results/archive.json
  python benchmarks/bench_archive.py --eager --studies 24
"""

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CPU = ["launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=60, help="tokens per draft (default: 60)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eager", action="store_true", help="also time eager PyTorch float32 (slow on a CPU)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "archive.json")
    return parser.parse_args(argv)


def build_release(folder, new_tokens):
    """The full-size architecture with random weights, a report tokenizer of phantom reports, no end token."""
    import torch
    from transformers import GenerationConfig

    from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration, CLIPT5ImageProcessor, CLIPT5Processor
    from modeling_cliptt5.data.phantom import generate_study
    from modeling_cliptt5.training.tokenizer import train_report_tokenizer

    reports = [f"FINDINGS: {study['findings']} IMPRESSION: {study['impression']}"
               for study in (generate_study(seed, image_size=32) for seed in range(200))]
    tokenizer = train_report_tokenizer(reports, vocab_size=1000)
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration(CLIPT5Config()).eval()
    model.save_pretrained(folder)
    CLIPT5Processor(image_processor=CLIPT5ImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    settings = GenerationConfig.from_pretrained(folder)
    settings.max_new_tokens, settings.eos_token_id = new_tokens, None
    settings.save_pretrained(folder)
    return folder


def write_studies(folder, count):
    from modeling_cliptt5.data.phantom import encode_png, generate_study

    folder.mkdir(parents=True)
    for seed in range(count):
        (folder / f"study{seed:04d}.png").write_bytes(encode_png(generate_study(seed, image_size=512)["image"]))
    return folder


def journal_records(output):
    folder = output.with_name(f".{output.name}.parts")
    count = 0
    for path in folder.glob("rank-*.jsonl"):
        try:
            count += path.read_bytes().count(b"\n")
        except OSError:  # removed by the merge meanwhile
            pass
    return count


def kill_tree(pid):
    """SIGKILL to `pid`'s process group and its descendants' (torchrun starts each worker in a session of its own)."""
    def tree(process):
        found = [process]
        for task in Path(f"/proc/{process}/task").glob("*"):
            try:
                found += [member for child in (task / "children").read_text().split() for member in tree(int(child))]
            except OSError:
                pass
        return found

    groups = set()
    for member in tree(pid):
        try:
            groups.add(os.getpgid(member))
        except ProcessLookupError:
            pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(command, output, env, kill_at=None):
    """Runs a cliptt5-generate command, polling its journal: {wall, first_record, last_record, recorded, stderr}
    (seconds from the start). `kill_at`: SIGKILL it once that many records are in the journal."""
    started = time.perf_counter()
    log = output.with_name(f"{output.stem}.{int(started * 1000)}.log")
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)
        first = last = first_count = None
        seen = journal_records(output)  # a rerun's journal holds the earlier run's records
        while process.poll() is None:
            records = journal_records(output)
            now = time.perf_counter() - started
            if records > seen:
                if first is None:
                    first, first_count = now, records
                last, seen = now, records
            if kill_at is not None and records >= kill_at:
                kill_tree(process.pid)
                process.wait()
                break
            time.sleep(0.02)
    wall = time.perf_counter() - started
    text = log.read_text()
    if kill_at is None and process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{text[-3000:]}")
    return {"wall": wall, "first_record": first, "first_count": first_count, "last_record": last, "recorded": seen,
            "stderr": text}


def draft_command(processes, release, studies, output, engine, batch_size):
    launcher = ([str(Path(sys.executable).parent / "accelerate"), *ACCELERATE_CPU] if processes == 2
                else [sys.executable])
    options = ["--optimize"] if engine == "optimize" else ["--device", "cpu"]
    return [*launcher, "-m", "modeling_cliptt5.cli.generate", "--model", str(release), str(studies),
            "--output", str(output), "--batch-size", str(batch_size), *options]


def throughput(result, studies):
    drafting = result["last_record"] - result["first_record"]
    return {"wall_seconds": round(result["wall"], 1), "studies_per_second_wall": round(studies / result["wall"], 3),
            "first_record_seconds": round(result["first_record"], 1),
            "drafting_seconds": round(drafting, 1),
            # from the first records seen to the last: the studies recorded after the first poll that saw any
            "studies_per_second_drafting": round((result["recorded"] - result["first_count"]) / drafting, 3)
            if drafting > 0 else None}


def main(argv=None):
    args = parse_args(argv)
    load_before = os.getloadavg()
    engines = ["optimize"] + (["eager"] if args.eager else [])
    results = {"engines": {}, "resume": None}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ORT_DISABLE_TELEMETRY": "1",
               "CLIPT5_ONNX_CACHE": str(scratch / "onnx"), "TOKENIZERS_PARALLELISM": "false"}
        env.pop("OMP_NUM_THREADS", None)  # 1 process: torch's own count (all cores); accelerate sets 1 per process
        print("building the release and the studies ...", file=sys.stderr)
        release = build_release(scratch / "release", args.new_tokens)
        studies = write_studies(scratch / "studies", args.studies)
        # untimed: the ONNX export is made once per release and cached
        warm = write_studies(scratch / "warm", 1)
        run(draft_command(1, release, warm, scratch / "warm.jsonl", "optimize", 1), scratch / "warm.jsonl", env)
        for engine in engines:
            results["engines"][engine] = {}
            for processes in (1, 2):
                output = scratch / f"{engine}-{processes}.jsonl"
                print(f"{engine}, {processes} process(es) ...", file=sys.stderr)
                result = run(draft_command(processes, release, studies, output, engine, args.batch_size), output, env)
                results["engines"][engine][str(processes)] = throughput(result, args.studies)
        output = scratch / "resume.jsonl"
        command = draft_command(2, release, studies, output, "optimize", args.batch_size)
        print("resume: kill at half, then rerun ...", file=sys.stderr)
        killed = run(command, output, env, kill_at=args.studies // 2)
        recorded_at_kill = journal_records(output)
        rerun = run(command, output, env)
        said = re.search(r"resuming: (\d+) of (\d+) studies already done", rerun["stderr"])
        written = re.search(r"(\d+) records written by this run, (\d+) by an earlier run", rerun["stderr"])
        drafted_twice = int(written[1]) + recorded_at_kill - args.studies
        results["resume"] = {
            "killed_after_seconds": round(killed["wall"], 1), "records_at_kill": recorded_at_kill,
            "rerun_said": said[0] if said else None, "rerun_records_written": int(written[1]),
            "rerun_first_new_record_seconds": round(rerun["first_record"], 1),
            "rerun_wall_seconds": round(rerun["wall"], 1), "studies_drafted_twice": drafted_twice,
            "note": "a record is appended as each study finishes, so a kill loses only the studies being drafted "
                    "(at most a batch per process); drafted_twice counts records, not that unrecorded work"}
    results.update({
        "what": "cliptt5-generate over a folder of phantom PNG studies (512 px), full-size architecture with random "
                f"weights, {args.new_tokens} tokens per draft (no end token), batch size {args.batch_size}",
        "studies": args.studies, "command_1_process": "python -m modeling_cliptt5.cli.generate --model R studies/ "
        "--output drafts.jsonl --optimize", "command_2_processes": "accelerate " + " ".join(ACCELERATE_CPU)
        + " -m modeling_cliptt5.cli.generate --model R studies/ --output drafts.jsonl --optimize",
        "cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "benchmark": "python benchmarks/bench_archive.py" + (" --eager" if args.eager else ""),
    })
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    return results


def print_table(results):
    print(f"{'engine':<10} {'processes':>9} {'wall s':>8} {'studies/s (wall)':>17} {'studies/s (drafting)':>21}")
    for engine, runs in results["engines"].items():
        for processes, figures in runs.items():
            print(f"{engine:<10} {processes:>9} {figures['wall_seconds']:>8} {figures['studies_per_second_wall']:>17} "
                  f"{figures['studies_per_second_drafting']!s:>21}")
    resume = results["resume"]
    print(f"resume after a kill at {resume['records_at_kill']} records: first new record after "
          f"{resume['rerun_first_new_record_seconds']} s, done after {resume['rerun_wall_seconds']} s "
          f"({resume['rerun_said']}; {resume['studies_drafted_twice']} studies drafted twice)")


if __name__ == "__main__":
    main()

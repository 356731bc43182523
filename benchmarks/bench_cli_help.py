"""How long each installed `cliptt5-*` command takes to answer `--help` (the target: under 1.5 s), and how long
`import modeling_cliptt5` takes, each as a fresh process. Runs the console scripts beside this Python (a venv's
bin/), taking turns between commands so that the machine's drift spreads over all of them.

    python benchmarks/bench_cli_help.py [--repeats 5] [--output benchmarks/results/cli_help.json]
"""

import argparse
import configparser
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 1.5


def console_scripts():
    """The commands setup.cfg installs, by name."""
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=")[0].strip() for line in lines]


def seconds(command):
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, cwd="/")
    took = time.perf_counter() - started
    if finished.returncode != 0 or (command[-1] == "--help" and "usage:" not in finished.stdout):
        raise SystemExit(f"{' '.join(command)} failed (exit {finished.returncode}): {finished.stderr[-500:]}")
    return took


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "cli_help.json")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    commands = {name: [str(bin_dir / name), "--help"] for name in console_scripts()}
    commands["import modeling_cliptt5"] = [sys.executable, "-c", "import modeling_cliptt5"]
    for command in commands.values():  # warm the disk cache once: every figure below is a warm start
        seconds(command)
    times = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            times[name].append(seconds(command))
    rows = {name: {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
                   "max_s": round(max(values), 3)} for name, values in times.items()}
    width = max(map(len, rows))
    print(f"{'command':<{width}}  median    min    max  (seconds, {args.repeats} runs each, warm)")
    for name, row in rows.items():
        flag = "" if name.startswith("import") or row["median_s"] < TARGET_SECONDS else "  over the target"
        print(f"{name:<{width}}  {row['median_s']:6.2f} {row['min_s']:6.2f} {row['max_s']:6.2f}{flag}")
    slowest = max((row["median_s"] for name, row in rows.items() if not name.startswith("import")))
    print(f"slowest --help: {slowest:.2f} s (target < {TARGET_SECONDS} s)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"python": sys.executable, "repeats": args.repeats,
                                       "target_s": TARGET_SECONDS, "commands": rows}, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

"""Should `make demo` train with 1 or 2 processes on this machine? Trains each demo stage (configs/demo_contrastive.yaml,
then configs/demo.yaml) for a few steps with `accelerate launch` both ways (2 processes = DDP over gloo, one thread
each; 1 process = two threads) and compares studies per second, as train.py logs them (the first logging window,
which holds the start-up, is left out).

    python benchmarks/bench_demo_processes.py [--steps 60] [--output benchmarks/results/demo_processes.json]
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run (default: %(default)s)")
    parser.add_argument("--studies", type=int, default=1000, help="phantom studies drawn once (default: %(default)s)")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "demo_processes.json"))
    return parser.parse_args(argv)


def run(processes, config, data_dir, output_dir, steps, *extra):
    from demo import launch_command  # the launch `make demo` uses

    command, env = launch_command(processes)
    command += [str(REPO_ROOT / "train.py"), "--config", str(config), "--dataset", str(data_dir), "--output_dir",
                str(output_dir), "--max_steps", str(steps), "--log_every_steps", "10", "--eval_every_steps",
                str(10 * steps), "--save_every_steps", str(10 * steps), *extra]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["train/samples_per_second"] for r in records if "train/samples_per_second" in r][1:]
    return statistics.median(speeds)


def main(argv=None):
    args = parse_args(argv)
    import yaml

    from demo import CONTRASTIVE_CONFIG, DEMO_CONFIG, prepare_stage1
    from modeling_cliptt5.data.schema import save_dataset_atomically
    from modeling_cliptt5.data.phantom import make_phantom_dataset

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        data_dir = temp / "data"
        save_dataset_atomically(make_phantom_dataset(args.studies, seed=0, image_size=128), str(data_dir))
        open_clip_dir = prepare_stage1(data_dir, temp, yaml.safe_load(DEMO_CONFIG.read_text()))
        stages = {"stage1": (CONTRASTIVE_CONFIG, "--clip_model_config_dir", str(open_clip_dir)),
                  "stage2": (DEMO_CONFIG,)}
        results = {stage: {f"{processes}_process": run(processes, config, data_dir, temp / f"{stage}-{processes}",
                                                       args.steps, *extra)
                           for processes in (1, 2)}
                   for stage, (config, *extra) in stages.items()}
    summary = {"cpus": os.cpu_count(), "steps": args.steps, "studies_per_second": results,
               "faster": {stage: max(speeds, key=speeds.get) for stage, speeds in results.items()}}
    for stage, speeds in results.items():
        print(f"demo {stage} on {os.cpu_count()} CPUs: 1 process {speeds['1_process']:.1f} studies/s, "
              f"2 processes {speeds['2_process']:.1f} studies/s -> {summary['faster'][stage].replace('_', ' ')} "
              f"is faster")
    Path(args.output).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()

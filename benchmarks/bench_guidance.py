"""How the finding head's findings should reach the decoder, measured on the demo: as learned guidance tokens after the
image tokens (what the package does), or as a text prompt listing them ("Findings: cardiomegaly, left pleural
effusion.") that the T5 encoder reads after the image tokens, as PromptMRG's diagnosis-driven prompts do.

Both variants train stage 2 of the demo for the same steps from the same stage-1 image tower and head (a finished
`make demo` output folder), then draft the 1,600 test studies from the head's findings and from the true ones.

    python benchmarks/bench_guidance.py --demo-dir demo_output             # about 7 minutes on 2 CPUs

Prints a table and writes benchmarks/results/guidance.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # demo.py of the source tree, which is not installed

import demo  # noqa: E402


def findings_prompt(names):
    """"Findings: left pleural effusion, cardiomegaly." for phantom label names ("pleural_effusion:left")."""
    words = []
    for name in names:
        finding, _, side = name.partition(":")
        words.append(" ".join(part for part in (side, finding.replace("_", " ")) if part))
    return "Findings: " + (", ".join(words) if words else "none") + "."


def prompt_dataset(data_dir, target):
    """The demo dataset with each study's true findings as its indication (the prompt variant's training input)."""
    from modeling_cliptt5.data.schema import load_report_dataset, save_dataset_atomically

    data = load_report_dataset(str(data_dir))
    for split in data:
        data[split] = data[split].map(lambda row: {"indication": findings_prompt(row["labels"])})
    save_dataset_atomically(data, str(target))
    return target


def train(output_dir, data_dir, stage1, steps, *extra):
    command, env = demo.launch_command(2)
    command += [str(REPO_ROOT / "train.py"), "--config", str(REPO_ROOT / "configs" / "demo.yaml"), "--dataset",
                str(data_dir), "--output_dir", str(output_dir), "--init_vision_from", str(stage1), "--max_steps",
                str(steps), "--eval_every_steps", str(steps), "--save_every_steps", str(steps), *extra]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - started


def draft_with_prompts(model, processor, rows, prompts, batch_size=64, max_new_tokens=128):
    import torch

    texts = []
    for start in range(0, len(rows), batch_size):
        images = demo.first_views(rows[start:start + batch_size])
        inputs = processor(images=images, text=prompts[start:start + batch_size])
        with torch.inference_mode():
            sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1)
        texts += [report["text"] for report in processor.batch_decode_reports(sequences)]
    return texts


def head_findings(model, processor, rows, batch_size=256):
    import torch

    names, found = model.config.finding_labels, []
    for start in range(0, len(rows), batch_size):
        with torch.inference_mode():
            present = model.predict_findings(**processor(images=demo.first_views(rows[start:start + batch_size]))).present
        found += [[name for name, flag in zip(names, row) if flag] for row in present.tolist()]
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="demo_output", help="a finished make demo output (default: %(default)s)")
    parser.add_argument("--work-dir", default=None, help="where the two runs go (default: <demo-dir>/bench_guidance)")
    parser.add_argument("--steps", type=int, default=600, help="stage-2 steps of each variant (default: the demo's 600)")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "guidance.json"))
    args = parser.parse_args(argv)
    demo_dir = Path(args.demo_dir).resolve()
    work = Path(args.work_dir or demo_dir / "bench_guidance").resolve()
    stage1 = demo_dir / "contrastive" / "best"
    if not stage1.is_dir():
        sys.exit(f"{stage1}: not found; run `make demo` first")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    runs = {"guidance tokens": (work / "tokens", demo_dir / "data", ()),
            "findings prompt": (work / "prompt", prompt_dataset(demo_dir / "data", work / "prompt_data"),
                                ("--model", json.dumps({"finding_guidance": "none"}), "--use_indication", "true",
                                 "--prompt_dropout", "0"))}
    seconds = {}
    for name, (output, data, extra) in runs.items():
        output.mkdir()
        shutil.copytree(demo_dir / "tokenizer", output / "tokenizer")  # the demo's tokenizer, as stage 1 read it
        print(f"training the {name} variant: {args.steps} steps", flush=True)
        seconds[name] = train(output, data, stage1, args.steps, *extra)

    from modeling_cliptt5.data.schema import load_report_dataset
    from modeling_cliptt5.inference.drafting import load_release

    test = load_report_dataset(str(demo_dir / "data"))["test"]
    truth = list(test["labels"])
    results = {}
    for name, (output, _, _) in runs.items():
        release = load_release(output / "best")
        model, processor = release.model, release.processor
        if name == "guidance tokens":
            from_head = [draft.report for draft in demo.draft_split(release, test)]
            from_truth = [draft.report for draft in demo.draft_split(release, test, findings=truth)]
        else:
            predicted = head_findings(model, processor, test)
            from_head = draft_with_prompts(model, processor, test, [findings_prompt(found) for found in predicted])
            from_truth = draft_with_prompts(model, processor, test, [findings_prompt(labels) for labels in truth])
        results[name] = {"training_seconds": seconds[name],
                         "from_head": demo.finding_scores(from_head, truth),
                         "from_true_findings": demo.finding_scores(from_truth, truth)}
    print(f"\n{'guidance':<18}{'steps':>6}{'train s':>9}{'macro F1 (head)':>17}{'macro F1 (truth)':>18}"
          f"{'nodule L/R (head)':>19}")
    for name, scores in results.items():
        head, per = scores["from_head"], scores["from_head"]["per_observation"]
        print(f"{name:<18}{args.steps:>6}{scores['training_seconds']:>9.0f}{head['macro']['f1']:>17.3f}"
              f"{scores['from_true_findings']['macro']['f1']:>18.3f}"
              f"{per['nodule:left']['f1']:>10.2f} / {per['nodule:right']['f1']:.2f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"steps": args.steps, "demo_dir": str(demo_dir), "results": results},
                                            indent=1))
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

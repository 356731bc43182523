"""Which generation setting keeps a release from repeating sentences, at no cost to what its drafts say: the share of
drafts that repeat a sentence (evaluation/repetition.py) and the drafted findings' macro F1 on the demo's test split,
and the repeat share on images unlike the training data, for each `no_repeat_ngram_size`.

    make demo && python benchmarks/bench_repetition.py [--release demo_output/best] [--sizes 0 4 6 8 10 12]

Greedy, 128 tokens, as the demo scores. Writes benchmarks/results/repetition.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # demo.py's scoring of phantom drafts

from demo import finding_scores  # noqa: E402
from modeling_cliptt5.evaluation.repetition import report_repeats  # noqa: E402
from modeling_cliptt5.inference.drafting import draft_batch, load_release  # noqa: E402


def foreign_images(count, size=128, seed=0):
    """Images no chest phantom looks like: noise, gradients, blank frames, stripes."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        kind = index % 4
        if kind == 0:
            array = rng.integers(0, 256, (size, size))
        elif kind == 1:
            array = np.tile(np.linspace(0, 255, size), (size, 1)) * rng.uniform(0.3, 1.0)
        elif kind == 2:
            array = np.full((size, size), rng.integers(0, 256))
        else:
            array = (np.indices((size, size))[1] // rng.integers(2, 16) % 2) * 255
        images.append(Image.fromarray(array.astype(np.uint8)))
    return images


def drafts_of(release, images, size, batch_size=64):
    settings = {"max_new_tokens": 128, "num_beams": 1, "no_repeat_ngram_size": size}
    texts = []
    for start in range(0, len(images), batch_size):
        texts += [draft.report for draft in draft_batch(release, images[start:start + batch_size], None,
                                                          settings)]
    return texts


def repeat_share(texts):
    return float(np.mean([report_repeats(text) > 0 for text in texts]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default=str(REPO_ROOT / "demo_output" / "best"))
    parser.add_argument("--dataset", default=None, help="the demo's phantom dataset (default: data/ beside the "
                                                          "release, where make demo writes it)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 4, 6, 8, 10, 12])
    parser.add_argument("--foreign", type=int, default=200)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "repetition.json")
    args = parser.parse_args()
    from datasets import load_from_disk

    release = Path(args.release)
    dataset = Path(args.dataset) if args.dataset else release.parent / "data"
    test = load_from_disk(str(dataset))["test"]
    images = [views[0] for views in test["images"]]
    truth = test["labels"]
    foreign = foreign_images(args.foreign)
    torch.set_num_threads(2)
    loaded = load_release(release)
    results = {}
    for size in args.sizes:
        started = time.perf_counter()
        own = drafts_of(loaded, images, size)
        other = drafts_of(loaded, foreign, size)
        scores = finding_scores(own, truth)
        results[size] = {"test_repeat_share": repeat_share(own), "foreign_repeat_share": repeat_share(other),
                         "findings_macro_f1": round(scores["macro"]["f1"], 4),
                         "findings_micro_f1": round(scores["micro"]["f1"], 4),
                         "seconds": round(time.perf_counter() - started, 1)}
        print(f"no_repeat_ngram_size {size:>2}: {json.dumps(results[size])}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"release": str(release), "test_studies": len(images),
                                       "foreign_images": len(foreign), "by_no_repeat_ngram_size": results},
                                      indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

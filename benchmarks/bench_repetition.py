"""Which generation setting keeps a release from repeating sentences, at no cost to what its drafts say: for each
`no_repeat_ngram_size`, with and without `no_repeat_sentence` (no sentence twice in a section,
NoRepeatSentenceLogitsProcessor), the share of drafts that repeat a sentence (evaluation/repetition.py), the drafts'
findings and change macro F1 on the demo's test split (each study against its prior, as the demo drafts), how many
drafts state exactly their guidance and how many run to the token limit, and the repeat share on images unlike the
training data.

    make demo && python benchmarks/bench_repetition.py [--release demo_output/best] [--variants 4 8+sentences]

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

from demo import CHANGE_FINDINGS, draft_split, finding_scores, guidance_followed, prior_of  # noqa: E402
from modeling_cliptt5.evaluation.changes import change_scores  # noqa: E402
from modeling_cliptt5.evaluation.repetition import report_repeats  # noqa: E402
from modeling_cliptt5.inference.drafting import draft_batch, load_release  # noqa: E402
from modeling_cliptt5.modeling_cliptt5 import use_sentence_repeat_guard  # noqa: E402


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


def drafts_of(release, images, batch_size=64):
    settings = {"max_new_tokens": 128, "num_beams": 1}
    texts = []
    for start in range(0, len(images), batch_size):
        texts += [draft.report for draft in draft_batch(release, images[start:start + batch_size], None,
                                                          settings)]
    return texts


def repeat_share(texts):
    return float(np.mean([report_repeats(text) > 0 for text in texts]))


def use_variant(release, variant):
    """Sets the release's generation config to a variant: "4" (no_repeat_ngram_size 4), "8+sentences" (and
    no_repeat_sentence); 0 is no n-gram limit."""
    size, _, sentences = variant.partition("+")
    release.model.generation_config.no_repeat_ngram_size = int(size)
    use_sentence_repeat_guard(release.model.generation_config, release.processor.sentence_token_ids(),
                              on=sentences == "sentences")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default=str(REPO_ROOT / "demo_output" / "best"))
    parser.add_argument("--dataset", default=None, help="the demo's phantom dataset (default: data/ beside the "
                                                          "release, where make demo writes it)")
    parser.add_argument("--variants", nargs="+", default=["0", "4", "6", "8", "0+sentences", "6+sentences",
                                                          "8+sentences", "10+sentences"],
                        help="no_repeat_ngram_size, +sentences for no_repeat_sentence too")
    parser.add_argument("--foreign", type=int, default=200)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "repetition.json")
    args = parser.parse_args()
    from datasets import load_from_disk

    release = Path(args.release)
    dataset = Path(args.dataset) if args.dataset else release.parent / "data"
    test = load_from_disk(str(dataset))["test"]
    truth = test["labels"]
    has_prior = [index is not None for index in prior_of(test)]
    follow_ups = [index for index, prior in enumerate(has_prior) if prior]
    foreign = foreign_images(args.foreign)
    torch.set_num_threads(2)
    loaded = load_release(release)
    tokenizer = loaded.processor.tokenizer
    results = {}
    for variant in args.variants:
        use_variant(loaded, variant)
        started = time.perf_counter()
        drafts = draft_split(loaded, test, desc=variant)
        own = [draft.report for draft in drafts]
        other = drafts_of(loaded, foreign)
        scores = finding_scores(own, truth)
        changes = change_scores([truth[index] for index in follow_ups], [own[index] for index in follow_ups],
                                CHANGE_FINDINGS)
        results[variant] = {
            "test_repeat_share": repeat_share(own), "foreign_repeat_share": repeat_share(other),
            "findings_macro_f1": round(scores["macro"]["f1"], 4), "findings_micro_f1": round(scores["micro"]["f1"], 4),
            "change_macro_f1": round(changes["macro_f1"], 4), "guidance_followed": round(guidance_followed(drafts), 4),
            "at_token_limit": sum(len(tokenizer(text)["input_ids"]) >= 128 for text in own),
            "seconds": round(time.perf_counter() - started, 1)}
        print(f"{variant:>12}: {json.dumps(results[variant])}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"release": str(release), "test_studies": len(test),
                                       "foreign_images": len(foreign), "by_variant": results}, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

"""How often reports compare with an earlier study that is not there: the share of the real IU X-ray reports (R2Gen's
split, which holds no prior studies) that claim a comparison, split by split, and the same share in the published
CvT2DistilGPT2 model's drafts of the test split (evaluation/comparisons.py reads the claims), and what stripping them
from the training targets (the training default, comparisons_without_prior: strip) removes.

    python benchmarks/bench_comparisons.py [--reference ../shared/reference/iu_xray]

A model trained on such reports learns to write comparisons for patients it has no prior for. Writes
benchmarks/results/comparisons.json.
"""

import argparse
import collections
import csv
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from modeling_cliptt5.evaluation.comparisons import (  # noqa: E402
    comparison_claims, invented_comparison_rate, sentences_of, without_comparisons,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=REPO_ROOT.parent / "shared" / "reference" / "iu_xray")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "comparisons.json")
    args = parser.parse_args()
    annotation = json.loads((args.reference / "annotation.json").read_text())
    with open(args.reference / "cvt2distilgpt2_test_reports.csv", newline="") as handle:
        drafts = [row["report"] for row in csv.DictReader(handle)]
    results = {f"IU X-ray reports, {split}": {"reports": len(entries),
                                              "share_claiming": invented_comparison_rate([e["report"] for e in entries])}
               for split, entries in annotation.items()}
    results["CvT2DistilGPT2 drafts, test"] = {"reports": len(drafts), "share_claiming": invented_comparison_rate(drafts)}
    # What training with comparisons_without_prior: strip (the default) learns from the training reports instead
    train = [entry["report"] for entry in annotation["train"]]
    stripped = [without_comparisons(report) for report in train]
    sentences = sum(len(sentences_of(report)) for report in train)
    results["IU X-ray train reports, stripped"] = {
        "reports": len(train), "share_claiming": invented_comparison_rate(stripped),
        "sentences_removed": sentences - sum(len(sentences_of(report)) for report in stripped),
        "sentences": sentences, "reports_left_empty": sum(not report for report in stripped)}
    words = collections.Counter(sentence.split()[0].lower().strip(",.") for entries in annotation.values()
                                for entry in entries for sentence in comparison_claims(entry["report"]))
    for name, row in results.items():
        print(f"{name:<34} {row['reports']:>5} reports  {100 * row['share_claiming']:5.1f}% claim a comparison"
              + (f"  ({row['sentences_removed']} of {row['sentences']} sentences removed, "
                 f"{row['reports_left_empty']} reports left empty)" if "sentences" in row else ""))
    print("most common first words of the claims:", ", ".join(f"{word} {count}" for word, count in words.most_common(8)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"results": results, "first_words": dict(words.most_common(20))}, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

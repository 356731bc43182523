"""Writes the built-in synthetic chest X-ray phantom dataset (demo and test data; not real patients) to disk.

Example:
    cliptt5-make-demo-data --num-studies 2000 --seed 0 --image-size 256 --output data/demo
"""

import argparse
import collections
import sys
import time
from pathlib import Path

from modeling_cliptt5.cli.arguments import REPORT_TARGETS

# The package's heavy parts (transformers, datasets) are imported in main(), after parsing: `--help` answers at once.


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Draw synthetic chest radiograph phantoms (PA view: the patient's right on the image's left) "
                    "with paired FINDINGS/IMPRESSION reports and truth labels, and save them as a dataset in the "
                    "CLIP-T5 schema (train/validation/test). The images are synthetic: for demos and tests only.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-studies", type=int, default=2000, help="number of studies to draw (default: 2000)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same seed gives the same bytes (default: 0)")
    parser.add_argument("--image-size", type=int, default=256, help="square image side in px (default: 256)")
    parser.add_argument("--split-fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                        metavar=("TRAIN", "VALIDATION", "TEST"), help="fractions per split (default: 0.8 0.1 0.1)")
    parser.add_argument("--report-target", choices=REPORT_TARGETS, default="both",
                        help="what the `report` column holds: both sections with headers (default), or one section")
    parser.add_argument("--num-proc", type=int,
                        help="processes drawing studies in parallel; the same bytes with any number (default: the "
                             "CPU count for a few thousand studies or more, else 1: starting workers costs seconds)")
    parser.add_argument("--output", default="data/demo",
                        help="dataset folder to write (replaced atomically if it exists; default: data/demo)")
    args = parser.parse_args(argv)
    if args.num_studies < 1:
        parser.error(f"--num-studies must be at least 1, got {args.num_studies}")
    if args.num_proc is not None and args.num_proc < 1:
        parser.error(f"--num-proc must be at least 1, got {args.num_proc}")
    if args.image_size < 32:
        parser.error(f"--image-size must be at least 32 px, got {args.image_size}")
    if min(args.split_fractions) < 0 or abs(sum(args.split_fractions) - 1.0) > 1e-6:
        parser.error(f"--split-fractions must be 3 non-negative numbers summing to 1, got {args.split_fractions}")
    return args


def summary(dataset_dict):
    """Counts per split and per truth label (a study with no label is a normal study)."""
    from modeling_cliptt5.data.schema import SPLITS
    from modeling_cliptt5.data.phantom import PHANTOM_LABELS

    lines = []
    for split in (split for split in SPLITS if split in dataset_dict):
        labels = dataset_dict[split]["labels"]
        counts = collections.Counter(label for study in labels for label in study)
        normal = sum(not study for study in labels)
        lines.append(f"{split}: {len(labels)} studies, {normal} normal")
        lines += [f"  {label:24s} {counts[label]}" for label in PHANTOM_LABELS]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from modeling_cliptt5.data.schema import ConversionLog
    from modeling_cliptt5.data.sources import write_phantom_dataset

    start = time.perf_counter()
    log = ConversionLog()
    for _ in range(args.num_studies):  # every drawn study is converted; nothing is ever skipped
        log.row_read()
        log.row_converted()
    dataset_dict = write_phantom_dataset(args.output, args.num_studies, seed=args.seed, image_size=args.image_size,
                                         split_fractions=args.split_fractions, report_target=args.report_target,
                                         num_proc=args.num_proc, log=log)
    output = Path(args.output).resolve()
    print(summary(dataset_dict))
    print(log.summary())
    print(f"wrote {output} in {time.perf_counter() - start:.1f} s (synthetic phantoms, seed {args.seed}, "
          f"{args.image_size} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

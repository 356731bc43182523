"""Score generated reports against references (BLEU-1..4, METEOR, ROUGE-L, CIDEr; R2Gen protocol and baselines):
`cliptt5-score --generated gen.csv --references annotation.json --r2gen iu_xray`."""

import argparse
import sys

from modeling_cliptt5.data.atomic_writes import write_json_atomically
from modeling_cliptt5.evaluation.metrics import (
    ID_COLUMNS, R2GEN_SETTINGS, TEXT_COLUMNS, ReportFileError, is_r2gen_annotation, print_scores_table,
    read_reports_by_id, read_train_reports, score_with_baselines,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="cliptt5-score",
        description="Score generated reports against references (BLEU-1..4, METEOR, ROUGE-L, CIDEr with "
                    "pycocoevalcap), beside a constant-report and a random-report baseline drawn from the "
                    "train reports. Files: CSV, JSONL, or an R2Gen annotation.json (its --split entries; "
                    "its train split also serves as --train-reports). Exit status: 0 when scored, 1 when a file "
                    "cannot be scored (the message names it), 2 for a bad option.")
    parser.add_argument("--generated", required=True, help="generated reports, one per study id")
    parser.add_argument("--references", required=True, help="reference reports, one per study id")
    parser.add_argument("--train-reports", help="train reports for the <unk> vocabulary and the baselines "
                        "(default: the train split of --references when it is an R2Gen annotation.json)")
    parser.add_argument("--r2gen", choices=sorted(R2GEN_SETTINGS),
                        help="apply the R2Gen protocol for this dataset (default: texts compared as given)")
    parser.add_argument("--clean-generated", action="store_true",
                        help="also clean generated text the R2Gen way (for cased output with punctuation)")
    parser.add_argument("--split", default="test", help="split of an annotation.json to score (default: test)")
    parser.add_argument("--id-column", help=f"id column in both files (default: first of {list(ID_COLUMNS)})")
    parser.add_argument("--text-column", help=f"text column in both files (default: first of {list(TEXT_COLUMNS)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-report baseline (default: 0)")
    parser.add_argument("--constant-report", help="report text for the constant baseline "
                        "(default: the most frequent train report)")
    parser.add_argument("--no-baselines", action="store_true", help="score the model only")
    parser.add_argument("--clinical-efficacy", action="store_true",
                        help="add approximate clinical-efficacy F1 from the offline rule labeler (not CheXbert)")
    parser.add_argument("--output", help="write all scores to this JSON file (atomically)")
    return parser.parse_args(argv)


def main(argv=None):
    """The command: prints the table (and writes --output); returns the exit status."""
    args = parse_args(argv)
    try:
        score(args)
    except ReportFileError as error:
        print(f"cliptt5-score: error: {error}", file=sys.stderr)
        return 1
    return 0


def score(args):
    """Scores the files the arguments name; returns the scores ({variant: {metric: value}})."""
    references = read_reports_by_id(args.references, args.id_column, args.text_column, args.split)
    generated = read_reports_by_id(args.generated, args.id_column, args.text_column, args.split)
    missing = [study_id for study_id in references if study_id not in generated]
    if missing:
        raise ReportFileError(f"{args.generated}: no generated report for {len(missing)} of {len(references)} "
                              f"reference ids, e.g. {missing[:3]}")
    extra = len(generated) - len(references)
    study_ids = list(references)

    train_reports = None
    if args.train_reports:
        train_reports = read_train_reports(args.train_reports, args.text_column)
    elif is_r2gen_annotation(args.references):
        train_reports = read_train_reports(args.references, args.text_column)
    results = score_with_baselines(
        [generated[study_id] for study_id in study_ids], [references[study_id] for study_id in study_ids],
        train_reports, r2gen_protocol=args.r2gen or False, seed=args.seed, constant_report=args.constant_report,
        clean_generated=args.clean_generated, clinical_efficacy=args.clinical_efficacy,
        baselines=not args.no_baselines, progress=True)

    print_scores_table(results)
    print(f"\n{len(study_ids)} studies scored"
          + (f" ({extra} generated reports without a reference ignored)" if extra > 0 else "")
          + (f"; R2Gen protocol: {args.r2gen}" if args.r2gen else "; texts compared as given")
          + (f"; {len(train_reports)} train reports" if train_reports else "; no train reports: no baselines"))
    if args.output:
        write_json_atomically(args.output, {
            "n_studies": len(study_ids),
            "r2gen_protocol": args.r2gen,
            "clean_generated": args.clean_generated,
            "train_reports": len(train_reports) if train_reports else 0,
            "seed": args.seed,
            "scores": results,
        }, indent=2)
        print(f"scores written to {args.output}")
    return results


if __name__ == "__main__":
    sys.exit(main())

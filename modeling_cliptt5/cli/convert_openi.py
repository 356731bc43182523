"""The OpenI converter's command line (the reading is data/converters/openi.py)."""

import argparse
import sys
from pathlib import Path

from modeling_cliptt5.data.converters import openi
from modeling_cliptt5.cli.arguments import add_common_arguments, add_split_arguments, exit_on_conversion_error
from modeling_cliptt5.data.converters.common import ConversionError, run_conversion, sample_records


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cliptt5-convert-openi", description=openi.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: cliptt5-convert-openi --images ~/data/NLMCXR_png --reports ecgen-radiology")
    parser.add_argument("--images", required=True, help="folder of the OpenI images named by parentImage id")
    bundled = openi.bundled_reports()
    parser.add_argument("--reports", default=bundled, required=bundled is None,
                        help="ecgen-radiology/ folder of XML reports, or NLMCXR_reports.tgz "
                             f"(default: torchxrayvision's copy{f', {bundled}' if bundled else ', not installed'})")
    add_common_arguments(parser, default_output="outputs/datasets/openi")
    add_split_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    def convert():
        images_dir = Path(args.images).resolve()
        if not images_dir.is_dir():
            raise ConversionError(f"{images_dir}: images folder not found")
        records = openi.report_records(args.reports, images_dir, args.validation_fraction, args.test_fraction)
        note = (f"OpenI has no official split: validation {args.validation_fraction:.0%} and test "
                f"{args.test_fraction:.0%} drawn by study id")
        run_conversion(sample_records(records, args.max_samples, args.seed), args, notes=[note])
        return 0

    return exit_on_conversion_error(convert)


if __name__ == "__main__":
    sys.exit(main())

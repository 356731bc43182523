"""Argument types and option groups the commands share, and how a converter command ends on a bad input."""

import argparse
import sys

from modeling_cliptt5.data.atomic_writes import DiskFullError

# = processing_cliptt5.REPORT_TARGETS, written out so that --help does not import transformers (a test checks the two)
REPORT_TARGETS = ("findings", "impression", "both")

ANY_MODALITY_HELP = ("draft DICOM objects that are not a single projection radiograph (CT, MR, NM, multi-frame...) "
                     "instead of refusing them; the model was trained on chest radiographs")


def add_common_arguments(parser, default_output, normalize_deid=True):
    """Options every converter offers: output folder, report target, random subset, de-identification tokens."""
    parser.add_argument("--output", default=default_output,
                        help="folder to write the converted DatasetDict to (written to a temporary name, then "
                             "renamed when complete; an existing folder is replaced) (default: %(default)s)")
    parser.add_argument("--report-target", choices=REPORT_TARGETS, default="both",
                        help="what the `report` column holds: 'FINDINGS: ... IMPRESSION: ...' (both) or one section "
                             "alone; studies without that text are skipped (default: %(default)s)")
    parser.add_argument("--max-samples", type=positive_int, default=None,
                        help="convert a random subset of N studies (chosen by --seed before reading images; bad "
                             "ones among them are skipped, not replaced) (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-samples subset (default: %(default)s)")
    parser.add_argument("--normalize-deid", action=argparse.BooleanOptionalAction, default=normalize_deid,
                        help="replace de-identification placeholders (XXXX, x-XXXX, ___) with the one token XXXX "
                             "(default: %(default)s)")
    parser.add_argument("--any-modality", action="store_true",
                        help="convert DICOM objects that are not a single projection radiograph (CT, MR, NM, "
                             "multi-frame...) instead of skipping them as not a chest radiograph")
    return parser


def add_split_arguments(parser):
    """Fractions used where a source has no validation or test split of its own."""
    parser.add_argument("--validation-fraction", type=fraction, default=0.05,
                        help="share of studies put in validation where the source has no validation split, chosen "
                             "by a hash of the study id (the same study always lands in the same split) "
                             "(default: %(default)s)")
    parser.add_argument("--test-fraction", type=fraction, default=0.05,
                        help="share of studies put in test where the source has no test split (default: %(default)s)")
    return parser


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fraction(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_minutes(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 minutes, got {text}")
    return value


def exit_on_conversion_error(main):
    """Runs a converter's main(); a ConversionError ends the CLI with its message and exit code 1, no traceback."""
    # imported here: the converters need `datasets`, which the page's and drafting's commands do not
    from modeling_cliptt5.data.converters.common import ConversionError

    try:
        return main()
    except (ConversionError, DiskFullError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

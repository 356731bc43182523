"""The Kaggle curated CXR converter's command line (the reading is data/converters/kaggle_cxr.py)."""

import argparse
import sys

from modeling_cliptt5.data.converters import kaggle_cxr
from modeling_cliptt5.cli.arguments import add_common_arguments, add_split_arguments, exit_on_conversion_error
from modeling_cliptt5.data.converters.common import run_conversion, sample_records


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cliptt5-convert-kaggle", description=kaggle_cxr.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: cliptt5-convert-kaggle ~/data/curated-cxr --output data/kaggle_cxr")
    parser.add_argument("dataset_root", nargs="?", default=None,
                        help="the unpacked Kaggle dataset (holds 'Cleanses csv tfrecords/' and 'mimic_dset/'); image "
                             "paths are resolved inside it (not needed with --tfrecords)")
    parser.add_argument("--csv-dir", default=None, help="folder with df_train.csv/df_val.csv (default: found under "
                                                        "the dataset root)")
    parser.add_argument("--tfrecords", nargs="+", default=None, metavar="PATH",
                        help="read these TFRecord files or folders instead of the CSVs (split from file names)")
    parser.add_argument("--image-key", default=None, help="TFRecord feature with the image bytes (default: detected)")
    parser.add_argument("--text-key", default=None, help="TFRecord feature with the report text (default: detected)")
    parser.add_argument("--id-key", default=None, help=f"TFRecord feature with the study id (default: one of {kaggle_cxr.ID_KEYS} "
                                                       "if present, else file-record number)")
    parser.add_argument("--compression", choices=("auto", "none", "gzip"), default="auto",
                        help="TFRecord compression; auto = GZIP for names ending in .gz (default: %(default)s)")
    parser.add_argument("--labels", default=None, metavar="JSONL",
                        help="MedViLL-style label file ({\"id\", \"label\": \"'Cardiomegaly', 'Edema'\"} per line): "
                             "fills the labels column by study id")
    add_common_arguments(parser, default_output="outputs/datasets/kaggle_cxr")
    add_split_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    def convert():
        if args.tfrecords:
            records, total, notes = kaggle_cxr.tfrecord_records(args)
        else:
            records, notes = kaggle_cxr.csv_records(args)
            records, total = sample_records(records, args.max_samples, args.seed), None
        if args.labels:
            records = kaggle_cxr.add_labels(records, kaggle_cxr.read_label_file(args.labels))
        run_conversion(records, args, notes=notes, total=total)
        return 0

    return exit_on_conversion_error(convert)


if __name__ == "__main__":
    sys.exit(main())

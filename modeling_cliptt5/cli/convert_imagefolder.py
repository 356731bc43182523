"""The image-folder converter's command line (the reading is data/converters/imagefolder.py)."""

import argparse
import sys
from pathlib import Path

from modeling_cliptt5.data.converters import imagefolder
from modeling_cliptt5.cli.arguments import add_common_arguments, add_split_arguments, exit_on_conversion_error
from modeling_cliptt5.data.converters.common import ConversionError, run_conversion, sample_records


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cliptt5-convert-imagefolder", description=imagefolder.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: cliptt5-convert-imagefolder my_cxr_folder --output data/my_cxr")
    parser.add_argument("folder", help="the image folder holding metadata.jsonl or metadata.csv")
    add_common_arguments(parser, default_output="outputs/datasets/imagefolder")
    add_split_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    def convert():
        root = Path(args.folder).resolve()
        if not root.is_dir():
            raise ConversionError(f"{root}: folder not found")
        records = []
        for metadata_path, folder_split in imagefolder.find_metadata_files(root):
            records += imagefolder.study_records(metadata_path, folder_split, f"imagefolder/{root.name}",
                                     args.validation_fraction, args.test_fraction)
        run_conversion(sample_records(records, args.max_samples, args.seed), args)
        return 0

    return exit_on_conversion_error(convert)


if __name__ == "__main__":
    sys.exit(main())

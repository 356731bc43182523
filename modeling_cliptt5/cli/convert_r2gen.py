"""The R2Gen annotation.json converter's command line (the reading is data/converters/r2gen.py)."""

import argparse
import sys
from pathlib import Path

from modeling_cliptt5.data.converters import r2gen
from modeling_cliptt5.cli.arguments import add_common_arguments, exit_on_conversion_error
from modeling_cliptt5.data.converters.common import run_conversion, sample_records


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cliptt5-convert-r2gen", description=r2gen.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: cliptt5-convert-r2gen data/iu_xray/annotation.json --report-target findings")
    parser.add_argument("annotation", help="R2Gen annotation.json")
    parser.add_argument("--images", default=None,
                        help="folder the image_path entries are relative to (default: 'images' beside the file)")
    parser.add_argument("--source", default=None,
                        help="value of the `source` column (default: r2gen/<folder of the annotation file>)")
    parser.add_argument("--check-images", action="store_true",
                        help="only list missing images (stdout) and count them (stderr); convert nothing")
    # The annotation's `report` is the benchmark reference: keep its placeholders as they are unless asked.
    add_common_arguments(parser, default_output="outputs/datasets/r2gen", normalize_deid=False)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    def convert():
        annotation_path = Path(args.annotation).resolve()
        annotation = r2gen.load_annotation(annotation_path)
        images_dir = Path(args.images).resolve() if args.images else annotation_path.parent / "images"
        source = args.source or f"r2gen/{annotation_path.parent.name}"
        records = r2gen.annotation_records(annotation, annotation_path, images_dir, source)
        if args.check_images:
            return r2gen.check_images(records, images_dir)
        run_conversion(sample_records(records, args.max_samples, args.seed), args)
        return 0

    return exit_on_conversion_error(convert)


if __name__ == "__main__":
    sys.exit(main())

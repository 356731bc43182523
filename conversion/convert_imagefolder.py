"""Convert a folder of images with metadata.jsonl / metadata.csv to the CLIP-T5 dataset; `--help` for the options.

A thin script over modeling_cliptt5/cli/convert_imagefolder.py, which is also installed as the `cliptt5-convert-imagefolder` command."""

import sys

from modeling_cliptt5.cli.convert_imagefolder import main

if __name__ == "__main__":
    sys.exit(main())

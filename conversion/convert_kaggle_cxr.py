"""Convert the Kaggle curated CXR set (CSV + JPEG, or TFRecords) to the CLIP-T5 dataset; `--help` for the options.

A thin script over modeling_cliptt5/cli/convert_kaggle_cxr.py, which is also installed as the `cliptt5-convert-kaggle` command."""

import sys

from modeling_cliptt5.cli.convert_kaggle_cxr import main

if __name__ == "__main__":
    sys.exit(main())

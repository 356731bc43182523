"""Draft chest X-ray reports from PNG, JPEG or DICOM files with a CLIP-T5 release; `python generate.py --help`.

A thin script over modeling_cliptt5/cli/generate.py, which is also installed as the `cliptt5-generate` command."""

import sys

from modeling_cliptt5.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())

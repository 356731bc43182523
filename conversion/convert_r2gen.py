"""Convert an R2Gen annotation.json (IU X-ray, MIMIC-CXR) to the CLIP-T5 dataset; `--help` for the options.

A thin script over modeling_cliptt5/cli/convert_r2gen.py, which is also installed as the `cliptt5-convert-r2gen` command."""

import sys

from modeling_cliptt5.cli.convert_r2gen import main

if __name__ == "__main__":
    sys.exit(main())

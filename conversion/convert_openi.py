"""Convert the OpenI XML reports and their images to the CLIP-T5 dataset; `--help` for the options.

A thin script over modeling_cliptt5/cli/convert_openi.py, which is also installed as the `cliptt5-convert-openi` command."""

import sys

from modeling_cliptt5.cli.convert_openi import main

if __name__ == "__main__":
    sys.exit(main())

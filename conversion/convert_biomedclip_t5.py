"""Build a CLIP-T5 release from BiomedCLIP's image tower and a T5 checkpoint; `--help` for the options.

A thin script over modeling_cliptt5/cli/convert_biomedclip_t5.py, which is also installed as the `cliptt5-convert-biomedclip` command."""

import sys

from modeling_cliptt5.cli.convert_biomedclip_t5 import main

if __name__ == "__main__":
    sys.exit(main())

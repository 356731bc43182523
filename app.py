"""Serve the report-drafting page for a CLIP-T5 release on this computer; `python app.py --help`.

A thin script over modeling_cliptt5/cli/app.py, which is also installed as the `cliptt5-app` command."""

import sys

from modeling_cliptt5.cli.app import main

if __name__ == "__main__":
    sys.exit(main())

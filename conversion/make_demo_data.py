"""Write the built-in synthetic phantom dataset (demo and test data, not patients); `--help` for the options.

A thin script over modeling_cliptt5/cli/make_demo_data.py, which is also installed as the `cliptt5-make-demo-data` command."""

import sys

from modeling_cliptt5.cli.make_demo_data import main

if __name__ == "__main__":
    sys.exit(main())

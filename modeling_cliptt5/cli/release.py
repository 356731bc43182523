"""Refill a release's model card, limit its drafts to a report vocabulary, or upload it to the Hub:
`cliptt5-release RELEASE [--report-vocabulary DATASET | --full-vocabulary] [--push-to-hub ID]`."""

import argparse
import os
import sys

from modeling_cliptt5.training.release import FULL_VOCABULARY, HubPushError, finish_release


def main(argv=None):
    """The command: returns its exit status (0 done; 1 the vocabulary's dataset or the upload failed; 2 a bad option
    or no release folder)."""
    parser = argparse.ArgumentParser(
        prog="cliptt5-release", description="Refill a release's model card, limit its drafts to a report vocabulary, or upload it to the Hub.",
        epilog="Exit status: 0 when done, 1 when the dataset or the upload failed, 2 for a bad option or no release "
               "folder.")
    parser.add_argument("release_dir", help="a release folder written by cliptt5-train (e.g. runs/my_run/best)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="Hub repo id to upload to")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument("--report-vocabulary", metavar="DATASET",
                            help="limit drafts to the tokens of this converted dataset's train-split reports: the "
                                 "--optimize fast path then computes only those rows of the output layer")
    vocabulary.add_argument("--full-vocabulary", action="store_true",
                            help="lift a --report-vocabulary limit: drafts may use every token again")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.release_dir, "config.json")):
        parser.error(f"no release folder at {args.release_dir} (a folder holding config.json)")
    vocabulary = FULL_VOCABULARY if args.full_vocabulary else args.report_vocabulary
    try:
        finish_release(args.release_dir, vocabulary=vocabulary, push_to=args.push_to_hub, private=args.private)
    except (OSError, ValueError, HubPushError) as error:  # a converted release has no training record for a card
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

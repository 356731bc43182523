"""Refill a release's model card, limit its drafts to a report vocabulary, or upload it to the Hub:
`cliptt5-release RELEASE [--report-vocabulary DATASET | --full-vocabulary] [--push-to-hub ID]`."""

import argparse
import os
import sys

from modeling_cliptt5.training.release import RELEASE_INFO_FILE, HubPushError, push_release, write_model_card


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
    if args.report_vocabulary or args.full_vocabulary:
        from modeling_cliptt5.training.report_vocabulary import set_release_vocabulary, training_reports

        try:
            reports = None if args.full_vocabulary else training_reports(args.report_vocabulary)
            config = set_release_vocabulary(args.release_dir, reports)
        except (OSError, ValueError) as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 1
        allowed = config.vocab_size if config.report_vocabulary is None else len(config.report_vocabulary)
        print(f"{args.release_dir}: drafts may use {allowed:,} of {config.vocab_size:,} tokens")
        if not args.push_to_hub:
            # A training release's card says how many tokens its drafts use.
            if os.path.isfile(os.path.join(args.release_dir, RELEASE_INFO_FILE)):
                print(f"wrote {write_model_card(args.release_dir)}")
            return 0
    if not args.push_to_hub:
        try:
            print(f"wrote {write_model_card(args.release_dir)}")
        except FileNotFoundError as error:  # a converted release has no training record to fill a card from
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 1
        return 0
    try:
        commit = push_release(args.release_dir, args.push_to_hub, private=args.private)
    except HubPushError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    print(f"uploaded {args.release_dir} to {args.push_to_hub}: {getattr(commit, 'commit_url', commit)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

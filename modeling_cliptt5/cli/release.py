"""Refill a release's model card, or upload the release to the Hub: `cliptt5-release RELEASE [--push-to-hub ID]`."""

import argparse

from modeling_cliptt5.release import HubPushError, push_release, write_model_card


def main(argv=None):
    parser = argparse.ArgumentParser(description="Refill a release's model card and upload it to the Hub.")
    parser.add_argument("release_dir", help="a release folder written by train.py (e.g. runs/demo/best)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="Hub repo id to upload to")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    args = parser.parse_args(argv)
    if not args.push_to_hub:
        print(f"wrote {write_model_card(args.release_dir)}")
        return 0
    try:
        commit = push_release(args.release_dir, args.push_to_hub, private=args.private)
    except HubPushError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"uploaded {args.release_dir} to {args.push_to_hub}: {getattr(commit, 'commit_url', commit)}")
    return 0


if __name__ == "__main__":
    main()

"""Serve the report-drafting page for a CLIP-T5 release on this computer: cliptt5-app --model DIR_OR_HUB_ID."""

import argparse
import os
import signal
import sys
import time

from modeling_cliptt5.cli.arguments import ANY_MODALITY_HELP, non_negative_int, positive_minutes

# Before anything imports gradio: no usage analytics, no Hub telemetry (modeling_cliptt5.app.web_app sets them too).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

MAX_WAITING_DRAFTS = 16  # as modeling_cliptt5.app.web_app (not imported here: --help stays quick, without gradio)
DELETE_AFTER_SECONDS = 3600
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Serve a web page that drafts chest X-ray reports (FINDINGS and IMPRESSION) from dropped PNG, "
                    "JPEG or DICOM images, tags each sentence with the finding a rule labeler reads in it, and "
                    "exports the reader's edited text. Research prototype, not a medical device.",
        epilog="Exit status: 0 after Ctrl+C or a plain kill, 2 when the release cannot be loaded or an option is wrong.",
    )
    parser.add_argument("--model", required=True,
                        help="release folder or Hub id of a CLIP-T5 model (e.g. runs/my_run/best, written by "
                             "cliptt5-train)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this computer only; the page has no login, "
                             "so anything else exposes patient images to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--optimize", action="store_true",
                        help="int8 weights on CPU, as cliptt5-generate --optimize: faster drafts, slightly "
                             "different numerics")
    parser.add_argument("--any-modality", action="store_true", help=ANY_MODALITY_HELP)
    parser.add_argument("--show-patient-name", action="store_true",
                        help="show the DICOM header's patient name above the images and put it in exports (by "
                             "default only patient ID, accession number, study date and views are shown)")
    parser.add_argument("--max-waiting", type=non_negative_int, default=MAX_WAITING_DRAFTS,
                        help="drafts that may wait while the model works on another (default: %(default)s); "
                             "further requests are told the server is busy and to try again")
    parser.add_argument("--delete-uploads-after", type=positive_minutes, default=DELETE_AFTER_SECONDS / 60,
                        metavar="MINUTES",
                        help="delete uploaded images and exports this many minutes after they were written "
                             "(default: %(default)g; checked every sixth of that, at most 10 minutes apart); "
                             "everything is deleted when the server stops")
    parser.add_argument("--node-config", metavar="NODE_YAML",
                        help="the settings file of a cliptt5-node on this computer: the page lists its studies "
                             "(drafted, waiting, refused), opens one with its images and draft, and queues the "
                             "signed report in the node's outbox as a final SR that supersedes the draft")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.host not in LOCAL_HOSTS:
        print(f"WARNING: listening on {args.host}: anyone who can reach this address can upload images and read "
              "drafts (no login).", file=sys.stderr)

    from modeling_cliptt5.app.web_app import ReportDrafter, build_app, launch

    node = None
    if args.node_config:
        from modeling_cliptt5.app.worklist import NodeWorklist
        from modeling_cliptt5.node.settings import SettingsError

        try:
            node = NodeWorklist.from_config(args.node_config)
        except (OSError, SettingsError) as error:
            print(f"cliptt5-app: error: --node-config: {error}", file=sys.stderr)
            return 2
    start = time.perf_counter()
    try:
        drafter = ReportDrafter.from_pretrained(args.model, optimize=args.optimize)
    except (OSError, ValueError) as error:  # no such folder or reachable Hub id (model_sources), not a CLIP-T5 release
        print(f"cliptt5-app: error: {error}", file=sys.stderr)
        return 2
    print(f"Loaded {args.model} in {time.perf_counter() - start:.1f} s "
          f"({drafter.num_views} image(s) per study, prompt: {drafter.default_prompt!r}).")
    app = build_app(drafter, any_modality=args.any_modality, show_patient_name=args.show_patient_name,
                    max_waiting=args.max_waiting, delete_after=args.delete_uploads_after * 60, node=node)
    # A plain `kill` stops the server like Ctrl+C does, so the exit handlers delete the uploaded images.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"Uploaded images and exports are kept in {os.environ['GRADIO_TEMP_DIR']} (this user only), each for "
          f"{args.delete_uploads_after:g} minute(s) at most, and deleted at exit.")
    print(f"Serving on http://{args.host}:{args.port} (Ctrl+C stops it and deletes the uploaded images).")
    launch(app, host=args.host, port=args.port, quiet=True)
    print(f"Stopped after {drafter.drafts_made} draft(s); uploaded images and exports are deleted at exit.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

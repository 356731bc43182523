"""A DICOM node for the reading room: receives chest radiographs from a PACS and sends back a draft report per study.

  cliptt5-node --config node.yaml                  # serve (the default subcommand)
  cliptt5-node serve --release runs/best --storage /var/lib/cliptt5-node --accept PACS \\
               --destination PACS@10.1.2.3:104
  cliptt5-node status --config node.yaml           # the queue, and results not yet taken by their destination

The node is a DICOM Storage SCP (C-ECHO; C-STORE of Computed Radiography, Digital X-Ray for presentation and for
processing, and Secondary Capture; other SOP classes are rejected in the association negotiation). Only the calling
AE titles in `accept` may associate (optionally only from listed addresses). Each instance is written to the disk
(fsynced) and recorded before the node answers Success; instances larger than max_instance_mb, with invalid UIDs
or with pixel data the decoders cannot read are refused with a failure status and a log line.

Instances are grouped by Study Instance UID; a study is complete study_complete_seconds after its last instance.
Each complete study is drafted once, and the draft goes back to every destination as a DICOM Basic Text SR in the
same study (a new series), marked PRELIMINARY and UNVERIFIED: findings and impression, the findings the model's
head calls present, coded (SNOMED CT) where known, the unfamiliar-image check and the release's name and revision.
A study that is not a radiograph (the modality guard), or unlike the training images with --refuse-ood, gets no
SR; the log says why. A destination that does not take a result is retried, waiting longer each time
(retry_first_seconds doubling up to retry_max_seconds); the result stays in the outbox until it is taken.

The study index, draft queue and outbox are an SQLite database in the storage folder: a node that is stopped or
killed restarts where it stopped. Log lines name studies and instances by UID, never the patient.

Settings come from --config, a YAML or JSON file (relative paths read from its folder), and flags, which win:
{example}

Exit status: 0 after Ctrl+C or SIGTERM (serve) or when the status was shown, 2 when the settings, the release or
the address to listen on cannot be used. Research prototype, not a medical device: the SRs are drafts for a
radiologist to review.
"""

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading

from modeling_cliptt5.node.settings import DICOM_PORT, EXAMPLE, SettingsError, load_settings

PROGRAM = "cliptt5-node"
COMMANDS = ("serve", "status")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1].format(example=EXAMPLE.rstrip()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{serve,status}")
    serve = commands.add_parser("serve", help="receive studies, draft them, send the results (the default)",
                                description="Receive studies, draft each complete one, send the SR back.")
    status = commands.add_parser("status", help="list the draft queue and the outbox with undelivered results",
                                 description="List the studies waiting to be drafted, the results not yet taken by "
                                             "their destination, refused studies and the latest refusals.")
    for command in (serve, status):
        command.add_argument("--config", metavar="FILE", help="settings file (YAML or JSON, as below)")
        command.add_argument("--storage", metavar="DIR", help="folder for instances, results and the node's database")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    node = serve.add_argument_group("the node")
    node.add_argument("--ae-title", help="this node's AE title (default: CLIPT5)")
    node.add_argument("--host", help="address to listen on (default: 127.0.0.1, this computer only)")
    node.add_argument("--port", type=int, help=f"port to listen on (default: {DICOM_PORT})")
    node.add_argument("--accept", action="append", metavar="AE[@ADDRESS,...]",
                      help="a calling AE title allowed to send, optionally only from these addresses (repeat for "
                           "more; replaces the file's list)")
    node.add_argument("--destination", action="append", metavar="AE@HOST:PORT", dest="destinations",
                      help="where every result is sent (repeat for more; replaces the file's list)")
    node.add_argument("--prior-source", metavar="AE@HOST:PORT",
                      help="a Query/Retrieve SCP (the PACS) asked for a follow-up's prior study when the node holds "
                           "none (C-FIND, then C-MOVE to this node; the AE title must also be accepted)")
    node.add_argument("--study-complete-seconds", type=float,
                      help="a study is complete this many seconds after its last instance (default: 30)")
    node.add_argument("--max-instance-mb", type=float, help="refuse larger instances (default: 256)")
    node.add_argument("--retry-first-seconds", type=float,
                      help="first wait before sending a result again (default: 5; doubles each time)")
    node.add_argument("--retry-max-seconds", type=float, help="longest wait between tries (default: 300)")
    node.add_argument("--tls-certificate", metavar="PEM", help="the node's certificate: listen (and send) over TLS")
    node.add_argument("--tls-private-key", metavar="PEM", help="the certificate's private key")
    node.add_argument("--tls-ca-certificates", metavar="PEM",
                      help="CA certificates a peer's certificate must be signed by (callers must then present one)")
    drafting = serve.add_argument_group("drafting")
    drafting.add_argument("--release", metavar="DIR", help="release folder of the model that drafts")
    drafting.add_argument("--optimize", action="store_true", default=None,
                          help="int8 weights on the CPU fast path (ONNX Runtime where installed), as cliptt5-generate")
    drafting.add_argument("--num-beams", type=int, help="beam search width (default: the release's)")
    drafting.add_argument("--max-new-tokens", type=int, help="longest draft in tokens (default: the release's)")
    drafting.add_argument("--refuse-ood", action="store_true", default=None,
                          help="send no result for a study unlike the model's training images (logged instead)")
    drafting.add_argument("--batch-size", type=int, help="complete studies drafted at once (default: 4)")
    if argv is None:
        argv = sys.argv[1:]
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["serve", *argv]  # serving is the default subcommand
    return parser.parse_args(argv)


def flag_settings(args):
    """The flags given, by setting name (load_settings lays them over the file's)."""
    names = ("storage", "ae_title", "host", "port", "accept", "destinations", "study_complete_seconds",
             "max_instance_mb", "retry_first_seconds", "retry_max_seconds", "release", "optimize", "num_beams",
             "max_new_tokens", "refuse_ood", "batch_size", "prior_source")
    values = {name: getattr(args, name, None) for name in names}
    tls = {"certificate": getattr(args, "tls_certificate", None), "private_key": getattr(args, "tls_private_key", None),
           "ca_certificates": getattr(args, "tls_ca_certificates", None)}
    if any(tls.values()):
        values["tls"] = {key: value for key, value in tls.items() if value}
    return values


def fail(message):
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    return 2


def show_status(args):
    from modeling_cliptt5.node.status import NoNodeDatabase, node_status, status_text

    try:
        settings = load_settings(args.config, flag_settings(args), serving=False)
        status = node_status(settings.storage)
    except (SettingsError, NoNodeDatabase) as error:
        return fail(error)
    print(json.dumps(status, indent=1) if args.json else status_text(status))
    return 0


def serve(args):
    try:
        settings = load_settings(args.config, flag_settings(args))
    except SettingsError as error:
        return fail(error)
    from modeling_cliptt5.node.service import NodeStartError
    from modeling_cliptt5.node.service import serve as run_node

    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.tls:
        print(f"WARNING: listening on {settings.host} without TLS: images and results cross the network unencrypted",
              file=sys.stderr)
    stop = threading.Event()
    # SIGTERM (a service manager) and Ctrl+C stop the node between two steps; the caller's handlers come back after
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        with log_to_stderr():
            run_node(settings, stop)
    except NodeStartError as error:
        return fail(error)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


@contextlib.contextmanager
def log_to_stderr():
    """The node's log, and the libraries' warnings, as timed lines on stderr while it runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(level)


def main(argv=None):
    args = parse_args(argv)
    return show_status(args) if args.command == "status" else serve(args)


if __name__ == "__main__":
    sys.exit(main())

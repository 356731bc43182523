"""The DICOM node under a burst: many studies sent at once by several storescu processes, drafted and answered as SRs
in a real Orthanc PACS; none may be lost.

    python benchmarks/bench_node.py                        # 60 studies, 4 senders, demo_output/best if it exists
    python benchmarks/bench_node.py --studies 100 --senders 8 --release runs/iu_xray/best --optimize

Each study is a synthetic phantom (modeling_cliptt5.data.phantom; not a patient) as 12-bit CR films of
--image-size px (a frontal and, with --views 2, a lateral-labelled copy), sent by one `storescu` call; --senders
such calls run at once. Measured: how long the burst took to send, throughput (studies from the first instance
sent to the last SR in Orthanc, per minute), and per study the time from its last instance acknowledged to its SR
listed by Orthanc's REST API (median, 90th percentile, worst). Checked: every instance acknowledged, every study
drafted once with one SR that references all its instances, the node's outbox empty. Writes
benchmarks/results/node.json. Needs dcmtk and orthanc (Debian packages).
"""

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom

REPO_ROOT = Path(__file__).resolve().parents[1]
# the tests' helpers (tests/node/node_harness.py: the node and Orthanc as processes), which are not installed
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests"), str(REPO_ROOT / "tests" / "node")]

from node_harness import (  # noqa: E402
    COMPUTED_RADIOGRAPHY, Node, missing_tools_reason, running_orthanc, sent_ok, storescu, wait_for,
)

DEMO_RELEASE = REPO_ROOT / "demo_output" / "best"


def phantom_films(folder, index, views, image_size):
    """One phantom study as 12-bit CR DICOM files (frontal, then lateral-labelled copies)."""
    import numpy as np
    from pydicom.uid import generate_uid

    from dicom_files import grayscale_dicom
    from modeling_cliptt5.data.phantom import generate_study

    image = generate_study(1000 + index, image_size=image_size)["image"]
    stored = np.asarray(image, dtype=np.uint16) * 16  # 8-bit phantom -> 12 bits stored, as a CR sends them
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for view in range(views):
        path = folder / f"study{index:03d}_{view}.dcm"
        grayscale_dicom(stored, path, modality="CR", bits_stored=12, window=(2048, 4096), header={
            "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "PatientID": f"BENCH-{index:03d}",
            "PatientName": "Phantom^Bench", "AccessionNumber": f"B{index:05d}", "StudyDate": "20240301",
            "SeriesNumber": 1, "InstanceNumber": view + 1, "ViewPosition": "PA" if view == 0 else "LL",
            "BodyPartExamined": "CHEST"})
        files.append(path)
    return study_uid, files


def as_computed_radiography(files):
    import pydicom

    for path in files:
        dataset = pydicom.dcmread(path)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = COMPUTED_RADIOGRAPHY
        dataset.save_as(path, enforce_file_format=True)


def tiny_release(folder):
    """Without a demo release: the test suite's tiny random release, made to write text."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from bench_app import build_tiny_release

    return build_tiny_release(folder)


def studies_with_sr(orthanc):
    """{Study Instance UID} of the studies Orthanc holds an SR for (one REST call)."""
    found = orthanc.post("/tools/find", {"Level": "Study", "Query": {"ModalitiesInStudy": "SR"}, "Expand": True})
    return {study["MainDicomTags"]["StudyInstanceUID"] for study in found}


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--senders", type=int, default=4, help="storescu processes at once")
    parser.add_argument("--views", type=int, default=2, help="instances per study")
    parser.add_argument("--image-size", type=int, default=1024, help="film side in pixels")
    parser.add_argument("--release", help=f"release folder (default: {DEMO_RELEASE} if it exists, else a tiny one)")
    parser.add_argument("--study-complete-seconds", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--optimize", action="store_true")
    parser.add_argument("--keep-log", metavar="FILE", help="copy the node's log here")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "node.json"))
    args = parser.parse_args(argv)
    reason = missing_tools_reason()
    if reason:
        sys.exit(f"bench_node: {reason}")

    with tempfile.TemporaryDirectory(prefix="bench_node-") as scratch:
        scratch = Path(scratch)
        release = Path(args.release) if args.release else DEMO_RELEASE if DEMO_RELEASE.is_dir() else \
            tiny_release(scratch / "release")
        print(f"release {release}; writing {args.studies} phantom studies of {args.views} x {args.image_size} px ...")
        (scratch / "studies").mkdir()
        studies = {}
        for index in range(args.studies):
            uid, files = phantom_films(scratch / "studies", index, args.views, args.image_size)
            as_computed_radiography(files)
            studies[uid] = files
        instance_bytes = sum(path.stat().st_size for files in studies.values() for path in files)

        from app_harness import free_port

        node_port = free_port()
        with running_orthanc(scratch / "orthanc", node_port) as orthanc:
            node = Node(scratch / "node", release, orthanc.dicom_port, port=node_port,
                        study_complete_seconds=args.study_complete_seconds, batch_size=args.batch_size,
                        optimize=args.optimize, max_new_tokens=None, retry_first_seconds=1, retry_max_seconds=10)
            node.start(threads=None)
            try:
                acknowledged, failures = {}, []

                def send(item):
                    uid, files = item
                    result = storescu(node.port, files, timeout=600)
                    return uid, time.time(), sent_ok(result), result.stderr[-300:]

                started = time.time()
                with concurrent.futures.ThreadPoolExecutor(args.senders) as senders:
                    for uid, when, ok, error in senders.map(send, studies.items()):
                        acknowledged[uid] = when
                        if not ok:
                            failures.append(f"{uid}: {error}")
                sent_seconds = time.time() - started
                print(f"sent {len(studies)} studies ({instance_bytes / 2 ** 20:.0f} MiB) with {args.senders} "
                      f"storescu processes in {sent_seconds:.1f} s; {len(failures)} not acknowledged")

                answered = {}

                def poll():
                    now = time.time()
                    for uid in studies_with_sr(orthanc) - set(answered):
                        answered[uid] = now
                    return len(answered) == len(studies)

                try:
                    wait_for(poll, 60 + 10 * len(studies), "every study's SR", interval=0.2)
                except AssertionError as timeout:
                    print(f"bench_node: {timeout}: {len(answered)} of {len(studies)} answered", file=sys.stderr)
                finished = time.time()
                status = node.status()
                # every SR references every instance of its study: drafted once, after the last instance
                complete = 0
                for uid in answered:
                    srs = orthanc.srs(uid)
                    if len(srs) == 1:
                        sr = pydicom.dcmread(orthanc.instance_file(srs[0][0], scratch / "sr.dcm"))
                        referenced = {item.ReferencedSOPInstanceUID
                                      for series in sr.CurrentRequestedProcedureEvidenceSequence[0]
                                      .ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
                        complete += len(referenced) == args.views
            finally:
                node.stop()
            log = node.log_text()
            if args.keep_log:
                Path(args.keep_log).write_text(log)

    latencies = [answered[uid] - acknowledged[uid] for uid in answered]
    lost = sorted(set(studies) - set(answered))
    result = {
        "studies": len(studies), "instances": len(studies) * args.views, "views": args.views,
        "image_size": args.image_size, "instance_mib": round(instance_bytes / 2 ** 20, 1), "senders": args.senders,
        "release": str(release), "optimize": args.optimize, "batch_size": args.batch_size,
        "study_complete_seconds": args.study_complete_seconds,
        "not_acknowledged": len(failures), "answered": len(answered), "lost": len(lost),
        "drafted": status["studies"].get("drafted", 0), "refused": status["studies"].get("refused", 0),
        "srs_referencing_every_instance": complete, "outbox_left": len(status["outbox"]),
        "send_seconds": round(sent_seconds, 2),
        "throughput_studies_per_minute": round(60 * len(answered) / (finished - started), 1),
        "last_instance_to_sr_seconds": {
            "median": round(statistics.median(latencies), 2), "p90": round(percentile(latencies, 0.9), 2),
            "max": round(max(latencies), 2)} if latencies else None,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "drafted_log_lines": log.count(" drafted from "),
    }
    print(json.dumps(result, indent=1))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")
    ok = not failures and not lost and complete == len(studies) and not status["outbox"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

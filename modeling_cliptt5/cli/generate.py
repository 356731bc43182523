"""Draft chest X-ray reports (FINDINGS / IMPRESSION) from PNG, JPEG or DICOM files with a CLIP-T5 release.

Examples:
  cliptt5-generate --model path/to/release scans/*.png
  cliptt5-generate --model path/to/release study_folders/ --study-by folder --output drafts.jsonl
  cliptt5-generate --model path/to/release chest.dcm --optimize --labels

Inputs are files, folders (searched recursively for .png/.jpg/.jpeg/.dcm/.tif/.bmp and suffix-less DICOM files)
or glob patterns. How files become studies when the model reads several views (--study-by):
  folder  the files of one folder are the views of one study (study id: the folder name)
  prefix  files whose names agree up to the last "_" or "-" are one study ("s1_pa.png" + "s1_lat.png" -> "s1")
  none    every file is its own study (study id: the file name)
Within a study the frontal view comes first where the DICOM headers name the views (ViewPosition, else the View
Code Sequence: PA/AP before LL/lateral), else the files keep their name order and a warning says which one is
taken as the frontal; --frontal PATTERN names it by file name instead. A study with fewer views than the model
reads repeats its views; one with more keeps the first ones; both are reported as warnings. A file that cannot be read is reported on one line (FILE: REASON) and
skipped; the other studies are still drafted and written, and the exit code is 1. A DICOM object that is not a
projection radiograph (Modality other than CR, DX or RG, e.g. a CT slice; or several frames) is refused that way
unless --any-modality; a secondary capture, a DICOM without Modality or of another body part is drafted with a
warning.

Priors: a release that reads the patient's prior study (config reads_prior) drafts each study against the latest
study of the same patient dated before it among the inputs: patient and date from the DICOM headers (PatientID,
StudyDate/StudyTime), or for PNG/JPEG from --study-table (a CSV with the columns study, patient_id,
study_datetime and optionally report, that study's report, read when it is another study's prior). --prior and
--prior-report name the prior of a single study instead. A prior of another patient or not dated before the study
is refused (exit 2); a study without a prior is drafted as a first study, which states no comparison. A release
without priors warns and drafts without. The output's prior_id says which prior each draft read.

Outputs: the drafts are printed, or written (atomically) to --output: .jsonl (one JSON object per study) or
.csv, with id, input_files, report, findings (the FINDINGS section's text), impression, truncated (true when the
draft stopped at --max-new-tokens without ending: cut off, or caught in a loop), repeated_sentences (how many
sentences say again what the same section said before), seconds (the study's share of its batch's wall time)
and, with --labels, labels / uncertain_labels (approximate CheXpert observations from the rule labeler). A release
with a finding head adds finding_probabilities (each finding's probability), predicted_findings (those at or above
the release's threshold, which the draft follows) and disagreements (findings the head calls present that the draft
text does not state, or the reverse, read by the rule reader of the label set). A release with a summary of its training images adds ood_score (how unlike them the study is) and
ood_flag (beyond the 99th percentile of its validation studies; --refuse-ood skips such studies). The last line
counts the drafts, the flagged studies, the truncated drafts and those that repeat a sentence, then the failures.

Exit status: 0 when every study was drafted, 1 when some inputs failed (each named above), 2 when the command
itself is wrong (a bad option, no release at --model). These are drafts for a radiologist to check, not diagnoses.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from modeling_cliptt5.cli.arguments import ANY_MODALITY_HELP
from modeling_cliptt5.images.image_io import DEFAULT_MAX_PIXELS
from modeling_cliptt5.inference.draft_files import disagreement_text, write_outputs
from modeling_cliptt5.inference.drafting import (
    STUDY_GROUPINGS, TRUNCATED_WARNING, Study, collect_inputs, draft_reports, group_studies, load_release,
)

PROGRESS_AFTER = 5  # a bar is noise for a handful of studies


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--model", required=True, help="release folder or Hugging Face Hub id of a CLIP-T5 model")
    parser.add_argument("--output", type=Path, help="write drafts to this .jsonl or .csv file instead of printing")
    parser.add_argument("--study-by", choices=("auto",) + STUDY_GROUPINGS, default="auto",
                        help="how files group into studies (default: 'none' for a one-view model, 'folder' otherwise)")
    parser.add_argument("--frontal", metavar="PATTERN",
                        help="name each study's frontal image by its file name (fnmatch pattern, e.g. '*_pa.*' or "
                             "'*frontal*'): for PNG/JPEG studies, whose files carry no view; it also overrides the "
                             "headers, with a warning where a header names another view")
    parser.add_argument("--prior", nargs="+", metavar="PRIOR",
                        help="the prior study's images (files or a folder) for the one study given (a release that "
                             "reads priors)")
    parser.add_argument("--prior-report", type=Path, metavar="FILE",
                        help="a text file holding the prior study's report, for the one study given")
    parser.add_argument("--study-table", type=Path, metavar="CSV",
                        help="patient and date per study (columns study, patient_id, study_datetime, optional report) "
                             "for finding priors among PNG/JPEG studies; overrides the DICOM headers")
    parser.add_argument("--num-beams", type=int, help="beam search width (default: the release's generation config)")
    parser.add_argument("--max-new-tokens", type=int,
                        help="longest draft in tokens (default: the release's generation config, as on the page)")
    parser.add_argument("--batch-size", type=int, default=4, help="studies per forward pass (default: 4)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available, cpu with --optimize)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="weights' precision (default: float32; bfloat16 halves memory on a GPU)")
    parser.add_argument("--prompt", help="text prompt after the image tokens (default: the model's own, if any)")
    parser.add_argument("--optimize", action="store_true",
                        help="CPU fast path, int8 weights on ONNX Runtime, any decoding setting (the 'fast' extra; "
                             "exported once per release into ~/.cache/cliptt5/onnx or $CLIPT5_ONNX_CACHE)")
    parser.add_argument("--labels", action="store_true", help="add CheXpert observations found in each draft")
    parser.add_argument("--any-modality", action="store_true", help=ANY_MODALITY_HELP)
    parser.add_argument("--refuse-ood", action="store_true",
                        help="do not draft studies the release flags as unlike its training images (ood_flag: "
                             "beyond the 99th percentile of its validation studies); each is reported as a problem")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse larger images (decompression-bomb guard; default: {DEFAULT_MAX_PIXELS:,})")
    args = parser.parse_args(argv)
    if args.output and args.output.suffix.lower() not in (".jsonl", ".csv"):
        parser.error(f"--output must end in .jsonl or .csv, got {args.output}")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def resolve_device(name, optimize=False):
    import torch

    if name == "auto":
        # --optimize is the CPU path: "auto" then means the CPU even where a GPU is present.
        return "cuda" if torch.cuda.is_available() and not optimize else "cpu"
    return name


def open_release(model_name, device, dtype, optimize):
    """inference.load_release, its refusals (no such folder or reachable Hub id, not a CLIP-T5 release, --optimize
    off the CPU) as a one-line exit (status 2: what the command was given is wrong)."""
    try:
        return load_release(model_name, device, dtype, optimize)
    except ValueError as error:  # model_sources.ModelSourceError is one
        print(f"cliptt5-generate: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def fail(message):
    print(f"cliptt5-generate: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def attach_priors(args, studies, release, report_problem):
    """Each study's prior: named (--prior, --prior-report) for a single study, else found among the inputs (a
    release that reads priors). A named prior of another patient, or not earlier, ends the run (status 2)."""
    from modeling_cliptt5.inference.priors import StudyTableError, link_priors, prior_problem, read_study_table

    try:
        table = read_study_table(args.study_table) if args.study_table else None
    except StudyTableError as error:
        fail(str(error))
    if args.prior or args.prior_report:
        if len(studies) != 1:
            fail(f"--prior and --prior-report name the prior of one study; the inputs hold {len(studies)} studies "
                 "(find priors among them by DICOM headers or --study-table instead)")
        study = studies[0]
        if args.prior:
            prior_files, errors = collect_inputs(args.prior)
            for message in errors:
                report_problem(f"prior: {message}")
            if not prior_files:
                fail("--prior: no image files in " + " ".join(args.prior))
            study.prior = Study(Path(args.prior[0]).stem if len(args.prior) == 1 else "prior", prior_files)
            problem = prior_problem(study, study.prior, table)
            if problem:
                fail(problem)
        if args.prior_report:
            try:
                study.prior_report = args.prior_report.read_text(encoding="utf-8").strip() or None
            except (OSError, UnicodeDecodeError) as error:
                fail(f"--prior-report {args.prior_report}: cannot read it ({error})")
        if not release.config.reads_prior:
            tqdm.write("warning: this release does not read a prior study: --prior/--prior-report are ignored and "
                       "the study is drafted as a first study", file=sys.stderr)
            study.prior, study.prior_report = None, None
    elif release.config.reads_prior:
        link_priors(studies, table)


def generate_kwargs(args):
    """What the command line changes of the release's generation config (which decides the rest)."""
    kwargs = {}
    if args.max_new_tokens:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.num_beams:
        kwargs["num_beams"] = args.num_beams
    return kwargs


def print_draft(row, out):
    out(f"== {row['id']} ({', '.join(Path(name).name for name in row['input_files'])})")
    if row.get("ood_flag"):
        out(f"WARNING: unlike this model's training images (ood_score {row['ood_score']:.2f}): the draft may be "
            "meaningless")
    if row["truncated"]:
        out(f"WARNING: {TRUNCATED_WARNING}")
    if row["repeated_sentences"]:
        out(f"WARNING: {row['repeated_sentences']} sentence(s) of this draft repeat an earlier one")
    if row["findings"] is None and row["impression"] is None:
        out(row["report"] or "(empty draft)")
    else:
        out(f"FINDINGS: {row['findings'] or ''}")
        out(f"IMPRESSION: {row['impression'] or ''}")
    if "labels" in row:
        out(f"LABELS: {', '.join(row['labels']) or 'none'}"
            + (f" (uncertain: {', '.join(row['uncertain_labels'])})" if row["uncertain_labels"] else ""))
    if "predicted_findings" in row:
        probabilities = row["finding_probabilities"]
        out("HEAD: " + (", ".join(f"{name} {probabilities[name]:.2f}" for name in row["predicted_findings"]) or "none"))
        if row["disagreements"]:
            out("DISAGREES: " + "; ".join(disagreement_text(item) for item in row["disagreements"]))
    out("")


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    problems = []

    def report_problem(message):
        problems.append(message)
        tqdm.write(f"error: {message}", file=sys.stderr)

    files, input_errors = collect_inputs(args.inputs)
    for message in input_errors:
        report_problem(message)
    if not files:
        print("error: no image files to draft reports for", file=sys.stderr)
        return 1

    device = resolve_device(args.device, args.optimize)
    release = open_release(args.model, device, args.dtype, args.optimize)
    num_views = release.config.num_views
    if release.ood_summary is None:
        print("note: this release has no summary of its training images (ood_summary.safetensors): studies unlike "
              "them cannot be flagged", file=sys.stderr)
    study_by = args.study_by if args.study_by != "auto" else ("none" if num_views == 1 else "folder")
    studies = group_studies(files, study_by)
    attach_priors(args, studies, release, report_problem)
    prompt = args.prompt if args.prompt is not None else release.config.prompt

    rows, failed = [], 0
    with tqdm(total=len(studies), unit="study", disable=len(studies) <= PROGRESS_AFTER, file=sys.stderr) as bar:
        with warnings.catch_warnings():
            # Our own notes (e.g. "multi-frame DICOM: using the first frame") as one line each; library
            # deprecation chatter is not the user's business here.
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("always", module="modeling_cliptt5")
            warnings.showwarning = lambda message, *_, **__: tqdm.write(f"warning: {message}", file=sys.stderr)
            drafts = draft_reports(
                release, studies, batch_size=args.batch_size, prompt=prompt,
                generate_kwargs=generate_kwargs(args), max_pixels=args.max_pixels,
                on_error=report_problem, on_warning=lambda message: tqdm.write(f"warning: {message}", file=sys.stderr),
                any_modality=args.any_modality, refuse_ood=args.refuse_ood, frontal=args.frontal,
            )
            for draft in drafts:
                bar.update(1)
                if draft.error:
                    failed += 1
                    continue
                row = draft.row(args.labels)
                rows.append(row)
                if not args.output:
                    print_draft(row, tqdm.write)

    if args.output:
        write_outputs(args.output, rows, args.labels)
    print(run_summary(rows, len(studies), len(files), time.perf_counter() - started,
                      f"{num_views} view(s) per study, grouped by {study_by}, device {device}"
                      f"{', ' + release.engine.name if args.optimize else ''}", args.output, failed, len(problems)),
          file=sys.stderr)
    return 1 if problems or failed else 0


def run_summary(rows, studies, files, seconds, how, output, failed, problems):
    """The run's last line: what was drafted, and what of it a reader must look at twice (studies unlike the
    training images, drafts that stopped at the token limit), then failures and problems."""
    flagged = sum(bool(row.get("ood_flag")) for row in rows)
    truncated = sum(row["truncated"] for row in rows)
    repeating = sum(row["repeated_sentences"] > 0 for row in rows)
    where = f", written to {output}" if output else ""
    return (f"{len(rows)} of {studies} studies drafted from {files} files in {seconds:.1f} s ({how}){where}; "
            f"{flagged} flagged as unlike the training images (ood_flag), {truncated} stopped at the token limit "
            f"(truncated), {repeating} repeat a sentence (repeated_sentences); {failed} studies failed, "
            f"{problems} problems")


if __name__ == "__main__":
    sys.exit(main())

"""Draft chest X-ray reports (FINDINGS / IMPRESSION) from PNG, JPEG or DICOM files with a CLIP-T5 release.

Examples:
  cliptt5-generate --model path/to/release scans/*.png
  cliptt5-generate --model path/to/release study_folders/ --study-by folder --output drafts.jsonl
  cliptt5-generate --model path/to/release chest.dcm --optimize --labels
  cliptt5-generate --model path/to/release --dataset data/converted --split test --output drafts.csv

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

Inputs can also be one split of a converted dataset (--dataset FOLDER --split test: a folder cliptt5-convert-* or
cliptt5-make-demo-data wrote): one study per row, its images as the views, its prior_id as the prior (its report as
the prior report) for a release that reads priors. Its images are read one study at a time.

Outputs: the drafts are printed, or written (atomically) to --output: .jsonl (one JSON object per study) or
.csv, with id, status (drafted; refused: a DICOM object that is not a radiograph, a study --refuse-ood keeps back;
failed: no file of the study could be read, or the model failed on its batch), reason (why it was refused or
failed, "" for a draft), input_files, report, findings (the FINDINGS section's text), impression, truncated (true
when the draft stopped at --max-new-tokens without ending: cut off, or caught in a loop), repeated_sentences (how many
sentences say again what the same section said before), seconds (the study's share of its batch's wall time)
and, with --labels, labels / uncertain_labels (approximate CheXpert observations from the rule labeler). A release
with a finding head adds finding_probabilities (each finding's probability), predicted_findings (those at or above
the release's threshold, which the draft follows) and disagreements (findings the head calls present that the draft
text does not state, or the reverse, read by the rule reader of the label set). A release with a summary of its training images adds ood_score (how unlike them the study is) and
ood_flag (beyond the 99th percentile of its validation studies; --refuse-ood refuses such studies). Every study
has a record, drafted or not, in input order. The last line counts the drafts, the flagged studies, the truncated
drafts and those that repeat a sentence, then the refused and failed studies and, with --output, how many records
this run wrote and how many an earlier, interrupted run had.

Archives, several processes, resume: with --output, each finished study is appended at once to a journal beside it,
a hidden folder (drafts.jsonl -> .drafts.jsonl.parts/, one rank-N.jsonl per process and manifest.json, what the run
is). When every study is recorded the output is written in input order and the folder removed. An interrupted run
(killed, out of power) resumes when the same command runs again: it says "resuming: K of N studies already done"
and drafts the rest; a study whose line a kill tore is drafted again. A rerun with other settings (another release,
--max-new-tokens, other inputs...) stops, naming what differs: run it with the recorded settings, or add --restart
(or delete the folder) to start over. Several processes share the studies (each drafts every N-th one not yet
recorded; one per GPU, or CPU processes with one thread per core each) when accelerate starts them:
  accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
      -m modeling_cliptt5.cli.generate --model R archive/ --output drafts.jsonl
(`-m modeling_cliptt5.cli.generate`, or the path of the cliptt5-generate script; `--multi_gpu` on a CPU-only
machine too: `--cpu` starts only one process. --device cpu or --optimize puts the processes on the CPU.) A rerun may
use another number of processes.

Exit status: 0 when every study was drafted, 1 when some inputs were refused or failed (each named above), 2 when
the command itself is wrong (a bad option, no release at --model, a journal of other settings). These are drafts
for a radiologist to check, not diagnoses.
"""

import argparse
import contextlib
import sys
import time
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from modeling_cliptt5.cli.arguments import ANY_MODALITY_HELP
from modeling_cliptt5.images.image_io import DEFAULT_MAX_PIXELS
from modeling_cliptt5.inference.archive import (
    ArchiveRun, RunInProgress, SettingsChanged, current_processes, dataset_studies, run_manifest, share_cpu_threads,
)
from modeling_cliptt5.inference.draft_files import disagreement_text, output_columns, write_outputs
from modeling_cliptt5.inference.drafting import (
    STUDY_GROUPINGS, TRUNCATED_WARNING, Study, collect_inputs, draft_reports, group_studies, load_release,
)

PROGRESS_AFTER = 5  # a bar is noise for a handful of studies


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--dataset", type=Path, metavar="FOLDER",
                        help="draft one split of a converted dataset (a datasets folder in this package's schema) "
                             "instead of files")
    parser.add_argument("--split", default="test", help="the --dataset split to draft (default: test)")
    parser.add_argument("--model", required=True, help="release folder or Hugging Face Hub id of a CLIP-T5 model")
    parser.add_argument("--output", type=Path,
                        help="write a record per study to this .jsonl or .csv file instead of printing (journaled "
                             "beside it in .NAME.parts/ while the run lasts: a rerun resumes)")
    parser.add_argument("--restart", action="store_true",
                        help="with --output: forget an unfinished run's journal and draft every study again")
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
    if bool(args.inputs) == bool(args.dataset):
        parser.error("give image files, folders or patterns, or --dataset FOLDER (not both)")
    if args.dataset and (args.prior or args.prior_report or args.study_table):
        parser.error("--dataset links each study's prior itself (its prior_id): --prior, --prior-report and "
                     "--study-table are for files")
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


def fail(message, say=True):
    """Ends the command with status 2 (`say`: print the one-line reason; in one process of several only)."""
    if say:
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


def run_settings(args, prompt, study_by):
    """What changes a record, as the journal's manifest keeps it (a rerun with other settings cannot resume)."""
    return {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "prompt": prompt,
            "dtype": args.dtype, "optimize": args.optimize, "labels": args.labels, "any_modality": args.any_modality,
            "refuse_ood": args.refuse_ood, "frontal": args.frontal, "max_pixels": args.max_pixels,
            "study_by": study_by}


class Tally:
    """What the last line counts, row by row (the rows themselves are not kept)."""

    def __init__(self):
        self.statuses = {"drafted": 0, "refused": 0, "failed": 0}
        self.flagged = self.truncated = self.repeating = 0

    def add(self, row):
        self.statuses[row["status"]] += 1
        if row["status"] == "drafted":
            self.flagged += bool(row.get("ood_flag"))
            self.truncated += bool(row["truncated"])
            self.repeating += row["repeated_sentences"] > 0


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    device = resolve_device(args.device, args.optimize)
    processes = current_processes(cpu=device == "cpu")
    try:
        return run(args, device, processes, started)
    finally:
        processes.close()


def run(args, device, processes, started):
    main_process = processes.is_main
    problems = []

    def report_problem(message):
        problems.append(message)
        tqdm.write(f"error: {message}", file=sys.stderr)

    def say(message):  # about the whole run: once, from the main process
        if main_process:
            tqdm.write(message, file=sys.stderr)

    if processes.count > 1 and not args.output:
        fail("several processes need --output (each appends its studies to a journal beside it)", main_process)
    if processes.device and device.startswith("cuda"):
        device = processes.device  # one GPU per process
    threads = share_cpu_threads(processes) if device == "cpu" else None

    files = []
    if not args.dataset:
        files, input_errors = collect_inputs(args.inputs)
        for message in input_errors:
            if main_process:
                report_problem(message)
        if not files:
            say("error: no image files to draft reports for")
            return 1

    with processes.main_first() if args.optimize else contextlib.nullcontext():  # one ONNX export, not one each
        release = open_release(args.model, device, args.dtype, args.optimize)
    num_views = release.config.num_views
    if release.ood_summary is None:
        say("note: this release has no summary of its training images (ood_summary.safetensors): studies unlike "
            "them cannot be flagged")
    study_by = args.study_by if args.study_by != "auto" else ("none" if num_views == 1 else "folder")
    if args.dataset:
        try:
            studies = dataset_studies(args.dataset, args.split, with_priors=release.config.reads_prior)
        except (ValueError, FileNotFoundError) as error:
            fail(str(error), main_process)
        source, study_by = f"the {args.split} split of {args.dataset}", "dataset row"
    else:
        studies = group_studies(files, study_by)
        attach_priors(args, studies, release, report_problem)
        source = f"{len(files)} files"
    prompt = args.prompt if args.prompt is not None else release.config.prompt

    def drafts_of(share):
        return draft_reports(
            release, share, batch_size=args.batch_size, prompt=prompt, generate_kwargs=generate_kwargs(args),
            max_pixels=args.max_pixels, on_error=report_problem,
            on_warning=lambda message: tqdm.write(f"warning: {message}", file=sys.stderr),
            any_modality=args.any_modality, refuse_ood=args.refuse_ood, frontal=args.frontal,
        )

    tally = Tally()
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        # Our own notes (e.g. "multi-frame DICOM: using the first frame") as one line each; library
        # deprecation chatter is not the user's business here.
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("always", module="modeling_cliptt5")
        warnings.showwarning = lambda message, *_, **__: tqdm.write(f"warning: {message}", file=sys.stderr)
        if not args.output:
            with progress(len(studies), main_process) as bar:
                for draft in drafts_of(studies):
                    bar.update(1)
                    row = draft.row(args.labels)
                    tally.add(row)
                    if draft.error is None:
                        print_draft(row, tqdm.write)
            written = None
        else:
            archive = stack.enter_context(ArchiveRun(args.output, processes))
            manifest = run_manifest(release.identity, run_settings(args, prompt, study_by), studies)
            share = start_archive(archive, studies, manifest, args.restart, say)
            if processes.count > 1:
                tqdm.write(f"process {processes.index + 1} of {processes.count}: {len(share)} studies to draft"
                           + (f", {threads} CPU thread(s)" if threads else f" on {device}"), file=sys.stderr)
            with archive.writer() as journal, progress(len(share), main_process) as bar:
                for count, draft in enumerate(drafts_of(share), start=1):
                    journal.append(draft.row(args.labels))  # at once: a kill loses no finished study
                    if count % args.batch_size == 0:
                        journal.sync()
                    bar.update(1)
        problem_count = processes.total(len(problems))
        if args.output:
            def write(rows, keys):
                write_outputs(args.output, rows, args.labels, output_columns(keys, args.labels))

            written = archive.finish(studies, write, tally.add)
            if not main_process:
                return 0  # the main process reports the run and gives its exit status
    how = (f"{num_views} view(s) per study, grouped by {study_by}, device {device}"
           f"{', ' + release.engine.name if args.optimize else ''}"
           + (f", {processes.count} processes of {threads or 1} thread(s)" if processes.count > 1 else ""))
    print(run_summary(tally, len(studies), source, time.perf_counter() - started, how, args.output, problem_count,
                      written, archive.earlier if args.output else 0), file=sys.stderr)
    return 1 if problem_count or tally.statuses["refused"] or tally.statuses["failed"] else 0


def start_archive(archive, studies, manifest, restart, say):
    """This process's share of the studies the journal does not hold yet, saying what an earlier run left; a journal
    of other settings or one another run holds ends the command (status 2)."""
    try:
        share = archive.start(studies, manifest, restart=restart)
    except (SettingsChanged, RunInProgress) as error:
        fail(str(error), archive.processes.is_main)
    if archive.earlier:
        say(f"resuming: {archive.earlier} of {len(studies)} studies already done (journal {archive.journal.folder})")
    if archive.dropped:
        say(f"journal: {archive.dropped} torn or damaged line(s) dropped: those studies are drafted again")
    return share


def progress(total, main_process):
    """A bar on the main process's share (one bar: several would overwrite each other's line)."""
    return tqdm(total=total, unit="study", disable=total <= PROGRESS_AFTER or not main_process, file=sys.stderr)


def run_summary(tally, studies, source, seconds, how, output, problems, written=None, earlier=0):
    """The run's last line: what was drafted, and what of it a reader must look at twice (studies unlike the
    training images, drafts that stopped at the token limit), then refusals, failures and problems, and with an
    output, how many of its records this run wrote and how many an earlier run had."""
    where = f", written to {output}" if output else ""
    line = (f"{tally.statuses['drafted']} of {studies} studies drafted from {source} in {seconds:.1f} s ({how})"
            f"{where}; {tally.flagged} flagged as unlike the training images (ood_flag), {tally.truncated} stopped at "
            f"the token limit (truncated), {tally.repeating} repeat a sentence (repeated_sentences); "
            f"{tally.statuses['refused']} studies refused, {tally.statuses['failed']} failed, {problems} problems")
    if written is not None:
        line += f"; {written} records written by this run, {earlier} by an earlier run"
    return line


if __name__ == "__main__":
    sys.exit(main())

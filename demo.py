"""The main job end to end on the built-in synthetic chest phantoms: what `make demo` runs.

1. draws the phantom dataset (train/validation/test, PNG images with paired reports and truth labels);
2. trains a small CLIP-T5 from scratch with `accelerate launch train.py`, in the package's two stages: the image
   tower learns contrastively from image-report pairs (configs/demo_contrastive.yaml), then CLIP-T5 learns to
   write the reports from that tower (configs/demo.yaml);
3. the run keeps the best checkpoint as a release folder with its model card (<output-dir>/best);
4. loads the release back with AutoModelForSeq2SeqLM + AutoProcessor (inference.load_release, as generate.py and
   the page load it) and drafts reports
   for the test split and for a few example studies written as PNG and as DICOM files;
5. prints a results table: findings against the generator's truth (per finding with its side, macro F1), the
   clinical labeler's micro/macro F1, BLEU-4 and ROUGE-L, for the model, a constant report and the report of the
   nearest training image;
6. writes a figure: training/validation curves and test images with drafted and true reports.

    python demo.py                                   # what `make demo` runs (about 30 minutes on 2 CPU cores)
    python demo.py --contrastive-steps 10 --max-steps 30 --studies 300   # a quick look (what the tests run)

Everything lands in --output-dir (default demo_output): data/, best/ (the release), examples/, metrics.jsonl,
results.json, results.txt and demo_results.png. The images are synthetic: no patient data, not a medical device.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
CONTRASTIVE_CONFIG = REPO_ROOT / "configs" / "demo_contrastive.yaml"
CPU_TWO_PROCESSES = REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
SYSTEMS = ("model", "constant report", "nearest-neighbour image")
GUIDED_BY_TRUTH = "model, true findings"  # the model's decoder guided by the true findings instead of its head
WITHOUT_PRIOR = "model without the prior"  # the ablation: the same stage 2 (data, steps) without reading priors
# The findings whose presence the drafts state reliably: their change statements are the measure of reading the prior
CHANGE_FINDINGS = ("pleural_effusion", "pneumothorax", "cardiomegaly", "consolidation", "support_device")
NEAREST_NEIGHBOUR_SIZE = 32  # px: images are compared as 32x32 grey levels


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output", help="where everything is written (default: %(default)s)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="training settings (default: configs/demo.yaml)")
    parser.add_argument("--studies", type=int, default=None,
                        help="phantom studies to draw, split 80/10/10 (default: the config's phantom_studies)")
    parser.add_argument("--contrastive-config", default=str(CONTRASTIVE_CONFIG),
                        help="stage-1 settings (default: configs/demo_contrastive.yaml)")
    parser.add_argument("--contrastive-steps", type=int, default=None,
                        help="stage-1 optimizer steps (default: the stage-1 config's; 0 skips stage 1)")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="stage-2 optimizer steps (default: the config's epochs)")
    parser.add_argument("--processes", type=int, choices=(1, 2), default=2,
                        help="training processes (DDP on the CPU; default 2: 1.9x faster than 1 process on 2 cores, "
                             "benchmarks/bench_demo_processes.py)")
    parser.add_argument("--examples", type=int, default=4, help="test studies shown in the figure (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default: 0)")
    parser.add_argument("--no-ablation", action="store_true",
                        help="skip the ablation: stage 2 trained again without reading the prior (same data and "
                             "steps), whose change statements and invented comparisons are printed beside the model's")
    parser.add_argument("--finding-labels", default=None,
                        help="the finding head's label set for both stages (default: the configs', phantom); "
                             "'none' trains without the head (the ablation in the README)")
    return parser.parse_args(argv)


# --- 1. data ------------------------------------------------------------------------------------------------------

def make_data(folder, studies, image_size, seed, max_studies_per_patient, held_out_share):
    """Draws the phantom dataset once; a folder left by an earlier run with the same settings is reused."""
    from modeling_cliptt5.data.sources import draw_phantoms_once

    print(f"[1/6] the synthetic phantom dataset ({studies} studies, {image_size} px, 1 to {max_studies_per_patient} "
          f"per patient, {held_out_share:.0%} of the patients for each of validation and test) in {folder}")
    if draw_phantoms_once(str(folder), studies, seed=seed, image_size=image_size,
                          max_studies_per_patient=max_studies_per_patient, held_out_share=held_out_share):
        print("  reused: drawn by an earlier run with the same settings")


# --- 2-3. training and release --------------------------------------------------------------------------------------

def launch_command(processes):
    """`accelerate launch` on this CPU with 1 or 2 processes: (command prefix, environment)."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    env = dict(os.environ)
    if processes == 2:  # `--cpu --num_processes 2` would silently start one process: see the config's comment
        command += ["--config_file", str(CPU_TWO_PROCESSES)]
        env["ACCELERATE_USE_CPU"] = "1"
    else:
        command += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return command, env


def demo_open_clip_config(tokenizer_dir, vocab_size):
    """Stage 1's open_clip model: the demo's ViT (registered with timm by modeling_cliptt5.training.contrastive) and a
    1-layer text transformer over the report tokenizer that stage 2 uses too. The tokenizer's ~700 words keep the
    text side cheap; open_clip's own 49k-word tokenizer made the text tower 4x the image tower's cost (measured).
    The text side is still most of a step: 80 tokens (99% of the phantom reports fit) and 64 wide instead of 128
    and 128 made a step 0.127 -> 0.039 s (batch 32, 1 thread); 1,600 such steps in about the time of 800 raised
    stage 1's validation mean recall 0.12 -> 0.31 (measured)."""
    from modeling_cliptt5.training.clip_t5_builder import DEMO_VIT

    return {
        "embed_dim": 128,
        "vision_cfg": {"timm_model_name": DEMO_VIT, "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 64},
        "text_cfg": {"hf_tokenizer_name": str(tokenizer_dir), "vocab_size": vocab_size, "context_length": 80,
                     "width": 64, "heads": 2, "layers": 1, "pad_id": 0, "eos_id": 1, "pool_type": "eos"},
    }


def prepare_stage1(data_dir, output_dir, stage2_config):
    """Trains the report tokenizer where stage 2 looks for it (<output_dir>/tokenizer) and writes the open_clip
    model config that names it; returns the config folder."""
    from modeling_cliptt5.data.schema import load_report_dataset
    from modeling_cliptt5.training.tokenizer import train_report_tokenizer
    from modeling_cliptt5.data.atomic_writes import atomic_folder

    tokenizer_dir = output_dir / "tokenizer"
    vocab_size = stage2_config.get("tokenizer_vocab_size", 1000)  # the tokenizer's upper bound: enough embedding rows
    if not tokenizer_dir.is_dir():
        reports = load_report_dataset(str(data_dir))["train"][stage2_config.get("report_column", "report")]
        tokenizer = train_report_tokenizer(reports, vocab_size=vocab_size)
        with atomic_folder(str(tokenizer_dir)) as staging:
            tokenizer.save_pretrained(staging)
    config_dir = output_dir / "open_clip"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "cliptt5-demo.json").write_text(json.dumps(demo_open_clip_config(tokenizer_dir, vocab_size),
                                                             indent=1))
    return config_dir


def train(args, config, data_dir, output_dir, *extra, label="[2/6] training"):
    """`accelerate launch train.py` in a child process, as a user would type it; returns its wall time."""
    command, env = launch_command(args.processes)
    command += [str(REPO_ROOT / "train.py"), "--config", str(config), "--dataset", str(data_dir),
                "--output_dir", str(output_dir), "--seed", str(args.seed), *extra]
    print(f"{label}: {' '.join(command[2:])}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - started


# --- 4. drafting with the release -----------------------------------------------------------------------------------

def first_views(rows):
    """The first view of each study as a PIL image (`datasets` decodes the image column)."""
    return [images[0] for images in rows["images"]]


def prior_of(rows):
    """Per row, the row index of its prior among the rows (a patient's studies share a split), or None."""
    from modeling_cliptt5.training.data import prior_rows

    return prior_rows(rows)


def draft_split(release, rows, batch_size=64, max_new_tokens=128, findings=None, desc="drafting the test split"):
    """Drafts of the rows' first views (inference.draft_batch), each against its prior (first view and report) when
    the release reads one; `findings`, one label list per row (the truth), guide the drafts instead of the finding
    head, and then also replace the heads' decisions on the prior: the prior's findings, and with a change head each
    finding's change where the row's change labels give one (the rest is left to the heads)."""
    from tqdm.auto import tqdm

    from modeling_cliptt5.evaluation.changes import change_targets_from_label_lists, is_change_label
    from modeling_cliptt5.inference.drafting import draft_batch

    def present(labels):
        return [label for label in labels if not is_change_label(label)]

    config = release.config
    priors = prior_of(rows) if config.reads_prior else [None] * len(rows)
    drafts = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch"):
        end = start + batch_size
        images = first_views(rows[start:end])
        given = None if findings is None else [present(labels) for labels in findings[start:end]]
        batch_priors = [None if index is None else (rows[index]["images"][0], rows[index]["report"])
                        for index in priors[start:end]]
        settings = {"max_new_tokens": max_new_tokens, "num_beams": 1}
        if findings is not None and any(prior is not None for prior in batch_priors):
            # {} for a study without a prior: nothing to override there
            settings["prior_findings"] = [{} if index is None else present(findings[index])
                                          for index in priors[start:end]]
            if config.change_head:
                settings["prior_changes"] = change_targets_from_label_lists(findings[start:end],
                                                                            config.finding_labels, ignore=-1)
        drafts += draft_batch(release, images, None, settings, given, priors=batch_priors)
    return drafts


def head_scores(drafts, truth_labels, names, thresholds):
    """The finding head alone on the test split: AUROC and F1 at the release's thresholds per finding."""
    import numpy as np

    from modeling_cliptt5.evaluation.findings import score_head

    probabilities = np.array([[draft.finding_probabilities[name] for name in names] for draft in drafts])
    truth = np.array([[float(name in labels) for name in names] for labels in truth_labels])
    return score_head(probabilities, truth, names, thresholds)


def change_head_scores(release, rows, batch_size=128):
    """The change head alone on the rows' follow-ups: for each finding in both studies that carries a change label,
    precision, recall and F1 of decreased / unchanged / increased (first views, as the drafts read them)."""
    import torch

    from modeling_cliptt5.evaluation.changes import SIZE_CHANGES, change_targets_from_label_lists
    from modeling_cliptt5.evaluation.labeler import precision_recall_f1

    model, processor = release.model, release.processor
    priors = prior_of(rows)
    follow_ups = [index for index, prior in enumerate(priors) if prior is not None]
    targets = change_targets_from_label_lists([rows[index]["labels"] for index in follow_ups],
                                              model.config.finding_labels)
    predicted = []
    with torch.inference_mode():
        for start in range(0, len(follow_ups), batch_size):
            part = follow_ups[start:start + batch_size]
            current, prior = (processor(images=[rows[index]["images"][0] for index in indices])["pixel_values"]
                              for indices in (part, [priors[index] for index in part]))
            predicted.append(model.change_logits(model.get_vision_features(current.to(model.device)),
                                                 model.get_vision_features(prior.to(model.device))).argmax(-1).cpu())
    predicted, known = torch.cat(predicted), targets >= 0
    return {change: {**precision_recall_f1(int(((predicted == label) & (targets == label)).sum()),
                                           int(((predicted == label) & known).sum()), int((targets == label).sum())),
                     "support": int((targets == label).sum())}
            for change, label in SIZE_CHANGES.items()}


def guidance_followed(drafts):
    """Share of drafts whose text states exactly the findings they were guided by (read back by the phantom reader):
    how faithfully the decoder writes what the guidance says."""
    from modeling_cliptt5.data.phantom import labels_from_report

    return sum(set(labels_from_report(draft.report)) == set(draft.guidance) for draft in drafts) / len(drafts)


def write_example_files(rows, folder):
    """The first test studies as files a user would have: PNG, and DICOM (MONOCHROME2, 8 bit, DX)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (study, image) in enumerate(zip(rows["id"], first_views(rows))):
        path = folder / (f"{study}.png" if index % 2 == 0 else f"{study}.dcm")
        if path.suffix == ".png":
            image.save(path)
        else:
            write_dicom(image, path)
        paths.append(path)
    return paths


def write_dicom(image, path):
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(image.convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.PatientName, dataset.PatientID = "DX", "PHANTOM^SYNTHETIC", path.stem
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)


def draft_files(release, paths):
    """The files through the same functions generate.py uses (DICOM decoding included)."""
    from modeling_cliptt5.inference.drafting import draft_reports, group_studies

    studies = group_studies(paths, "none")
    drafted = list(draft_reports(release, studies, batch_size=len(studies),
                                 generate_kwargs={"max_new_tokens": 128}))
    failed = [f"{report.study_id}: {report.error}" for report in drafted if report.error]
    if failed:
        raise RuntimeError("drafting the example files failed: " + "; ".join(failed))
    return {report.files[0].name: report.report for report in drafted}


# --- 5. scores -------------------------------------------------------------------------------------------------------

def constant_report(train_rows):
    """The constant-report baseline's text: the most frequent training report of the most frequent finding set.

    Phantom reports vary their wording study by study, so most texts occur once and "the most frequent report"
    would be an arbitrary one; this picks, as in real data, a normal study's report.
    """
    import collections

    label_sets = [tuple(sorted(labels)) for labels in train_rows["labels"]]
    commonest = collections.Counter(label_sets).most_common(1)[0][0]
    reports = [report for report, labels in zip(train_rows["report"], label_sets) if labels == commonest]
    return collections.Counter(reports).most_common(1)[0][0]


def nearest_neighbour_reports(train_rows, test_rows):
    """For each test image, the report of the training image closest in grey levels (32x32, each image standardised)."""
    import numpy as np

    def vectors(rows):
        stacked = np.stack([np.asarray(image.convert("L").resize((NEAREST_NEIGHBOUR_SIZE,) * 2), dtype=np.float32)
                            .ravel() for image in first_views(rows)])
        stacked -= stacked.mean(axis=1, keepdims=True)
        return stacked / (np.linalg.norm(stacked, axis=1, keepdims=True) + 1e-6)

    nearest = (vectors(test_rows) @ vectors(train_rows).T).argmax(axis=1)
    reports = list(train_rows["report"])
    return [reports[int(index)] for index in nearest]


def finding_scores(reports, truth_labels):
    """Findings read from each report (phantom.labels_from_report) against the generator's truth labels."""
    from modeling_cliptt5.evaluation.labeler import clinical_efficacy_from_vectors
    from modeling_cliptt5.data.phantom import PHANTOM_LABELS, labels_from_report

    read_back = [labels_from_report(report) for report in reports]
    predicted = [[label in labels for label in PHANTOM_LABELS] for labels in read_back]
    truth = [[label in labels for label in PHANTOM_LABELS] for labels in truth_labels]
    scores = clinical_efficacy_from_vectors(predicted, truth, PHANTOM_LABELS)
    for index, label in enumerate(PHANTOM_LABELS):
        right = sum(p[index] == t[index] for p, t in zip(predicted, truth))
        scores["per_observation"][label]["accuracy"] = right / len(truth)
    return scores


def change_results(systems, truth_labels, has_prior):
    """Per system: its change statements on the studies with a prior against their change labels
    (evaluation.changes, macro F1 over CHANGE_FINDINGS), and its invented comparisons on the studies without."""
    from modeling_cliptt5.evaluation.changes import change_scores
    from modeling_cliptt5.evaluation.comparisons import invented_comparison_rate

    follow_ups = [index for index, prior in enumerate(has_prior) if prior]
    truth = [truth_labels[index] for index in follow_ups]
    return {name: {"changes": change_scores(truth, [reports[index] for index in follow_ups], CHANGE_FINDINGS),
                   "invented_on_first_studies": invented_comparison_rate(reports, has_prior)}
            for name, reports in systems.items()}


def change_table(changes, follow_ups, first_studies):
    """Change statements per system: F1 per change over CHANGE_FINDINGS, the macro F1, invented comparisons."""
    from modeling_cliptt5.evaluation.changes import CHANGES, format_change_table

    columns = "  ".join(f"{name[:23]:>23}" for name in changes)
    lines = [f"Change statements on the {follow_ups} test studies with a prior, against the generator's change "
             f"labels (F1; findings: {', '.join(CHANGE_FINDINGS)})", f"{'':<33}  {columns}"]
    for change in CHANGES:
        cells = []
        for result in changes.values():
            scores = result["changes"]["per_change"][change]
            cells.append(f"{scores['f1']:>23.3f}" if scores["support"] or scores["predicted"] else f"{'-':>23}")
        lines.append(f"{change:<33}  " + "  ".join(cells))
    lines.append(f"{'change macro F1':<33}  " + "  ".join(
        f"{result['changes']['macro_f1'] or 0.0:>23.3f}" for result in changes.values()))
    lines.append(f"{f'invented comparisons, {first_studies} first':<33}  " + "  ".join(
        f"{result['invented_on_first_studies'] or 0.0:>23.3f}" for result in changes.values()))
    lines.append("invented comparisons: share of drafts of studies without a prior that compare all the same "
                 "(modeling_cliptt5.evaluation.comparisons)")
    lines.append("")
    lines.append("The model's change statements per finding (F1, true statements):")
    lines.append(format_change_table(changes["model"]["changes"]))
    return "\n".join(lines)


def score_systems(systems, references, truth_labels, has_prior=None):
    from modeling_cliptt5.evaluation.comparisons import invented_comparison_rate
    from modeling_cliptt5.evaluation.labeler import clinical_efficacy
    from modeling_cliptt5.evaluation.metrics import score_reports

    results = {}
    for name, reports in systems.items():
        language = score_reports(reports, references, metrics=("BLEU-4", "ROUGE-L"))  # no METEOR: no Java start
        labeler = clinical_efficacy(reports, references)
        results[name] = {"findings": finding_scores(reports, truth_labels),
                         "labeler_micro_f1": labeler["micro"]["f1"], "labeler_macro_f1": labeler["macro"]["f1"],
                         "BLEU-4": language["BLEU-4"], "ROUGE-L": language["ROUGE-L"],
                         "invented_comparisons": invented_comparison_rate(reports, has_prior) or 0.0}
    return results


def finding_cell(scores):
    """'accuracy / F1'; F1 is undefined ('-') for a finding that neither the truth nor the report has."""
    f1 = f"{scores['f1']:.2f}" if scores["support"] or scores["predicted"] else "-"
    return f"{scores['accuracy']:.3f} / {f1:>4}"


def results_table(results, test_count, head=None):
    from modeling_cliptt5.data.phantom import PHANTOM_LABELS

    columns = "  ".join(f"{name[:23]:>23}" for name in results)
    head_column = f"  {'finding head F1 / AUROC':>23}" if head else ""
    lines = [f"Findings on the {test_count} test studies against the phantom generator's truth (accuracy / F1)",
             f"{'finding':<24}{'positives':>9}  {columns}{head_column}"]
    for label in PHANTOM_LABELS:
        support = results["model"]["findings"]["per_observation"][label]["support"]
        cells = "  ".join(f"{finding_cell(s['findings']['per_observation'][label]):>23}" for s in results.values())
        if head:
            scores = head["per_finding"][label]
            cells += f"  {scores['f1']:>14.2f} / {scores['auroc'] or float('nan'):.3f}"
        lines.append(f"{label:<24}{support:>9}  {cells}")
    lines.append("")
    lines.append(f"{'':<33}  {columns}")
    rows = [("findings macro F1", lambda s: s["findings"]["macro"]["f1"]),
            ("findings micro F1", lambda s: s["findings"]["micro"]["f1"]),
            ("labeler micro F1", lambda s: s["labeler_micro_f1"]),
            ("labeler macro F1", lambda s: s["labeler_macro_f1"]),
            ("BLEU-4", lambda s: s["BLEU-4"]), ("ROUGE-L", lambda s: s["ROUGE-L"]),
            ("invented comparisons (share)", lambda s: s["invented_comparisons"])]
    for title, value in rows:
        lines.append(f"{title:<33}  " + "  ".join(f"{value(s):>23.3f}" for s in results.values()))
    if head:
        lines.append(f"{'finding head alone':<33}  macro F1 {head['macro_f1']:.3f}, macro AUROC "
                     f"{head['macro_auroc']:.3f} (the release's thresholds, fitted on validation)")
    lines.append("macro F1: mean over the findings present in the truth or the reports; labeler = "
                 "modeling_cliptt5.evaluation.labeler (rule-based CheXpert observations, approximate); invented "
                 "comparisons: drafts of studies without a prior that compare all the same "
                 "(modeling_cliptt5.evaluation.comparisons)")
    return "\n".join(lines)


# --- 6. figure ------------------------------------------------------------------------------------------------------

def write_figure(path, metrics_records, example_images, drafted, references, heads=None):
    """Loss curves, then per example: the image (with the finding head's heatmap of its most probable finding, when
    there is a head), the draft and the true report. `heads`: per example (finding name, probability, map)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modeling_cliptt5.data.atomic_writes import atomic_path
    from modeling_cliptt5.training.state import draw_loss_curves

    count = len(example_images)
    figure = plt.figure(figsize=(16, 4 + 2.4 * count))
    grid = figure.add_gridspec(1 + count, 3, height_ratios=[1.2] + [1] * count, width_ratios=[1, 2, 2])
    curves = figure.add_subplot(grid[0, :])
    draw_loss_curves(curves, metrics_records)
    curves.set_ylabel("cross-entropy")
    curves.set_yscale("log")
    curves.set_title("CLIP-T5 demo training on synthetic phantoms")
    for row, (image, draft, truth) in enumerate(zip(example_images, drafted, references), start=1):
        axis = figure.add_subplot(grid[row, 0])
        gray = image.convert("L")
        axis.imshow(gray, cmap="gray")
        if heads:
            name, probability, finding_map = heads[row - 1]
            side = min(gray.size)  # the model read the centre square of the shortest side
            left, top = (gray.size[0] - side) / 2, (gray.size[1] - side) / 2
            axis.imshow(finding_map, cmap="inferno", alpha=0.45, interpolation="bilinear", vmin=0, vmax=1,
                        extent=(left, left + side, top + side, top))
            axis.set_title(f"heatmap: {name} ({probability:.2f})", fontsize=8)
        axis.set_axis_off()
        for column, (title, text) in enumerate((("drafted", draft), ("true", truth)), start=1):
            axis = figure.add_subplot(grid[row, column])
            axis.set_axis_off()
            axis.text(0, 1, f"{title}:\n" + textwrap.fill(text, 80), va="top", family="monospace", fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    import yaml

    from modeling_cliptt5.data.sources import DEFAULT_HELD_OUT_SHARE

    config = yaml.safe_load(Path(args.config).read_text())
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    data_dir = output_dir / "data"
    started = time.perf_counter()
    make_data(data_dir, args.studies or config.get("phantom_studies", 2000), config.get("phantom_image_size", 256),
              args.seed, config.get("phantom_max_studies_per_patient", 1),
              config.get("phantom_held_out_share", DEFAULT_HELD_OUT_SHARE))
    data_seconds = time.perf_counter() - started
    stage2_extra = ["--max_steps", str(args.max_steps)] if args.max_steps else []
    head_extra = ["--finding_labels", args.finding_labels] if args.finding_labels else []
    stage2_extra += head_extra
    contrastive_seconds = 0.0
    if args.contrastive_steps != 0:
        stage1_dir = output_dir / "contrastive"
        stage1_extra = ["--clip_model_config_dir", str(prepare_stage1(data_dir, output_dir, config)), *head_extra]
        if args.contrastive_steps:
            stage1_extra += ["--max_steps", str(args.contrastive_steps)]
        contrastive_seconds = train(args, args.contrastive_config, data_dir, stage1_dir, *stage1_extra,
                                    label="[2/6] stage 1, contrastive image tower")
        stage2_extra += ["--init_vision_from", str(stage1_dir / "best")]
    train_seconds = contrastive_seconds + train(args, args.config, data_dir, output_dir, *stage2_extra,
                                                label="[2/6] stage 2, report generation")
    ablation_dir = output_dir / "without_prior"
    ablation_seconds = 0.0
    if not args.no_ablation:
        # The same stage 2 without the prior: same data, steps, tokenizer and cached image features.
        shutil.copytree(output_dir / "tokenizer", ablation_dir / "tokenizer", dirs_exist_ok=True)
        ablation_seconds = train(args, args.config, data_dir, ablation_dir, *stage2_extra,
                                 "--model", json.dumps({"reads_prior": False, "change_head": False}),
                                 "--feature_cache_dir", str(output_dir / "feature_cache"),
                                 label="[2/6] ablation: stage 2 without the prior")

    import torch

    from modeling_cliptt5.data.schema import load_report_dataset
    from modeling_cliptt5.inference.drafting import load_release
    from modeling_cliptt5.training.state import MetricsLog

    release_dir = output_dir / "best"
    print(f"[3/6] release with its model card: {release_dir} ({', '.join(sorted(os.listdir(release_dir)))})")
    print("[4/6] loading the release with AutoModelForSeq2SeqLM + AutoProcessor and drafting reports")
    torch.manual_seed(args.seed)
    release = load_release(release_dir)
    model = release.model
    dataset = load_report_dataset(str(data_dir))
    train_rows, test_rows = dataset["train"], dataset["test"]
    drafts = draft_split(release, test_rows)
    drafted = [draft.report for draft in drafts]
    truth_labels = list(test_rows["labels"])
    has_prior = [index is not None for index in prior_of(test_rows)]
    without_prior = None
    if not args.no_ablation:
        without_prior = draft_split(load_release(ablation_dir / "best"), test_rows,
                                    desc="drafting with the model trained without the prior")
    head, guided_by_truth = None, None
    if model.finding_head is not None:
        head = head_scores(drafts, truth_labels, model.config.finding_labels, model.config.finding_thresholds)
        # the same model guided by the true findings: what the text side writes when the head is right
        guided_by_truth = draft_split(release, test_rows, findings=truth_labels,
                                      desc="drafting guided by the true findings")
    example_rows = test_rows[:args.examples]
    example_drafts = draft_files(release, write_example_files(example_rows, output_dir / "examples"))
    for name, report in example_drafts.items():
        print(f"  examples/{name}: {report}")

    print("[5/6] scoring the model and the baselines on the test split")
    references = list(test_rows["report"])
    systems = dict(zip(SYSTEMS, (drafted, [constant_report(train_rows)] * len(references),
                                 nearest_neighbour_reports(train_rows, test_rows))))
    if without_prior is not None:
        systems[WITHOUT_PRIOR] = [draft.report for draft in without_prior]
    if guided_by_truth is not None:
        systems[GUIDED_BY_TRUTH] = [draft.report for draft in guided_by_truth]
    results = score_systems(systems, references, truth_labels, has_prior)
    changes = change_results(systems, truth_labels, has_prior)
    table = results_table(results, len(references), head)
    if head is not None:
        followed = {"head's findings": guidance_followed(drafts), "true findings": guidance_followed(guided_by_truth)}
        table += "\ndrafts stating exactly the findings they were guided by: " + ", ".join(
            f"{share:.1%} with the {name}" for name, share in followed.items())
    change_head = None
    if any(has_prior):
        table += "\n\n" + change_table(changes, sum(has_prior), len(has_prior) - sum(has_prior))
        if getattr(model, "change_head", None) is not None:
            change_head = change_head_scores(release, test_rows)
            table += ("\nchange head alone, findings in both studies (F1, true statements): " + ", ".join(
                f"{change} {scores['f1']:.2f} ({scores['support']})" for change, scores in change_head.items()))
    total_seconds = time.perf_counter() - started
    timing = (f"data {data_seconds:.0f} s, training {train_seconds:.0f} s (stage 1 {contrastive_seconds:.0f} s; "
              f"{args.processes} process(es)), ablation {ablation_seconds:.0f} s, "
              f"total {total_seconds:.0f} s on {os.cpu_count()} CPU(s)")
    print(table + "\n" + timing)
    (output_dir / "results.txt").write_text(table + "\n" + timing + "\n")
    summary = {"results": results, "changes": changes,
               "seconds": {"data": data_seconds, "training": train_seconds, "stage1": contrastive_seconds,
                           "ablation": ablation_seconds, "total": total_seconds}, "processes": args.processes,
               "test_studies": len(references), "example_drafts": example_drafts,
               "finding_head": head, "change_head": change_head,
               "guidance_followed": followed if head is not None else None,
               "target": {"macro_f1": 0.80, "every_finding_f1": 0.50}}
    (output_dir / "results.json").write_text(json.dumps(summary, indent=1))

    figure_path = output_dir / "demo_results.png"
    heads = None
    if model.finding_head is not None:
        heads = []
        for draft in drafts[:args.examples]:
            probabilities = draft.finding_probabilities
            name = max(probabilities, key=probabilities.get)
            index = model.config.finding_labels.index(name)
            heads.append((name, probabilities[name], draft.finding_maps[0, index].numpy()))
    write_figure(figure_path, MetricsLog(str(output_dir)).read(), first_views(example_rows),
                 drafted[:args.examples], references[:args.examples], heads)
    print(f"[6/6] figure: {figure_path}")
    model_f1 = results["model"]["findings"]["macro"]["f1"]
    lowest = min(results["model"]["findings"]["per_observation"].items(), key=lambda item: item[1]["f1"])
    met = model_f1 >= 0.80 and lowest[1]["f1"] >= 0.50
    print(f"findings macro F1 {model_f1:.3f}, lowest {lowest[0]} {lowest[1]['f1']:.2f}: target macro >= 0.80 with "
          f"every finding >= 0.50 {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()

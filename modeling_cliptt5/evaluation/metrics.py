"""Report-generation scores (BLEU-1..4, METEOR, ROUGE-L, CIDEr) under the R2Gen protocol, beside baselines.

Scores come from pycocoevalcap 1.2 (METEOR runs the Java 1.5 jar; without `java` METEOR alone is skipped).
The R2Gen protocol (what R2Gen-family papers report on IU X-ray and MIMIC-CXR):
- references are cleaned with R2Gen's `clean_report_iu_xray` / `clean_report_mimic_cxr`
  (zhjohnchan/R2Gen, modules/tokenizers.py), words seen fewer than `min_word_count` times in the cleaned train
  reports become `<unk>`, and each reference keeps its first `max_seq_length - 1` tokens (the decoder's
  begin token takes one place);
- generated reports get CvT2DistilGPT2's spacing fix `re.sub(' +', ' ', s.replace('.', ' .'))`
  (and, for models that write cased text with punctuation, optionally the same cleaning as references);
- scores are corpus-level with one reference per study.
It reproduces CvT2DistilGPT2's published IU X-ray numbers exactly (see tests/evaluation/test_metrics.py).

Baselines - the most frequent train report for every study, and a random train report per study - are scored
the same way and belong beside every model score: on IU X-ray a constant report gets close to published models.

Command: cliptt5-score --generated FILE --references FILE [--train-reports FILE] [--r2gen iu_xray|mimic_cxr]
         [--output scores.json]   (see --help)
"""

import collections
import csv
import dataclasses
import json
import os
import random
import re
import shutil
import sys
import warnings

from modeling_cliptt5.evaluation.comparisons import invented_comparison_rate


NLG_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
CLINICAL_COLUMNS = (("CE micro-F1", "micro"), ("CE macro-F1", "macro"), ("CE example-F1", "example"))
MODEL, CONSTANT_BASELINE, RANDOM_BASELINE = "model", "constant train report", "random train report"


# --- R2Gen's report cleaning (zhjohnchan/R2Gen, modules/tokenizers.py), rewritten; the rules are kept exactly, so
# that scores computed on their output compare with published R2Gen-family numbers. Quirks kept on purpose: the
# character class holds the range ":-\[" (so "-" itself survives while ; < = > ? @ A-Z [ go), and empty
# sentences stay (R2Gen's `!= []` filter never fails), giving " .  . ". ---

def _r2gen_clean_sentence(sentence):
    for character in ('"', "/", "\\", "'"):
        sentence = sentence.replace(character, "")
    # R2Gen's character class, unchanged: ":-\[" in it is a range, so ; < = > ? @ A-Z [ are dropped too.
    return re.sub(r"[.,?;*!%^&_+():-\[\]{}]", "", sentence.strip().lower())


def _r2gen_join(report, numbering_fixes):
    for old, new in numbering_fixes:
        report = report.replace(old, new)
    sentences = report.strip().lower().split(". ")
    # R2Gen keeps empty sentences (its `!= []` test never fails), which yields ". ." pairs: kept for parity.
    return " . ".join(_r2gen_clean_sentence(sentence) for sentence in sentences) + " ."


_NUMBERING_FIXES = [("..", ".")] * 3 + [("1. ", ""), (". 2. ", ". "), (". 3. ", ". "), (". 4. ", ". "),
                                         (". 5. ", ". "), (" 2. ", ". "), (" 3. ", ". "), (" 4. ", ". "),
                                         (" 5. ", ". ")]


def clean_report_iu_xray(report):
    """R2Gen's IU X-ray cleaning: numbering and ".." removed, lower case, punctuation dropped, " . " between sentences."""
    return _r2gen_join(report, _NUMBERING_FIXES)


def clean_report_mimic_cxr(report):
    """R2Gen's MIMIC-CXR cleaning: as for IU X-ray, after newlines, runs of "_" and double spaces are squeezed."""
    fixes = [("\n", " ")] + [("__", "_")] * 7 + [("  ", " ")] * 6 + [("..", ".")] * 8 + _NUMBERING_FIXES[3:]
    return _r2gen_join(report, fixes)


def fix_generated_spacing(report):
    """CvT2DistilGPT2's fix for generated text: a space before each "." and single spaces."""
    return re.sub(" +", " ", report.replace(".", " ."))


# Per dataset: cleaning, R2Gen's --threshold (min word count) and --max_seq_length.
R2GEN_SETTINGS = {
    "iu_xray": (clean_report_iu_xray, 3, 60),
    "mimic_cxr": (clean_report_mimic_cxr, 10, 100),
}


@dataclasses.dataclass
class R2GenProtocol:
    """How references and generated reports are prepared before scoring, as R2Gen-family papers do."""

    dataset: str = "iu_xray"
    vocabulary: frozenset = None  # words kept; None keeps every word (no train reports given)
    max_tokens: int = 59
    clean_generated: bool = False

    @property
    def clean(self):
        return R2GEN_SETTINGS[self.dataset][0]

    def reference(self, report):
        tokens = self.clean(report).split()[:self.max_tokens]
        if self.vocabulary is not None:
            tokens = [token if token in self.vocabulary else "<unk>" for token in tokens]
        return " ".join(tokens)

    def generated(self, report):
        if self.clean_generated:
            report = self.clean(report)
        return fix_generated_spacing(report)


def build_r2gen_protocol(dataset="iu_xray", train_reports=None, clean_generated=False):
    """The R2Gen protocol for `dataset`, with the `<unk>` vocabulary counted from the cleaned train reports."""
    if dataset not in R2GEN_SETTINGS:
        raise ValueError(f"unknown R2Gen dataset {dataset!r}: choose one of {sorted(R2GEN_SETTINGS)}")
    clean, min_word_count, max_seq_length = R2GEN_SETTINGS[dataset]
    vocabulary = None
    if train_reports:
        counts = collections.Counter(word for report in train_reports for word in clean(report).split())
        vocabulary = frozenset(word for word, count in counts.items() if count >= min_word_count)
    else:
        warnings.warn("R2Gen protocol without train reports: rare words are not mapped to <unk>, so METEOR "
                      "is not comparable with published numbers (pass the train split's reports)", stacklevel=2)
    return R2GenProtocol(dataset, vocabulary, max_seq_length - 1, clean_generated)


def _resolve_protocol(r2gen_protocol, train_reports, clean_generated):
    if isinstance(r2gen_protocol, R2GenProtocol):
        return r2gen_protocol
    if r2gen_protocol is True:
        return build_r2gen_protocol("iu_xray", train_reports, clean_generated)
    if r2gen_protocol:
        return build_r2gen_protocol(r2gen_protocol, train_reports, clean_generated)
    return None


# --- Scoring ---

def _single_line(text):
    # METEOR's jar reads one line per segment; pycocoevalcap tokenises on spaces.
    return " ".join(str(text).split())


def _meteor_scorer():
    """pycocoevalcap's METEOR, or None with a warning when Java is missing or fails to start."""
    if shutil.which("java") is None:
        warnings.warn("`java` is not on PATH: METEOR is skipped (install Java 11+, e.g. "
                      "`apt-get install openjdk-17-jre-headless`); BLEU, ROUGE-L and CIDEr are still computed",
                      stacklevel=3)
        return None
    from pycocoevalcap.meteor.meteor import Meteor
    return Meteor()


def _score_prepared(systems, references, progress=False, metrics=None):
    """{system: {metric: score}} for prepared texts; one METEOR (Java) process serves every system. `metrics`
    (names of NLG_METRICS) leaves out the scorers nobody asked for (METEOR starts a Java process)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from tqdm.auto import tqdm

    wanted = set(metrics or NLG_METRICS)
    gts = {index: [reference] for index, reference in enumerate(references)}
    meteor = _meteor_scorer() if "METEOR" in wanted else None
    results = {}
    steps = tqdm(total=len(systems) * 4, desc="scoring", disable=not progress)
    try:
        for name, generated in systems.items():
            res = {index: [text] for index, text in enumerate(generated)}
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            scores = {f"BLEU-{n + 1}": bleu[n] for n in range(4)}
            steps.update()
            if meteor is not None:
                try:
                    scores["METEOR"], _ = meteor.compute_score(gts, res)
                except (ValueError, OSError) as error:
                    warnings.warn(f"METEOR failed ({error}); it is skipped", stacklevel=2)
                    meteor = None
            steps.update()
            if "ROUGE-L" in wanted:
                scores["ROUGE-L"], _ = Rouge().compute_score(gts, res)
            steps.update()
            if "CIDEr" in wanted:
                scores["CIDEr"], _ = Cider().compute_score(gts, res)
            steps.update()
            results[name] = {metric: float(scores[metric]) for metric in NLG_METRICS
                             if metric in scores and metric in wanted}
    finally:
        steps.close()
        del meteor  # closes the Java process now rather than at interpreter exit
    return results


def _check_pairs(generated, references):
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports but {len(references)} references: one each per study")
    if not references:
        raise ValueError("no reports to score")


def score_reports(generated, references, r2gen_protocol=False, train_reports=None, clean_generated=False,
                  metrics=None):
    """Corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr of generated reports, one reference per study.

    r2gen_protocol: False (texts compared as given, white space squeezed), True or "iu_xray", "mimic_cxr",
    or a built `R2GenProtocol`. train_reports give the protocol's `<unk>` vocabulary.
    clean_generated: also apply R2Gen's cleaning to generated text (for models writing cased text with
    punctuation; CvT2DistilGPT2's published numbers use the spacing fix alone).
    Without Java, METEOR is missing from the result (with a warning). `metrics`: only these (default: all).
    """
    _check_pairs(generated, references)
    protocol = _resolve_protocol(r2gen_protocol, train_reports, clean_generated)
    prepared_references, prepared_generated = _prepare(protocol, references, {MODEL: generated})
    return _score_prepared(prepared_generated, prepared_references, metrics=metrics)[MODEL]


def _prepare(protocol, references, systems, cleaned_systems=()):
    """References and {system: texts} ready for pycocoevalcap; `cleaned_systems` get the reference cleaning."""
    if protocol is None:
        return ([_single_line(text) for text in references],
                {name: [_single_line(text) for text in texts] for name, texts in systems.items()})
    prepared = {}
    for name, texts in systems.items():
        clean = protocol.clean if name in cleaned_systems else (lambda text: text)
        prepared[name] = [_single_line(protocol.generated(clean(text))) for text in texts]
    return [_single_line(protocol.reference(text)) for text in references], prepared


# --- Baselines ---

def constant_report_baseline(train_reports, n, report=None):
    """`n` copies of `report`, or of the most frequent train report (first seen wins a tie)."""
    if report is None:
        if not train_reports:
            raise ValueError("a constant-report baseline needs train reports or a report")
        report = collections.Counter(text.strip() for text in train_reports).most_common(1)[0][0]
    return [report] * n


def random_train_report_baseline(train_reports, n, seed=0):
    """`n` train reports drawn at random with replacement (reproducible for a given seed)."""
    if not train_reports:
        raise ValueError("a random-report baseline needs train reports")
    return random.Random(seed).choices(list(train_reports), k=n)


def score_with_baselines(generated, references, train_reports, r2gen_protocol=False, seed=0,
                         constant_report=None, clean_generated=False, clinical_efficacy=False, baselines=True,
                         progress=False):
    """{"model" / "constant train report" / "random train report": scores}, all scored the same way.

    train_reports give the baselines and the R2Gen `<unk>` vocabulary; baselines=False scores the model only.
    Under the R2Gen protocol the baseline reports get R2Gen's cleaning (what an R2Gen model writes).
    clinical_efficacy=True adds "clinical_efficacy" (approximate rule labeler, see labeler.py) per system,
    computed on the raw texts. Every system gets "invented_comparisons": the share of its reports that compare with
    an earlier study, which none of these studies has (comparisons.py).
    """
    _check_pairs(generated, references)
    protocol = _resolve_protocol(r2gen_protocol, train_reports, clean_generated)
    systems = {MODEL: list(generated)}
    if baselines and (train_reports or constant_report):
        systems[CONSTANT_BASELINE] = constant_report_baseline(train_reports, len(references), constant_report)
    if baselines and train_reports:
        systems[RANDOM_BASELINE] = random_train_report_baseline(train_reports, len(references), seed)
    baselines = tuple(name for name in systems if name != MODEL)
    prepared_references, prepared_systems = _prepare(protocol, references, systems, cleaned_systems=baselines)
    results = _score_prepared(prepared_systems, prepared_references, progress)
    for name, texts in systems.items():  # no study of these files has a prior: every comparison is invented
        results[name]["invented_comparisons"] = invented_comparison_rate(texts)
    if clinical_efficacy:
        from modeling_cliptt5.evaluation.labeler import clinical_efficacy as score_clinical_efficacy
        for name, texts in systems.items():
            results[name]["clinical_efficacy"] = score_clinical_efficacy(texts, references)
    return results


INVENTED_COMPARISONS_COLUMN = "invented comparisons"


def format_scores_table(results):
    """A plain-text table: one row per system, one column per metric present."""
    metrics = [metric for metric in NLG_METRICS if any(metric in scores for scores in results.values())]
    with_ce = any("clinical_efficacy" in scores for scores in results.values())
    with_comparisons = any(scores.get("invented_comparisons") is not None for scores in results.values())
    header = (["system"] + metrics + ([column for column, _ in CLINICAL_COLUMNS] if with_ce else [])
              + ([INVENTED_COMPARISONS_COLUMN] if with_comparisons else []))
    rows = []
    for name, scores in results.items():
        row = [name] + [f"{scores[metric]:.5f}" if metric in scores else "-" for metric in metrics]
        if with_ce:
            efficacy = scores.get("clinical_efficacy")
            row += [f"{efficacy[key]['f1']:.4f}" if efficacy else "-" for _, key in CLINICAL_COLUMNS]
        if with_comparisons:
            rate = scores.get("invented_comparisons")
            row.append("-" if rate is None else f"{100 * rate:.1f}%")
        rows.append(row)
    widths = [max(len(row[column]) for row in [header] + rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    if "METEOR" not in metrics:
        lines.append("METEOR skipped: `java` not found")
    if with_ce:
        lines.append("CE = clinical efficacy from an approximate rule labeler (not CheXbert), positive = 1")
    if with_comparisons:
        lines.append(f"{INVENTED_COMPARISONS_COLUMN} = reports comparing with an earlier study, which these studies "
                     "do not have (approximate rule reader, evaluation/comparisons.py)")
    return "\n".join(lines)


def print_scores_table(results, file=None):
    print(format_scores_table(results), file=file or sys.stdout)


# --- Files ---

class ReportFileError(ValueError):
    """A generated or reference file that cannot be scored, named with the reason (one line)."""


ID_COLUMNS = ("id", "study_id", "dicom_id", "image_id")
TEXT_COLUMNS = ("report", "text", "generated", "generated_report", "prediction", "findings")


def _read_rows(path, split="test"):
    """Rows (dicts) of a CSV, JSONL, JSON list, or R2Gen annotation.json (its `split` entries)."""
    if not os.path.isfile(path):
        raise ReportFileError(f"{path}: no such file")
    try:
        if path.endswith(".csv"):
            with open(path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        with open(path, encoding="utf-8") as handle:
            if path.endswith(".jsonl"):
                return [json.loads(line) for line in handle if line.strip()]
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as error:
        raise ReportFileError(f"{path}: cannot be read as {os.path.splitext(path)[1] or 'JSON'} ({error})") from None
    if isinstance(data, dict):  # R2Gen annotation.json: {"train": [...], "val": [...], "test": [...]}
        if split not in data:
            raise ReportFileError(f"{path}: has no {split!r} split (it has {sorted(data)})")
        return data[split]
    if isinstance(data, list):
        return data
    raise ReportFileError(f"{path}: expected a list of records or an R2Gen annotation.json")


def _pick_column(path, rows, wanted, candidates, role):
    if not rows:
        raise ReportFileError(f"{path}: no rows")
    columns = list(rows[0])
    if wanted:
        if wanted not in columns:
            raise ReportFileError(f"{path}: no {role} column {wanted!r} (columns: {columns})")
        return wanted
    for candidate in candidates:
        if candidate in columns:
            return candidate
    raise ReportFileError(f"{path}: no {role} column found (looked for {list(candidates)}; columns: {columns}); "
                     f"name it with --{role}-column")


def read_reports_by_id(path, id_column=None, text_column=None, split="test"):
    """{study id: report text} from a file; duplicate or empty ids are errors that name the file."""
    rows = _read_rows(path, split)
    id_column = _pick_column(path, rows, id_column, ID_COLUMNS, "id")
    text_column = _pick_column(path, rows, text_column, TEXT_COLUMNS, "text")
    reports = {}
    for number, row in enumerate(rows, start=1):
        study_id = str(row.get(id_column) or "").strip()
        if not study_id:
            raise ReportFileError(f"{path}: record {number} has an empty {id_column!r}")
        if study_id in reports:
            raise ReportFileError(f"{path}: id {study_id!r} appears more than once")
        reports[study_id] = str(row.get(text_column) or "")
    return reports


def read_train_reports(path, text_column=None):
    """Report texts of the train split: any CSV/JSONL with a text column, or an R2Gen annotation.json."""
    rows = _read_rows(path, split="train")
    text_column = _pick_column(path, rows, text_column, TEXT_COLUMNS, "text")
    return [str(row.get(text_column) or "") for row in rows]


def is_r2gen_annotation(path):
    if not path.endswith(".json"):
        return False
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    return isinstance(data, dict) and "train" in data

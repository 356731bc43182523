"""R2Gen-protocol scores reproduce a published model's numbers; perfect output scores 1; baselines and CLI run."""

import csv
import json
import shutil
import warnings
from pathlib import Path

import pytest

from modeling_cliptt5.evaluation import metrics
from modeling_cliptt5.cli import score_reports

IU_XRAY = Path(__file__).parents[3] / "shared" / "reference" / "iu_xray"
ANNOTATION = IU_XRAY / "annotation.json"
CVT2DISTILGPT2 = IU_XRAY / "cvt2distilgpt2_test_reports.csv"

# CvT2DistilGPT2's README (github.com/aehrc/cvt2distilgpt2), IU X-ray test split of R2Gen.
PUBLISHED_CVT2DISTILGPT2 = {"BLEU-1": 0.47341, "BLEU-2": 0.30362, "BLEU-3": 0.22399, "BLEU-4": 0.17524,
                            "METEOR": 0.19991, "ROUGE-L": 0.37611, "CIDEr": 0.69411}

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs `java` on PATH")


def load_iu_xray():
    if not ANNOTATION.is_file() or not CVT2DISTILGPT2.is_file():
        pytest.skip(f"reference data not found at {IU_XRAY} (../shared is absent)")
    annotation = json.loads(ANNOTATION.read_text())
    with open(CVT2DISTILGPT2, newline="") as handle:
        generated = {row["dicom_id"]: row["report"] for row in csv.DictReader(handle)}
    return annotation, generated


@needs_java
def test_r2gen_protocol_reproduces_published_cvt2distilgpt2_scores():
    annotation, generated = load_iu_xray()
    test = annotation["test"]
    scores = metrics.score_reports([generated[entry["id"]] for entry in test], [entry["report"] for entry in test],
                                   r2gen_protocol="iu_xray", train_reports=[e["report"] for e in annotation["train"]])
    print({metric: round(value, 5) for metric, value in scores.items()})
    for metric, published in PUBLISHED_CVT2DISTILGPT2.items():
        assert scores[metric] == pytest.approx(published, abs=5e-5), metric


def test_r2gen_cleaning_follows_r2gen_rules():
    # Numbering and ".." go, text is lower-cased, punctuation (R2Gen's class) is dropped, " . " joins sentences.
    assert metrics.clean_report_iu_xray("1. Heart size normal.. 2. No effusion, (left).") == \
        "heart size normal . no effusion left ."
    # R2Gen keeps an empty sentence between ". ." (its empty-sentence test never fires).
    assert metrics.clean_report_iu_xray("Lungs clear. . Heart normal.") == "lungs clear .  . heart normal ."
    assert metrics.clean_report_mimic_cxr("FINDINGS:\nNo  effusion.\n___ seen.") == \
        "findings no effusion .  seen ."
    assert metrics.fix_generated_spacing("no effusion.  heart normal.") == "no effusion . heart normal ."


def test_r2gen_reference_maps_rare_words_to_unk_and_truncates():
    train = ["Heart normal. Lungs clear."] * 3 + ["Heart enlarged."]
    protocol = metrics.build_r2gen_protocol("iu_xray", train)
    assert protocol.max_tokens == 59
    # "enlarged" is seen once in train (< 3): <unk>; "effusion" never.
    assert protocol.reference("Heart enlarged. Effusion.") == "heart <unk> . <unk> ."
    long_report = " ".join(["heart normal."] * 40)
    assert len(protocol.reference(long_report).split()) == 59


def test_r2gen_protocol_without_train_reports_warns():
    with pytest.warns(UserWarning, match="without train reports"):
        protocol = metrics.build_r2gen_protocol("iu_xray", None)
    assert protocol.vocabulary is None
    with pytest.raises(ValueError, match="unknown R2Gen dataset"):
        metrics.build_r2gen_protocol("chexpert", ["x"])


def test_perfect_generation_scores_one_and_a_worse_one_scores_less(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java: METEOR's start costs seconds; it is checked above
    references = ["the heart is normal in size . the lungs are clear .",
                  "small left pleural effusion . no pneumothorax .",
                  "mild cardiomegaly . no focal consolidation ."]
    with pytest.warns(UserWarning, match="java"):
        perfect = metrics.score_reports(references, references)
        shuffled = metrics.score_reports(references[1:] + references[:1], references)
    assert perfect["BLEU-4"] == pytest.approx(1.0)
    assert perfect["BLEU-1"] == pytest.approx(1.0)
    assert perfect["ROUGE-L"] == pytest.approx(1.0)
    for metric in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert shuffled[metric] < perfect[metric], metric


def test_missing_java_skips_meteor_only(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    references = ["no pleural effusion .", "mild cardiomegaly ."]
    with pytest.warns(UserWarning, match="java"):
        scores = metrics.score_reports(references, references)
    assert "METEOR" not in scores
    assert scores["BLEU-4"] == pytest.approx(1.0)
    assert "METEOR skipped" in metrics.format_scores_table({"model": scores})


def test_asking_for_some_metrics_gives_those_values_without_starting_java(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java: a METEOR asked for would warn
    references = ["the heart is normal in size .", "small left pleural effusion .", "mild cardiomegaly ."]
    generated = ["the heart is normal .", "small right pleural effusion .", "cardiomegaly ."]
    with pytest.warns(UserWarning, match="java"):
        everything = metrics.score_reports(generated, references)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # METEOR is not even tried
        some = metrics.score_reports(generated, references, metrics=("BLEU-4", "ROUGE-L"))
    assert some == {"BLEU-4": everything["BLEU-4"], "ROUGE-L": everything["ROUGE-L"]}


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="2 generated reports but 1 references"):
        metrics.score_reports(["a .", "b ."], ["a ."])


def test_constant_and_random_baselines():
    train = ["Report A.", "Report B.", "Report B.", "Report C.", "Report B."]
    assert metrics.constant_report_baseline(train, 3) == ["Report B."] * 3
    assert metrics.constant_report_baseline(train, 2, report="Given.") == ["Given."] * 2
    first = metrics.random_train_report_baseline(train, 20, seed=1)
    assert first == metrics.random_train_report_baseline(train, 20, seed=1)
    assert first != metrics.random_train_report_baseline(train, 20, seed=2)
    assert set(first) <= set(train) and len(set(first)) > 1


def test_baselines_are_scored_beside_the_model_and_printed(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, to stay fast
    annotation, generated = load_iu_xray()
    test = annotation["test"][:40]
    train = [entry["report"] for entry in annotation["train"]]
    with pytest.warns(UserWarning, match="java"):
        results = metrics.score_with_baselines([generated[e["id"]] for e in test], [e["report"] for e in test],
                                               train, r2gen_protocol="iu_xray", seed=0, clinical_efficacy=True)
    assert list(results) == [metrics.MODEL, metrics.CONSTANT_BASELINE, metrics.RANDOM_BASELINE]
    for scores in results.values():
        assert set(metrics.NLG_METRICS) - {"METEOR"} <= set(scores)
    # The most common train report is a normal one: it states No Finding alone, so its micro precision is the share
    # of test studies the labeler reads as normal. The published model ties it on these 40 mostly normal studies (why
    # the baselines are printed beside it), and both are far above a random train report.
    from modeling_cliptt5.evaluation.labeler import label_report

    references = [e["report"] for e in test]
    normal = sum(label_report(report)["No Finding"] == 1 for report in references) / len(references)
    efficacy = {name: scores["clinical_efficacy"]["micro"] for name, scores in results.items()}
    assert efficacy[metrics.CONSTANT_BASELINE]["precision"] == pytest.approx(normal) and 0.5 < normal < 1
    assert efficacy[metrics.MODEL]["f1"] == pytest.approx(efficacy[metrics.CONSTANT_BASELINE]["f1"])
    assert efficacy[metrics.RANDOM_BASELINE]["f1"] < efficacy[metrics.MODEL]["f1"] - 0.3
    # A trained model beats a random train report on CIDEr (published CvT2DistilGPT2 0.69 vs about 0.15).
    assert results[metrics.MODEL]["CIDEr"] > results[metrics.RANDOM_BASELINE]["CIDEr"]
    metrics.print_scores_table(results)
    table = capsys.readouterr().out
    assert metrics.CONSTANT_BASELINE in table and "CIDEr" in table and "not CheXbert" in table


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_cli_writes_scores_atomically(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java: keeps this test fast; METEOR is covered above
    references = [{"study_id": f"s{i}", "report": text} for i, text in enumerate(
        ["Heart size normal. No effusion.", "Small left pleural effusion.", "Mild cardiomegaly."])]
    generated = tmp_path / "generated.csv"
    with open(generated, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["study_id", "report"])
        writer.writeheader()
        writer.writerows(reversed(references))  # order differs: matched by id
        writer.writerow({"study_id": "extra", "report": "Unused."})
    # Every word seen 3 times in train: no <unk>, so cleaned generated text equals the prepared references.
    train = _write_jsonl(tmp_path / "train.jsonl", [{"text": row["report"]} for row in references] * 3)
    output = tmp_path / "out" / "scores.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = score_reports.main(["--generated", str(generated), "--references",
                                     _write_jsonl(tmp_path / "ref.jsonl", references), "--train-reports", train,
                                     "--r2gen", "iu_xray", "--clean-generated", "--output", str(output)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "3 studies scored (1 generated reports without a reference ignored)" in printed
    saved = json.loads(output.read_text())
    assert saved["n_studies"] == 3 and saved["r2gen_protocol"] == "iu_xray"
    assert saved["scores"]["model"]["BLEU-4"] == pytest.approx(1.0)
    assert set(saved["scores"]) == {metrics.MODEL, metrics.CONSTANT_BASELINE, metrics.RANDOM_BASELINE}
    assert [path.name for path in output.parent.iterdir()] == ["scores.json"]  # no temporary file left


def test_cli_errors_name_the_file(tmp_path, capsys):
    references = _write_jsonl(tmp_path / "ref.jsonl", [{"id": "a", "report": "x."}, {"id": "b", "report": "y."}])
    generated = _write_jsonl(tmp_path / "gen.jsonl", [{"id": "a", "report": "x."}])
    duplicated = _write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "report": "x."}] * 2)
    no_text = _write_jsonl(tmp_path / "notext.jsonl", [{"id": "a", "body": "x."}])
    for given, message in ((generated, "gen.jsonl: no generated report for 1 of 2"),
                           (duplicated, "dup.jsonl: id 'a' appears more than once"),
                           (no_text, "notext.jsonl: no text column found")):
        assert score_reports.main(["--generated", given, "--references", references]) == 1  # an input failed
        printed = capsys.readouterr()
        assert f"cliptt5-score: error: {tmp_path / message}" in printed.err and "Traceback" not in printed.err

"""generate.py end to end on tiny releases: PNG/JPEG/DICOM in, JSONL/CSV out, grouping, bad inputs, --optimize."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MAX_NEW_TOKENS, TRAINED_IMAGES, noise_image, rerandomized, tiny_config
from dicom_files import block_image, grayscale_dicom
from modeling_cliptt5 import CLIPT5ForConditionalGeneration, CLIPT5Processor
from modeling_cliptt5.inference.fast_inference import is_optimized, optimize_for_cpu
from modeling_cliptt5.images.image_io import open_image
from modeling_cliptt5.inference.drafting import collect_inputs, fit_views, group_studies

from modeling_cliptt5.cli import generate



@pytest.fixture(scope="module")
def two_view_release_dir(tmp_path_factory, tiny_release_dir):
    release = tmp_path_factory.mktemp("two_view_release")
    processor = CLIPT5Processor.from_pretrained(tiny_release_dir)
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration(tiny_config(vocab_size=len(processor.tokenizer), num_views=2)).eval()
    rerandomized(model).save_pretrained(release)
    processor.save_pretrained(release)
    return release


@pytest.fixture
def mixed_inputs(tmp_path):
    """Three images the trained model knows, as PNG, JPEG and 8-bit DICOM."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    noise_image(0).save(folder / "a_png.png")
    noise_image(1).save(folder / "b_jpeg.jpg", quality=95)
    grayscale_dicom(np.array(noise_image(2)), folder / "c_dicom.dcm")
    return folder


def direct_reports(release, paths, **generate_kwargs):
    """The reports the model writes for these files, computed without generate.py."""
    model = CLIPT5ForConditionalGeneration.from_pretrained(release).eval()
    processor = CLIPT5Processor.from_pretrained(release)
    images = [open_image(path) for path in paths]
    sequences = model.generate(**processor(images=images), max_new_tokens=MAX_NEW_TOKENS, **generate_kwargs)
    return [draft["text"] for draft in processor.batch_decode_reports(sequences)]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_png_jpeg_dicom_to_jsonl_match_the_model(trained_release_dir, mixed_inputs, tmp_path):
    output = tmp_path / "out" / "reports.jsonl"
    code = generate.main(["--model", str(trained_release_dir), str(mixed_inputs), "--output", str(output),
                          "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "2"])
    assert code == 0
    rows = read_jsonl(output)
    assert [row["id"] for row in rows] == ["a_png", "b_jpeg", "c_dicom"]
    files = sorted(mixed_inputs.iterdir())
    assert [row["input_files"] for row in rows] == [[str(path)] for path in files]
    expected = direct_reports(trained_release_dir, files)
    assert [row["report"] for row in rows] == expected
    assert len(set(expected)) > 1  # the three images give different drafts: the check above is not vacuous
    for row in rows:
        assert set(row) == {"id", "status", "reason", "input_files", "report", "findings", "impression", "truncated",
                            "repeated_sentences", "seconds", "prior_id"}
        assert row["seconds"] > 0 and (row["status"], row["reason"]) == ("drafted", "")
    assert [path.name for path in output.parent.iterdir()] == ["reports.jsonl"]  # no temp file left behind


def test_csv_output_with_labels_and_beams(trained_release_dir, mixed_inputs, tmp_path):
    pytest.importorskip("modeling_cliptt5.evaluation.labeler")
    output = tmp_path / "reports.csv"
    code = generate.main(["--model", str(trained_release_dir), str(mixed_inputs / "*.png"), str(mixed_inputs / "*.dcm"),
                          "--output", str(output), "--max-new-tokens", str(MAX_NEW_TOKENS), "--num-beams", "2",
                          "--labels"])
    assert code == 0
    with output.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["id"] for row in rows] == ["a_png", "c_dicom"]
    assert set(rows[0]) == {"id", "status", "reason", "input_files", "report", "findings", "impression", "truncated",
                            "repeated_sentences", "seconds", "prior_id", "labels", "uncertain_labels"}
    paths = [mixed_inputs / "a_png.png", mixed_inputs / "c_dicom.dcm"]
    assert [row["report"] for row in rows] == direct_reports(trained_release_dir, paths, num_beams=2)


def test_labels_come_from_the_labeler(monkeypatch, trained_release_dir, mixed_inputs, tmp_path):
    labeler = pytest.importorskip("modeling_cliptt5.evaluation.labeler")
    seen = []

    def fake_label_report(text):
        seen.append(text)
        return {"Cardiomegaly": 1, "Edema": -1, "Pneumothorax": 0, "Fracture": None}

    monkeypatch.setattr(labeler, "label_report", fake_label_report)
    output = tmp_path / "reports.jsonl"
    generate.main(["--model", str(trained_release_dir), str(mixed_inputs / "a_png.png"), "--output", str(output),
                   "--max-new-tokens", "4", "--labels"])
    row = read_jsonl(output)[0]
    assert seen == [row["report"]]
    assert row["labels"] == ["Cardiomegaly"] and row["uncertain_labels"] == ["Edema"]


def test_the_releases_generation_config_decides_what_no_flag_sets(trained_release_dir, mixed_inputs, tmp_path):
    """As on the page: without --max-new-tokens or --num-beams a draft is what generate() writes with the
    release's own generation config (here a release that asks for 5 tokens and 2 beams)."""
    from transformers import GenerationConfig

    release = tmp_path / "release"
    shutil.copytree(trained_release_dir, release)
    settings = GenerationConfig.from_pretrained(release)
    settings.max_new_tokens, settings.num_beams = 5, 2
    settings.save_pretrained(release)
    output = tmp_path / "reports.jsonl"
    assert generate.main(["--model", str(release), str(mixed_inputs / "a_png.png"), "--output", str(output)]) == 0
    model = CLIPT5ForConditionalGeneration.from_pretrained(release).eval()
    processor = CLIPT5Processor.from_pretrained(release)
    sequences = model.generate(**processor(images=[open_image(mixed_inputs / "a_png.png")]))
    assert sequences.shape[1] == 6  # the start token and the 5 asked for
    assert read_jsonl(output)[0]["report"] == processor.batch_decode_reports(sequences)[0]["text"]
    longer = direct_reports(release, [mixed_inputs / "a_png.png"])  # MAX_NEW_TOKENS: the drafts differ
    assert longer[0] != read_jsonl(output)[0]["report"]


def test_printed_drafts_without_output(trained_release_dir, mixed_inputs, capsys):
    code = generate.main(["--model", str(trained_release_dir), str(mixed_inputs / "b_jpeg.jpg"), "--max-new-tokens", "6"])
    captured = capsys.readouterr()
    assert code == 0
    assert "== b_jpeg (b_jpeg.jpg)" in captured.out
    assert "1 of 1 studies drafted" in captured.err


def test_every_bad_input_reported_and_the_rest_written(tiny_release_dir, mixed_inputs, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = mixed_inputs / "a_png.png"
    (bad / "zero.png").write_bytes(b"")
    data = good.read_bytes()
    (bad / "truncated.png").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[60:120] = b"\x00" * 60
    (bad / "corrupt.png").write_bytes(bytes(corrupt))
    (bad / "notes.png").write_text("FINDINGS: normal")
    noise_image(3, size=(300, 300)).save(bad / "huge.png")
    output = tmp_path / "reports.jsonl"
    code = generate.main(["--model", str(tiny_release_dir), str(good), str(bad), str(tmp_path / "missing.png"),
                          "--output", str(output), "--max-new-tokens", "4", "--max-pixels", "20000"])
    err = capsys.readouterr().err
    assert code == 1
    # every study has its record: the one drafted, and each unreadable file failed with its reason
    rows = read_jsonl(output)
    assert [(row["id"], row["status"]) for row in rows] == [("a_png", "drafted")] + [
        (name, "failed") for name in ("corrupt", "huge", "notes", "truncated", "zero")]
    for row, reason in zip(rows[1:], ("corrupt", "too large", "not an image", "truncated", "empty file")):
        assert row["reason"].startswith(f"no readable image: {bad / row['id']}.png: ") and reason in row["reason"]
        assert row["report"] == "" and row["findings"] is None
    for name, reason in [("zero.png", "empty file"), ("truncated.png", "truncated"), ("corrupt.png", "corrupt"),
                         ("notes.png", "not an image"), ("huge.png", "too large"), ("missing.png", "not found")]:
        lines = [line for line in err.splitlines() if name in line]
        assert len(lines) == 1 and reason in lines[0], (name, lines)
    assert "1 of 6 studies drafted" in err


def test_no_images_at_all_fails(tiny_release_dir, tmp_path):
    assert generate.main(["--model", str(tiny_release_dir), str(tmp_path / "nothing_*.png")]) == 1


def test_grouping_rules(tmp_path):
    files = [tmp_path / "p1" / "s1_lateral.png", tmp_path / "p1" / "s1_frontal.png", tmp_path / "p1" / "s2-pa.png",
             tmp_path / "p2" / "s1_pa.png", tmp_path / "p2" / "scan.png"]
    by_prefix = group_studies(files, "prefix")
    assert [(s.study_id, [f.name for f in s.files]) for s in by_prefix] == [
        ("p1/s1", ["s1_frontal.png", "s1_lateral.png"]), ("s2", ["s2-pa.png"]), ("p2/s1", ["s1_pa.png"]),
        ("scan", ["scan.png"])]
    by_folder = group_studies(files, "folder")
    assert [(s.study_id, len(s.files)) for s in by_folder] == [("p1", 3), ("p2", 2)]
    assert [s.study_id for s in group_studies(files[:3], "none")] == ["s1_lateral", "s1_frontal", "s2-pa"]


def test_fit_views_repeats_and_trims():
    assert fit_views(["pa"], 2, "s")[0] == ["pa", "pa"]
    views, warning = fit_views(["a", "b", "c"], 2, "s")
    assert views == ["a", "b"] and "3 views" in warning
    assert fit_views(["a", "b"], 2, "s") == (["a", "b"], None)


def test_collect_inputs_folders_patterns_and_suffixless_dicom(tmp_path, mixed_inputs):
    grayscale_dicom(block_image(), mixed_inputs / "IM0001")
    (mixed_inputs / "readme.txt").write_text("not an image")
    files, errors = collect_inputs([str(mixed_inputs), str(mixed_inputs / "*.png"), str(tmp_path / "none_*.jpg")])
    assert [f.name for f in files] == ["IM0001", "a_png.png", "b_jpeg.jpg", "c_dicom.dcm"]
    assert len(errors) == 1 and "none_*.jpg" in errors[0]


def test_two_view_model_groups_by_prefix_repeating_and_trimming(two_view_release_dir, tmp_path, capsys):
    folder = tmp_path / "studies"
    folder.mkdir()
    for name, seed in [("s1_frontal", 0), ("s1_lateral", 1), ("s2_frontal", 2), ("s3_a", 3), ("s3_b", 4), ("s3_c", 5)]:
        noise_image(seed).save(folder / f"{name}.png")
    output = tmp_path / "reports.jsonl"
    code = generate.main(["--model", str(two_view_release_dir), str(folder), "--study-by", "prefix",
                          "--output", str(output), "--max-new-tokens", "6"])
    err = capsys.readouterr().err
    assert code == 0
    rows = {row["id"]: row for row in read_jsonl(output)}
    assert sorted(rows) == ["s1", "s2", "s3"]
    assert [Path(f).name for f in rows["s1"]["input_files"]] == ["s1_frontal.png", "s1_lateral.png"]
    assert "s2: 1 view(s), the model reads 2: repeating" in err
    assert "s3: 3 views, the model reads 2: using the first 2" in err
    # The two-view draft is the model's output for [frontal, lateral]; the repeated study for [frontal, frontal].
    model = CLIPT5ForConditionalGeneration.from_pretrained(two_view_release_dir).eval()
    processor = CLIPT5Processor.from_pretrained(two_view_release_dir)
    views = [[Image.open(folder / "s1_frontal.png"), Image.open(folder / "s1_lateral.png")],
             [Image.open(folder / "s2_frontal.png")] * 2]
    expected = processor.batch_decode_reports(model.generate(**processor(images=views), max_new_tokens=6))
    assert [rows["s1"]["report"], rows["s2"]["report"]] == [draft["text"] for draft in expected]


def test_optimized_model_gives_the_same_greedy_tokens(trained_release_dir):
    processor = CLIPT5Processor.from_pretrained(trained_release_dir)
    reference = CLIPT5ForConditionalGeneration.from_pretrained(trained_release_dir).eval()
    optimized = optimize_for_cpu(CLIPT5ForConditionalGeneration.from_pretrained(trained_release_dir).eval())
    assert is_optimized(optimized) and not is_optimized(reference)
    pixel_values = processor(images=[noise_image(seed) for seed in range(TRAINED_IMAGES)])["pixel_values"]
    expected = reference.generate(pixel_values=pixel_values, max_new_tokens=MAX_NEW_TOKENS)
    tokens = optimized.generate(pixel_values=pixel_values, max_new_tokens=MAX_NEW_TOKENS)
    assert len({tuple(row.tolist()) for row in expected}) >= 5  # five different reports, not one repeated
    # A 32-wide model is far more sensitive to int8 activations than a full-size one: a rare token may flip.
    identical = sum(torch.equal(a, b) for a, b in zip(tokens, expected))
    agreement = (tokens == expected).float().mean().item() if tokens.shape == expected.shape else 0.0
    assert identical >= 8 and agreement >= 0.95, (identical, agreement)


def test_the_auto_classes_load_the_package_classes(trained_release_dir):
    release = generate.open_release(str(trained_release_dir), "cpu", "float32", False)
    model, processor = release.model, release.processor
    assert type(model) is CLIPT5ForConditionalGeneration and type(processor) is CLIPT5Processor
    assert not model.training


def test_a_folder_of_another_model_type_is_refused(tmp_path, capsys):
    from transformers import T5Config

    T5Config(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as refused:
        generate.open_release(str(tmp_path), "cpu", "float32", False)
    assert refused.value.code == 2
    assert capsys.readouterr().err == (f"cliptt5-generate: error: {tmp_path} holds a 't5' model, not a CLIP-T5 "
                                       "release\n")


def test_optimize_flag_end_to_end(trained_release_dir, mixed_inputs, tmp_path):
    output = tmp_path / "fast.jsonl"
    assert generate.main(["--model", str(trained_release_dir), str(mixed_inputs), "--optimize", "--device", "cpu",
                          "--output", str(output), "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
    assert len(read_jsonl(output)) == 3


def test_help_explains_grouping(capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--help"])
    assert exit_info.value.code == 0
    assert "--study-by" in capsys.readouterr().out


def test_output_suffix_checked(tiny_release_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--model", str(tiny_release_dir), str(tmp_path), "--output", str(tmp_path / "x.txt")])
    assert exit_info.value.code == 2


def test_a_release_with_a_finding_head_writes_probabilities_findings_and_disagreements(head_release_dir, tmp_path):
    from conftest import HEAD_FINDINGS
    from modeling_cliptt5.evaluation.labeler import label_report
    from modeling_cliptt5.processing_cliptt5 import split_report_sections

    folder = tmp_path / "inputs"
    folder.mkdir()
    for seed in range(4):  # images the head release was trained on: Cardiomegaly on the odd ones
        noise_image(seed).save(folder / f"study{seed}.png")
    output = tmp_path / "drafts.jsonl"
    assert generate.main(["--model", str(head_release_dir), str(folder), "--output", str(output),
                          "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
    rows = read_jsonl(output)
    model = CLIPT5ForConditionalGeneration.from_pretrained(head_release_dir).eval()
    processor = CLIPT5Processor.from_pretrained(head_release_dir)
    for row in rows:
        assert row["findings"] == split_report_sections(row["report"])["findings"]  # still the section's text
        head = model.predict_findings(**processor(images=[Image.open(row["input_files"][0])]))
        expected = {name: float(p) for name, p in zip(HEAD_FINDINGS, head.probabilities[0])}
        assert row["finding_probabilities"] == pytest.approx(expected, abs=1e-4)
        assert row["predicted_findings"] == [name for name, flag in zip(HEAD_FINDINGS, head.present[0]) if flag]
        # disagreements: what the rule labeler reads in the text against the head's findings
        statuses = label_report(row["report"])
        stated = {name for name in HEAD_FINDINGS if statuses.get(name) in (1, -1)}
        expected_disagreements = {name for name in HEAD_FINDINGS if (name in stated) != (name in row["predicted_findings"])}
        assert {item["finding"] for item in row["disagreements"]} == expected_disagreements
    odd = [row for row in rows if row["id"] in ("study1", "study3")]
    assert all("Cardiomegaly" in row["predicted_findings"] and "heart is enlarged" in row["report"] for row in odd)

    csv_path = tmp_path / "drafts.csv"
    assert generate.main(["--model", str(head_release_dir), str(folder), "--output", str(csv_path),
                          "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
    with open(csv_path, newline="") as handle:
        first = next(csv.DictReader(handle))
    assert set(json.loads(first["finding_probabilities"])) == set(HEAD_FINDINGS)
    assert "disagreements" in first and "predicted_findings" in first


def test_a_draft_runs_the_finding_head_once_and_records_the_findings_generation_followed(head_release_dir):
    """The record's guidance is what generation used (a reader's finding where given, else the head's decision),
    and the head runs once per batch: the same tokens as generate() with those findings."""
    from conftest import HEAD_FINDINGS
    from modeling_cliptt5.inference.drafting import draft_batch, load_release

    release = load_release(head_release_dir)
    calls = []
    release.model.finding_head.register_forward_hook(lambda *_: calls.append(1))
    images = [noise_image(seed) for seed in (0, 1)]  # the head calls Cardiomegaly on odd images only
    given = [{"Cardiomegaly": True}, {}]
    drafts = draft_batch(release, images, None, {"max_new_tokens": MAX_NEW_TOKENS}, given)
    assert len(calls) == 1
    head = release.model.predict_findings(**release.processor(images=images))
    decided = [[name for name, flag in zip(HEAD_FINDINGS, row) if flag] for row in head.present.tolist()]
    assert "Cardiomegaly" not in decided[0] and "Cardiomegaly" in decided[1]  # the fixture's head, as trained
    assert drafts[0].guidance == sorted({"Cardiomegaly", *decided[0]}, key=HEAD_FINDINGS.index)
    assert drafts[1].guidance == decided[1]
    assert drafts[0].predicted_findings == decided[0]  # the head's own call stays on record beside it
    with torch.inference_mode():
        tokens = release.model.generate(**release.processor(images=images), findings=given,
                                        max_new_tokens=MAX_NEW_TOKENS)
    assert [draft.report for draft in drafts] == [text["text"] for text in release.processor.batch_decode_reports(tokens)]


def test_a_ct_slice_is_refused_in_one_line_and_drafted_only_with_any_modality(tiny_release_dir, mixed_inputs,
                                                                               tmp_path, capsys):
    from pydicom.data import get_testdata_file

    ct_slice, good = get_testdata_file("CT_small.dcm"), mixed_inputs / "a_png.png"
    unlabelled = grayscale_dicom(block_image(), tmp_path / "unlabelled.dcm", modality=None)
    output = tmp_path / "reports.jsonl"
    code = generate.main(["--model", str(tiny_release_dir), ct_slice, str(good), str(unlabelled),
                          "--output", str(output), "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    assert code == 1
    statuses = {row["id"]: (row["status"], row["reason"]) for row in read_jsonl(output)}
    assert sorted(statuses) == ["CT_small", "a_png", "unlabelled"]
    assert statuses["a_png"] == statuses["unlabelled"] == ("drafted", "")
    assert statuses["CT_small"][0] == "refused" and "modality CT" in statuses["CT_small"][1]
    (refusal,) = [line for line in err.splitlines() if "CT_small.dcm" in line]
    assert refusal.startswith("error: ") and "modality CT" in refusal and "--any-modality" in refusal
    (doubt,) = [line for line in err.splitlines() if "unlabelled.dcm" in line]
    assert doubt.startswith("warning: ") and "no Modality" in doubt

    code = generate.main(["--model", str(tiny_release_dir), ct_slice, "--output", str(output),
                          "--max-new-tokens", "4", "--any-modality"])
    err = capsys.readouterr().err
    assert code == 0 and [row["id"] for row in read_jsonl(output)] == ["CT_small"]
    assert any(line.startswith("warning: ") and "modality CT" in line for line in err.splitlines())


def test_a_draft_that_stops_at_the_token_limit_is_marked_warned_and_counted(trained_release_dir, tmp_path, capsys):
    from modeling_cliptt5.inference.drafting import TRUNCATED_WARNING

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for seed in range(3):  # trained images: the drafts are whole reports of 16-33 tokens and their end token
        noise_image(seed).save(inputs / f"s{seed}.png")
    ended, cut = tmp_path / "ended.jsonl", tmp_path / "cut.csv"
    assert generate.main(["--model", str(trained_release_dir), str(inputs), "--output", str(ended),
                          "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
    assert [row["truncated"] for row in read_jsonl(ended)] == [False] * 3
    assert "0 stopped at the token limit (truncated)" in capsys.readouterr().err
    assert generate.main(["--model", str(trained_release_dir), str(inputs), "--output", str(cut),
                          "--max-new-tokens", "5"]) == 0
    with open(cut, newline="") as handle:
        assert [row["truncated"] for row in csv.DictReader(handle)] == ["True"] * 3
    assert "3 stopped at the token limit (truncated)" in capsys.readouterr().err
    # printed drafts carry the warning above the text
    assert generate.main(["--model", str(trained_release_dir), str(inputs / "s0.png"), "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["== s0 (s0.png)", f"WARNING: {TRUNCATED_WARNING}"]


def test_the_page_warns_above_a_draft_that_stopped_at_the_token_limit_only(trained_release_dir, tmp_path):
    pytest.importorskip("gradio")
    from modeling_cliptt5.app.web_app import ReportDrafter, draft_report
    from modeling_cliptt5.inference.drafting import TRUNCATED_WARNING

    drafter = ReportDrafter.from_pretrained(trained_release_dir)
    image = tmp_path / "page_study.png"
    noise_image(1).save(image)
    drafter.model.generation_config.max_new_tokens = MAX_NEW_TOKENS
    _, _, info, _, draft, *_ = draft_report(drafter, [str(image)], "")
    assert info.startswith("Drafted in") and draft["truncated"] is False
    drafter.model.generation_config.max_new_tokens = 5
    _, _, info, _, draft, *_ = draft_report(drafter, [str(image)], "")
    assert info.startswith(f"**WARNING: {TRUNCATED_WARNING}**\n\nDrafted in") and draft["truncated"] is True


def test_stopped_at_limit_reads_the_end_token_in_any_row_form():
    from modeling_cliptt5.inference.drafting import stopped_at_limit

    pad, end = 0, 1
    sequences = torch.tensor([[pad, 5, 6, end, pad],   # ended, padded after
                              [pad, 5, 6, 7, 8],       # never ended
                              [pad, end, pad, pad, pad]])  # ended at once (an empty draft)
    assert stopped_at_limit(sequences, end).tolist() == [False, True, False]
    assert stopped_at_limit(sequences, [end, 8]).tolist() == [False, False, False]
    assert stopped_at_limit(sequences, None).tolist() == [True, True, True]  # no end token: nothing ends


def test_the_run_summary_counts_what_a_reader_must_look_at_twice():
    tally = generate.Tally()
    for row in [{"status": "drafted", "ood_flag": True, "truncated": False, "repeated_sentences": 2},
                {"status": "drafted", "ood_flag": False, "truncated": True, "repeated_sentences": 0},
                {"status": "drafted", "truncated": False, "repeated_sentences": 1},  # a release without an OOD summary
                {"status": "refused", "ood_flag": True, "truncated": False, "repeated_sentences": 0},  # --refuse-ood
                {"status": "failed", "truncated": False, "repeated_sentences": 0}]:
        tally.add(row)
    line = generate.run_summary(tally, 5, "5 files", 1.25, "how", None, 2)
    assert line == ("3 of 5 studies drafted from 5 files in 1.2 s (how); 1 flagged as unlike the training images "
                    "(ood_flag), 1 stopped at the token limit (truncated), 2 repeat a sentence (repeated_sentences); "
                    "1 studies refused, 1 failed, 2 problems")
    resumed = generate.run_summary(tally, 5, "5 files", 1.25, "how", "out.jsonl", 2, written=2, earlier=3)
    assert resumed.endswith(", written to out.jsonl; 1 flagged as unlike the training images (ood_flag), 1 stopped at "
                            "the token limit (truncated), 2 repeat a sentence (repeated_sentences); 1 studies refused, "
                            "1 failed, 2 problems; 2 records written by this run, 3 by an earlier run")


def test_frontal_names_each_studys_frontal_by_file_name(two_view_release_dir, tmp_path, capsys):
    folder = tmp_path / "s1"
    folder.mkdir()
    noise_image(0).save(folder / "s1_lat.png")  # first by name: without a header, it would be taken as the frontal
    noise_image(1).save(folder / "s1_pa.png")
    output = tmp_path / "reports.jsonl"
    assert generate.main(["--model", str(two_view_release_dir), str(folder), "--frontal", "*_pa.*", "--output",
                          str(output), "--max-new-tokens", "4"]) == 0
    (row,) = read_jsonl(output)
    assert [Path(name).name for name in row["input_files"]] == ["s1_pa.png", "s1_lat.png"]
    assert "taken as the frontal" not in capsys.readouterr().err

"""OpenI XML converter, on real reports (torchxrayvision's NLMCXR_reports.tgz) with tiny PNGs made here."""

import collections
import importlib.metadata
import json
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from conftest import subprocess_env
from converter_test_images import jpeg_bytes, png_bytes, stored_image_bytes, truncated_jpeg_bytes, write
from modeling_cliptt5.cli import convert_openi
from modeling_cliptt5.data.converters import openi
from modeling_cliptt5.data.converters.common import split_for_study
from modeling_cliptt5.data.schema import load_report_dataset


@pytest.fixture(scope="module")
def reports_archive():
    try:
        distribution = importlib.metadata.distribution("torchxrayvision")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torchxrayvision (with NLMCXR_reports.tgz) is not installed")
    return next(Path(distribution.locate_file(f)) for f in distribution.files if f.name == "NLMCXR_reports.tgz")


def real_reports(archive_path, count):
    """(member name, XML bytes, parsed by ElementTree here) of the first `count` reports with two or more views."""
    chosen = []
    with tarfile.open(archive_path) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if not member.name.endswith(".xml"):
                continue
            data = archive.extractfile(member).read()
            root = ElementTree.fromstring(data)
            texts = {e.get("Label"): (e.text or "") for e in root.iter("AbstractText")}
            images = [e.get("id") for e in root.iter("parentImage")]
            if len(images) >= 2 and texts["FINDINGS"] and texts["IMPRESSION"]:
                chosen.append((Path(member.name).name, data, {"id": root.find("uId").get("id"), "texts": texts,
                                                             "images": images}))
            if len(chosen) == count:
                return chosen
    return chosen


def expected_text(text):
    """OpenI text as the converter should store it: one space between words, "x-XXXX" written as the token XXXX."""
    return " ".join(re.sub(r"[xX]-XXXX", "XXXX", text).split())


@pytest.fixture()
def openi_folder(reports_archive, tmp_path):
    """ecgen-radiology/ with 6 real reports and 3 broken ones, and images for the real ones (one view missing)."""
    reports_dir, images_dir = tmp_path / "ecgen-radiology", tmp_path / "images"
    reports_dir.mkdir()
    real = real_reports(reports_archive, 6)
    images = {}
    for index, (name, data, report) in enumerate(real):
        (reports_dir / name).write_bytes(data)
        views = report["images"] if index != 5 else report["images"][:1]  # the last study misses a view
        images[report["id"]] = [write(images_dir / f"{image_id}.png", png_bytes(shade=index * 20 + view)).read_bytes()
                                for view, image_id in enumerate(views)]
    (reports_dir / "broken.xml").write_bytes(b"<eCitation><uId id='CXRbroken'/><Abstract>")
    (reports_dir / "latin1.xml").write_bytes('<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXRlatin"/>'
                                             '<AbstractText Label="FINDINGS">Caf\xe9</AbstractText></eCitation>'
                                             .encode("latin-1"))
    (reports_dir / "noimages.xml").write_bytes(b'<eCitation><uId id="CXRnone"/><AbstractText Label="FINDINGS">'
                                               b'Clear.</AbstractText></eCitation>')
    return reports_dir, images_dir, real, images


def test_real_reports_become_studies_with_all_their_views(openi_folder, tmp_path, capsys):
    reports_dir, images_dir, real, images = openi_folder
    output = tmp_path / "out"
    assert convert_openi.main(["--reports", str(reports_dir), "--images", str(images_dir),
                               "--output", str(output)]) == 0
    dataset = load_report_dataset(str(output))
    rows = {row["id"]: row for split in dataset.values() for row in split}
    complete = {report["id"] for _, _, report in real[:5]}
    assert set(rows) == complete
    stored = stored_image_bytes(dataset)
    for _, _, report in real[:5]:
        row = rows[report["id"]]
        assert row["findings"] == expected_text(report["texts"]["FINDINGS"])
        assert row["impression"] == expected_text(report["texts"]["IMPRESSION"])
        assert row["indication"] == expected_text(report["texts"]["INDICATION"])
        assert row["report"] == f"FINDINGS: {row['findings']} IMPRESSION: {row['impression']}"
        assert stored[report["id"]] == images[report["id"]]  # every parentImage, in the XML's order
        assert row["source"] == "openi"
    skipped = {entry["id"]: entry for entry in map(json.loads, (output / "skipped.jsonl").read_text().splitlines())}
    assert set(skipped) == {real[5][2]["id"], "broken", "latin1", "CXRnone"}
    assert skipped[real[5][2]["id"]]["reason"] == "missing image file"
    assert skipped[real[5][2]["id"]]["file"].endswith(f"{real[5][2]['images'][1]}.png")
    assert "not well-formed XML" in skipped["broken"]["reason"]
    assert "not well-formed XML or not UTF-8" in skipped["latin1"]["reason"]
    assert skipped["CXRnone"]["reason"] == "no image listed"
    assert "read 9, converted 5, skipped 4" in capsys.readouterr().out


def test_bundled_reports_are_the_default(openi_folder, reports_archive, tmp_path, capsys):
    _, images_dir, real, images = openi_folder
    assert openi.bundled_reports() == reports_archive
    output = tmp_path / "out"
    assert convert_openi.main(["--images", str(images_dir), "--output", str(output), "--report-target",
                               "impression"]) == 0
    rows = {row["id"]: row for split in load_report_dataset(str(output)).values() for row in split}
    assert set(rows) == {report["id"] for _, _, report in real[:5]}
    assert all(row["report"] == row["impression"] for row in rows.values())
    # Every other real report was read and skipped with a reason: 3,955 in all.
    assert "read 3955, converted 5, skipped 3950" in capsys.readouterr().out


def test_splits_are_drawn_by_study_id(reports_archive):
    """Fractions hold on the 3,955 real study ids, and a study's split is fixed by its id."""
    with tarfile.open(reports_archive) as archive:
        ids = [f"CXR{Path(m.name).stem}" for m in archive.getmembers() if m.name.endswith(".xml")]
    splits = collections.Counter(split_for_study(study_id, 0.1, 0.2) for study_id in ids)
    assert abs(splits["validation"] / len(ids) - 0.1) < 0.02 and abs(splits["test"] / len(ids) - 0.2) < 0.02
    assert [split_for_study(study_id, 0.1, 0.2) for study_id in ids[:50]] == [
        split_for_study(study_id, 0.1, 0.2) for study_id in ids[:50]]
    # Growing the test share only moves studies from train into test, never between validation and test.
    larger = {study_id: split_for_study(study_id, 0.1, 0.3) for study_id in ids}
    for study_id in ids:
        if split_for_study(study_id, 0.1, 0.2) != "train":
            assert larger[study_id] == split_for_study(study_id, 0.1, 0.2)


def test_views_of_one_study_share_its_split(openi_folder, tmp_path):
    reports_dir, images_dir, real, _ = openi_folder
    output = tmp_path / "out"
    convert_openi.main(["--reports", str(reports_dir), "--images", str(images_dir), "--output", str(output),
                        "--validation-fraction", "0.4", "--test-fraction", "0.4"])
    dataset = load_report_dataset(str(output))
    for split in dataset:
        for row in dataset[split]:
            assert split == split_for_study(row["id"], 0.4, 0.4)
            assert len(row["images"]) == len(next(r for _, _, r in real if r["id"] == row["id"])["images"])


def test_bad_images_and_escaping_ids_are_skipped(openi_folder, tmp_path):
    reports_dir, images_dir, real, _ = openi_folder
    name, data, report = real[0]
    write(images_dir / f"{report['images'][0]}.png", truncated_jpeg_bytes())
    (reports_dir / "escape.xml").write_bytes(b'<eCitation><uId id="CXResc"/><AbstractText Label="FINDINGS">Clear.'
                                             b'</AbstractText><parentImage id="../../x"/></eCitation>')
    write(tmp_path / "x.png", jpeg_bytes())
    output = tmp_path / "out"
    convert_openi.main(["--reports", str(reports_dir), "--images", str(images_dir), "--output", str(output)])
    skipped = {entry["id"]: entry for entry in map(json.loads, (output / "skipped.jsonl").read_text().splitlines())}
    assert "truncated" in skipped[report["id"]]["reason"]
    assert skipped["CXResc"]["reason"] == "path escapes the dataset folder"


def test_nothing_convertible_writes_nothing(openi_folder, tmp_path, capsys):
    reports_dir, _, _, _ = openi_folder
    (tmp_path / "no_images").mkdir()
    output = tmp_path / "out"
    assert convert_openi.main(["--reports", str(reports_dir), "--images", str(tmp_path / "no_images"),
                               "--output", str(output)]) == 1
    message = capsys.readouterr().err
    assert "nothing could be converted" in message and "skipped (missing image file): 6" in message
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ecgen-radiology", "images",
                                                                                  "no_images"]


RUN_EVERY_CLI = """
import contextlib, io, runpy, sys
for how, target in [("path", "conversion/convert_kaggle_cxr.py"), ("module", "modeling_cliptt5.cli.convert_openi"),
                    ("path", "conversion/convert_openi.py"), ("module", "modeling_cliptt5.cli.convert_kaggle_cxr"),
                    ("path", "modeling_cliptt5/data/converters/tfrecord_reader.py"), ("path", "conversion/convert_r2gen.py"),
                    ("module", "modeling_cliptt5.cli.convert_r2gen"), ("path", "conversion/convert_imagefolder.py")]:
    sys.argv = [target, "--help"]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        try:
            (runpy.run_path if how == "path" else runpy.run_module)(target, run_name="__main__")
        except SystemExit as done:
            assert done.code in (0, None), (target, done.code)
    assert "usage:" in printed.getvalue(), target
    print("ok", how, target)
"""


def test_converters_run_as_scripts_and_modules():
    """`python conversion/convert_x.py` and `python -m modeling_cliptt5.cli.convert_x` both work (one child process)."""
    result = subprocess.run([sys.executable, "-c", RUN_EVERY_CLI], cwd=Path(__file__).resolve().parents[2],
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok ") == 8
    assert "tensorflow" not in result.stderr.lower()

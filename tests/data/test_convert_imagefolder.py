"""Image folder + metadata.jsonl/.csv converter: views grouped by study, text columns, splits, DICOM, bad rows."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import subprocess_env
from converter_test_images import (
    bomb_png_bytes, jpeg_bytes, png_bytes, stored_image_bytes, truncated_jpeg_bytes, write,
)
from modeling_cliptt5.cli import convert_imagefolder
from modeling_cliptt5.data.schema import load_report_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n" for row in rows))


def skipped_entries(output):
    return [json.loads(line) for line in (output / "skipped.jsonl").read_text().splitlines()]


def rows_by_id(dataset_dict):
    return {row["id"]: row for split in dataset_dict.values() for row in split}


@pytest.fixture()
def jsonl_folder(tmp_path):
    folder = tmp_path / "cxr"
    images = {name: write(folder / "images" / name, data).read_bytes() for name, data in (
        ("a_lat.jpg", jpeg_bytes(10)), ("a_pa.jpg", jpeg_bytes(20)), ("b.png", png_bytes(30)),
        ("c.jpg", jpeg_bytes(40)), ("zero.jpg", b""), ("cut.jpg", truncated_jpeg_bytes()),
        ("bomb.png", bomb_png_bytes()),
        ("empty_text.jpg", jpeg_bytes(50)), ("d.jpg", jpeg_bytes(60)))}
    write(tmp_path / "outside.jpg", jpeg_bytes())
    write_jsonl(folder / "metadata.jsonl", [
        # Study "a": two views, lateral listed first; the frontal (PA) view must come first in the output.
        {"file_name": "images/a_lat.jpg", "study_id": "a", "view": "LATERAL", "findings": "Lungs clear.",
         "impression": "Normal.", "split": "validation", "labels": ["no_finding"]},
        {"file_name": "images/a_pa.jpg", "study_id": "a", "view": "PA", "findings": "Lungs clear.",
         "impression": "Normal.", "split": "validation", "labels": ["no_finding"]},
        # Free text with headers -> sections; "val" is accepted for validation.
        {"file_name": "images/b.png", "study_id": "b", "report": "INDICATION: cough. FINDINGS: Small effusion. "
         "IMPRESSION: Left effusion.", "split": "test", "labels": "pleural_effusion:left|cough"},
        {"file_name": "images/c.jpg", "text": "No headers at all.", "split": "train"},
        {"file_name": "images/missing.jpg", "findings": "Clear."},
        {"file_name": "images/zero.jpg", "findings": "Clear."},
        {"file_name": "images/cut.jpg", "findings": "Clear."},
        {"file_name": "images/bomb.png", "findings": "Clear."},
        {"file_name": "images/empty_text.jpg", "findings": "", "impression": " "},
        {"file_name": "../outside.jpg", "findings": "Clear."},
        {"file_name": "images/c.jpg", "findings": "Same file again."},  # duplicate id (file_name is the id)
        {"file_name": "images/d.jpg", "findings": "Clear.", "split": "holdout"},
        b'{"file_name": "images/d.jpg", "findings": \n',  # cut JSON line
        b'{"file_name": "images/d.jpg", "findings": "caf\xe9"}\n',  # Latin-1 byte
        {"study_id": "no-file", "findings": "Clear."},
    ])
    return folder, images


def test_jsonl_folder_groups_views_and_names_every_bad_row(jsonl_folder, tmp_path, capsys):
    folder, images = jsonl_folder
    output = tmp_path / "out"
    assert convert_imagefolder.main([str(folder), "--output", str(output)]) == 0
    dataset = load_report_dataset(str(output))
    rows = rows_by_id(dataset)
    assert set(rows) == {"a", "b", "images/c.jpg"}
    stored = stored_image_bytes(dataset)
    assert stored["a"] == [images["a_pa.jpg"], images["a_lat.jpg"]]  # frontal first
    assert [rows[study]["split"] for study in ("a", "b", "images/c.jpg")] == ["validation", "test", "train"]
    assert (rows["a"]["findings"], rows["a"]["impression"], rows["a"]["labels"]) == ("Lungs clear.", "Normal.",
                                                                                     ["no_finding"])
    assert (rows["b"]["findings"], rows["b"]["impression"], rows["b"]["indication"]) == (
        "Small effusion.", "Left effusion.", "cough.")
    assert rows["b"]["labels"] == ["pleural_effusion:left", "cough"]
    assert rows["images/c.jpg"]["findings"] == "No headers at all." and rows["images/c.jpg"]["impression"] == ""

    reasons = [(entry["id"], entry["reason"]) for entry in skipped_entries(output)]
    by_id = dict(reasons)
    assert by_id["images/missing.jpg"] == "missing image file"
    assert "empty file" in by_id["images/zero.jpg"]
    assert "truncated" in by_id["images/cut.jpg"]
    assert "too large" in by_id["images/bomb.png"]
    assert by_id["images/empty_text.jpg"] == "empty report"
    assert by_id["../outside.jpg"] == "path escapes the dataset folder"
    assert ("images/c.jpg", "duplicate id") in reasons
    assert by_id["images/d.jpg"].startswith("unknown split 'holdout'")
    assert [reason for study_id, reason in reasons if study_id is None] == [
        "not valid JSON (Expecting value)", "text is not UTF-8"]
    assert by_id["no-file"] == "no file_name"
    # 15 metadata lines, 2 of them one study: 14 records, every one converted or skipped.
    assert len(rows) + len(reasons) == 14
    assert "read 14, converted 3, skipped 11" in capsys.readouterr().out


def test_csv_metadata_and_split_folders(tmp_path):
    folder = tmp_path / "cxr"
    write(folder / "train" / "x.jpg", jpeg_bytes(1))
    write(folder / "train" / "y.jpg", jpeg_bytes(2))
    write(folder / "test" / "z.png", png_bytes(3))
    (folder / "train" / "metadata.csv").write_bytes(
        b'file_name,findings,impression\nx.jpg,"Clear, both sides.",Normal.\ny.jpg,only two\n'
        b'y.jpg,"Caf\xe9 text",Normal.\n')
    (folder / "test" / "metadata.csv").write_bytes(b"file_name,report\nz.png,FINDINGS: Mass. IMPRESSION: Tumour.\n")
    output = tmp_path / "out"
    assert convert_imagefolder.main([str(folder), "--output", str(output)]) == 0
    dataset = load_report_dataset(str(output))
    assert dataset["train"]["id"] == ["x.jpg"] and dataset["test"]["id"] == ["z.png"]
    assert dataset["train"][0]["findings"] == "Clear, both sides."
    assert (dataset["test"][0]["findings"], dataset["test"][0]["impression"]) == ("Mass.", "Tumour.")
    assert [entry["reason"] for entry in skipped_entries(output)] == [
        "CSV row has 2 columns, the header has 3", "text is not UTF-8"]


def test_dicom_is_stored_as_16_bit_png(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 30 + 400)  # 12-bit values 400..3970
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.PhotometricInterpretation = "CR", "MONOCHROME2"
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = 12, 10, 1
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = pixels.tobytes()
    folder = tmp_path / "cxr"
    (folder / "dicom").mkdir(parents=True)
    dataset.save_as(folder / "dicom" / "study1.dcm", enforce_file_format=True)
    write_jsonl(folder / "metadata.jsonl", [{"file_name": "dicom/study1.dcm", "findings": "Clear."}])
    output = tmp_path / "out"
    assert convert_imagefolder.main([str(folder), "--output", str(output), "--test-fraction", "0",
                                     "--validation-fraction", "0"]) == 0
    stored = stored_image_bytes(load_report_dataset(str(output)))["dicom/study1.dcm"]
    image = Image.open(io.BytesIO(stored[0]))
    assert image.format == "PNG" and image.mode in ("I;16", "I")
    # No window in the header: the image's own range spans 0..65535 (dicom.py), so all 120 levels stay distinct.
    values = np.asarray(image).astype(np.int64)
    expected = np.round((pixels.astype(np.float64) - 400) / (3970 - 400) * 65535)
    assert np.array_equal(values, expected.astype(np.int64))


def test_a_ct_slice_is_skipped_naming_its_modality_unless_any_modality(tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    folder = tmp_path / "cxr"
    folder.mkdir()
    # The study folder needs the file beside its metadata: a copy made by the test, not one kept in the repo.
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(folder / "cxr.png")
    write_jsonl(folder / "metadata.jsonl", [{"file_name": "ct.dcm", "study_id": "ct", "findings": "Clear."},
                                            {"file_name": "cxr.png", "study_id": "cxr", "findings": "Clear."}])
    split_options = ["--test-fraction", "0", "--validation-fraction", "0"]
    output = tmp_path / "out"
    assert convert_imagefolder.main([str(folder), "--output", str(output), *split_options]) == 0
    assert sorted(rows_by_id(load_report_dataset(str(output)))) == ["cxr"]
    (entry,) = skipped_entries(output)
    assert "ct.dcm" in entry["file"] and "modality CT" in entry["reason"] and "--any-modality" in entry["reason"]

    assert convert_imagefolder.main([str(folder), "--output", str(output), *split_options, "--any-modality"]) == 0
    assert sorted(rows_by_id(load_report_dataset(str(output)))) == ["ct", "cxr"]


def test_missing_metadata_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "cxr").mkdir()
    assert convert_imagefolder.main([str(tmp_path / "cxr"), "--output", str(tmp_path / "out")]) == 1
    assert "no metadata.jsonl or metadata.csv" in capsys.readouterr().err


def test_runs_as_a_module(jsonl_folder, tmp_path):
    folder, _ = jsonl_folder
    output = tmp_path / "module_out"
    result = subprocess.run([sys.executable, "-m", "modeling_cliptt5.cli.convert_imagefolder", str(folder), "--output",
                             str(output), "--max-samples", "5", "--seed", "1", "--report-target", "findings"],
                            cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "read 5, converted" in result.stdout and "skipped" in result.stdout
    dataset = load_report_dataset(str(output))
    assert sum(split.num_rows for split in dataset.values()) + len(skipped_entries(output)) == 5
    assert "converting" in result.stderr  # the tqdm progress bar

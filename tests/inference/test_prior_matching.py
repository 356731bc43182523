"""cliptt5-generate with priors: each study drafted against the latest earlier study of the same patient among the
inputs (DICOM headers, or --study-table for PNG/JPEG), or a named --prior; refusals for another patient's or a
later study; warnings for a release without priors and for a prior report longer than the release reads."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import MAX_NEW_TOKENS, TINY_REPORTS, model_draft_against, noise_image
from dicom_files import grayscale_dicom
from modeling_cliptt5.cli import generate
from modeling_cliptt5.inference.priors import StudyTableError, read_study_table


def direct_draft(release, path, prior_path=None, prior_report=None):
    """The report the model writes for `path` against that prior, computed without the command."""
    return model_draft_against(release, path, prior_path, prior_report, max_new_tokens=MAX_NEW_TOKENS)["text"]


def read_jsonl(path):
    return {row["id"]: row for row in map(json.loads, Path(path).read_text().splitlines())}


def run(release, inputs, output, *flags):
    return generate.main(["--model", str(release), *map(str, inputs), "--output", str(output),
                          "--max-new-tokens", str(MAX_NEW_TOKENS), *map(str, flags)])


@pytest.fixture
def dicom_studies(tmp_path):
    """Two studies of patient A (2023 and 2024) and one of patient B (2024), as DICOM files in one folder."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    for name, seed, patient, date in (("a_2023", 0, "A", "20230105"), ("a_2024", 1, "A", "20240301"),
                                      ("b_2024", 2, "B", "20230101")):
        grayscale_dicom(np.array(noise_image(seed)), folder / f"{name}.dcm",
                        header={"PatientID": patient, "StudyDate": date, "StudyTime": "101500"})
    return folder


def test_each_study_is_drafted_against_the_patients_latest_earlier_study_from_the_dicom_headers(
        prior_release_dir, dicom_studies, tmp_path):
    assert run(prior_release_dir, [dicom_studies], tmp_path / "drafts.jsonl") == 0
    rows = read_jsonl(tmp_path / "drafts.jsonl")
    assert {study: row["prior_id"] for study, row in rows.items()} == {"a_2023": "", "a_2024": "a_2023", "b_2024": ""}
    later, earlier = dicom_studies / "a_2024.dcm", dicom_studies / "a_2023.dcm"
    assert rows["a_2024"]["report"] == direct_draft(prior_release_dir, later, earlier)
    assert rows["a_2024"]["report"] != direct_draft(prior_release_dir, later)  # the prior made a difference
    assert rows["b_2024"]["report"] == direct_draft(prior_release_dir, dicom_studies / "b_2024.dcm")


def test_png_studies_find_their_priors_and_prior_reports_in_a_study_table(prior_release_dir, tmp_path):
    folder = tmp_path / "png"
    folder.mkdir()
    for name, seed in (("first", 3), ("second", 4), ("other", 5)):
        noise_image(seed).save(folder / f"{name}.png")
    table = tmp_path / "studies.csv"
    table.write_text("study,patient_id,study_datetime,report\n"
                     f"first,P1,2024-01-02T08:00,\"{TINY_REPORTS[2]}\"\n"
                     "second,P1,2024-06-30,\n"
                     "other,P2,2024-01-01,\n")
    assert run(prior_release_dir, [folder], tmp_path / "drafts.csv", "--study-table", table) == 0
    import csv

    rows = {row["id"]: row for row in csv.DictReader((tmp_path / "drafts.csv").open())}
    assert {study: row["prior_id"] for study, row in rows.items()} == {"first": "", "second": "first", "other": ""}
    assert rows["second"]["report"] == direct_draft(prior_release_dir, folder / "second.png", folder / "first.png",
                                                    TINY_REPORTS[2])


def test_a_named_prior_is_checked_against_the_study(prior_release_dir, dicom_studies, tmp_path, capsys):
    study = dicom_studies / "a_2024.dcm"
    report = tmp_path / "prior.txt"
    report.write_text(TINY_REPORTS[1])
    assert run(prior_release_dir, [study], tmp_path / "ok.jsonl", "--prior", dicom_studies / "a_2023.dcm",
               "--prior-report", report) == 0
    row = read_jsonl(tmp_path / "ok.jsonl")["a_2024"]
    assert row["prior_id"] == "a_2023"
    assert row["report"] == direct_draft(prior_release_dir, study, dicom_studies / "a_2023.dcm", TINY_REPORTS[1])

    earlier = dicom_studies / "a_2023.dcm"
    for current, prior, message in (
            (study, dicom_studies / "b_2024.dcm", "is of patient 'B', the study a_2024 of patient 'A'"),
            (earlier, study, "the prior a_2024 is dated 2024-03-01T10:15:00, not before the study a_2023")):
        with pytest.raises(SystemExit) as stopped:
            run(prior_release_dir, [current], tmp_path / "refused.jsonl", "--prior", prior)
        assert stopped.value.code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "refused.jsonl").exists()  # nothing drafted against it

    with pytest.raises(SystemExit) as stopped:
        run(prior_release_dir, [dicom_studies], tmp_path / "many.jsonl", "--prior", study)
    assert stopped.value.code == 2 and "the inputs hold 3 studies" in capsys.readouterr().err


def test_a_long_prior_report_and_a_release_without_priors_are_warned_about(prior_release_dir, tiny_release_dir,
                                                                          dicom_studies, tmp_path, capsys):
    study, prior = dicom_studies / "a_2024.dcm", dicom_studies / "a_2023.dcm"
    long_report = tmp_path / "long.txt"
    long_report.write_text(" ".join(TINY_REPORTS))
    assert run(prior_release_dir, [study], tmp_path / "long.jsonl", "--prior", prior, "--prior-report",
               long_report) == 0
    error = capsys.readouterr().err
    assert "a_2024: the prior report of a_2023 has" in error and "this release reads the first 48" in error
    assert read_jsonl(tmp_path / "long.jsonl")["a_2024"]["prior_id"] == "a_2023"

    assert run(tiny_release_dir, [study], tmp_path / "old.jsonl", "--prior", prior) == 0
    assert "this release does not read a prior study" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "old.jsonl")["a_2024"]["prior_id"] == ""


def test_a_study_table_without_its_columns_or_with_a_bad_date_names_the_file_and_row(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("study,patient\ns1,P1\n")
    with pytest.raises(StudyTableError, match=r"t.csv: .*patient_id, study_datetime missing"):
        read_study_table(table)
    table.write_text("study,patient_id,study_datetime\ns1,P1,yesterday\n")
    with pytest.raises(StudyTableError, match=r"t.csv:2: unreadable study date 'yesterday'"):
        read_study_table(table)

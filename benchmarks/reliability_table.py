"""The reliability table: every bad input, fault and load case the package handles, what happens, and the test that
shows it, with that test's result from running it now (so the table stays true).

    python benchmarks/reliability_table.py            # runs the tests, writes docs/reliability.md
    python benchmarks/reliability_table.py --no-run   # the table without results (quick look)

Cases not handled yet are listed with "open" instead of a test.
"""

import argparse
import datetime
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT = REPO_ROOT / "docs" / "reliability.md"

# (area, case, what happens, test node id or None for a case still open)
CASES = [
    ("install", "pip-installed (non-editable) package trains, writes its release with card, resumes, drafts",
     "the model card template ships as package data; nothing is read from the source tree",
     "tests/test_installed_package.py"),
    ("install", "installed commands run from another folder with relative paths, --optimize and --config demo included",
     "paths are read where the user is; the fast path's export child gets the absolute release folder; the "
     "configs ship in the package; no help text names a source-tree script",
     "tests/test_installed_package.py::test_the_installed_commands_convert_train_release_draft_and_serve_from_another_folder"),
    ("install", "a command that succeeds, one whose inputs partly fail, one given a bad option or no release",
     "exit status 0, 1 (each failed input named in one line) or 2 (one line); never a traceback or a dumped dict",
     "tests/test_exit_status.py"),
    ("install", "training without Hub access (network namespace with no way out, with and without HF_HUB_OFFLINE)",
     "BiomedCLIP, its text tower and T5 read from local folders; a Hub id without a copy stops the run at once in "
     "one line naming the model, the `hf download` command and the flag",
     "tests/training/test_air_gapped.py"),
    ("DICOM", "CT, MR, nuclear-medicine image (pydicom's own test files)",
     "refused: one line naming the file and the modality; --any-modality reads it with a warning",
     "tests/images/test_dicom.py::test_other_modalities_are_refused_naming_file_and_modality"),
    ("DICOM", "multi-frame object", "refused naming the frame count; --any-modality reads the first frame",
     "tests/images/test_dicom.py::test_multiframe_is_refused_naming_its_frames_unless_any_modality"),
    ("DICOM", "secondary capture, no Modality, another body part", "read, with a warning naming the file",
     "tests/images/test_dicom.py::test_radiographs_pass_secondary_captures_and_unlabelled_files_pass_with_a_doubt"),
    ("DICOM", "JPEG-LS, JPEG 2000, RLE", "decoded pixel-exact (against the uncompressed copy)",
     "tests/images/test_dicom.py::test_lossless_syntaxes_give_the_uncompressed_pixels"),
    ("DICOM", "JPEG Lossless (Process 14)", "decoded pixel-exact",
     "tests/images/test_dicom.py::test_jpeg_lossless_process_14_gives_the_rle_copys_pixels"),
    ("DICOM", "JPEG Baseline", "decoded within a few grey levels of the lossless copy",
     "tests/images/test_dicom.py::test_jpeg_baseline_is_within_a_few_grey_levels_of_the_lossless_copy"),
    ("DICOM", "12-bit JPEG Extended", "decoded with its 12-bit depth",
     "tests/images/test_dicom.py::test_12_bit_jpeg_extended_keeps_its_depth_and_shows_the_same_scan_as_its_jpeg_2000_copy"),
    ("DICOM", "no decoder installed for the syntax", "named error saying which package decodes it",
     "tests/images/test_dicom.py::test_missing_decoder_names_the_syntax_and_the_package_that_decodes_it"),
    ("DICOM", "damaged compressed pixel data", "named error with the syntax",
     "tests/images/test_dicom.py::test_damaged_compressed_data_names_the_syntax"),
    ("DICOM", "structured report, zero bytes, truncated header or pixels, text named .dcm",
     "named one-line errors", "tests/images/test_dicom.py"),
    ("generate.py", "a draft that stops at the token limit (cut off, or caught in a loop)",
     "`truncated` in JSONL/CSV, a WARNING above the printed draft and on the page, counted in the last line",
     "tests/inference/test_generate.py::test_a_draft_that_stops_at_the_token_limit_is_marked_warned_and_counted"),
    ("generate.py", "a CT slice among radiographs", "one error line, the others drafted, exit code 1",
     "tests/inference/test_generate.py::test_a_ct_slice_is_refused_in_one_line_and_drafted_only_with_any_modality"),
    ("generate.py", "empty, truncated, corrupt, non-image, oversized, missing files",
     "one line each, the rest drafted", "tests/inference/test_generate.py::test_every_bad_input_reported_and_the_rest_written"),
    ("page", "a CT slice dropped", "not drafted, the reason shown; unlabelled DICOM drafted with a note",
     "tests/app/test_app.py::test_a_ct_slice_is_not_drafted_and_an_unlabelled_dicom_is_drafted_with_a_note_to_check"),
    ("converters", "a CT slice in a folder dataset", "skipped with the reason in skipped.jsonl",
     "tests/data/test_convert_imagefolder.py::test_a_ct_slice_is_skipped_naming_its_modality_unless_any_modality"),
    ("OOD", "noise, textures, inverted / rotated radiographs, CT-like slice, blank frames",
     "flagged (ood_flag) by a phantom-trained release; own test phantoms flagged ~1%",
     "tests/inference/test_ood.py::test_the_release_flags_foreign_images_and_few_of_its_own_test_phantoms"),
    ("OOD", "--refuse-ood", "flagged studies are not drafted, each named with the reason",
     "tests/inference/test_ood.py::test_generate_writes_score_and_flag_and_refuse_ood_skips_the_foreign_study"),
    ("OOD", "a foreign image on the page", "a warning above the draft",
     "tests/inference/test_ood.py::test_the_page_warns_above_a_draft_of_a_foreign_image"),
    ("OOD", "a release without a summary", "drafts as before, with a note",
     "tests/inference/test_ood.py::test_a_release_without_a_summary_drafts_with_a_note"),
    ("nothing lost", "stage-1 run killed and resumed (random crops)", "the uninterrupted run's weights, exactly",
     "tests/training/test_contrastive.py::test_a_resumed_stage_one_run_ends_with_the_uninterrupted_runs_weights"),
    ("nothing lost", "a release write that fails midway", "the previous release intact, no temporary folder",
     "tests/test_release.py"),
    ("nothing lost", "push without network or in offline mode", "one line; nothing uploaded; folder unchanged",
     "tests/test_release.py::test_a_push_that_cannot_reach_the_hub_says_so_in_one_line_and_changes_nothing"),
    ("nothing lost", "converted release", "a full release (info, model card): pushable",
     "tests/test_convert_biomedclip.py::test_cli_writes_a_complete_release"),
    ("nothing lost", "a conversion that fails midway", "no output folder, the previous one kept",
     "tests/data/test_convert_kaggle.py::test_failure_mid_way_leaves_no_output"),
    ("nothing lost", "SIGKILL while a release is written", "the previous release byte-identical; the next run "
     "removes the hidden half-written one", "tests/test_release.py::"
     "test_a_release_write_killed_midway_leaves_the_previous_release_whole"),
    ("nothing lost", "killed between moving the old release aside and the new one in",
     "the next run puts the previous release back",
     "tests/test_release.py::test_a_kill_between_the_two_renames_puts_the_previous_release_back"),
    ("nothing lost", "a full disk (real ENOSPC, small tmpfs) while converting: in the row cache or the save",
     "one line naming the folder and the cause; no dataset, no hidden cache or temporary folder left",
     "tests/test_full_disk.py::test_a_conversion_that_fills_the_disk_says_so_and_leaves_nothing"),
    ("nothing lost", "a full disk while converting over an earlier dataset", "the earlier dataset byte-identical",
     "tests/test_full_disk.py::test_a_conversion_over_an_earlier_dataset_on_a_full_disk_keeps_the_earlier_one"),
    ("nothing lost", "a full disk during training (a state write)", "train.py: one line naming the state folder; "
     "only complete states and the complete release left",
     "tests/test_full_disk.py::test_training_on_a_full_disk_names_the_folder_and_leaves_only_complete_ones"),
    ("nothing lost", "a full disk while a release is written over the previous one",
     "DiskFullError naming the release; the previous release byte-identical",
     "tests/test_full_disk.py::test_a_release_written_over_the_previous_one_on_a_full_disk_leaves_it_whole"),
    ("nothing lost", "a feature cache larger than the disk", "a named error at the start (blocks reserved), "
     "not a SIGBUS half-way", "tests/test_full_disk.py::test_a_feature_cache_larger_than_the_disk_is_an_error_not_a_crash"),
    ("network", "generate.py --optimize (with its ONNX export), the page with and without --optimize",
     "no connection or name lookup beyond this machine (strace)", "tests/test_no_network.py"),
    ("page", "a new study after Clear; a file of another patient added; patient ID, accession, study date, views "
     "shown and exported; Draft again over an edit; export names; stale and empty exports",
     "the previous patient's draft, banner, timing, exports and versions go; another patient's file is not added, "
     "named with the reason; the edit is kept as a version; exports named cxr_report_<accession>_<time>; stale or "
     "empty exports refused, saying why",
     "tests/app/test_app_study_browser.py::test_a_new_study_starts_from_nothing_and_another_patients_file_never_joins_it"),
    ("page", "study bookkeeping: identity, joining, versions, export refusals, names (no browser)",
     "as above", "tests/app/test_page_study.py"),
    ("page", "drafts beyond the queue (one drafting, --max-waiting waiting); a study replaced while its draft runs",
     "refused at once with \"busy: try again\" in the draft line, no error badges, the page drafts on retry; the "
     "replaced study's draft is dropped; the server listens on 127.0.0.1 only",
     "tests/app/test_app_study_browser.py::test_under_load_a_refused_draft_says_busy_and_a_replaced_studys_draft_never_lands"),
    ("page", "uploads kept past the schedule (--delete-uploads-after, test: 2 s)",
     "deleted by the sweeper; no empty temporary file per upload or event",
     "tests/app/test_app.py::test_uploads_are_deleted_on_schedule_and_leave_no_empty_temporary_files"),
    ("converters", "a study date that cannot be read (metadata column or DICOM header)",
     "the study is skipped, skipped.jsonl names the date and the formats that work; the rest converts",
     "tests/data/test_priors.py::test_the_image_folder_converter_reads_patients_and_dates_from_columns_or_dicom_headers"),
    ("converters", "a dataset converted before the patient, date and prior columns",
     "loads with them empty; a folder missing any other column is refused naming the columns",
     "tests/data/test_priors.py::test_a_dataset_converted_before_these_columns_still_loads_with_them_empty"),
    ("training", "a setting in the wrong section of a config file, given twice, or misspelt inside a section",
     "the run does not start; one line names the file, the setting and where it belongs",
     "tests/training/test_training.py::test_a_setting_in_the_wrong_section_names_where_it_belongs"),
    ("training", "a target report that compares with an earlier study the dataset does not have",
     "the comparison sentences are stripped from its target (comparisons_without_prior: strip); a target left "
     "empty skips the study, saying why",
     "tests/evaluation/test_comparisons.py::test_training_strips_comparisons_only_from_studies_without_a_prior"),
    ("scores", "drafts that compare with an earlier study none of the scored studies has",
     "every scoring table prints each system's share (invented comparisons)",
     "tests/evaluation/test_comparisons.py::test_the_scores_table_prints_each_systems_invented_comparisons"),
    ('node', "a study sent by dcmtk's storescu, and one sent by an Orthanc PACS's C-STORE",
     "a preliminary, unverified Basic Text SR in its study (a new series) reaches Orthanc: the images' patient and study modules, findings and impression, the head's finding coded in SNOMED CT, the algorithm's name and version, the unfamiliar-image check; dciodvfy finds no error, dsrdump reads the text; no patient name in the log",
     'tests/node/test_node_pacs.py'),
    ('node', 'an AE title not accepted, a CT image, a CT secondary capture, a truncated instance, invalid UIDs (one a path out of the storage folder), an instance over the size limit',
     'association rejected / no presentation context / the study refused by the modality guard with its reason and no SR / a C-STORE failure status with the reason logged and listed by status; nothing written outside the storage folder; the node keeps serving the next study',
     'tests/node/test_node_pacs.py::test_what_the_node_must_not_take_is_refused_and_it_keeps_serving'),
    ('node', 'an instance arriving while its study is drafted, or after; --refuse-ood; a result written but never queued',
     'drafted again once quiet, never answered twice; kept and counted, not drafted again; refused with the reason, no SR; the result file removed at the next start and the study drafted again',
     'tests/node/test_node_drafting.py'),
    ('node', "TLS with CA certificates: a plain association, TLS without the caller's certificate, TLS with it",
     'only the last associates (dcmtk echoscu, storescu); its study is stored and drafted',
     'tests/node/test_node_tls.py::test_the_node_takes_associations_over_mutual_tls_only'),
    ('node', 'a settings file or flag the node cannot use (unknown name, AE title, port, missing file, no caller or destination)',
     'the node does not start; one line names the setting, exit status 2',
     'tests/node/test_node_settings.py'),
    ('nothing lost', 'the node SIGKILLed after part of a study was acknowledged',
     'the acknowledged instances are on disk; after the restart and the rest, the study is drafted once and one SR references every instance; a half-written file and an unqueued result are removed',
     'tests/node/test_node_restarts.py::test_a_node_killed_mid_study_keeps_what_it_acknowledged_and_drafts_the_study_once'),
    ('nothing lost', 'the node SIGKILLed between drafting a study and sending its SR',
     'the same SR is sent after the restart, once; the study is not drafted again',
     'tests/node/test_node_restarts.py::test_a_node_killed_between_draft_and_send_sends_the_result_after_its_restart_once'),
    ('nothing lost', 'the PACS stopped before the node sends',
     'the SR waits in the outbox (status lists it with its attempts and last error) and arrives when the PACS is back',
     'tests/node/test_node_restarts.py::test_a_result_waits_in_the_outbox_while_the_pacs_is_down_and_arrives_when_it_is_back'),
    ("priors", "a named prior of another patient (DICOM PatientID differs), or one not dated before the study",
     "the run stops (exit 2) with one line naming both studies; nothing is drafted against it",
     "tests/inference/test_prior_matching.py::test_a_named_prior_is_checked_against_the_study"),
    ("priors", "a prior report longer than the release reads; a prior given to a release that reads none",
     "a warning names the study, the prior and the release's limit and the report is cut there; the other release "
     "drafts the study as a first study, with a warning, and prior_id stays empty",
     "tests/inference/test_prior_matching.py::test_a_long_prior_report_and_a_release_without_priors_are_warned_about"),
    ("priors", "a study table (CSV) without its columns, or with a date that cannot be read",
     "one line names the file, the row and the problem",
     "tests/inference/test_prior_matching.py::test_a_study_table_without_its_columns_or_with_a_bad_date_names_the_file_and_row"),
    ("priors", "a model without priors given a prior in Python; a prior report longer than the model reads",
     "a ValueError naming the prior inputs it does not read, or the limit (the processor truncates with a warning)",
     "tests/test_prior_inputs.py"),
    ("priors", "a batch of studies with a prior image and report, either, or none",
     "each study is drafted exactly as it would be alone (fixed token places, masked where missing); ONNX float32 "
     "graphs give PyTorch's tokens in every layout",
     "tests/test_prior_inputs.py::test_a_batch_of_studies_with_and_without_priors_drafts_each_as_alone"),
    ("training", "a study whose prior is not in its split (another split, or left out)",
     "it reads \"no prior\" and its target loses the sentences that compare; a follow-up reads its prior's first "
     "views and report",
     "tests/training/test_prior_training.py::test_a_study_reads_its_prior_from_the_same_rows_and_one_without_learns_no_comparison"),
]


def run_tests(node_ids):
    """{node id or file: "passed" / "failed" / "skipped"} from one pytest run over every listed test."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        *node_ids], cwd=REPO_ROOT)
        results = {}
        for case in ElementTree.parse(report).iter("testcase"):
            file = case.get("classname").replace(".", "/") + ".py"
            name = case.get("name")
            outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
                "skipped" if case.find("skipped") is not None else "passed")
            for key in (f"{file}::{name.split('[')[0]}", file):
                previous = results.get(key, "passed")
                results[key] = outcome if previous == "passed" else previous
        return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-run", action="store_true", help="write the table without running the tests")
    args = parser.parse_args(argv)
    tests = sorted({test for *_, test in CASES if test})
    results = {} if args.no_run else run_tests(tests)
    lines = ["# Reliability: bad inputs, faults, load", "",
             f"Written by `python benchmarks/reliability_table.py` on {datetime.date.today()}"
             + ("" if args.no_run else ", which ran every test named here") + ".", "",
             "| area | case | what happens | test | result |", "|---|---|---|---|---|"]
    for area, case, outcome, test in CASES:
        result = "open" if test is None else results.get(test, "not run")
        lines.append(f"| {area} | {case} | {outcome} | {f'`{test}`' if test else '-'} | {result} |")
    OUTPUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT}")
    failed = [test for test in tests if results.get(test) == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

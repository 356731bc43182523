"""The prior study on the page, without a browser: a draft against the prior is the model's own draft with that prior
(a release that reads priors), a release that does not read one says so and drafts as a first study, a long prior
report is warned about, another patient's or a later prior is refused and nothing is drafted against it, the prior
stands linked beside the study in the viewer, and the sentence review marks changes and invented comparisons."""

import html
import re

import numpy as np
import pytest

from conftest import TINY_REPORTS, model_draft_against, noise_image
from dicom_files import grayscale_dicom

gr = pytest.importorskip("gradio")
from modeling_cliptt5.app.page_layout import lay_out_page  # noqa: E402
from modeling_cliptt5.app.page_server import DraftTurns  # noqa: E402
from modeling_cliptt5.app.page_study import update_study  # noqa: E402
from modeling_cliptt5.app.report_review import INVENTED_COMPARISON, invented_comparisons, review_items  # noqa: E402
from modeling_cliptt5.app.web_app import (  # noqa: E402
    PageHandlers, PriorRefused, ReportDrafter, SignRefused, check_draft, draft_report, sign_report,
)


def study_file(path, seed, patient="P-7", date="20240301", study_uid="1.2.826.0.1.3680043.8.498.71",
               accession="ACC-NOW"):
    """A one-image DICOM study of `patient` on `date` (the noise image `seed`)."""
    header = {"PatientID": patient, "StudyDate": date, "StudyTime": "101500", "StudyInstanceUID": study_uid,
              "SeriesInstanceUID": f"{study_uid}.1", "AccessionNumber": accession, "ViewPosition": "PA"}
    return str(grayscale_dicom(np.array(noise_image(seed)), path, header=header))


@pytest.fixture
def studies(tmp_path):
    """(this study, an earlier study of the same patient, the same patient's later study, another patient's earlier
    study), each one DICOM file."""
    return (study_file(tmp_path / "now.dcm", 1),
            study_file(tmp_path / "before.dcm", 2, date="20230105", study_uid="1.2.826.0.1.3680043.8.498.72",
                       accession="ACC-BEFORE"),
            study_file(tmp_path / "after.dcm", 3, date="20250101", study_uid="1.2.826.0.1.3680043.8.498.73",
                       accession="ACC-AFTER"),
            study_file(tmp_path / "other.dcm", 4, patient="P-9", date="20230105",
                       study_uid="1.2.826.0.1.3680043.8.498.74", accession="ACC-OTHER"))


def prior_of(path):
    return update_study([path], None)[0]


def model_draft(release, path, prior_path=None, prior_report=None):
    """What the model writes for the image against that prior, without the page: (findings, impression)."""
    decoded = model_draft_against(release, path, prior_path, prior_report)
    return decoded["findings"] or "", decoded["impression"] or ""


def test_the_draft_against_the_prior_is_the_models_draft_with_that_prior(prior_release_dir, studies):
    now, before, *_ = studies
    drafter = ReportDrafter.from_pretrained(prior_release_dir)
    findings, impression, info, messages, draft, *_ = draft_report(drafter, [now], "", prior=prior_of(before),
                                                                   prior_report=TINY_REPORTS[1])
    assert (findings, impression) == model_draft(prior_release_dir, now, before, TINY_REPORTS[1])
    assert (findings, impression) != model_draft(prior_release_dir, now)  # the prior made a difference
    assert draft["prior_id"] == "ACC-BEFORE" and "and the prior ACC-BEFORE by" in info
    assert "does not read" not in messages and "tokens" not in messages

    # the report alone, and no prior at all: a first study, as the model drafts it without one
    findings, impression, _, _, draft, *_ = draft_report(drafter, [now], "", prior_report=TINY_REPORTS[1])
    assert (findings, impression) == model_draft(prior_release_dir, now, prior_report=TINY_REPORTS[1])
    assert draft["prior_id"] == "the prior study"
    findings, impression, _, _, draft, *_ = draft_report(drafter, [now], "")
    assert (findings, impression) == model_draft(prior_release_dir, now) and draft["prior_id"] == ""


def test_a_prior_report_longer_than_the_release_reads_is_warned_about(prior_release_dir, studies):
    now, before, *_ = studies
    drafter = ReportDrafter.from_pretrained(prior_release_dir)
    _, _, _, messages, draft, *_ = draft_report(drafter, [now], "", prior=prior_of(before),
                                                prior_report=" ".join(TINY_REPORTS))
    assert re.search(r"the prior report of ACC-BEFORE has \d+ tokens; this release reads the first 48", messages)
    assert draft["prior_id"] == "ACC-BEFORE"  # drafted all the same, from the report's first 48 tokens


def test_a_release_without_priors_says_so_in_one_line_and_drafts_as_a_first_study(head_release_dir, studies):
    now, before, *_ = studies
    drafter = ReportDrafter.from_pretrained(head_release_dir)
    first = draft_report(drafter, [now], "")
    findings, impression, info, messages, draft, *_ = draft_report(drafter, [now], "", prior=prior_of(before),
                                                                   prior_report=TINY_REPORTS[1])
    assert (findings, impression) == first[:2] and draft["prior_id"] == ""
    lines = re.findall(r"<p[^>]*>([^<]*does not read a prior study[^<]*)</p>", messages)
    assert lines == ["This study: this release does not read a prior study: drafted without ACC-BEFORE, as a first "
                     "study"]
    assert "and the prior" not in info


def test_another_patients_or_a_later_prior_is_refused_naming_both_and_nothing_is_drafted(prior_release_dir, studies):
    now, before, after, other = studies
    drafter = ReportDrafter.from_pretrained(prior_release_dir)
    for prior, expected in ((other, "the prior ACC-OTHER is of patient 'P-9', the study ACC-NOW of patient 'P-7'"),
                            (after, "the prior ACC-AFTER is dated 2025-01-01T10:15:00, not before the study ACC-NOW "
                                    "(2024-03-01T10:15:00)"),
                            (now, "the prior ACC-NOW is this study itself")):
        made = drafter.drafts_made
        with pytest.raises(PriorRefused, match=re.escape(expected)):
            draft_report(drafter, [now], "", prior=prior_of(prior))
        assert drafter.drafts_made == made  # the model never ran


@pytest.fixture
def handlers(prior_release_dir):
    """The page's event handlers for a release that reads priors, as build_app makes them."""
    drafter = ReportDrafter.from_pretrained(prior_release_dir)
    with gr.Blocks():
        page = lay_out_page(drafter)
    return PageHandlers(page, drafter, 10_000_000, False, False, DraftTurns()), page


def canvases(viewer):
    return re.findall(r'<figure class="cxr-figure( cxr-prior)?">.*?data-link="(\d*)"', viewer, re.S)


def test_the_prior_stands_linked_beside_the_study_or_is_refused_on_the_page(handlers, studies):
    on, page = handlers
    now, before, _, other = studies
    study = update_study([now], None)[0]
    drafted = {"findings": "x", "impression": "", "images": 1, "keys": study.keys, "prior_key": ""}

    refused = on.prior_changed([other], study, drafted)
    assert "Not used as the prior: the prior ACC-OTHER is of patient 'P-9', the study ACC-NOW of patient 'P-7'" in \
        html.unescape(refused[page.prior_messages])
    assert canvases(refused[page.viewer]) == [("", "")]  # another patient's image never stands beside the study's

    shown = on.prior_changed([before], study, drafted)
    assert canvases(shown[page.viewer]) == [("", "0"), (" cxr-prior", "0")]  # the study's image, then the prior's
    assert "Prior 1: before.dcm (PA), 2023-01-05" in shown[page.viewer]
    assert "ACC-BEFORE" in shown[page.prior_messages] and "Not used" not in shown[page.prior_messages]
    with_prior = shown[page.study]
    # the draft read another prior (none): it is stale, as after a change of images
    assert "The prior study changed after this draft" in shown[page.draft_info]

    # a report typed for the prior: stale again, and what the release reads of a long one is said at once
    typed = on.prior_report_changed(" ".join(TINY_REPORTS), with_prior, drafted)
    assert typed[page.study].prior_report == " ".join(TINY_REPORTS)
    assert "this release reads the first 48" in typed[page.prior_messages]
    assert "The prior study changed" in typed[page.draft_info]


def test_change_sentences_are_marked_and_a_first_studys_comparisons_must_be_fixed_or_confirmed():
    findings = "Increased right pleural effusion. Stable cardiomegaly. No pneumothorax."
    impression = "No prior study for comparison. The right pneumothorax has resolved."
    # with a prior: each change is marked, nothing is invented
    assert review_items(findings, impression) == [
        "Findings: Increased right pleural effusion. [increased]", "Findings: Stable cardiomegaly. [unchanged]",
        "Findings: No pneumothorax.", "Impression: No prior study for comparison.",
        "Impression: The right pneumothorax has resolved. [resolved]"]
    # written without a prior: every sentence that compares is marked as invented (saying there is none is not)
    items = review_items(findings, impression, without_prior=True)
    invented = [item for item in items if item.endswith(f"[{INVENTED_COMPARISON}]")]
    assert invented == [f"Findings: Increased right pleural effusion. [increased] [{INVENTED_COMPARISON}]",
                        f"Findings: Stable cardiomegaly. [unchanged] [{INVENTED_COMPARISON}]",
                        f"Impression: The right pneumothorax has resolved. [resolved] [{INVENTED_COMPARISON}]"]

    first_study = {"findings": findings, "impression": impression, "prior_id": ""}
    against_prior = {**first_study, "prior_id": "ACC-BEFORE"}
    assert invented_comparisons(findings, impression, against_prior) == []
    assert len(invented_comparisons(findings, impression, first_study)) == 3
    shown = check_draft([], findings, impression, [], first_study)
    assert '"Stable cardiomegaly." (correct it, or accept it in the review' in shown
    assert "Stable cardiomegaly" not in check_draft([], findings, impression, [], against_prior)

    # signing waits for each invented comparison to be accepted (confirmed) or corrected
    others = [item for item in items if item not in invented]
    with pytest.raises(SignRefused, match=re.escape(f"3 not yet accepted, the first: \"{invented[0]}\"")):
        sign_report("Reader, Ada", findings, impression, others, first_study, None)
    assert sign_report("Reader, Ada", findings, impression, items, first_study, None)["reader"] == "Reader, Ada"
    corrected = findings.replace("Stable cardiomegaly.", "Cardiomegaly.")  # the reader's own sentence needs no tick
    assert sign_report("Reader, Ada", corrected, impression,
                       [item for item in others if "cardiomegaly" not in item] + invented, first_study, None)

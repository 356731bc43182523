"""The clinician-facing page: drop a study (and its prior study, shown beside it), see whose it is, read the draft with
the labeler's tags and, with a finding head, its findings checklist (probabilities, heatmaps over the image, where the
text and the findings disagree), correct a finding and redraft, edit (earlier text kept as versions), export it
(Gradio).

A study is the set of files dropped since the last Clear: a new one starts from nothing, a file of another
patient or study is not added to it, and a draft that finishes after its study was replaced is dropped. Its prior is
refused when its headers name another patient or a date not before the study's."""

import os

# Before gradio is imported: no usage analytics or version check, no Hub telemetry. The page makes no outbound
# request (its fonts are gradio's bundled ones).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import atexit  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402
from dataclasses import replace  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from modeling_cliptt5.data.atomic_writes import atomic_file  # noqa: E402
from modeling_cliptt5.evaluation.findings import sentence_findings, stated_findings  # noqa: E402
from modeling_cliptt5.images.display import open_for_display  # noqa: E402
from modeling_cliptt5.images.image_io import DEFAULT_MAX_PIXELS, ImageReadError  # noqa: E402
from modeling_cliptt5.images.views import frontal_first, header_view  # noqa: E402
from modeling_cliptt5.inference.drafting import TRUNCATED_WARNING, ood_warning  # noqa: E402
from modeling_cliptt5.app.page_layout import Page, lay_out_page, lay_out_worklist  # noqa: E402
from modeling_cliptt5.app.page_server import DraftTurns, OpenStudies, ServerBusy, UploadSweeper  # noqa: E402
from modeling_cliptt5.app.page_study import (  # noqa: E402
    Study, choose_frontal, prior_key, prior_name, prior_refusal, stale_note, update_study,
)
from modeling_cliptt5.app.report_drafter import ReportDrafter  # noqa: E402
from modeling_cliptt5.app.report_formats import (  # noqa: E402
    NoDicomReferences,
    basic_text_sr,
    display_name,
    fhir_diagnostic_report,
    person_name,
    report_document,
    sr_reference,
    write_dicom,
)
from modeling_cliptt5.app.report_review import (  # noqa: E402
    claim_text,
    claimed_findings,
    contradiction_text,
    contradictions,
    export_record,
    invented_comparisons,
    report_text,
    reviewed_sentences,
    tagged_sentences,
)
from modeling_cliptt5.app.study_identity import export_basename, exported_identity, identity_html  # noqa: E402
from modeling_cliptt5.app.study_viewer import EMPTY_VIEWER, VIEWER_CSS, static_text, viewer_html  # noqa: E402
from modeling_cliptt5.app.worklist import (  # noqa: E402
    WORKLIST_HEADERS, WorklistRefused, page_draft_of, worklist_table,
)

# Uploads and exports older than an hour are deleted, checked every 10 minutes; the whole folder goes at exit.
DELETE_AFTER_SECONDS = 3600
MAX_SWEEP_INTERVAL_SECONDS = 600
MAX_WAITING_DRAFTS = 16  # beyond these, a draft request is told the server is busy
MAX_FILE_SIZE = "200mb"  # an uncompressed 16-bit DICOM of a 3000 x 3000 film is ~18 MB
BUSY_MESSAGE = ("**The server is busy: try again in a moment.** (Other readers' drafts are waiting for the model; "
                "nothing on this page was changed.)")
FAILED_MESSAGE = "**The draft did not finish: try again.** Nothing on this page was changed."

PAGE_CSS = VIEWER_CSS + static_text("page.css")


def make_private_upload_folder():
    """A fresh 0700 folder for this server's uploads and exports (gradio reads GRADIO_TEMP_DIR), removed at exit."""
    folder = tempfile.mkdtemp(prefix="cliptt5-app-")  # mkdtemp creates it readable by this user only
    os.environ["GRADIO_TEMP_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


def read_study(files, max_pixels=DEFAULT_MAX_PIXELS, any_modality=False):
    """Decode the dropped files: [(name, image as the model reads it, what the viewer shows)] for the readable ones,
    one message per unreadable file, and the readers' doubts about the files used (a DICOM without Modality, of
    another body part...)."""
    images, problems, doubts = [], [], []
    for path in files or []:
        name = Path(path).name
        try:
            images.append((name, *open_for_display(path, name=name, max_pixels=max_pixels,
                                                   any_modality=any_modality, on_doubt=doubts.append)))
        except ImageReadError as error:
            problems.append(str(error))
        except Exception as error:  # a decoder bug on one file must not take the page down
            problems.append(f"{name}: cannot be read ({type(error).__name__})")
    return images, problems, doubts


def messages_html(problems, note=None, doubts=(), refused=(), notes=()):
    """Messages under the drop zone: one line per file not added to the study, per unreadable file, per doubtful
    file used, then what changed in the study and a note."""
    lines = [f'<p class="problem">Not added: {html.escape(reason)}</p>' for reason in refused]
    lines += [f'<p class="problem">Not used: {html.escape(problem)}</p>' for problem in problems]
    lines += [f'<p class="doubt">Check: {html.escape(doubt)}</p>' for doubt in doubts]
    lines += [f'<p class="study-note">{html.escape(text)}</p>' for text in notes]
    if note:
        lines.append(f"<p>{html.escape(note)}</p>")
    return "".join(lines)


def captions_of(images, views=()):
    """Viewer captions with what they show: ("Image 1: name (PA)", display) with the view from the header where
    there is one."""
    views = list(views) + [""] * (len(images) - len(views))
    return [(f"Image {index}: {name}{f' ({view})' if view else ''}", display)
            for index, ((name, _, display), view) in enumerate(zip(images, views), start=1)]


def in_view_order(files, views=None, frontal=None):
    """(files, their views, note or None): the study's files frontal first as their headers say (images/views.py),
    in the order dropped otherwise, or with the image the reader named (`frontal`, a file name) first; the note says
    which image is taken as the frontal when no header names one, or where a header disagrees with the reader.
    `views` are the files' header views where already read (update_study), else they are read here."""
    files = list(files or [])
    if views is None or len(views) != len(files):
        views = [header_view(path) for path in files]
    files, views, note = frontal_first(files, list(views), [Path(path).name for path in files], frontal)
    return files, views, (f"Views: {note[0].upper()}{note[1:]}." if note else None)


def views_of(images, files, views):
    """The view of each readable image (read_study leaves unreadable files out)."""
    view_by_name = {Path(path).name: view for path, view in zip(files, views)}
    return [view_by_name.get(name, "") for name, *_ in images]


def show_study(files, max_pixels=DEFAULT_MAX_PIXELS, any_modality=False, views=None, refused=(), notes=(),
               frontal=None, priors=()):
    """A study's files -> (viewer HTML, messages HTML), frontal first (`frontal`: the file name the reader chose);
    `views` (the headers') label the images, `refused` and `notes` say what was not added and what changed
    (update_study); `priors` are the prior study's images for the viewer (prior_images)."""
    files, views, view_note = in_view_order(files, views, frontal)
    images, problems, doubts = read_study(files, max_pixels, any_modality)
    note = None if images or not problems else "No readable image: drop PNG, JPEG or DICOM files of one study."
    viewer = viewer_html(captions_of(images, views_of(images, files, views)), priors=priors) if images else EMPTY_VIEWER
    notes = list(notes) + ([view_note] if view_note and images else [])
    return viewer, messages_html(problems, note, doubts, refused, notes)


def prior_images(prior, max_pixels=DEFAULT_MAX_PIXELS, any_modality=False):
    """The prior study's images for the viewer, frontal first: [("Prior 1: name (PA), 2026-01-15", display)], and one
    message per unreadable file."""
    if not prior or not prior.files:
        return [], []
    images, problems, _ = read_study(prior.files, max_pixels, any_modality)
    date = prior.identity.get("study_date")
    captions = [(f"Prior {caption.removeprefix('Image ')}{f', {date}' if date else ''}", display)
                for caption, display in captions_of(images, views_of(images, prior.files, prior.views))]
    return captions, problems


def prior_messages(drafter, study, refused=(), problems=(), show_name=False):
    """The lines under the prior's drop zone: whose study the prior is (its headers), why it is refused (another
    patient's, or not dated before the study), the files not used, and a report longer than the release reads."""
    prior, report = study.prior, study.prior_report
    if not (prior and prior.files) and not report.strip():
        return messages_html(problems, refused=refused)
    lines = [f'<div class="prior-identity"><b>Prior study</b> {identity_html(prior.identity, prior.views, show_name)}'
             "</div>"] if prior and prior.files else []
    refusal = prior_refusal(study.files, prior)
    if refusal:
        lines.append(f'<p class="problem">{html.escape(refusal)}</p>')
    # What the release reads of the report (read_prior's checks, without decoding the images). A release that does
    # not read priors says so in the slot's title, and in the draft's messages once drafted.
    notes = drafter.read_prior([], report, prior_name(prior, report))[1] if drafter.reads_prior else []
    return "".join(lines) + messages_html(problems, refused=refused, notes=notes)


def checklist_choices(names, probabilities):
    """(label, value) pairs for the findings checklist: "Pleural Effusion  0.93"."""
    return [(f"{name}  {probabilities[name]:.2f}", name) for name in names]


class PriorRefused(ValueError):
    """Nothing was drafted: the prior is another patient's study, or not dated before the study (the message names
    both)."""


def draft_report(drafter, files, indication, max_pixels=DEFAULT_MAX_PIXELS, findings=None, any_modality=False,
                 views=None, shown=False, frontal=None, prior=None, prior_report=""):
    """Files + indication (+ the findings a reader checked, to redraft from) -> (findings, impression, draft info,
    messages HTML, the draft as drafted, the findings checklist, the viewer with the head's heatmaps). `views`: the
    files' header views where already read (update_study), else they are read here. `shown`: the page already
    shows these images, so the viewer does not send their values again. `frontal`: the file name of the image the
    reader chose as the frontal one (choose_frontal), read first whatever the headers say. `prior` (a page_study.Study)
    and `prior_report`: the prior study the draft compares with, where the release reads one (ReportDrafter.read_prior;
    a release that does not drafts as a first study and says so); PriorRefused for another patient's prior or one not
    dated before the study.

    The time shown covers decoding the files, preprocessing and generation.
    """
    start = time.perf_counter()
    files, views, view_note = in_view_order(files, views, frontal)  # the model's first image is the frontal one
    refusal = prior_refusal(files, prior)
    if refusal:
        raise PriorRefused(refusal)
    images, problems, doubts = read_study(files, max_pixels, any_modality)
    no_checklist = gr.update(visible=bool(drafter.finding_labels), choices=[], value=[])
    if not images:
        note = "Drop at least one readable PNG, JPEG or DICOM image of the study, then draft."
        return "", "", "", messages_html(problems, note), {}, no_checklist, EMPTY_VIEWER
    views = views_of(images, files, views)
    view_notes = [view_note] if view_note else []
    captions = captions_of(images, views)
    priors, _ = prior_images(prior, max_pixels, any_modality)
    name = prior_name(prior, prior_report)
    prior_input, prior_notes = drafter.read_prior(prior.files if prior else [], prior_report, name, max_pixels,
                                                  any_modality)
    try:
        report, view_warning = drafter.draft([image for _, image, _ in images], indication, findings, prior_input,
                                             name)
    except Exception as error:  # e.g. out of memory: say so on the page and keep serving
        return "", "", "", messages_html(problems, f"The model failed on this study ({type(error).__name__}: "
                                                   f"{error})."), {}, no_checklist, \
            viewer_html(captions, send_values=not shown, priors=priors)
    seconds = time.perf_counter() - start
    used = min(len(images), drafter.num_views)
    if view_warning and len(images) > drafter.num_views:
        # Which views the model reads is the reader's to know: name them rather than drop images silently.
        view_warning = (f"This model reads {drafter.num_views} image(s) per study: drafted from "
                        f"{', '.join(name for name, *_ in images[:used])}; shown for review only, not read by "
                        f"the model: {', '.join(name for name, *_ in images[used:])}.")
    source = "the findings you checked" if findings is not None else "its findings"
    against = f" and the prior {report.prior_id}" if report.prior_id else ""
    info = (f"Drafted in **{seconds:.2f} s** from {used} image(s){against} by `{drafter.name}`"
            f"{f', following {source}' if drafter.takes_findings else ''}. Review every sentence before use.")
    draft = page_draft(report, seconds, [name for name, *_ in images[:used]])
    invented = invented_comparisons(draft["findings"], draft["impression"], draft)
    if invented:
        info = (f"**WARNING: written without a prior study, this draft compares with one in {len(invented)} "
                "sentence(s), marked [invented comparison] in the review: correct each, or accept it where an earlier "
                f"study supports it.**\n\n{info}")
    if report.repeated_sentences:
        info = (f"**WARNING: this draft says {report.repeated_sentences} sentence(s) again: each copy is listed in "
                f"the review.**\n\n{info}")
    if report.truncated:  # above the timing line: read before the draft itself
        info = f"**WARNING: {TRUNCATED_WARNING}**\n\n{info}"
    if report.ood_flag:  # above the timing line: the first thing read about this draft
        info = f"**WARNING: {ood_warning(report.ood_score, report.ood_threshold)}**\n\n{info}"
    checklist, heatmaps = no_checklist, None
    if report.finding_probabilities is not None:
        names = drafter.finding_labels
        maps = report.finding_maps  # [views, findings, grid, grid]
        heatmaps = [{name: maps[view, index].numpy() for index, name in enumerate(names)} for view in range(used)]
        checklist = gr.update(visible=True, choices=checklist_choices(names, report.finding_probabilities),
                              value=report.guidance)
    return (draft["findings"], draft["impression"], info, messages_html(problems, view_warning, doubts,
                                                                          notes=view_notes + prior_notes),
            draft, checklist, viewer_html(captions, heatmaps, send_values=not shown, priors=priors))


def page_draft(report, seconds, read):
    """The page's state of a draft (kept with the page, read by the exports): the drafting record's fields a reader's
    edits do not change (inference.drafting.DraftedReport: the prior it compared with, "" for none), the time the page
    measured and the files the model read."""
    draft = {"findings": report.findings or "", "impression": report.impression or "", "seconds": round(seconds, 3),
             "images": len(read), "truncated": report.truncated, "read": read, "engine": report.engine,
             "prior_id": report.prior_id}
    if report.ood_score is not None:
        draft.update(ood_score=report.ood_score, ood_flag=report.ood_flag, ood_threshold=report.ood_threshold)
    if report.finding_probabilities is not None:
        draft.update(finding_probabilities=report.finding_probabilities, guidance=report.guidance,
                     predicted_findings=report.predicted_findings)
    return draft


def check_draft(names, findings, impression, checked, draft):
    """HTML comparing the report's text with the findings checklist, and with itself: sentences that state a finding
    the checklist does not hold are marked, checked findings the text does not state are listed, and so are findings
    the text both claims and denies (report_review.contradictions). Empty without a draft; without a rule reader for
    the label set, only the text's own contradictions."""
    if not draft:
        return ""
    parts, notes = [], []
    stated = stated_findings((findings, impression), names)
    if stated is not None:
        checked = set(checked or [])
        for header, text in (("FINDINGS:", findings), ("IMPRESSION:", impression)):
            pieces = []
            for sentence, in_sentence in sentence_findings(text, names):
                extra = sorted(in_sentence - checked)
                if extra:
                    pieces.append(f'<mark class="disagree" title="not in the findings checklist: '
                                  f'{html.escape(", ".join(extra))}">{html.escape(sentence)}</mark>')
                else:
                    pieces.append(html.escape(sentence))
            if pieces:
                parts.append(f"<p><b>{header}</b> {' '.join(pieces)}</p>")
        missing = [name for name in names if name in checked and name not in stated]
        if missing:
            notes.append(f'<p class="missing">Checked but not stated in the text: '
                         f'{html.escape(", ".join(missing))}</p>')
    notes += [f'<p class="missing">The text says both: {html.escape(contradiction_text(item))}</p>'
              for item in contradictions(findings, impression)]
    notes += [f'<p class="missing">Compares with an earlier study, but the draft was written without one: '
              f'"{html.escape(sentence)}" (correct it, or accept it in the review where an earlier study supports it)'
              "</p>" for sentence in invented_comparisons(findings, impression, draft)]
    if not notes and "<mark" not in "".join(parts):
        return "<div><p>The text and the findings checklist agree.</p></div>" if stated is not None else ""
    summary = ("The text and the findings checklist disagree, or the text with itself or with the draft's prior: "
               "check the marked sentences and the list below.")
    return f"<div><p>{summary}</p>{''.join(parts)}{''.join(notes)}</div>"


def open_disagreements(names, findings, impression, checked):
    """What signing would leave unresolved, one line each: findings the text states that the checklist does not hold
    (or the reverse), and findings the text both claims and denies."""
    lines = []
    stated = stated_findings((findings, impression), names)
    if stated is not None:
        checked = set(checked or [])
        lines += [f"{name}: stated in the text, not checked" for name in names if name in stated - checked]
        lines += [f"{name}: checked, not stated in the text" for name in names if name in checked - stated]
    return lines + [f"the text says both: {contradiction_text(item)}" for item in contradictions(findings, impression)]


def review_report(findings, impression):
    """Edited text -> (tagged sentences, claimed findings Markdown, critical-finding alert HTML, report text)."""
    pieces, colors = tagged_sentences(findings, impression)
    claims = claimed_findings(findings, impression)
    critical = [claim for claim in claims if claim["critical"]]
    others = [claim for claim in claims if not claim["critical"]]
    listed = "\n".join(f"- {claim_text(claim)}" for claim in others) or "_None._"
    claims_markdown = f"**Other findings the text claims** (approximate rule labeler)\n\n{listed}"
    alert = "".join(f'<div class="critical-alert">CRITICAL: {html.escape(claim_text(claim))}. Confirm on the '
                    "images and communicate it at once.</div>" for claim in critical)
    return gr.HighlightedText(value=pieces, color_map=colors), claims_markdown, alert, report_text(findings, impression)


def not_ready(findings, impression, draft, study):
    """Why the report can be neither signed nor exported (it is empty, or a draft of other images), or None."""
    if not (findings or "").strip() and not (impression or "").strip():
        return "the report is empty (FINDINGS and IMPRESSION)."
    return stale_note(draft, study)


class ExportRefused(ValueError):
    """Nothing was exported; the message says why (an empty report, a draft of other images)."""


EXPORT_SUFFIXES = {"txt": ".txt", "json": ".json", "fhir": "_fhir.json", "sr": "_sr.dcm"}


def export_report(drafter_name, findings, impression, indication, draft, checked=None, study=None,
                  show_name=False, when=None, signature=None, release=None, earlier_sr=None):
    """The EDITED report, named cxr_report_<study id>_<time>, in a fresh folder, as text, as the JSON record (the
    study's identity from its headers, the labeler's reading of the text, how it was drafted: `release` {"name",
    "revision"}, the images the model read and the unfamiliar-image check, the prior study it compared with
    (comparison_record, None for a first study), and, with a finding head, the reader's
    findings checklist beside the model's probabilities), as a FHIR DiagnosticReport and, for a study of DICOM
    images, as a DICOM Basic Text SR in that study (app/report_formats.py): the images' Patient and General Study
    values, a report series of its own; `earlier_sr` (the `sr_reference` of this study's last exported SR) puts the
    new one in the same series and, when signed, cites a draft SR it supersedes. Unsigned (`signature` None) every
    format says it is a draft; signed ({"reader", "signed_at"}) they carry the reader and the time.

    Returns ({"txt"|"json"|"fhir"|"sr": path}, None or why there is no SR, the SR's `sr_reference` or None). Raises
    ExportRefused for an empty report or a draft of other images than the study's."""
    study, draft = study or Study(), draft or {}
    reason = not_ready(findings, impression, draft, study)
    if reason:
        raise ExportRefused(f"Nothing exported: {reason}")
    when = (when or datetime.now()).astimezone()  # a naive time is this machine's: the SR states its offset
    signature = parsed_signature(signature)
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=os.environ.get("GRADIO_TEMP_DIR")))
    record = export_record(findings, impression, indication,
                           model_draft={k: draft[k] for k in ("findings", "impression") if k in draft},
                           model_name=drafter_name, images=draft.get("images", 0),
                           draft_seconds=draft.get("seconds"))
    identity = exported_identity(study.identity, study.views, show_name)
    record = {"study": identity, **record, **drafting_provenance(draft, study, release),
              "comparison": comparison_record(draft, study),
              "signature": {**signature, "signed_at": signature["signed_at"].isoformat()} if signature else None}
    if "finding_probabilities" in draft:
        record["findings_checklist"] = {"checked_by_reader": list(checked or []),
                                        "model_findings": draft["predicted_findings"],
                                        "model_probabilities": draft["finding_probabilities"]}
    name = export_basename(study.identity, when)
    paths = {kind: folder / f"{name}{suffix}" for kind, suffix in EXPORT_SUFFIXES.items()}
    with atomic_file(paths["txt"]) as stream:
        stream.write(report_document(record, signature))
    with atomic_file(paths["json"]) as stream:
        stream.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    with atomic_file(paths["fhir"]) as stream:
        stream.write(json.dumps(fhir_diagnostic_report(record, signature), indent=2, ensure_ascii=False) + "\n")
    references = [reference for reference in study.references if reference]
    try:
        series = None if earlier_sr is None else {
            "series_instance_uid": earlier_sr["series_instance_uid"], "series_number": earlier_sr["series_number"],
            "instance_number": earlier_sr["instance_number"] + 1}
        predecessor = earlier_sr if signature and earlier_sr and not earlier_sr.get("signed") else None
        dataset = basic_text_sr(record, references, signature, when, identity=study.identity,
                                series=series, predecessor=predecessor)
    except NoDicomReferences as reason:
        del paths["sr"]
        return {kind: str(path) for kind, path in paths.items()}, str(reason), None
    write_dicom(paths["sr"], dataset)
    return ({kind: str(path) for kind, path in paths.items()}, None,
            {**sr_reference(dataset), "signed": signature is not None})


def drafting_provenance(draft, study, release):
    """How the draft was made, for every export: the release (name, revision), the images the model read (each
    image's view and SOP Instance UID, or a file without a header by its content hash: no file names, which can
    carry a patient's name), and the unfamiliar-image check where the release has one."""
    by_name = {image.name: image for image in study.images}
    images = [by_name[name] for name in draft.get("read", []) if name in by_name]
    provenance = {"release": release,
                  "images_read": [{"view": image.view, **({"sop_instance_uid": image.reference["sop_instance_uid"]}
                                                          if image.reference else {"sha1": image.key})}
                                  for image in images]}
    if draft.get("engine"):  # how it ran: "PyTorch", "ONNX Runtime int8" (inference/engines.py)
        provenance["engine"] = draft["engine"]
    if "ood_score" in draft:
        provenance["ood"] = {"score": draft["ood_score"], "flag": draft["ood_flag"],
                             "threshold": draft.get("ood_threshold")}
    return provenance


def comparison_record(draft, study):
    """What the exports say of the study the draft compared with: None for a draft written as a first study; else
    its name, Study Instance UID, accession number and date where its headers give them, whether its report was read,
    its images (view and SOP Instance UID, else the file's content hash: file names can carry a patient's name) and
    the UIDs a DICOM SR cites of them (`references`)."""
    name = (draft or {}).get("prior_id")
    if not name:
        return None
    images = study.prior.images if study.prior else []
    identity = study.prior.identity if study.prior else {}
    record = {"id": name, **{field: identity[field] for field in ("study_instance_uid", "accession_number",
                                                                   "study_date") if identity.get(field)},
              "report_read": bool(study.prior_report.strip()),
              "images": [{"view": image.view, **({"sop_instance_uid": image.reference["sop_instance_uid"]}
                                                 if image.reference else {"sha1": image.key})} for image in images]}
    references = [image.reference for image in images if image.reference]
    if references:
        record["references"] = references
    return record


def parsed_signature(signature):
    """The page's signature state ({"reader", "signed_at" as ISO text}) for report_formats, None when unsigned."""
    if not signature:
        return None
    return {**signature, "signed_at": datetime.fromisoformat(signature["signed_at"])}


class SignRefused(ValueError):
    """The report was not signed; the message says what is missing."""


def sign_report(reader, findings, impression, reviewed, draft, study, when=None, names=(), checked=None,
                override=False):
    """The signature {"reader", "signed_at"} for a report whose every sentence is reviewed, or SignRefused. A report
    whose text disagrees with the findings checklist (`names`: the head's label set, `checked`: the reader's
    checklist) or with itself is signed only with `override`, and the signature then lists what was left open
    ("override"), which every export repeats."""
    reason = not_ready(findings, impression, draft or {}, study or Study())
    if reason:
        raise SignRefused(f"Not signed: {reason}")
    items, done = reviewed_sentences(findings, impression, reviewed, draft)
    waiting = [item for item in items if item not in done]
    if waiting:
        raise SignRefused(f"Not signed: accept every sentence first ({len(waiting)} not yet accepted, the first: "
                          f"\"{waiting[0]}\").")
    if not (reader or "").strip():
        raise SignRefused("Not signed: type the reader's name first (Family, Given).")
    try:
        name = person_name(reader)  # DICOM and FHIR store family and given names apart: the reader says which is which
    except ValueError as refusal:
        raise SignRefused(f"Not signed: {refusal}") from None
    disagreements = open_disagreements(list(names or []), findings, impression, checked)
    if disagreements and not override:
        raise SignRefused(f"Not signed: {len(disagreements)} disagreement(s) open ({'; '.join(disagreements)}). "
                          "Change the text or the checklist, or tick \"Sign despite the disagreements\" (recorded in "
                          "every export).")
    when = when or datetime.now().astimezone()
    signature = {"reader": f"{name['family']}, {' '.join([name['prefix'], *name['given']]).strip()}",
                 "signed_at": when.isoformat(timespec="seconds")}
    if disagreements:
        signature["override"] = disagreements
    return signature


def keep_version(versions, findings, impression, draft, label):
    """`versions` plus the current text when a redraft would replace text the model did not write."""
    text = ((findings or "").strip(), (impression or "").strip())
    model = ((draft or {}).get("findings", "").strip(), (draft or {}).get("impression", "").strip())
    if not any(text) or (draft and text == model) or any((v["findings"], v["impression"]) == text for v in versions):
        return list(versions)
    return [*versions, {"label": label, "findings": text[0], "impression": text[1]}]


def versions_menu(versions):
    return gr.update(choices=[(version["label"], index) for index, version in enumerate(versions)],
                     value=len(versions) - 1 if versions else None, visible=bool(versions))


class PageHandlers:
    """What the page does on each event, for one loaded drafter. Each handler returns {component: new value};
    gradio leaves the components a handler does not name as they are (gr.skip() leaves all of them)."""

    def __init__(self, page: Page, drafter, max_pixels, any_modality, show_patient_name, turns, node=None,
                 panel=None):
        self.page, self.drafter, self.turns, self.open_studies = page, drafter, turns, OpenStudies()
        self.node, self.panel = node, panel  # the DICOM node's worklist (worklist.NodeWorklist) and its components
        self.max_pixels, self.any_modality, self.show_patient_name = max_pixels, any_modality, show_patient_name
        unlocked = gr.update(interactive=True)
        # What a new study (or Clear) empties: nothing of the previous patient's draft survives it.
        self.cleared = {
            page.findings: "", page.impression: "", page.draft_info: "", page.draft: {},
            page.checklist: gr.update(visible=bool(drafter.finding_labels), choices=[], value=[]),
            page.draft_check: "", page.critical: "", page.tags: None, page.claims: "", page.report: "",
            page.exported: None, page.export_status: "", page.versions: [],
            page.version_choice: gr.update(choices=[], value=None, visible=False, interactive=True),
            page.restore_button: gr.update(visible=False, interactive=True),
            page.review: gr.update(choices=[], value=[], interactive=True), page.signature: {},
            page.sign_status: "", page.reader: unlocked, page.draft_button: unlocked,
            page.redraft_button: unlocked, page.revert_findings: unlocked, page.revert_impression: unlocked,
            page.sign_button: unlocked, page.review_items: [], page.report_sr: {},
            page.sign_anyway: gr.update(value=False, interactive=True), page.prior_files: unlocked,
            page.prior_report: unlocked}
        # What goes with the prior when a new study replaces the one it was for.
        self.prior_cleared = {page.prior_files: gr.update(value=None, interactive=True),
                              page.prior_report: gr.update(value="", interactive=True), page.prior_messages: ""}

    def stale_info(self, drafted, study):
        """The draft info line saying that the draft no longer matches the study, where it does not."""
        stale = stale_note(drafted, study)
        return {self.page.draft_info: f"**{stale}**"} if stale else {}

    def shown_priors(self, study):
        """The prior's images for the viewer beside the study's, and one message per unreadable prior file; none for
        a refused prior (another patient's images never stand beside the study's)."""
        if not study.prior or prior_refusal(study.files, study.prior):
            return [], []
        return prior_images(study.prior, self.max_pixels, self.any_modality)

    def files_changed(self, paths, current, drafted, request: gr.Request):
        page = self.page
        new, refused, notes, is_new = update_study(paths, current)
        if current.token and new.listed == current.listed:  # the same files (a re-sent list): nothing to do
            return gr.skip()
        priors, prior_problems = self.shown_priors(new)
        shown, text = show_study(new.files, self.max_pixels, self.any_modality, new.views, refused, notes,
                                 new.frontal, priors)
        header = identity_html(new.identity, new.views, self.show_patient_name) if new.files else ""
        if not new.listed:
            new = Study(prior=new.prior, prior_report=new.prior_report)
        self.open_studies.show(request.session_hash, new.token)
        names = new.names
        study = {page.study: new, page.viewer: shown, page.messages: text, page.identity: header,
                 page.frontal_choice: gr.update(choices=names, value=names[0] if names else None,
                                                visible=len(names) > 1)}
        had_prior = bool(current.prior or current.prior_report)
        if had_prior and not (new.prior or new.prior_report):  # a new study replaced the one the prior was for
            study.update(self.prior_cleared)
        elif had_prior:  # the prior's checks against the study, again
            study[page.prior_messages] = prior_messages(self.drafter, new, (), prior_problems, self.show_patient_name)
        return {**self.cleared, **study} if is_new else {**study, **self.stale_info(drafted, new)}

    def frontal_chosen(self, name, current, drafted):
        # The reader names the frontal image (PNG/JPEG carry no view): the study's order, the viewer's numbering
        # and the model's first image follow it; a draft of the old order is stale.
        chosen, note = choose_frontal(current, name)
        if chosen is current:
            return gr.skip()
        shown, text = show_study(chosen.files, self.max_pixels, self.any_modality, chosen.views,
                                 notes=[note] if note else (), frontal=name, priors=self.shown_priors(chosen)[0])
        return {self.page.study: chosen, self.page.viewer: shown, self.page.messages: text,
                **self.stale_info(drafted, chosen)}

    def prior_changed(self, paths, current, drafted):
        # The prior slot's files changed: they form the prior study (files of another patient or study than its
        # first are not added), checked against the study and shown beside it; a draft of another prior is stale.
        prior, refused, _, _ = update_study(paths, current.prior)
        prior = prior if prior.files else None
        if (prior.listed if prior else []) == (current.prior.listed if current.prior else []):
            return gr.skip()  # the same files (a re-sent list)
        new = replace(current, prior=prior)
        priors, problems = self.shown_priors(new)
        shown, _ = show_study(new.files, self.max_pixels, self.any_modality, new.views, frontal=new.frontal,
                              priors=priors) if new.files else (EMPTY_VIEWER, "")
        text = prior_messages(self.drafter, new, refused, problems, self.show_patient_name)
        return {self.page.study: new, self.page.viewer: shown, self.page.prior_messages: text,
                **self.stale_info(drafted, new)}

    def prior_report_changed(self, text, current, drafted):
        # The prior's report as typed: what the release reads of it is said at once, and a draft of another is stale.
        text = (text or "").strip()
        if text == current.prior_report:
            return gr.skip()
        new = replace(current, prior_report=text)
        lines = prior_messages(self.drafter, new, show_name=self.show_patient_name)
        return {self.page.study: new, self.page.prior_messages: lines, **self.stale_info(drafted, new)}

    def unlock_unsigned(self, signed):
        # A new study is unsigned: its text boxes open again. (Set in the same update as their emptied value,
        # gradio left the previous study's text in them.)
        if signed:
            return gr.skip()
        return {box: gr.update(interactive=True) for box in (self.page.findings, self.page.impression,
                                                             self.page.checklist)}

    def start_draft(self, findings_text, impression_text, drafted, kept):
        # The old timing line goes at once, so nobody reads it as the new draft's while the model works; text
        # the model did not write is kept as a version before the draft replaces it.
        kept = keep_version(kept, findings_text, impression_text, drafted,
                            f"Your text before the draft at {datetime.now():%H:%M:%S}")
        return {self.page.draft_info: "Drafting...", **self.versions_shown(kept)}

    def versions_shown(self, kept):
        return {self.page.versions: kept, self.page.version_choice: versions_menu(kept),
                self.page.restore_button: gr.update(visible=bool(kept))}

    def draft_clicked(self, paths, text, current, kept, request: gr.Request):
        return self.run_draft(paths, text, current, kept, request)

    def redraft_clicked(self, paths, text, current, kept, checked, request: gr.Request):
        return self.run_draft(paths, text, current, kept, request, list(checked or []))

    def run_draft(self, paths, text, current, kept, request, checked=None):
        page, token = self.page, current.token
        try:
            with self.turns.turn():
                # the study's files come frontal first with the views update_study read from their headers;
                # the study's images are on the page already (files_changed showed them): not sent again
                # the prior as the study holds it (its drop zone and report box update the study as they change)
                findings, impression, info, messages, drafted, checklist, viewer = draft_report(
                    self.drafter, current.files if token else paths, text, self.max_pixels, checked,
                    self.any_modality, current.views if token else None, shown=bool(token),
                    frontal=current.frontal, prior=current.prior, prior_report=current.prior_report)
        except ServerBusy:
            return {page.draft_info: BUSY_MESSAGE}
        except PriorRefused as refusal:  # nothing drafted against another patient's or a later study
            return {page.draft_info: f"**{html.escape(str(refusal))}**"}
        if token and not self.open_studies.is_current(request.session_hash, token):
            return gr.skip()  # its study was cleared or replaced meanwhile: never show it on the next
        if drafted:
            drafted = {**drafted, "keys": current.keys}
            if self.drafter.reads_prior:  # the prior it read: another prior makes it stale (page_study.stale_note)
                drafted["prior_key"] = prior_key(current.prior, current.prior_report)
            if kept:
                info += " Earlier text is kept under *Earlier versions*."
        return {page.findings: findings, page.impression: impression, page.draft_info: info,
                page.messages: messages, page.draft: drafted, page.checklist: checklist, page.viewer: viewer}

    def restore(self, index, kept, findings_text, impression_text, drafted):
        if index is None or not 0 <= int(index) < len(kept):
            return gr.skip()
        chosen = kept[int(index)]
        kept = keep_version(kept, findings_text, impression_text, drafted,
                            f"Your text before restoring, {datetime.now():%H:%M:%S}")
        return {self.page.findings: chosen["findings"], self.page.impression: chosen["impression"],
                self.page.versions: kept, self.page.version_choice: versions_menu(kept)}

    def revert(self, section, findings_text, impression_text, drafted, kept):
        if not drafted:
            return gr.skip()
        kept = keep_version(kept, findings_text, impression_text, drafted,
                            f"Your text before reverting {section.upper()}, {datetime.now():%H:%M:%S}")
        texts = {"findings": findings_text, "impression": impression_text, section: drafted.get(section, "")}
        return {self.page.findings: texts["findings"], self.page.impression: texts["impression"],
                **self.versions_shown(kept)}

    def text_changed(self, findings_text, impression_text, checked, accepted, drafted, shown):
        page = self.page
        items, done = reviewed_sentences(findings_text, impression_text, accepted, drafted)
        tags, claims, critical, report = review_report(findings_text, impression_text)
        changed = {page.draft_check: check_draft(self.drafter.finding_labels, findings_text, impression_text,
                                                 checked, drafted),
                   page.tags: tags, page.claims: claims, page.critical: critical, page.report: report}
        if items != shown or done != list(accepted or []):
            changed.update({page.review: gr.update(choices=items, value=done), page.review_items: items})
        return changed

    def sign(self, name, findings_text, impression_text, accepted, drafted, current, checked, anyway):
        page = self.page
        try:
            signed = sign_report(name, findings_text, impression_text, accepted, drafted, current,
                                 names=self.drafter.finding_labels if "finding_probabilities" in (drafted or {})
                                 else (), checked=checked, override=anyway)
        except SignRefused as refusal:
            return {page.sign_status: f'<p class="refused">{html.escape(str(refusal))}</p>'}
        when = datetime.fromisoformat(signed["signed_at"])
        reader_name = display_name(person_name(signed["reader"]))
        status = (f'<p class="signed">Signed by {html.escape(reader_name)} on {when:%Y-%m-%d %H:%M}. '
                  "The report is locked: export it below; Clear the study to start the next one.</p>")
        signed_state = {page.signature: signed, page.sign_status: status,
                        **{component: gr.update(interactive=False) for component in page.locked}}
        if self.node is None or not (drafted or {}).get("node_sr"):
            return signed_state
        return {**signed_state, **self.queued_to_node(signed, status, findings_text, impression_text, drafted,
                                                      current, checked)}

    def queued_to_node(self, signed, status, findings_text, impression_text, drafted, current, checked):
        """The signed report of a study the node drafted goes back through the node: a FINAL SR superseding the
        node's draft SR, queued in its outbox for the node's destinations. The signature stands either way; a
        report that could not be queued says so, and Export still writes it."""
        page = self.page
        try:
            paths, _, sr = export_report(self.drafter.name, findings_text, impression_text, "", drafted, checked,
                                         current, self.show_patient_name, signature=signed,
                                         release=self.drafter.release.identity, earlier_sr=drafted["node_sr"])
            if sr is None:
                raise WorklistRefused("the study has no DICOM images to cite")
            uid = self.node.queue_signed_sr(paths["sr"])
        except (ExportRefused, WorklistRefused, OSError, sqlite3.Error) as error:
            return {page.sign_status: status + f'<p class="refused">Not sent to the PACS: {html.escape(str(error))}'
                                               "</p>"}
        destinations = ", ".join(destination.name for destination in self.node.settings.destinations)
        note = (f'<p class="signed">Queued in the node\'s outbox for {html.escape(destinations)}: the final SR {uid}, '
                f"which supersedes the node's draft SR {html.escape(drafted['node_sr']['sop_instance_uid'])}.</p>")
        return {page.sign_status: status + note, page.report_sr: sr}

    def worklist_refreshed(self):
        panel = self.panel
        try:
            rows, note = worklist_table(self.node.studies()), ""
        except (WorklistRefused, sqlite3.Error) as error:
            rows, note = [], f'<p class="refused">{html.escape(str(error))}</p>'
        return {panel.table: rows, panel.choice: gr.update(choices=[row[0] for row in rows]), panel.status: note}

    def node_study_opened(self, uid, request: gr.Request):
        """Opens a study of the node's worklist as if its images had been dropped (a new study), with the node's
        draft in place of a draft made here; its signature then goes back through the node."""
        page, panel = self.page, self.panel
        if not uid:
            return {panel.status: '<p class="refused">Choose a study of the worklist first.</p>'}
        try:
            paths, node_draft, prior = self.node.open(uid, os.environ.get("GRADIO_TEMP_DIR"))
        except (WorklistRefused, OSError, sqlite3.Error) as error:
            return {panel.status: f'<p class="refused">{html.escape(str(error))}</p>'}
        # The prior the node's draft compared with goes into the prior slot, as if the reader had dropped it there:
        # shown beside the study, checked against it, and named by the draft and the exports
        prior_study = update_study(prior["paths"], None)[0] if prior and prior["paths"] else None
        current = Study(prior=prior_study, prior_report=prior["report"] if prior else "")
        shown = self.files_changed(paths, current, {}, request)
        opened = {**self.cleared, **self.prior_cleared, **shown, page.files: paths}
        if prior:
            opened.update({page.prior_files: gr.update(value=prior["paths"] or None, interactive=True),
                           page.prior_report: gr.update(value=prior["report"], interactive=True)})
        if node_draft is None:
            return {**opened, panel.status: f"<p>Opened {html.escape(uid)}: the node has not drafted it.</p>"}
        draft = page_draft_of(node_draft, shown[page.study])
        info = (f"Drafted by the DICOM node from {draft['images']} image(s); its preliminary SR "
                f"{node_draft['sr']['sop_instance_uid']} went to the PACS. Signing sends a final SR that supersedes "
                "it. Review every sentence before use.")
        return {**opened, page.findings: draft["findings"], page.impression: draft["impression"],
                page.draft: draft, page.draft_info: info, page.report_sr: node_draft["sr"],
                panel.status: f"<p>Opened {html.escape(uid)} with the node's draft.</p>"}

    def export(self, findings_text, impression_text, indication_text, drafted, checked, current, signed, earlier):
        page = self.page
        try:
            paths, no_sr, sr = export_report(self.drafter.name, findings_text, impression_text, indication_text,
                                             drafted, checked, current, self.show_patient_name, signature=signed,
                                             release=self.drafter.release.identity, earlier_sr=earlier or None)
        except ExportRefused as refusal:
            return {page.exported: None, page.export_status: f'<p class="refused">{html.escape(str(refusal))}</p>'}
        formats = "text, JSON, FHIR" + ("" if no_sr else " and DICOM SR")
        status = (f"signed by {html.escape(display_name(person_name(signed['reader'])))}" if signed else
                  "<b>as a DRAFT</b> (not signed: every file says so)")
        lines = [f"<p>Exported {html.escape(Path(paths['txt']).stem)} ({formats}), {status}.</p>"]
        if no_sr:
            lines.append(f"<p>No DICOM SR: {html.escape(no_sr)}</p>")
        return {page.exported: list(paths.values()), page.export_status: "".join(lines),
                **({page.report_sr: sr} if sr else {})}

    def page_closed(self, request: gr.Request):
        self.open_studies.close(request.session_hash)


def build_app(drafter, max_pixels=DEFAULT_MAX_PIXELS, any_modality=False, show_patient_name=False,
              max_waiting=MAX_WAITING_DRAFTS, delete_after=DELETE_AFTER_SECONDS, node=None):
    """The page for a loaded `ReportDrafter`. The model drafts one study at a time; up to `max_waiting` more
    drafts wait, further ones are told the server is busy. Uploads and exports older than `delete_after` seconds
    are deleted. `any_modality`: read DICOM objects that are not projection radiographs too
    (dicom.check_radiograph); `show_patient_name`: show and export the header's patient name. `node`: a DICOM
    node's worklist (worklist.NodeWorklist): its studies open on the page, and their signed reports go back through
    it."""
    folder = make_private_upload_folder()
    UploadSweeper(folder, delete_after, min(MAX_SWEEP_INTERVAL_SECONDS, max(1.0, delete_after / 6))).start()
    with gr.Blocks(title="CLIP-T5 chest X-ray report draft", analytics_enabled=False) as app:
        panel = lay_out_worklist(WORKLIST_HEADERS) if node is not None else None
        page = lay_out_page(drafter)
        on = PageHandlers(page, drafter, max_pixels, any_modality, show_patient_name, DraftTurns(max_waiting), node,
                          panel)
        private = {"api_visibility": "private"}
        if panel is not None:
            refreshed = dict(fn=on.worklist_refreshed, outputs=[panel.table, panel.choice, panel.status])
            panel.refresh_button.click(**refreshed, api_name="node_worklist")
            app.load(**refreshed, **private)
            panel.open_button.click(
                on.node_study_opened, inputs=panel.choice,
                outputs=[panel.status, page.files, page.study, page.viewer, page.messages, page.identity,
                         page.frontal_choice, page.prior_files, page.prior_report, page.prior_messages, *on.cleared],
                api_name="open_node_study")

        study_changed = page.files.change(
            on.files_changed, inputs=[page.files, page.study, page.draft],
            outputs=[page.study, page.viewer, page.messages, page.identity, page.frontal_choice, page.prior_messages,
                     *on.cleared], show_progress="hidden", **private)
        study_changed.then(on.unlock_unsigned, inputs=page.signature,
                           outputs=[page.findings, page.impression, page.checklist], show_progress="hidden", **private)
        page.frontal_choice.input(on.frontal_chosen, inputs=[page.frontal_choice, page.study, page.draft],
                                  outputs=[page.study, page.viewer, page.messages, page.draft_info],
                                  show_progress="hidden", **private)

        page.prior_files.change(on.prior_changed, inputs=[page.prior_files, page.study, page.draft],
                                outputs=[page.study, page.viewer, page.prior_messages, page.draft_info],
                                show_progress="hidden", **private)
        page.prior_report.change(on.prior_report_changed, inputs=[page.prior_report, page.study, page.draft],
                                 outputs=[page.study, page.prior_messages, page.draft_info], show_progress="hidden",
                                 trigger_mode="always_last", **private)

        draft_outputs = [page.findings, page.impression, page.draft_info, page.messages, page.draft, page.checklist,
                         page.viewer]
        for button, handler, name, extra in ((page.draft_button, on.draft_clicked, "draft_report", []),
                                              (page.redraft_button, on.redraft_clicked, "redraft_report",
                                               [page.checklist])):
            button.click(on.start_draft, inputs=[page.findings, page.impression, page.draft, page.versions],
                         outputs=[page.draft_info, page.versions, page.version_choice, page.restore_button],
                         queue=False, **private).then(
                handler, inputs=[page.files, page.indication, page.study, page.versions, *extra],
                outputs=draft_outputs, api_name=name, concurrency_limit=None).failure(
                lambda: FAILED_MESSAGE, outputs=page.draft_info, queue=False, **private)

        page.restore_button.click(on.restore, inputs=[page.version_choice, page.versions, page.findings,
                                                      page.impression, page.draft],
                                  outputs=[page.findings, page.impression, page.versions, page.version_choice],
                                  **private)
        for button, section in ((page.revert_findings, "findings"), (page.revert_impression, "impression")):
            button.click(partial(on.revert, section), inputs=[page.findings, page.impression, page.draft,
                                                              page.versions],
                         outputs=[page.findings, page.impression, page.versions, page.version_choice,
                                  page.restore_button], **private)

        # One handler for every edit: two handlers on the same textboxes made gradio fire their change events over
        # and over (a server call a second while nobody typed, and the review's checks lost).
        gr.on([page.findings.change, page.impression.change, page.checklist.change], on.text_changed,
              inputs=[page.findings, page.impression, page.checklist, page.review, page.draft, page.review_items],
              outputs=[page.draft_check, page.tags, page.claims, page.critical, page.report, page.review,
                       page.review_items], api_name="review_report", show_progress="hidden",
              trigger_mode="always_last", concurrency_limit=None)

        page.sign_button.click(on.sign, inputs=[page.reader, page.findings, page.impression, page.review, page.draft,
                                                page.study, page.checklist, page.sign_anyway],
                               outputs=[page.signature, page.sign_status, *page.locked,
                                        *([page.report_sr] if node is not None else [])], api_name="sign_report")
        page.export_button.click(on.export, inputs=[page.findings, page.impression, page.indication, page.draft,
                                                    page.checklist, page.study, page.signature, page.report_sr],
                                 outputs=[page.exported, page.export_status, page.report_sr],
                                 api_name="export_report")
        app.unload(on.page_closed)
    # Drafts queue in DraftTurns (bounded, with a "busy" answer), so gradio's own queue is not the limit.
    return app.queue(default_concurrency_limit=1, max_size=None)


def serve_options():
    """Settings for `launch` and `gr.mount_gradio_app` alike: our CSS, no run history kept in the browser
    (it would store inputs of past runs), no footer links, bounded upload size, no MCP or analytics."""
    return dict(css=PAGE_CSS, theme=page_theme(), footer_links=[], run_history=False, max_file_size=MAX_FILE_SIZE,
                ssr_mode=False, mcp_server=False, pwa=False, enable_monitoring=False)


def page_theme():
    """gradio's theme in the machine's own fonts: the semi-bold Source Sans Pro that gradio serves draws a capital
    "A" from another, smaller font ("CRITICᴀL"), and a web font cannot be fetched offline anyway."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch(app, host="127.0.0.1", port=7860, **kwargs):
    """Serve on `host` (local only by default); never through a share link."""
    return app.launch(server_name=host, server_port=port, share=False, show_error=False, **serve_options(),
                      **kwargs)


__all__ = ["ReportDrafter", "build_app", "check_draft", "draft_report", "export_report", "launch", "review_report", "sign_report",
           "serve_options", "show_study"]

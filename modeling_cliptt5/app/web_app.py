"""The clinician-facing page: drop a study, see whose it is, read the draft with the labeler's tags and, with a
finding head, its findings checklist (probabilities, heatmaps over the image, where the text and the findings
disagree), correct a finding and redraft, edit (earlier text kept as versions), export it (Gradio).

A study is the set of files dropped since the last Clear: a new one starts from nothing, a file of another
patient or study is not added to it, and a draft that finishes after its study was replaced is dropped."""

import os

# Before gradio is imported: no usage analytics or version check, no Hub telemetry. The page makes no outbound
# request (its fonts are gradio's bundled ones).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import atexit  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from modeling_cliptt5.data.atomic_writes import atomic_file  # noqa: E402
from modeling_cliptt5.evaluation.findings import text_reader  # noqa: E402
from modeling_cliptt5.images.display import open_for_display  # noqa: E402
from modeling_cliptt5.images.image_io import DEFAULT_MAX_PIXELS, ImageReadError  # noqa: E402
from modeling_cliptt5.images.views import frontal_first, header_view  # noqa: E402
from modeling_cliptt5.inference.drafting import TRUNCATED_WARNING, ood_warning  # noqa: E402
from modeling_cliptt5.evaluation.labeler import split_sentences  # noqa: E402
from modeling_cliptt5.app.page_server import DraftTurns, OpenStudies, ServerBusy, UploadSweeper  # noqa: E402
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
    NOTICE,
    claim_text,
    claimed_findings,
    contradiction_text,
    contradictions,
    export_record,
    report_text,
    reviewed_sentences,
    tagged_sentences,
)
from modeling_cliptt5.app.study_identity import (  # noqa: E402
    export_basename,
    exported_identity,
    file_identity,
    file_key,
    file_reference,
    identity_html,
    mismatch,
    study_identity,
)
from modeling_cliptt5.app.study_viewer import (  # noqa: E402
    EMPTY_VIEWER,
    VIEWER_CSS,
    VIEWER_JS,
    static_text,
    viewer_html,
)

# Uploads and exports older than an hour are deleted, checked every 10 minutes; the whole folder goes at exit.
DELETE_AFTER_SECONDS = 3600
MAX_SWEEP_INTERVAL_SECONDS = 600
MAX_WAITING_DRAFTS = 16  # beyond these, a draft request is told the server is busy
MAX_FILE_SIZE = "200mb"  # an uncompressed 16-bit DICOM of a 3000 x 3000 film is ~18 MB
BUSY_MESSAGE = ("**The server is busy: try again in a moment.** (Other readers' drafts are waiting for the model; "
                "nothing on this page was changed.)")
FAILED_MESSAGE = "**The draft did not finish: try again.** Nothing on this page was changed."

REVIEW_LABEL = "Sentence review: accept each sentence before signing"
REVIEW_INFO = ("Alt+Down / Alt+Up: next / previous sentence, Alt+A: accept it, Alt+E: edit it in its box; Ctrl+Enter: "
               "draft. Sentences you wrote or changed count as yours. Unchecked findings of the checklist are "
               "exported as absent (pertinent negatives).")

# The review's keys, on the whole page (gr.HTML runs this once): the keys' logic (review_logic.js, tested on its own
# by tests/app/js/) in front of the glue to the page (review_keys.js); one function body, as js_on_load wants it.
REVIEW_KEYS_JS = static_text("review_logic.js") + static_text("review_keys.js")

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
               frontal=None):
    """A study's files -> (viewer HTML, messages HTML), frontal first (`frontal`: the file name the reader chose);
    `views` (the headers') label the images, `refused` and `notes` say what was not added and what changed
    (update_study)."""
    files, views, view_note = in_view_order(files, views, frontal)
    images, problems, doubts = read_study(files, max_pixels, any_modality)
    note = None if images or not problems else "No readable image: drop PNG, JPEG or DICOM files of one study."
    viewer = viewer_html(captions_of(images, views_of(images, files, views))) if images else EMPTY_VIEWER
    notes = list(notes) + ([view_note] if view_note and images else [])
    return viewer, messages_html(problems, note, doubts, refused, notes)


def update_study(paths, study):
    """The study after the file list changed to `paths`: (study, refused, notes, is_new).

    A study is {"token", "files", "names", "keys", "listed", "identity", "views", "references"}: the files used
    (content keys), every file listed (refused ones too), the identity of the headers, each file's view and its
    DICOM UIDs (None for PNG/JPEG), frontal views first (images/views.py). A list that keeps
    none of the study's files starts a new study (new token); files added to a study join it unless their header
    names another patient or study; a file without a header joins with a note.
    """
    study = study or {}
    listed, unique = [], []
    for path in paths or []:
        key = file_key(path)
        if key not in listed:
            listed.append(key)
            unique.append((path, key))
    is_new = not set(listed) & set(study.get("listed", []))
    previous = {} if is_new else dict(zip(study.get("keys", []), study.get("names", [])))
    previous_views = {} if is_new else dict(zip(study.get("keys", []), study.get("views", [])))
    previous_references = {} if is_new else dict(zip(study.get("keys", []), study.get("references", [])))
    identity = {} if is_new else dict(study.get("identity", {}))
    files, names, keys, views, references, refused, notes = [], [], [], [], [], [], []
    for path, key in unique:
        name = Path(path).name
        if key in previous:  # already read: its header is in the study's identity, views and references
            view, reference = previous_views[key], previous_references.get(key)
        else:
            header = file_identity(path)
            view, reference = header.get("view_position", ""), file_reference(header)
            reason = mismatch(identity, header)
            if reason:
                refused.append(f"{name} is of another patient or study, {reason}. Clear the study (x at the top "
                               "right of the file list) to start a new one.")
                continue
            if not is_new:
                notes.append(f"Added {name} to this study.")
                if identity.get("patient_id") and not header:
                    notes.append(f"{name} has no DICOM header: check that it is of patient ID "
                                 f"{identity['patient_id']}.")
            identity = study_identity([identity, header])
        files.append(path)
        names.append(name)
        keys.append(key)
        views.append(view)
        references.append(reference)
    notes += [f"Removed {name} from this study." for key, name in previous.items() if key not in listed]
    # Frontal first, as the headers say: the viewer's numbering, the identity line and the model agree.
    frontal = study.get("frontal") if not is_new and study.get("frontal") in names else None
    order = frontal_first(list(range(len(files))), views, names, frontal)[0]
    files, names, keys, views, references = ([items[index] for index in order]
                                             for items in (files, names, keys, views, references))
    token = new_token() if is_new else study["token"]
    new = {"token": token, "files": files, "names": names, "keys": keys, "listed": listed, "identity": identity,
           "views": views, "references": references}
    if frontal:
        new["frontal"] = frontal
    return new, refused, notes, is_new


def choose_frontal(study, name):
    """The study with the image the reader named (`name`, a file name of the study) first: the one the model reads
    as the frontal, whatever the headers say; and a note where a header disagrees (views.frontal_first)."""
    if not study or name not in study.get("names", []) or name == study["names"][0]:
        return study, None
    order, _, note = frontal_first(list(range(len(study["names"]))), study["views"], study["names"], name)
    chosen = {**study, **{field: [study[field][index] for index in order]
                          for field in ("files", "names", "keys", "views", "references")}, "frontal": name}
    return chosen, note


def new_token():
    return uuid.uuid4().hex


def stale_note(draft, study):
    """Why the draft no longer matches the study's images, or None."""
    if not draft or "keys" not in draft or draft["keys"] == study.get("keys"):
        return None
    if sorted(draft["keys"]) == sorted(study.get("keys", [])):
        return "Another image was chosen as the frontal after this draft: draft again before exporting."
    return (f"The images changed after this draft (drafted from {draft['images']} image(s); the study now has "
            f"{len(study.get('keys', []))}): draft again before exporting.")


def checklist_choices(names, probabilities):
    """(label, value) pairs for the findings checklist: "Pleural Effusion  0.93"."""
    return [(f"{name}  {probabilities[name]:.2f}", name) for name in names]


def draft_report(drafter, files, indication, max_pixels=DEFAULT_MAX_PIXELS, findings=None, any_modality=False,
                 views=None, shown=False, frontal=None):
    """Files + indication (+ the findings a reader checked, to redraft from) -> (findings, impression, draft info,
    messages HTML, the draft as drafted, the findings checklist, the viewer with the head's heatmaps). `views`: the
    files' header views where already read (update_study), else they are read here. `shown`: the page already
    shows these images, so the viewer does not send their values again. `frontal`: the file name of the image the
    reader chose as the frontal one (choose_frontal), read first whatever the headers say.

    The time shown covers decoding the files, preprocessing and generation.
    """
    start = time.perf_counter()
    files, views, view_note = in_view_order(files, views, frontal)  # the model's first image is the frontal one
    images, problems, doubts = read_study(files, max_pixels, any_modality)
    no_checklist = gr.update(visible=bool(drafter.finding_labels), choices=[], value=[])
    if not images:
        note = "Drop at least one readable PNG, JPEG or DICOM image of the study, then draft."
        return "", "", "", messages_html(problems, note), {}, no_checklist, EMPTY_VIEWER
    views = views_of(images, files, views)
    view_notes = [view_note] if view_note else []
    captions = captions_of(images, views)
    try:
        report, view_warning = drafter.draft([image for _, image, _ in images], indication, findings)
    except Exception as error:  # e.g. out of memory: say so on the page and keep serving
        return "", "", "", messages_html(problems, f"The model failed on this study ({type(error).__name__}: "
                                                   f"{error})."), {}, no_checklist, \
            viewer_html(captions, send_values=not shown)
    seconds = time.perf_counter() - start
    used = min(len(images), drafter.num_views)
    if view_warning and len(images) > drafter.num_views:
        # Which views the model reads is the reader's to know: name them rather than drop images silently.
        view_warning = (f"This model reads {drafter.num_views} image(s) per study: drafted from "
                        f"{', '.join(name for name, *_ in images[:used])}; shown for review only, not read by "
                        f"the model: {', '.join(name for name, *_ in images[used:])}.")
    source = "the findings you checked" if findings is not None else "its findings"
    info = (f"Drafted in **{seconds:.2f} s** from {used} image(s) by `{drafter.name}`"
            f"{f', following {source}' if drafter.takes_findings else ''}. Review every sentence before use.")
    if report.repeated_sentences:
        info = (f"**WARNING: this draft says {report.repeated_sentences} sentence(s) again: each copy is listed in "
                f"the review.**\n\n{info}")
    if report.truncated:  # above the timing line: read before the draft itself
        info = f"**WARNING: {TRUNCATED_WARNING}**\n\n{info}"
    if report.ood_flag:  # above the timing line: the first thing read about this draft
        info = f"**WARNING: {ood_warning(report.ood_score, report.ood_threshold)}**\n\n{info}"
    draft = page_draft(report, seconds, [name for name, *_ in images[:used]])
    checklist, heatmaps = no_checklist, None
    if report.finding_probabilities is not None:
        names = drafter.finding_labels
        maps = report.finding_maps  # [views, findings, grid, grid]
        heatmaps = [{name: maps[view, index].numpy() for index, name in enumerate(names)} for view in range(used)]
        checklist = gr.update(visible=True, choices=checklist_choices(names, report.finding_probabilities),
                              value=report.guidance)
    return (draft["findings"], draft["impression"], info, messages_html(problems, view_warning, doubts,
                                                                          notes=view_notes),
            draft, checklist, viewer_html(captions, heatmaps, send_values=not shown))


def page_draft(report, seconds, read):
    """The page's state of a draft (kept with the page, read by the exports): the drafting record's fields a reader's
    edits do not change (inference.drafting.DraftedReport), the time the page measured and the files the model
    read."""
    draft = {"findings": report.findings or "", "impression": report.impression or "", "seconds": round(seconds, 3),
             "images": len(read), "truncated": report.truncated, "read": read, "engine": report.engine}
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
    reader = text_reader(names) if names else None
    if reader is not None:
        checked = set(checked or [])
        stated_anywhere = set()
        for header, text in (("FINDINGS:", findings), ("IMPRESSION:", impression)):
            sentences = split_sentences((text or "").strip())
            if not sentences:
                continue
            pieces = []
            for sentence in sentences:
                stated = reader(sentence)
                stated_anywhere |= stated
                extra = sorted(stated - checked)
                if extra:
                    pieces.append(f'<mark class="disagree" title="not in the findings checklist: '
                                  f'{html.escape(", ".join(extra))}">{html.escape(sentence)}</mark>')
                else:
                    pieces.append(html.escape(sentence))
            parts.append(f"<p><b>{header}</b> {' '.join(pieces)}</p>")
        missing = [name for name in names if name in checked and name not in stated_anywhere]
        if missing:
            notes.append(f'<p class="missing">Checked but not stated in the text: '
                         f'{html.escape(", ".join(missing))}</p>')
    notes += [f'<p class="missing">The text says both: {html.escape(contradiction_text(item))}</p>'
              for item in contradictions(findings, impression)]
    if not notes and "<mark" not in "".join(parts):
        return "<div><p>The text and the findings checklist agree.</p></div>" if reader is not None else ""
    summary = ("The text and the findings checklist disagree, or the text with itself: check the marked sentences "
               "and the list below.")
    return f"<div><p>{summary}</p>{''.join(parts)}{''.join(notes)}</div>"


def open_disagreements(names, findings, impression, checked):
    """What signing would leave unresolved, one line each: findings the text states that the checklist does not hold
    (or the reverse), and findings the text both claims and denies."""
    lines = []
    reader = text_reader(names) if names else None
    if reader is not None:
        stated = set().union(*(reader(sentence) for text in (findings, impression)
                               for sentence in split_sentences((text or "").strip())))
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
    "revision"}, the images the model read and the unfamiliar-image check, and, with a finding head, the reader's
    findings checklist beside the model's probabilities), as a FHIR DiagnosticReport and, for a study of DICOM
    images, as a DICOM Basic Text SR in that study (app/report_formats.py): the images' Patient and General Study
    values, a report series of its own; `earlier_sr` (the `sr_reference` of this study's last exported SR) puts the
    new one in the same series and, when signed, cites a draft SR it supersedes. Unsigned (`signature` None) every
    format says it is a draft; signed ({"reader", "signed_at"}) they carry the reader and the time.

    Returns ({"txt"|"json"|"fhir"|"sr": path}, None or why there is no SR, the SR's `sr_reference` or None). Raises
    ExportRefused for an empty report or a draft of other images than the study's."""
    study, draft = study or {}, draft or {}
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
    identity = exported_identity(study.get("identity", {}), study.get("views", []), show_name)
    record = {"study": identity, **record, **drafting_provenance(draft, study, release),
              "signature": {**signature, "signed_at": signature["signed_at"].isoformat()} if signature else None}
    if "finding_probabilities" in draft:
        record["findings_checklist"] = {"checked_by_reader": list(checked or []),
                                        "model_findings": draft["predicted_findings"],
                                        "model_probabilities": draft["finding_probabilities"]}
    name = export_basename(study.get("identity", {}), when)
    paths = {kind: folder / f"{name}{suffix}" for kind, suffix in EXPORT_SUFFIXES.items()}
    with atomic_file(paths["txt"]) as stream:
        stream.write(report_document(record, signature))
    with atomic_file(paths["json"]) as stream:
        stream.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    with atomic_file(paths["fhir"]) as stream:
        stream.write(json.dumps(fhir_diagnostic_report(record, signature), indent=2, ensure_ascii=False) + "\n")
    references = [reference for reference in study.get("references", []) if reference]
    try:
        series = None if earlier_sr is None else {
            "series_instance_uid": earlier_sr["series_instance_uid"], "series_number": earlier_sr["series_number"],
            "instance_number": earlier_sr["instance_number"] + 1}
        predecessor = earlier_sr if signature and earlier_sr and not earlier_sr.get("signed") else None
        dataset = basic_text_sr(record, references, signature, when, identity=study.get("identity", {}),
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
    by_name = {name: (view, reference, key) for name, view, reference, key in
               zip(study.get("names", []), study.get("views", []), study.get("references", []), study.get("keys", []))}
    images = [by_name[name] for name in draft.get("read", []) if name in by_name]
    provenance = {"release": release,
                  "images_read": [{"view": view, **({"sop_instance_uid": reference["sop_instance_uid"]}
                                                    if reference else {"sha1": key})}
                                  for view, reference, key in images]}
    if draft.get("engine"):  # how it ran: "PyTorch", "ONNX Runtime int8" (inference/engines.py)
        provenance["engine"] = draft["engine"]
    if "ood_score" in draft:
        provenance["ood"] = {"score": draft["ood_score"], "flag": draft["ood_flag"],
                             "threshold": draft.get("ood_threshold")}
    return provenance


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
    reason = not_ready(findings, impression, draft or {}, study or {})
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


def uploaded_paths(payload):
    """The drop zone's value for the page's functions: the uploaded files' paths. It replaces gradio 6's
    File.preprocess, which creates an empty temporary file per file at every event that reads the list and never
    deletes it (gradio has already checked that the paths are this server's uploads)."""
    if payload is None:
        return None
    return [item.path for item in (payload.root if hasattr(payload, "root") else [payload])]


def build_app(drafter, max_pixels=DEFAULT_MAX_PIXELS, any_modality=False, show_patient_name=False,
              max_waiting=MAX_WAITING_DRAFTS, delete_after=DELETE_AFTER_SECONDS):
    """The page for a loaded `ReportDrafter`. The model drafts one study at a time; up to `max_waiting` more
    drafts wait, further ones are told the server is busy. Uploads and exports older than `delete_after` seconds
    are deleted. `any_modality`: read DICOM objects that are not projection radiographs too
    (dicom.check_radiograph); `show_patient_name`: show and export the header's patient name."""
    folder = make_private_upload_folder()
    UploadSweeper(folder, delete_after, min(MAX_SWEEP_INTERVAL_SECONDS, max(1.0, delete_after / 6))).start()
    turns, open_studies = DraftTurns(max_waiting), OpenStudies()
    prompt = drafter.default_prompt
    with gr.Blocks(title="CLIP-T5 chest X-ray report draft", analytics_enabled=False) as app:
        gr.Markdown(f"**{NOTICE}**", elem_id="notice")
        with gr.Row():
            with gr.Column(scale=3):
                files = gr.File(label="Images of one study (PNG, JPEG or DICOM); Clear (x) before the next "
                                      "patient", file_count="multiple", elem_id="study-files")
                files.preprocess = uploaded_paths
                messages = gr.HTML(elem_id="study-messages")
                identity = gr.HTML(elem_id="study-identity")
                frontal_choice = gr.Dropdown(label="Frontal image: the model reads this one first (the headers' "
                                                   "frontal, else the first dropped)", choices=[], visible=False,
                                             interactive=True, elem_id="frontal-choice")
                viewer = gr.HTML(EMPTY_VIEWER, js_on_load=VIEWER_JS, elem_id="study-viewer")
            with gr.Column(scale=2):
                indication = gr.Textbox(
                    prompt or "", label="Indication / prompt (optional)", lines=2, elem_id="indication",
                    info=("Filled in with the prompt this model was trained with." if prompt else
                          "Passed to the model after the image tokens; leave it empty to draft from the images "
                          "alone."),
                )
                draft_button = gr.Button("Draft report", variant="primary", elem_id="draft-button")
                draft_info = gr.Markdown(elem_id="draft-info")
                with gr.Group(visible=bool(drafter.finding_labels)):
                    checklist = gr.CheckboxGroup(
                        label="Findings checklist (the model's probability of each; the draft follows the checked "
                              "ones)", elem_id="finding-checklist",
                        info="Correct a finding, then redraft. The heatmap of each finding can be shown over the "
                             "image (viewer controls).")
                    redraft_button = gr.Button("Redraft from the checked findings", elem_id="redraft-button",
                                               visible=drafter.takes_findings)
                draft_check = gr.HTML(elem_id="draft-check")
                critical = gr.HTML(elem_id="critical")
                with gr.Row(equal_height=True):
                    version_choice = gr.Dropdown(label="Earlier versions of this report (kept when a draft "
                                                       "replaced them)", visible=False, scale=3,
                                                 elem_id="report-versions")
                    restore_button = gr.Button("Restore", visible=False, scale=1, elem_id="restore-button")
                findings = gr.Textbox(label="FINDINGS (editable)", lines=6, buttons=["copy"], elem_id="findings")
                impression = gr.Textbox(label="IMPRESSION (editable)", lines=3, buttons=["copy"],
                                        elem_id="impression")
                with gr.Row():
                    revert_findings = gr.Button("Revert FINDINGS to the model's draft", elem_id="revert-findings")
                    revert_impression = gr.Button("Revert IMPRESSION to the model's draft",
                                                  elem_id="revert-impression")
                with gr.Group():
                    review = gr.CheckboxGroup(label=REVIEW_LABEL, info=REVIEW_INFO, elem_id="sentence-review")
                    with gr.Row(equal_height=True):
                        reader = gr.Textbox(label="Reader (Family, Given: the name signed under the report)",
                                            placeholder="Reader, Ada", scale=3, elem_id="reader-name")
                        sign_button = gr.Button("Sign report", variant="primary", scale=1, elem_id="sign-button")
                    sign_anyway = gr.Checkbox(label="Sign despite the disagreements shown above (they are recorded in "
                                                    "every export)", value=False, elem_id="sign-anyway")
                    sign_status = gr.HTML(elem_id="sign-status", js_on_load=REVIEW_KEYS_JS)
        with gr.Row():
            with gr.Column(scale=3):
                tags = gr.HighlightedText(label="What the labeler reads in each sentence (approximate rule labeler)",
                                          show_legend=False, elem_id="sentence-tags")
            with gr.Column(scale=2):
                claims = gr.Markdown(elem_id="claimed-findings")
        with gr.Row():
            with gr.Column(scale=3):
                report = gr.Textbox(label="Report text (copy button at the top right)", lines=4,
                                    interactive=False, buttons=["copy"], elem_id="report-text")
            with gr.Column(scale=2):
                export_button = gr.Button("Export report (text, JSON, FHIR, DICOM SR)", elem_id="export-button")
                export_status = gr.HTML(elem_id="export-status")
                exported = gr.File(label="Exported files", file_count="multiple", interactive=False, height=140,
                                   elem_id="exported-files")
        study, draft, versions, signature = gr.State({}), gr.State({}), gr.State([]), gr.State({})
        review_items = gr.State([])  # the sentences the review shows
        report_sr = gr.State({})  # the study's last exported SR: the next one joins its series, a signed one cites it
        # What signing locks, and a new study unlocks.
        locked = [findings, impression, checklist, review, reader, draft_button, redraft_button, revert_findings,
                  revert_impression, restore_button, version_choice, sign_button, sign_anyway]

        # What a new study (or Clear) empties: nothing of the previous patient's draft survives it.
        reset_outputs = [findings, impression, draft_info, draft, checklist, draft_check, critical, tags, claims,
                         report, exported, export_status, versions, version_choice, restore_button, review,
                         signature, sign_status, reader, draft_button, redraft_button, revert_findings,
                         revert_impression, sign_button, review_items, report_sr, sign_anyway]
        unlocked = gr.update(interactive=True)
        reset_values = ["", "", "", {},
                        gr.update(visible=bool(drafter.finding_labels), choices=[], value=[]), "",
                        "", None, "", "", None, "", [], gr.update(choices=[], value=None, visible=False, interactive=True),
                        gr.update(visible=False, interactive=True), gr.update(choices=[], value=[], interactive=True),
                        {}, "", unlocked, unlocked, unlocked, unlocked, unlocked, unlocked, [], {},
                        gr.update(value=False, interactive=True)]

        def frontal_menu(current):
            names = current.get("names", []) if current else []
            return gr.update(choices=names, value=names[0] if names else None, visible=len(names) > 1)

        def files_changed(paths, current, drafted, request: gr.Request):
            new, refused, notes, is_new = update_study(paths, current)
            if new["listed"] == current.get("listed"):  # the same files (a re-sent list): nothing to do
                return [gr.skip()] * (5 + len(reset_outputs))
            shown, text = show_study(new["files"], max_pixels, any_modality, new["views"], refused, notes,
                                     new.get("frontal"))
            header = identity_html(new["identity"], new["views"], show_patient_name) if new["files"] else ""
            if not new["listed"]:
                new = {}
            open_studies.show(request.session_hash, new.get("token"))
            if is_new:
                return [new, shown, text, header, frontal_menu(new), *reset_values]
            stale = stale_note(drafted, new)
            info = f"**{stale}**" if stale else gr.skip()
            return [new, shown, text, header, frontal_menu(new), *[gr.skip()] * 2, info,
                    *[gr.skip()] * (len(reset_outputs) - 3)]

        files_changed_event = files.change(files_changed, inputs=[files, study, draft],
                                           outputs=[study, viewer, messages, identity, frontal_choice, *reset_outputs],
                                           api_visibility="private", show_progress="hidden")

        def frontal_chosen(name, current, drafted):
            # The reader names the frontal image (PNG/JPEG carry no view): the study's order, the viewer's numbering
            # and the model's first image follow it; a draft of the old order is stale.
            chosen, note = choose_frontal(current, name)
            if chosen is current:
                return [gr.skip()] * 4
            shown, text = show_study(chosen["files"], max_pixels, any_modality, chosen["views"],
                                     notes=[note] if note else (), frontal=name)
            stale = stale_note(drafted, chosen)
            return chosen, shown, text, f"**{stale}**" if stale else gr.skip()

        frontal_choice.input(frontal_chosen, inputs=[frontal_choice, study, draft],
                             outputs=[study, viewer, messages, draft_info], api_visibility="private",
                             show_progress="hidden")

        def unlock_unsigned(signed):
            # A new study is unsigned: its text boxes open again. (Set in the same update as their emptied value,
            # gradio left the previous study's text in them.)
            return [gr.skip()] * 3 if signed else [gr.update(interactive=True)] * 3

        files_changed_event.then(unlock_unsigned, inputs=signature, outputs=[findings, impression, checklist],
                                 api_visibility="private", show_progress="hidden")

        def start_draft(findings_text, impression_text, drafted, kept):
            # The old timing line goes at once, so nobody reads it as the new draft's while the model works; text
            # the model did not write is kept as a version before the draft replaces it.
            kept = keep_version(kept, findings_text, impression_text, drafted,
                                f"Your text before the draft at {datetime.now():%H:%M:%S}")
            return "Drafting...", kept, versions_menu(kept), gr.update(visible=bool(kept))

        def run_draft(paths, text, current, kept, request: gr.Request, checked=None):
            token = current.get("token")
            try:
                with turns.turn():
                    # the study's files come frontal first with the views update_study read from their headers
                    # the study's images are on the page already (files_changed showed them): not sent again
                    outputs = list(draft_report(drafter, current["files"] if token else paths, text, max_pixels,
                                                checked, any_modality, current.get("views") if token else None,
                                                shown=bool(token), frontal=current.get("frontal")))
            except ServerBusy:
                return [gr.skip(), gr.skip(), BUSY_MESSAGE, *[gr.skip()] * 4]
            if token and not open_studies.is_current(request.session_hash, token):
                return [gr.skip()] * 7  # its study was cleared or replaced meanwhile: never show it on the next
            if outputs[4]:
                outputs[4] = {**outputs[4], "keys": current.get("keys")}
                if kept:
                    outputs[2] += " Earlier text is kept under *Earlier versions*."
            return outputs

        draft_outputs = [findings, impression, draft_info, messages, draft, checklist, viewer]
        start_outputs = [draft_info, versions, version_choice, restore_button]
        def draft_clicked(paths, text, current, kept, request: gr.Request):
            return run_draft(paths, text, current, kept, request)

        def redraft_clicked(paths, text, current, kept, checked, request: gr.Request):
            return run_draft(paths, text, current, kept, request, list(checked or []))

        for button, handler, name, extra in ((draft_button, draft_clicked, "draft_report", []),
                                              (redraft_button, redraft_clicked, "redraft_report", [checklist])):
            button.click(start_draft, inputs=[findings, impression, draft, versions], outputs=start_outputs,
                         queue=False, api_visibility="private").then(
                handler, inputs=[files, indication, study, versions, *extra], outputs=draft_outputs, api_name=name,
                concurrency_limit=None).failure(lambda: FAILED_MESSAGE, outputs=draft_info, queue=False,
                                                api_visibility="private")

        def restore(index, kept, findings_text, impression_text, drafted):
            if index is None or not 0 <= int(index) < len(kept):
                return [gr.skip()] * 4
            chosen = kept[int(index)]
            kept = keep_version(kept, findings_text, impression_text, drafted,
                                f"Your text before restoring, {datetime.now():%H:%M:%S}")
            return chosen["findings"], chosen["impression"], kept, versions_menu(kept)

        restore_button.click(restore, inputs=[version_choice, versions, findings, impression, draft],
                             outputs=[findings, impression, versions, version_choice], api_visibility="private")
        def text_changed(findings_text, impression_text, checked, accepted, drafted, shown):
            items, done = reviewed_sentences(findings_text, impression_text, accepted, drafted)
            unchanged = items == shown and done == list(accepted or [])
            return (check_draft(drafter.finding_labels, findings_text, impression_text, checked, drafted),
                    *review_report(findings_text, impression_text),
                    gr.skip() if unchanged else gr.update(choices=items, value=done),
                    gr.skip() if unchanged else items)

        # One handler for every edit: two handlers on the same textboxes made gradio fire their change events over
        # and over (a server call a second while nobody typed, and the review's checks lost).
        gr.on([findings.change, impression.change, checklist.change], text_changed,
              inputs=[findings, impression, checklist, review, draft, review_items],
              outputs=[draft_check, tags, claims, critical, report, review, review_items], api_name="review_report",
              show_progress="hidden", trigger_mode="always_last", concurrency_limit=None)

        def export(findings_text, impression_text, indication_text, drafted, checked, current, signed, earlier):
            try:
                paths, no_sr, sr = export_report(drafter.name, findings_text, impression_text, indication_text,
                                                 drafted, checked, current, show_patient_name, signature=signed,
                                                 release=drafter.release.identity, earlier_sr=earlier or None)
            except ExportRefused as refusal:
                return None, f'<p class="refused">{html.escape(str(refusal))}</p>', gr.skip()
            formats = "text, JSON, FHIR" + ("" if no_sr else " and DICOM SR")
            status = (f"signed by {html.escape(display_name(person_name(signed['reader'])))}" if signed else
                      "<b>as a DRAFT</b> (not signed: every file says so)")
            lines = [f"<p>Exported {html.escape(Path(paths['txt']).stem)} ({formats}), {status}.</p>"]
            if no_sr:
                lines.append(f"<p>No DICOM SR: {html.escape(no_sr)}</p>")
            return list(paths.values()), "".join(lines), sr or gr.skip()

        def revert(section, findings_text, impression_text, drafted, kept):
            if not drafted:
                return [gr.skip()] * 5
            kept = keep_version(kept, findings_text, impression_text, drafted,
                                f"Your text before reverting {section.upper()}, {datetime.now():%H:%M:%S}")
            texts = {"findings": findings_text, "impression": impression_text, section: drafted.get(section, "")}
            return texts["findings"], texts["impression"], kept, versions_menu(kept), gr.update(visible=bool(kept))

        for button, section in ((revert_findings, "findings"), (revert_impression, "impression")):
            button.click(lambda *values, section=section: revert(section, *values),
                         inputs=[findings, impression, draft, versions],
                         outputs=[findings, impression, versions, version_choice, restore_button],
                         api_visibility="private")

        def sign(name, findings_text, impression_text, accepted, drafted, current, checked, anyway):
            try:
                signed = sign_report(name, findings_text, impression_text, accepted, drafted, current,
                                     names=drafter.finding_labels if "finding_probabilities" in (drafted or {})
                                     else (), checked=checked, override=anyway)
            except SignRefused as refusal:
                return [gr.skip(), f'<p class="refused">{html.escape(str(refusal))}</p>',
                        *[gr.skip()] * len(locked)]
            when = datetime.fromisoformat(signed["signed_at"])
            reader_name = display_name(person_name(signed["reader"]))
            status = (f'<p class="signed">Signed by {html.escape(reader_name)} on {when:%Y-%m-%d %H:%M}. '
                      "The report is locked: export it below; Clear the study to start the next one.</p>")
            return [signed, status, *[gr.update(interactive=False)] * len(locked)]

        sign_button.click(sign, inputs=[reader, findings, impression, review, draft, study, checklist, sign_anyway],
                          outputs=[signature, sign_status, *locked], api_name="sign_report")

        export_button.click(export, inputs=[findings, impression, indication, draft, checklist, study, signature,
                                            report_sr], outputs=[exported, export_status, report_sr],
                            api_name="export_report")
        def page_closed(request: gr.Request):
            open_studies.close(request.session_hash)

        app.unload(page_closed)
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

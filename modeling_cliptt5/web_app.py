"""The clinician-facing page: drop a study, read the draft with the labeler's tags and, with a finding head, its
findings checklist (probabilities, heatmaps over the image, where the text and the findings disagree), correct a
finding and redraft, edit, export it (Gradio)."""

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
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from .findings import text_reader  # noqa: E402
from .image_io import DEFAULT_MAX_PIXELS, ImageReadError, open_image  # noqa: E402
from .inference import ood_warning  # noqa: E402
from .labeler import split_sentences  # noqa: E402
from .report_drafter import ReportDrafter  # noqa: E402
from .report_review import (  # noqa: E402
    NOTICE,
    claim_text,
    claimed_findings,
    export_record,
    report_text,
    tagged_sentences,
)
from .study_viewer import EMPTY_VIEWER, VIEWER_CSS, VIEWER_JS, viewer_html  # noqa: E402

# Uploaded files older than an hour are deleted, checked every 10 minutes; the whole folder goes at exit.
DELETE_CACHE = (600, 3600)
MAX_FILE_SIZE = "200mb"  # an uncompressed 16-bit DICOM of a 3000 x 3000 film is ~18 MB
EXPORT_NAME = "cxr_report_draft"  # no patient identifier in exported file names

PAGE_CSS = VIEWER_CSS + """
#notice { border: 2px solid #b45309; background: #fef3c7; color: #78350f; padding: 0.6em 1em; border-radius: 6px; }
#critical .critical-alert { border: 3px solid #dc2626; background: #fee2e2; color: #7f1d1d; padding: 0.6em 1em;
                            border-radius: 6px; font-size: 1.15em; font-weight: 700; }
#study-messages .problem { color: #b91c1c; }
#study-messages .doubt { color: #92400e; font-weight: 600; }
#draft-check mark.disagree { background: #fde68a; border-bottom: 2px solid #d97706; padding: 0 2px; }
#draft-check .missing { color: #92400e; font-weight: 600; }
"""


def make_private_upload_folder():
    """A fresh 0700 folder for this server's uploads and exports (gradio reads GRADIO_TEMP_DIR), removed at exit."""
    folder = tempfile.mkdtemp(prefix="cliptt5-app-")  # mkdtemp creates it readable by this user only
    os.environ["GRADIO_TEMP_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


def read_study(files, max_pixels=DEFAULT_MAX_PIXELS, any_modality=False):
    """Decode the dropped files: [(name, image)] for the readable ones, one message per unreadable file, and the
    readers' doubts about the files used (a DICOM without Modality, of another body part...)."""
    images, problems, doubts = [], [], []
    for path in files or []:
        name = Path(path).name
        try:
            images.append((name, open_image(path, name=name, max_pixels=max_pixels, any_modality=any_modality,
                                            on_doubt=doubts.append)))
        except ImageReadError as error:
            problems.append(str(error))
        except Exception as error:  # a decoder bug on one file must not take the page down
            problems.append(f"{name}: cannot be read ({type(error).__name__})")
    return images, problems, doubts


def messages_html(problems, note=None, doubts=()):
    """Messages under the drop zone: one line per unreadable file, one per doubtful file used, then a note."""
    lines = [f'<p class="problem">Not used: {html.escape(problem)}</p>' for problem in problems]
    lines += [f'<p class="doubt">Check: {html.escape(doubt)}</p>' for doubt in doubts]
    if note:
        lines.append(f"<p>{html.escape(note)}</p>")
    return "".join(lines)


def captions_of(images):
    return [(f"Image {index}: {name}", image) for index, (name, image) in enumerate(images, start=1)]


def show_study(files, max_pixels=DEFAULT_MAX_PIXELS, any_modality=False):
    """Files dropped -> (viewer HTML, messages HTML)."""
    images, problems, doubts = read_study(files, max_pixels, any_modality)
    note = None if images or not problems else "No readable image: drop PNG, JPEG or DICOM files of one study."
    return (viewer_html(captions_of(images)) if images else EMPTY_VIEWER), messages_html(problems, note, doubts)


def checklist_choices(names, probabilities):
    """(label, value) pairs for the findings checklist: "Pleural Effusion  0.93"."""
    return [(f"{name}  {probabilities[name]:.2f}", name) for name in names]


def draft_report(drafter, files, indication, max_pixels=DEFAULT_MAX_PIXELS, findings=None, any_modality=False):
    """Files + indication (+ the findings a reader checked, to redraft from) -> (findings, impression, draft info,
    messages HTML, the draft as drafted, the findings checklist, the viewer with the head's heatmaps).

    The time shown covers decoding the files, preprocessing and generation.
    """
    start = time.perf_counter()
    images, problems, doubts = read_study(files, max_pixels, any_modality)
    no_checklist = gr.update(visible=bool(drafter.finding_labels), choices=[], value=[])
    if not images:
        note = "Drop at least one readable PNG, JPEG or DICOM image of the study, then draft."
        return "", "", "", messages_html(problems, note), {}, no_checklist, EMPTY_VIEWER
    viewer = viewer_html(captions_of(images))
    try:
        report, view_warning = drafter.draft([image for _, image in images], indication, findings)
    except Exception as error:  # e.g. out of memory: say so on the page and keep serving
        return "", "", "", messages_html(problems, f"The model failed on this study ({type(error).__name__}: "
                                                   f"{error})."), {}, no_checklist, viewer
    seconds = time.perf_counter() - start
    used = min(len(images), drafter.num_views)
    if view_warning and len(images) > drafter.num_views:
        # Which views the model reads is the reader's to know: name them rather than drop images silently.
        view_warning = (f"This model reads {drafter.num_views} image(s) per study: drafted from "
                        f"{', '.join(name for name, _ in images[:used])}; shown for review only, not read by "
                        f"the model: {', '.join(name for name, _ in images[used:])}.")
    source = "the findings you checked" if findings is not None else "its findings"
    info = (f"Drafted in **{seconds:.2f} s** from {used} image(s) by `{drafter.name}`"
            f"{f', following {source}' if drafter.takes_findings else ''}. Review every sentence before use.")
    if report.get("ood_flag"):  # above the timing line: the first thing read about this draft
        info = f"**WARNING: {ood_warning(report['ood_score'], drafter.model.ood_summary.threshold)}**\n\n{info}"
    draft = {"findings": report["findings"] or "", "impression": report["impression"] or "",
             "seconds": round(seconds, 3), "images": used}
    if "ood_score" in report:
        draft.update(ood_score=report["ood_score"], ood_flag=report["ood_flag"])
    checklist = no_checklist
    if "finding_probabilities" in report:
        names = drafter.finding_labels
        draft.update(finding_probabilities=report["finding_probabilities"], guidance=report["guidance"],
                     predicted_findings=report["predicted_findings"])
        maps = report["finding_maps"]  # [views, findings, grid, grid]
        heatmaps = [{name: maps[view, index].numpy() for index, name in enumerate(names)} for view in range(used)]
        viewer = viewer_html(captions_of(images), heatmaps)
        checklist = gr.update(visible=True, choices=checklist_choices(names, report["finding_probabilities"]),
                              value=report["guidance"])
    return (draft["findings"], draft["impression"], info, messages_html(problems, view_warning, doubts), draft, checklist,
            viewer)


def check_draft(names, findings, impression, checked, draft):
    """HTML comparing the report's text with the findings checklist: sentences that state a finding the checklist
    does not hold are marked, and checked findings the text does not state are listed. Empty without a draft or
    without a rule reader for the label set."""
    reader = text_reader(names) if names else None
    if reader is None or not draft:
        return ""
    checked = set(checked or [])
    stated_anywhere, parts = set(), []
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
    notes = [f'<p class="missing">Checked but not stated in the text: {html.escape(", ".join(missing))}</p>'] \
        if missing else []
    if not missing and "<mark" not in "".join(parts):
        return "<div><p>The text and the findings checklist agree.</p></div>"
    summary = "The text and the findings checklist disagree: check the marked sentences and the list below."
    return f"<div><p>{summary}</p>{''.join(parts)}{''.join(notes)}</div>"


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


def write_atomically(path, text):
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def export_report(drafter_name, findings, impression, indication, draft, checked=None):
    """The EDITED text as report .txt and .json (with the labeler's reading of the edited text and, with a finding
    head, the reader's findings checklist beside the model's probabilities), in a fresh folder."""
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=os.environ.get("GRADIO_TEMP_DIR")))
    draft = draft or {}
    record = export_record(findings, impression, indication,
                           model_draft={k: draft[k] for k in ("findings", "impression") if k in draft},
                           model_name=drafter_name, images=draft.get("images", 0),
                           draft_seconds=draft.get("seconds"))
    if "finding_probabilities" in draft:
        record["findings_checklist"] = {"checked_by_reader": list(checked or []),
                                        "model_findings": draft["predicted_findings"],
                                        "model_probabilities": draft["finding_probabilities"]}
    text_path, json_path = folder / f"{EXPORT_NAME}.txt", folder / f"{EXPORT_NAME}.json"
    write_atomically(text_path, record["report"] + "\n")
    write_atomically(json_path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return [str(text_path), str(json_path)]


def build_app(drafter, max_pixels=DEFAULT_MAX_PIXELS, any_modality=False):
    """The page for a loaded `ReportDrafter`, queued (one draft at a time; other users wait their turn).
    `any_modality`: read DICOM objects that are not projection radiographs too (dicom.check_radiograph)."""
    make_private_upload_folder()
    prompt = drafter.default_prompt
    with gr.Blocks(title="CLIP-T5 chest X-ray report draft", analytics_enabled=False,
                   delete_cache=DELETE_CACHE) as app:
        gr.Markdown(f"**{NOTICE}**", elem_id="notice")
        with gr.Row():
            with gr.Column(scale=3):
                files = gr.File(label="Images of one study (PNG, JPEG or DICOM)", file_count="multiple",
                                elem_id="study-files")
                messages = gr.HTML(elem_id="study-messages")
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
                findings = gr.Textbox(label="FINDINGS (editable)", lines=6, buttons=["copy"], elem_id="findings")
                impression = gr.Textbox(label="IMPRESSION (editable)", lines=3, buttons=["copy"],
                                        elem_id="impression")
        with gr.Row():
            with gr.Column(scale=3):
                tags = gr.HighlightedText(label="What the labeler reads in each sentence (approximate rule labeler)",
                                          show_legend=False, elem_id="sentence-tags")
            with gr.Column(scale=2):
                claims = gr.Markdown(elem_id="claimed-findings")
        with gr.Row():
            with gr.Column(scale=3):
                report = gr.Textbox(label="Report as exported (copy button at the top right)", lines=4,
                                    interactive=False, buttons=["copy"], elem_id="report-text")
            with gr.Column(scale=2):
                export_button = gr.Button("Export edited report (.txt and .json)", elem_id="export-button")
                exported = gr.File(label="Exported files", file_count="multiple", interactive=False, height=140,
                                   elem_id="exported-files")
        draft = gr.State({})

        files.change(lambda paths: show_study(paths, max_pixels, any_modality), inputs=files, outputs=[viewer, messages],
                     api_name="show_study")
        # The old timing line goes at once, so nobody reads it as the new draft's while the model works.
        draft_outputs = [findings, impression, draft_info, messages, draft, checklist, viewer]
        draft_button.click(lambda: "Drafting...", outputs=draft_info, queue=False, api_visibility="private").then(
            lambda paths, text: draft_report(drafter, paths, text, max_pixels, any_modality=any_modality),
            inputs=[files, indication], outputs=draft_outputs, api_name="draft_report", concurrency_limit=1)
        redraft_button.click(lambda: "Drafting...", outputs=draft_info, queue=False, api_visibility="private").then(
            lambda paths, text, checked: draft_report(drafter, paths, text, max_pixels, list(checked or []),
                                                          any_modality),
            inputs=[files, indication, checklist], outputs=draft_outputs, api_name="redraft_report",
            concurrency_limit=1)
        gr.on([findings.change, impression.change, checklist.change],
              lambda *values: check_draft(drafter.finding_labels, *values),
              inputs=[findings, impression, checklist, draft], outputs=draft_check, api_name="check_draft",
              show_progress="hidden", trigger_mode="always_last")
        gr.on([findings.change, impression.change], review_report, inputs=[findings, impression],
              outputs=[tags, claims, critical, report], api_name="review_report", show_progress="hidden",
              trigger_mode="always_last")
        export_button.click(lambda *values: export_report(drafter.name, *values),
                            inputs=[findings, impression, indication, draft, checklist], outputs=exported,
                            api_name="export_report")
    return app.queue(default_concurrency_limit=1, max_size=32)


def serve_options():
    """Settings for `launch` and `gr.mount_gradio_app` alike: our CSS, no run history kept in the browser
    (it would store inputs of past runs), no footer links, bounded upload size, no MCP or analytics."""
    return dict(css=PAGE_CSS, footer_links=[], run_history=False, max_file_size=MAX_FILE_SIZE, ssr_mode=False,
                mcp_server=False, pwa=False, enable_monitoring=False)


def launch(app, host="127.0.0.1", port=7860, **kwargs):
    """Serve on `host` (local only by default); never through a share link."""
    return app.launch(server_name=host, server_port=port, share=False, show_error=False, **serve_options(),
                      **kwargs)


__all__ = ["ReportDrafter", "build_app", "check_draft", "draft_report", "export_report", "launch", "review_report",
           "serve_options", "show_study"]

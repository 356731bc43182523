"""The page's components, laid out and held by name (`Page`); what they do is web_app.PageHandlers'."""

from dataclasses import dataclass

import gradio as gr

from modeling_cliptt5.app.page_study import Study
from modeling_cliptt5.app.report_review import NOTICE
from modeling_cliptt5.app.study_viewer import EMPTY_VIEWER, VIEWER_JS, static_text

REVIEW_LABEL = "Sentence review: accept each sentence before signing"
REVIEW_INFO = ("Alt+Down / Alt+Up: next / previous sentence, Alt+A: accept it, Alt+E: edit it in its box; Ctrl+Enter: "
               "draft. Sentences you wrote or changed count as yours. Unchecked findings of the checklist are "
               "exported as absent (pertinent negatives).")

# The review's keys, on the whole page (gr.HTML runs this once): the keys' logic (review_logic.js, tested on its own
# by tests/app/js/) in front of the glue to the page (review_keys.js); one function body, as js_on_load wants it.
REVIEW_KEYS_JS = static_text("review_logic.js") + static_text("review_keys.js")


@dataclass
class Page:
    """The page's components, and the states it keeps per open page."""

    # the study: drop zone, messages, whose it is, the frontal choice, the prior study, the viewer
    files: gr.File
    messages: gr.HTML
    identity: gr.HTML
    frontal_choice: gr.Dropdown
    prior_files: gr.File
    prior_report: gr.Textbox
    prior_messages: gr.HTML
    viewer: gr.HTML
    # drafting
    indication: gr.Textbox
    draft_button: gr.Button
    draft_info: gr.Markdown
    checklist: gr.CheckboxGroup
    redraft_button: gr.Button
    draft_check: gr.HTML
    critical: gr.HTML
    # the report's text and its earlier versions
    version_choice: gr.Dropdown
    restore_button: gr.Button
    findings: gr.Textbox
    impression: gr.Textbox
    revert_findings: gr.Button
    revert_impression: gr.Button
    # review and signature
    review: gr.CheckboxGroup
    reader: gr.Textbox
    sign_button: gr.Button
    sign_anyway: gr.Checkbox
    sign_status: gr.HTML
    # the labeler's reading, the report text, the export
    tags: gr.HighlightedText
    claims: gr.Markdown
    report: gr.Textbox
    export_button: gr.Button
    export_status: gr.HTML
    exported: gr.File
    # per open page
    study: gr.State  # Study (with its prior)
    draft: gr.State  # the draft as drafted (web_app.page_draft)
    versions: gr.State  # earlier text a draft replaced
    signature: gr.State  # {"reader", "signed_at"} once signed
    review_items: gr.State  # the sentences the review shows
    report_sr: gr.State  # the study's last exported SR: the next one joins its series, a signed one cites it

    @property
    def locked(self):
        """What signing locks, and a new study unlocks."""
        return [self.findings, self.impression, self.checklist, self.review, self.reader, self.draft_button,
                self.redraft_button, self.revert_findings, self.revert_impression, self.restore_button,
                self.version_choice, self.sign_button, self.sign_anyway, self.prior_files, self.prior_report]


def uploaded_paths(payload):
    """The drop zone's value for the page's functions: the uploaded files' paths. It replaces gradio 6's
    File.preprocess, which creates an empty temporary file per file at every event that reads the list and never
    deletes it (gradio has already checked that the paths are this server's uploads)."""
    if payload is None:
        return None
    return [item.path for item in (payload.root if hasattr(payload, "root") else [payload])]


def lay_out_page(drafter):
    """The page's components for a loaded `ReportDrafter`, inside the current gr.Blocks."""
    prompt = drafter.default_prompt
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
            reads = ("the model reads it" if drafter.reads_prior else
                     "shown for your comparison: this model does not read a prior, it drafts as a first study")
            # closed until wanted, so that the viewer stays high on the screen; its messages (a refused prior)
            # stand outside it, seen whether it is open or not
            with gr.Accordion(f"Prior study of this patient (optional; {reads})", open=False, elem_id="prior-study"):
                with gr.Row(equal_height=True):
                    prior_files = gr.File(label="Prior study's images (PNG, JPEG or DICOM)", file_count="multiple",
                                          height=120, elem_id="prior-files")
                    prior_files.preprocess = uploaded_paths
                    prior_report = gr.Textbox(label="Prior study's report", lines=4, elem_id="prior-report")
            prior_messages = gr.HTML(elem_id="prior-messages")
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
    return Page(files=files, messages=messages, identity=identity, frontal_choice=frontal_choice,
                prior_files=prior_files, prior_report=prior_report, prior_messages=prior_messages, viewer=viewer,
                indication=indication, draft_button=draft_button, draft_info=draft_info, checklist=checklist,
                redraft_button=redraft_button, draft_check=draft_check, critical=critical,
                version_choice=version_choice, restore_button=restore_button, findings=findings,
                impression=impression, revert_findings=revert_findings, revert_impression=revert_impression,
                review=review, reader=reader, sign_button=sign_button, sign_anyway=sign_anyway,
                sign_status=sign_status, tags=tags, claims=claims, report=report, export_button=export_button,
                export_status=export_status, exported=exported, study=gr.State(Study()), draft=gr.State({}),
                versions=gr.State([]), signature=gr.State({}), review_items=gr.State([]), report_sr=gr.State({}))


@dataclass
class NodePanel:
    """The node's worklist (cliptt5-app --node-config): its table, the refresh button, the study to open."""

    table: gr.Dataframe
    refresh_button: gr.Button
    choice: gr.Dropdown
    open_button: gr.Button
    status: gr.HTML


def lay_out_worklist(headers):
    """The node's worklist, above the study: read from the node when the page opens and when refreshed."""
    with gr.Accordion("The DICOM node's studies (worklist)", open=True, elem_id="node-worklist"):
        table = gr.Dataframe(headers=headers, interactive=False, wrap=True, elem_id="node-worklist-table")
        with gr.Row(equal_height=True):
            refresh_button = gr.Button("Refresh the worklist", elem_id="node-worklist-refresh")
            # any typed UID is taken: the node's database, not the list last shown, says whether it holds it
            choice = gr.Dropdown(label="Study to open (Study Instance UID)", choices=[], interactive=True,
                                 allow_custom_value=True, elem_id="node-study-choice")
            open_button = gr.Button("Open the study and its draft", elem_id="node-study-open")
        status = gr.HTML(elem_id="node-worklist-status")
    return NodePanel(table=table, refresh_button=refresh_button, choice=choice, open_button=open_button,
                     status=status)

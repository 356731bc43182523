"""The report-drafting page: the gradio page (web_app.py), its server-side rules (page_server.py), the study's identity
and viewer (study_identity.py, study_viewer.py), the review of a draft (report_review.py) and the loaded model
(report_drafter.py)."""

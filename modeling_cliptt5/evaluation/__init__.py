"""Scoring drafts: report metrics, the offline rule labeler and the finding head's scores (the modules:
docs/modules.md)."""

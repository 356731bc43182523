"""Scoring: report metrics on the R2Gen protocol (metrics.py), the offline rule labeler (labeler.py) and the finding
head's label sets, thresholds and scores (findings.py)."""

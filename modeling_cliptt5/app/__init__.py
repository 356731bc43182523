"""The report-drafting page: a reader sees the study, reviews and corrects the draft, signs and exports it (the
modules: docs/modules.md)."""

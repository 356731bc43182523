"""Readers that turn a public chest X-ray set or your own folder into the report schema; their commands are in
cli/ (the modules: docs/modules.md)."""

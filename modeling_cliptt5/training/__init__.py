"""Training both stages and writing the release (the modules: docs/modules.md)."""

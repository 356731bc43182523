"""Datasets: the one report schema, the built-in phantoms, the converters of public sets and files written whole or
not at all (the modules: docs/modules.md)."""

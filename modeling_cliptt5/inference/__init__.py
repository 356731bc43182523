"""Drafting reports from a release, on PyTorch or the ONNX Runtime fast path, with the unfamiliar-study check
(the modules: docs/modules.md)."""

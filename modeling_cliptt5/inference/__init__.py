"""Drafting reports from a release: loading and drafting (drafting.py), the ONNX Runtime fast path
(fast_inference.py, onnx_inference.py) and the unfamiliar-study check (ood.py)."""

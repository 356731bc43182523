"""Attention exported as ONNX Runtime's fused `MultiHeadAttention` (com.microsoft), for the fast path's graphs.

The exporter writes transformers' eager attention op by op: per attention the scores' MatMul, the scale, the
position bias and mask Adds, the Softmax, the second MatMul and the heads' Transposes. A decoding step of one token
is then mostly small nodes around its int8 matrix products. ONNX Runtime's own transformer optimizer does not
recognise T5's attention (no scaling, a relative position bias), so the export writes the fused node itself:
`export_attention` is registered as an attention implementation of transformers (v5's AttentionInterface) and the
exporter sees one node per attention (docs/benchmarks.md: what it gave). It computes what eager attention
computes; with float32 graphs the drafts are PyTorch's tokens (tests/inference/test_onnx_inference.py).
"""

import contextlib

import torch

NAME = "cliptt5_onnx_export"


class FusedAttention(torch.autograd.Function):
    """softmax(query . key * scale + bias) . value, traced as one MultiHeadAttention node."""

    @staticmethod
    def forward(ctx, query, key, value, bias, heads, scale):
        # query [batch, heads, queries, head size], key and value [batch, heads, keys, head size], bias broadcast
        # to [batch, heads, queries, keys] -> [batch, queries, heads, head size], as eager attention returns it
        scores = torch.matmul(query, key.transpose(2, 3)) * scale
        weights = torch.softmax(scores if bias is None else scores + bias, dim=-1)
        return torch.matmul(weights, value).transpose(1, 2)

    @staticmethod
    def symbolic(graph, query, key, value, bias, heads, scale):
        from torch.onnx import symbolic_helper

        missing = symbolic_helper._optional_input_placeholder_tensor(graph)
        # The node takes the query as [batch, queries, hidden] and keys and values as they are (heads first, the
        # form it takes for cached keys); the projection's Transpose and this one cancel in ONNX Runtime.
        query = graph.op("Transpose", query, perm_i=[0, 2, 1, 3])
        query = graph.op("Reshape", query, graph.op("Constant", value_t=torch.tensor([0, 0, -1])))
        inputs = [query, key, value, missing, missing]  # no packed bias, no key padding mask: both are in `bias`
        if not symbolic_helper._is_none(bias):
            inputs.append(bias)
        output = graph.op("com.microsoft::MultiHeadAttention", *inputs, num_heads_i=heads, scale_f=scale)
        # The exporter cannot infer a contrib op's type; without it the quantizer's shape inference fails.
        output.setType(query.type().with_sizes([None, None, None]))
        return graph.op("Reshape", output, graph.op("Constant", value_t=torch.tensor([0, 0, heads, -1])))


def export_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None,
                     **kwargs):
    """transformers' attention-function signature (eager_attention_forward's), for export in eval mode only."""
    # T5 passes scaling=1.0 (its initialisation folds the usual 1/sqrt(head size) into the weights); a node scale of
    # 0 would mean ONNX Runtime's default, so the scale is always written out.
    scale = float(query.shape[-1] ** -0.5 if scaling is None else scaling)
    bias = position_bias
    if attention_mask is not None:
        bias = attention_mask if bias is None else bias + attention_mask
    heads = int(query.shape[1])  # a constant of the graph, as the module's own head count is
    return FusedAttention.apply(query, key, value, bias, heads, scale), None


@contextlib.contextmanager
def fused_attention(model):
    """`model` (and its sub-models) attends through export_attention inside the block, as before it after."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, export_attention)
    before = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        yield model
    finally:
        model.set_attn_implementation(before or "eager")

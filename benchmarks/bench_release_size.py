"""Parameter counts and safetensors sizes of the full-size release (ViT-B/16 + t5-small shapes, random weights),
against the same with BiomedCLIP's BERT text tower, which the release leaves out.

    python benchmarks/bench_release_size.py
"""

import json
import os
import tempfile

import torch
from safetensors.torch import save_file


from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration

# microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract: BERT-base with a 30,522-token vocabulary (its config.json),
# + open_clip's "mlp" text projection 768 -> 640 -> 512 (hf_proj_type "mlp": Linear(768, (768+512)//2), GELU, Linear).
BIOMEDBERT = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512)


def folder_size_mib(folder):
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)) / 2**20


def main():
    from transformers import BertConfig, BertModel

    model = CLIPT5ForConditionalGeneration(CLIPT5Config())
    parameters = {name: sum(p.numel() for p in getattr(model, name).parameters())
                  for name in ("vision_model", "clip_projection", "encoder", "decoder")}
    release_parameters = sum(p.numel() for p in model.parameters())
    text_tower = BertModel(BertConfig(**BIOMEDBERT), add_pooling_layer=False)
    hidden = BIOMEDBERT["hidden_size"]
    text_projection = torch.nn.Sequential(torch.nn.Linear(hidden, (hidden + 512) // 2, bias=False), torch.nn.GELU(),
                                          torch.nn.Linear((hidden + 512) // 2, 512, bias=False))
    text_parameters = sum(p.numel() for p in text_tower.parameters()) + sum(p.numel() for p in text_projection.parameters())
    with tempfile.TemporaryDirectory() as release, tempfile.TemporaryDirectory() as text_dir:
        model.save_pretrained(release)
        release_mib = os.path.getsize(os.path.join(release, "model.safetensors")) / 2**20
        save_file({k: v.contiguous() for k, v in {**text_tower.state_dict(), **{f"proj.{k}": v for k, v in text_projection.state_dict().items()}}.items()},
                  os.path.join(text_dir, "text.safetensors"))
        text_mib = folder_size_mib(text_dir)
    result = {
        "release_parameters_M": round(release_parameters / 1e6, 2),
        "release_safetensors_MiB": round(release_mib, 1),
        "parts_M": {name: round(count / 1e6, 2) for name, count in parameters.items()},
        "with_biomedclip_text_tower_parameters_M": round((release_parameters + text_parameters) / 1e6, 2),
        "with_biomedclip_text_tower_safetensors_MiB": round(release_mib + text_mib, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Builds a CLIP-T5 model from real pretrained parts: an open_clip BiomedCLIP image tower and a T5 checkpoint.

The timm ViT-B/16 trunk of BiomedCLIP becomes transformers' ViTModel (exact: same patch tokens), CLIP's image
projection is kept for the pooled mode, T5 arrives through `from_pretrained` (so its tied or untied head is
respected), and the CLIP text tower is left behind.

    cliptt5-convert-biomedclip --output releases/biomedclip-t5-small
    cliptt5-convert-biomedclip --clip-model runs/stage1/best --t5-model ./t5-small --output releases/mine

Every model can be a local folder (`hf download ID --local-dir DIR` on a machine with internet access).
Exit status: 0 when written, 1 when a model cannot be found or does not have the expected architecture, 2 for a
bad option.
"""

import argparse
import os
import sys

from modeling_cliptt5.inference.model_sources import DEFAULT_CLIP_MODEL, DEFAULT_T5_MODEL


def release_info(output_dir, clip_model, t5_model):
    """release_info.json of a converted (untrained) release: what the model card and a push need."""
    return {"model_name": os.path.basename(os.path.abspath(output_dir)), "dataset": "none (converted, not trained)",
            "sources": {}, "split_sizes": {}, "validation_studies": 0, "step": 0, "metrics": {},
            "best_metric": "loss", "license": "other", "base_models": [clip_model, t5_model],
            "initialisation": f"{clip_model} (image tower) + {t5_model}; clip_projection untrained",
            "synthetic_data": False}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Build a CLIP-T5 release folder from an open_clip BiomedCLIP model and a T5 checkpoint. "
        "The CLIP text tower is not copied; clip_projection starts untrained.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL,
                        help="open_clip model: hf-hub:org/repo, local-dir:/path, or a folder holding "
                        "open_clip_config.json + weights (e.g. a stage-1 checkpoint). Default: %(default)s")
    parser.add_argument("--t5-model", default=DEFAULT_T5_MODEL,
                        help="T5 hub id or local folder (its tokenizer is used too). Default: %(default)s")
    parser.add_argument("--clip-text-model", default="",
                        help="folder (or Hub id) of the text tower the open_clip config names by Hub id (BiomedCLIP: "
                             "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract); default: as named")
    parser.add_argument("--output", required=True, help="release folder to write (replaced only when complete)")
    parser.add_argument("--image-tokens", choices=["patch", "pooled"], default="patch",
                        help="patch: CLS + patch tokens go to T5; pooled: the CLIP image embedding only")
    parser.add_argument("--image-token-pooling", type=int, default=1,
                        help="average-pool the patch grid by this factor per side (2: 197 -> 50 tokens)")
    parser.add_argument("--projector-type", choices=["linear", "mlp"], default="linear")
    parser.add_argument("--num-views", type=int, default=1, help="images per study (IU X-ray: 2)")
    parser.add_argument("--prompt", default=None, help="default text prompt after the image tokens (none by default)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from modeling_cliptt5.training.clip_t5_builder import CheckpointError, build_clip_t5, build_processor
    from modeling_cliptt5.inference.model_sources import ModelSourceError
    from modeling_cliptt5.training.release import write_release

    try:
        model = build_clip_t5(
            args.clip_model, args.t5_model, clip_text_model=args.clip_text_model, image_tokens=args.image_tokens,
            image_token_pooling=args.image_token_pooling, projector_type=args.projector_type,
            num_views=args.num_views, prompt=args.prompt,
        )
    except (CheckpointError, ModelSourceError) as error:  # not found, or not the architecture expected: say which
        print(f"cliptt5-convert-biomedclip: error: {error}", file=sys.stderr)
        return 1
    processor = build_processor(args.t5_model, image_size=model.config.vision_config.image_size,
                                max_prompt_tokens=model.config.max_prompt_tokens)
    write_release(model, processor, args.output, release_info(args.output, args.clip_model, args.t5_model))
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"wrote {args.output}: {parameters / 1e6:.1f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())

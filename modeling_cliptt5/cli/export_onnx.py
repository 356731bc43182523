"""`python -m modeling_cliptt5.cli.export_onnx RELEASE FOLDER [--weights int8|float32]`: writes a release's two
ONNX graphs (inference/onnx_inference.py). The fast path runs it as a child process on first use of a release, so
that the float model and the exporter's copy of it stay out of the drafting process's memory."""

import argparse
import sys

from modeling_cliptt5.inference.drafting import load_model
from modeling_cliptt5.inference.onnx_inference import WEIGHT_CHOICES, export_graphs


def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a CLIP-T5 release to the fast path's two ONNX graphs.")
    parser.add_argument("release", help="release folder")
    parser.add_argument("folder", help="where encoder.onnx and decoder_step.onnx are written")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="int8")
    args = parser.parse_args(argv)
    export_graphs(load_model(args.release), args.folder, args.weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())

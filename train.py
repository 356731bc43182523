"""Train CLIP-T5: stage 1 (contrastive BiomedCLIP) or stage 2 (report generation); `python train.py --help`.

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml train.py --config configs/biomedclip_t5small.yaml

A thin script over modeling_cliptt5/cli/train.py, which is also installed as the `cliptt5-train` command."""

import sys

from modeling_cliptt5.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

"""Train CLIP-T5: stage 1 (contrastive BiomedCLIP on image-report pairs) or stage 2 (report generation).

    python train.py --config configs/demo.yaml
    python train.py --config configs/demo.yaml --max-steps 50 --output-dir runs/try
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml train.py --config configs/biomedclip_t5small.yaml
    python train.py --config configs/demo.yaml --resume          # continue from the latest saved state

Every setting of the YAML file can be overridden by its flag (--help lists them with the file's values).
"""

import sys

from modeling_cliptt5.training.config import parse_config


def main(argv=None):
    try:
        config = parse_config(argv)
    except (ValueError, FileNotFoundError) as error:  # bad settings: say which, without a traceback
        sys.exit(f"train.py: error: {error}")
    from modeling_cliptt5.atomic_writes import DiskFullError, is_disk_full

    try:
        if config.stage == "contrastive":
            from modeling_cliptt5.training.contrastive import train_contrastive

            train_contrastive(config)
        else:
            from modeling_cliptt5.training.generation import train_generation

            train_generation(config)
    except DiskFullError as error:  # the folder named is not there (or is the previous complete one): say so
        sys.exit(f"train.py: error: {error}")
    except OSError as error:  # a log or plot beside the folders
        if not is_disk_full(error):
            raise
        sys.exit(f"train.py: error: {error.filename or config.output_dir}: not written, the disk is full "
                 f"({error.strerror}). Free some space and run again (--resume continues from the last state).")


if __name__ == "__main__":
    main()

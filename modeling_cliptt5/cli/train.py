"""Train CLIP-T5: stage 1 (contrastive BiomedCLIP on image-report pairs) or stage 2 (report generation).

    cliptt5-train --config demo --dataset phantom
    cliptt5-train --config my_settings.yaml --max-steps 50 --output-dir runs/try
    accelerate launch --config_file FILE -m modeling_cliptt5.cli.train --config biomedclip_t5small --dataset data/x
    cliptt5-train --config my_settings.yaml --resume          # continue from the latest saved state

Every setting of the YAML file can be overridden by its flag (--help lists them with the file's values).
"""

import sys

from modeling_cliptt5.training.config import parse_config

PROG = "cliptt5-train"


class UsageError(Exception):
    """Settings the run cannot start with (a bad value, a model that cannot be found): exit status 2."""


def main(argv=None):
    """The command: returns its exit status (console scripts exit with what main returns)."""
    try:
        run(argv)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


def run(argv=None):
    """Trains as the settings say, with the command's error messages; returns the training result. Settings that
    cannot work raise UsageError; a run that fails on the way exits with status 1 and one line saying why."""
    try:
        config = parse_config(argv)
    except (ValueError, FileNotFoundError) as error:  # bad settings: say which, without a traceback
        raise UsageError(error) from None
    from modeling_cliptt5.data.atomic_writes import DiskFullError, is_disk_full
    from modeling_cliptt5.inference.model_sources import ModelSourceError
    from modeling_cliptt5.training.loop import LaunchError, lost_contact

    try:
        if config.stage == "contrastive":
            from modeling_cliptt5.training.contrastive import train_contrastive

            return train_contrastive(config)
        else:
            from modeling_cliptt5.training.generation import train_generation

            return train_generation(config)
    except ModelSourceError as error:  # a pretrained part neither here nor reachable: what to fetch, and where
        raise UsageError(error) from None
    except LaunchError as error:
        sys.exit(f"{PROG}: error: {error}")
    except RuntimeError as error:
        if not lost_contact(error):
            raise
        sys.exit(f"{PROG}: error: lost contact with another process of the run: {_first_line(error)}\n"
                 f"A machine that went down or ran out of memory stops every process; its own log says why. "
                 f"{_resume_hint(config)}")
    except DiskFullError as error:  # the folder named is not there (or is the previous complete one): say so
        sys.exit(f"{PROG}: error: {error}")
    except OSError as error:  # a log or plot beside the folders
        if not is_disk_full(error):
            raise
        sys.exit(f"{PROG}: error: {error.filename or config.output_dir}: not written, the disk is full "
                 f"({error.strerror}). Free some space and run again (--resume continues from the last state).")


def _first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _resume_hint(config):
    from modeling_cliptt5.training.state import list_states

    states = list_states(config.states_dir)
    if not states:
        return "No training state was saved yet: run the same command again on every machine."
    return (f"The last saved state is {states[-1]}: run the same command with --resume on every machine to continue "
            f"from it.")


if __name__ == "__main__":
    sys.exit(main())

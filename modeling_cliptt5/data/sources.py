"""Where a dataset comes from: a converted dataset folder (written by a converter), or the built-in synthetic
phantoms ("phantom"), drawn once into a folder and from then on read like any converted dataset."""

import json
import os

from modeling_cliptt5.data.atomic_writes import write_json_atomically
from modeling_cliptt5.data.schema import save_dataset_atomically

PHANTOM = "phantom"
PHANTOM_SETTINGS_FILE = "phantom_settings.json"  # what drew a phantom folder, so that it is reused only for the same
DEFAULT_HELD_OUT_SHARE = 0.1  # of the patients, for each of validation and test (the splits 0.8 / 0.1 / 0.1)


def write_phantom_dataset(folder, num_studies, seed=0, image_size=256, split_fractions=(0.8, 0.1, 0.1),
                          report_target="both", num_proc=None, log=None, max_studies_per_patient=1):
    """Draws `num_studies` phantom studies (patients with up to `max_studies_per_patient` studies each) and saves them
    in `folder` (replaced atomically), with the settings that drew them; returns the DatasetDict. The same settings
    give the same bytes, with any `num_proc`."""
    from modeling_cliptt5.data.phantom import default_num_proc, make_phantom_dataset

    dataset = make_phantom_dataset(num_studies, seed=seed, image_size=image_size, split_fractions=tuple(split_fractions),
                                   report_target=report_target, progress=True,
                                   num_proc=num_proc or default_num_proc(num_studies),
                                   max_studies_per_patient=max_studies_per_patient)
    save_dataset_atomically(dataset, folder, log)
    write_json_atomically(os.path.join(folder, PHANTOM_SETTINGS_FILE),
                          _phantom_settings(num_studies, seed, image_size, split_fractions, report_target,
                                            max_studies_per_patient))
    return dataset


def held_out_splits(share):
    """The train / validation / test fractions that hold out `share` of the patients for each of the last two."""
    if not 0 < share < 0.5:
        raise ValueError(f"the held-out share of the phantom patients must be above 0 and below 0.5, got {share}")
    return (1 - 2 * share, share, share)


def draw_phantoms_once(folder, num_studies, seed=0, image_size=256, max_studies_per_patient=1,
                       held_out_share=DEFAULT_HELD_OUT_SHARE):
    """Makes `folder` hold the phantom studies of these settings: kept when an earlier run drew the same, else drawn
    now. Returns True when it was kept."""
    split_fractions = held_out_splits(held_out_share)
    stamp = os.path.join(folder, PHANTOM_SETTINGS_FILE)
    if os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as handle:
            if json.load(handle) == _phantom_settings(num_studies, seed, image_size, split_fractions,
                                                      max_studies_per_patient=max_studies_per_patient):
                return True
    per_patient = f", up to {max_studies_per_patient} per patient" if max_studies_per_patient != 1 else ""
    print(f"drawing {num_studies} synthetic phantom studies ({image_size} px{per_patient}) into {folder}")
    write_phantom_dataset(folder, num_studies, seed=seed, image_size=image_size, split_fractions=split_fractions,
                          max_studies_per_patient=max_studies_per_patient)
    return False


def dataset_folder(name, work_dir, seed=0, phantom_studies=2000, phantom_image_size=256, max_studies_per_patient=1,
                   held_out_share=DEFAULT_HELD_OUT_SHARE):
    """The folder of dataset `name`: a converted dataset folder as it is, or for "phantom" the synthetic studies
    drawn into `work_dir` (once; a later call with the same settings reuses them). `max_studies_per_patient` above 1
    draws patients with several studies over time (phantom.make_phantom_dataset); `held_out_share` of the patients
    go to each of the validation and test splits."""
    if name != PHANTOM:
        return name
    # The default settings keep the folder name they always had, so folders drawn before are found again.
    series = f"-{max_studies_per_patient}-per-patient" if max_studies_per_patient != 1 else ""
    held_out = f"-{held_out_share:g}-held-out" if held_out_share != DEFAULT_HELD_OUT_SHARE else ""
    folder = os.path.join(work_dir, f"phantom-{phantom_studies}-{phantom_image_size}px{series}{held_out}")
    draw_phantoms_once(folder, phantom_studies, seed, phantom_image_size, max_studies_per_patient, held_out_share)
    return folder


def _phantom_settings(num_studies, seed, image_size, split_fractions=(0.8, 0.1, 0.1), report_target="both",
                      max_studies_per_patient=1):
    settings = {"studies": num_studies, "seed": seed, "image_size": image_size,
                "split_fractions": [float(value) for value in split_fractions], "report_target": report_target}
    if max_studies_per_patient != 1:  # absent for one study per patient, as in the stamps of folders drawn before
        settings["max_studies_per_patient"] = max_studies_per_patient
    return settings

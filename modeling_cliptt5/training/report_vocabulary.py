"""A release's report vocabulary: the tokens its drafts may use (CLIPT5Config.report_vocabulary).

t5-small has 32,128 tokens; a radiology report corpus uses a few thousand of them (IU X-ray's reports have
1,531 distinct words). Limiting a release to the tokens of its training reports changes nothing a trained model
is likely to write, and lets the fast path's step graph compute only those rows of the output layer, which is
otherwise over a third of each decoding step's weights (benchmarks/bench_cpu_inference.py measures both).

    cliptt5-release runs/demo/best --report-vocabulary data/my_dataset    # the train split's reports
"""

import os

from modeling_cliptt5.data.atomic_writes import atomic_path


def report_token_ids(tokenizer, reports, batch_size=1000):
    """Sorted ids of every token of `reports` as `tokenizer` encodes them, with its pad (the decoder's start), end
    and unknown tokens."""
    reports = list(reports)
    tokens = {token for token in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
              if token is not None}
    for start in range(0, len(reports), batch_size):
        for ids in tokenizer(reports[start:start + batch_size])["input_ids"]:
            tokens.update(ids)
    return sorted(tokens)


def training_reports(dataset_dir, split="train"):
    """The report texts (the training targets) of one split of a converted dataset folder."""
    from modeling_cliptt5.data.schema import load_report_dataset

    dataset = load_report_dataset(dataset_dir)
    if split not in dataset:
        raise ValueError(f"{dataset_dir}: no {split!r} split (it has {sorted(dataset)})")
    return dataset[split]["report"]


def set_release_vocabulary(release_dir, reports=None):
    """Limits a release's drafts to the tokens of `reports` (None: the whole vocabulary again) by rewriting its
    config.json, whole or not at all. Returns the config."""
    from transformers import AutoTokenizer

    from modeling_cliptt5.configuration_cliptt5 import CLIPT5Config

    config = CLIPT5Config.from_pretrained(release_dir)
    if reports is None:
        config.report_vocabulary = None
    else:
        tokens = report_token_ids(AutoTokenizer.from_pretrained(release_dir), reports)
        if len(tokens) <= 3:
            raise ValueError("no report text given: a vocabulary of the special tokens alone could write nothing")
        config.report_vocabulary = tokens
    # Checked as a fresh config would check it (ids in range, the end token present) before the file changes.
    CLIPT5Config.from_dict(config.to_dict())
    with atomic_path(os.path.join(release_dir, "config.json")) as temporary:
        config.to_json_file(temporary)
    return config

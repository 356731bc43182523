import subprocess
import sys

import numpy as np

from modeling_cliptt5.data.phantom import generate_study
from modeling_cliptt5.training.tokenizer import train_report_tokenizer

from conftest import REPO_ROOT, subprocess_env


def phantom_reports(count):
    reports = []
    for index in range(count):
        study = generate_study(np.random.default_rng([7, 0, index]), image_size=32)
        reports.append(f"FINDINGS: {study['findings']} IMPRESSION: {study['impression']}")
    return reports


def test_special_tokens_follow_t5_and_every_sequence_ends_with_eos():
    tokenizer = train_report_tokenizer(phantom_reports(50), vocab_size=300)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("No pleural effusion.").input_ids
    assert ids[-1] == 1 and ids.count(1) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == "No pleural effusion."


def test_report_words_become_whole_tokens():
    # The demo's decoder cost grows with target length: a character-level vocabulary would triple it.
    reports = phantom_reports(300)
    tokenizer = train_report_tokenizer(reports, vocab_size=1000)
    words = sum(len(report.split()) for report in reports)
    tokens = sum(len(tokenizer(report).input_ids) - 1 for report in reports)  # without </s>
    assert tokens / words < 1.3


def test_two_processes_train_the_same_vocabulary():
    # Every rank of a distributed run may train its own tokenizer: they must agree on the ids.
    script = ("import json, sys; sys.path[:0] = ['tests/training', 'tests']; from test_tokenization import phantom_reports;"
              "from modeling_cliptt5.training.tokenizer import train_report_tokenizer;"
              "print(json.dumps(sorted(train_report_tokenizer(phantom_reports(200), 500).get_vocab().items())))")
    outputs = [subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=subprocess_env(), check=True,
                              capture_output=True, text=True).stdout for _ in range(2)]
    assert outputs[0] == outputs[1] and len(outputs[0]) > 1000

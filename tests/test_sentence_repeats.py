"""No sentence twice in a section of a draft (NoRepeatSentenceLogitsProcessor, a release's `no_repeat_sentence`):
the loop small report generators fall into is cut, while an IMPRESSION may restate its FINDINGS and a decimal
number is not a sentence."""

import pytest
import torch
from transformers import LogitsProcessorList

from modeling_cliptt5 import CLIPT5ForConditionalGeneration
from modeling_cliptt5.evaluation.repetition import report_repeats
from modeling_cliptt5.modeling_cliptt5 import NoRepeatSentenceLogitsProcessor, use_sentence_repeat_guard

from conftest import PreferSaying, tiny_config

START, FINDINGS, IMPRESSION, END, NUMBER = 0, 10, 11, 5, 7  # END: a period; NUMBER: "2" before a decimal point


def banned(processor, ids, vocab=16):
    scores = processor(torch.tensor([ids]), torch.zeros(1, vocab))
    return sorted(torch.nonzero(scores[0] == -float("inf")).flatten().tolist())


def test_a_sentence_of_the_same_section_may_not_be_ended_again():
    processor = NoRepeatSentenceLogitsProcessor([END, 6], [[FINDINGS], [IMPRESSION]], [NUMBER])
    # FINDINGS: 1 2 . 3 . | 1 2 -> the period that would repeat "1 2 ." is banned, nothing else
    assert banned(processor, [START, FINDINGS, 1, 2, END, 3, END, 1, 2]) == [END]
    # the sentence ends in another end token, or is another sentence so far: nothing banned
    assert banned(processor, [START, FINDINGS, 1, 2, 6, 1, 2]) == [6]
    assert banned(processor, [START, FINDINGS, 1, 2, END, 1, 3]) == []
    assert banned(processor, [START, FINDINGS, 1, 2, END, 9, 1, 2]) == []  # "9 1 2 ." is not "1 2 ."
    # an IMPRESSION restates a FINDINGS sentence: a new section, nothing said in it yet
    assert banned(processor, [START, FINDINGS, 1, 2, END, IMPRESSION, 1, 2]) == []
    assert banned(processor, [START, FINDINGS, 1, 2, END, IMPRESSION, 1, 2, END, 1, 2]) == [END]


def test_a_header_of_several_tokens_starts_a_section():
    processor = NoRepeatSentenceLogitsProcessor([END], [[12, 13]])
    assert banned(processor, [START, 1, 2, END, 12, 13, 1, 2]) == []
    assert banned(processor, [START, 1, 2, END, 12, 1, 2, END, 1, 2]) == [END]  # 12 alone is no header


def test_a_decimal_point_ends_no_sentence():
    processor = NoRepeatSentenceLogitsProcessor([END], [[FINDINGS]], [NUMBER])
    # "Stable 2.3 cm nodule." then "Stable 2" -> the decimal point of "2.1" stays allowed
    said = [START, FINDINGS, 1, NUMBER, END, 3, 4, END]
    assert banned(processor, said + [1, NUMBER]) == []
    assert banned(processor, said + [1, NUMBER, END, 3, 4]) == [END]  # the whole sentence again is banned


def test_step_by_step_the_bans_are_those_of_reading_each_row_whole():
    """Each step reads one token more per row (its state kept from the step before, rows reordered as beam search
    does): the bans must be those of a processor that reads every row from its start."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.tensor([1, 2, 3, 1, 2, END, 6, NUMBER, FINDINGS, IMPRESSION, 1, 2])
    stepwise = NoRepeatSentenceLogitsProcessor([END, 6], [[FINDINGS], [IMPRESSION]], [NUMBER])
    bans = 0
    for _ in range(30):
        rows = torch.zeros(4, 1, dtype=torch.long)
        stepwise.states = {}
        for _ in range(50):
            expected = NoRepeatSentenceLogitsProcessor([END, 6], [[FINDINGS], [IMPRESSION]], [NUMBER])(
                rows, torch.zeros(4, 16))
            assert torch.equal(stepwise(rows, torch.zeros(4, 16)), expected)
            bans += int(torch.isinf(expected).sum())
            rows = rows[torch.randint(0, 4, (4,), generator=generator)]  # beams reordered
            rows = torch.cat([rows, tokens[torch.randint(0, len(tokens), (4, 1), generator=generator)]], 1)
    assert bans > 20  # the rows said their sentences again often enough for the comparison to mean something


@pytest.fixture(scope="module")
def looping(tiny_tokenizer, tiny_processor_fixture):
    """A tiny model whose generation config carries no_repeat_sentence with its tokenizer's ids, the pixel values of
    two studies and the settings that make it say "No pneumothorax." again and again."""
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration(tiny_config(vocab_size=len(tiny_tokenizer))).eval()
    use_sentence_repeat_guard(model.generation_config, tiny_processor_fixture.sentence_token_ids())
    sentence = tiny_tokenizer("No pneumothorax.", add_special_tokens=False)["input_ids"]
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    settings = dict(max_new_tokens=24, logits_processor=LogitsProcessorList([PreferSaying(sentence)]))
    return model, pixel_values, settings


def test_generate_cuts_the_loop_where_the_release_says_so(looping, tiny_tokenizer):
    model, pixel_values, settings = looping
    guarded = tiny_tokenizer.batch_decode(model.generate(pixel_values=pixel_values, **settings),
                                          skip_special_tokens=True)
    looped = tiny_tokenizer.batch_decode(model.generate(pixel_values=pixel_values, no_repeat_sentence=False,
                                                        **settings), skip_special_tokens=True)
    assert all(text.startswith("No pneumothorax. No pneumothorax. No pneumothorax.") for text in looped)
    assert all(report_repeats(text) >= 2 for text in looped)
    for text in guarded:
        assert text.startswith("No pneumothorax. No ") and report_repeats(text) == 0, text


def test_beam_search_is_guarded_too(looping, tiny_tokenizer):
    model, pixel_values, settings = looping
    texts = tiny_tokenizer.batch_decode(model.generate(pixel_values=pixel_values, num_beams=3, **settings),
                                        skip_special_tokens=True)
    looped = tiny_tokenizer.batch_decode(model.generate(pixel_values=pixel_values, num_beams=3,
                                                        no_repeat_sentence=False, **settings),
                                         skip_special_tokens=True)
    assert all(report_repeats(text) >= 2 for text in looped), looped
    assert all(text.count("pneumothorax.") >= 3 and report_repeats(text) == 0 for text in texts), texts


def test_a_generation_config_without_the_tokens_ids_is_refused(tiny_model):
    pixel_values = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="sentence_end_token_ids"):
        tiny_model.generate(pixel_values=pixel_values, max_new_tokens=3, no_repeat_sentence=True)
    # a model whose generation config does not ask for it (every release before it) drafts as before
    assert not getattr(tiny_model.generation_config, "no_repeat_sentence", False)

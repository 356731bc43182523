"""Repeated sentences, the degenerate output of report generators: counted per section, case and spacing aside, and
an IMPRESSION that restates a FINDINGS sentence is no repeat."""

from modeling_cliptt5.evaluation.repetition import numbered_sentences, repeated_sentences, report_repeats

NODULE = "Right upper lobe pulmonary nodule; CT recommended."


def test_each_saying_is_numbered_within_its_section():
    assert numbered_sentences(f"{NODULE} No effusion. {NODULE}  right upper lobe pulmonary nodule;  CT recommended.") \
        == [(NODULE, 1), ("No effusion.", 1), (NODULE, 2), ("right upper lobe pulmonary nodule;  CT recommended.", 3)]
    assert numbered_sentences("") == []


def test_repeats_are_counted_per_section_and_a_restated_impression_is_none():
    assert repeated_sentences("Small right pleural effusion.", "Small right pleural effusion.") == 0
    assert repeated_sentences("No effusion.", " ".join([NODULE] * 10)) == 9
    assert report_repeats(f"FINDINGS: No effusion. No effusion. IMPRESSION: {NODULE} {NODULE}") == 2
    assert report_repeats(f"{NODULE} {NODULE}") == 1  # a text without section headers is one section
    assert report_repeats("") == 0

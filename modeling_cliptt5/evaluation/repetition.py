"""Sentences a report says again: the degenerate output report generators are known for ("Right upper lobe nodule.
Right upper lobe nodule. ..."). A sentence counts as repeated when the same section says it again (case and spacing
aside); an IMPRESSION that restates a FINDINGS sentence is how reports are written, not a repeat."""

from modeling_cliptt5.evaluation.labeler import split_sentences


def numbered_sentences(text):
    """[(sentence, occurrence)] of a section: occurrence 1 for a sentence's first saying, 2 for its first repeat..."""
    seen, numbered = {}, []
    for sentence in split_sentences((text or "").strip()):
        key = " ".join(sentence.lower().split())
        seen[key] = seen.get(key, 0) + 1
        numbered.append((sentence, seen[key]))
    return numbered


def repeated_sentences(findings, impression):
    """How many sentences repeat one said earlier in the same section (0 for a report without repeats)."""
    return sum(occurrence > 1 for text in (findings, impression) for _, occurrence in numbered_sentences(text))


def report_repeats(report):
    """repeated_sentences of a whole report text ("FINDINGS: ... IMPRESSION: ..."; a text without the headers is
    one section)."""
    from modeling_cliptt5.processing_cliptt5 import split_report_sections

    sections = split_report_sections(report or "")
    if sections["findings"] is None and sections["impression"] is None:
        return repeated_sentences(report, "")
    return repeated_sentences(sections["findings"], sections["impression"])

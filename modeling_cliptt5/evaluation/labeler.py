"""An offline rule labeler for the 14 CheXpert observations, for approximate clinical-efficacy scores and sentence tags.

APPROXIMATE: regex mention phrases plus NegEx/ConText-style negation and uncertainty triggers. It is not CheXbert
and not the CheXpert NLP labeler (both need downloaded models); its scores are comparable with each other, not
with published CheXbert numbers.

Statuses follow CheXpert: 1 positive, 0 negative, -1 uncertain, None not mentioned.

How a sentence is labelled
- Sentences: `split_sentences` cuts report text after ".", "!" or "?" followed by white space.
- Clauses: a sentence is cut into clauses at ";", ":", "but", "however", "although", "though", "except",
  "aside from", "apart from", "which" and a new "there is/are"; no trigger reaches across a clause boundary.
- Mentions: each observation has mention phrases (MENTION_PHRASES). A match that overlaps one of the
  observation's UNMENTION_PHRASES is dropped (e.g. "pericardial effusion" is not a pleural effusion).
- Status of a finding mention, in CheXpert's order of rules:
  1. "cannot exclude", "not excluded", "cannot be excluded", "cannot rule out", "no new" -> uncertain;
  2. a negation trigger before it in the clause ("no", "not", "without", "negative for", "free of", "clear of",
     "absence of", "resolution of", "removal of", "rather than") or just after it ("is not seen",
     "not identified", "absent", "has resolved", "removed", "no longer ...") -> negative;
     pseudo-triggers such as "without significant change" or "no interval change" are ignored;
  3. a phrase CheXpert always calls uncertain ("vascular congestion", "pulmonary congestion",
     "vascular prominence", "indistinctness"), an uncertainty trigger before it in the clause ("may", "could",
     "possible", "probable", "likely", "suspicious for", "concern for", "question", "versus", "suggest...",
     "favor...", "borderline", ...), a trigger just after it ("is suspected", "questioned"...), or an
     alternative ("X or Y", "X versus Y") -> uncertain;
  4. otherwise positive.
- Anatomy mentions (Cardiomegaly: "heart", "heart size", "cardiac silhouette/contour/shadow/size";
  Enlarged Cardiomediastinum: "mediastinum", "(cardio)mediastinal ...") carry no finding by themselves: after
  rules 1-2, the nearest qualifier within 8 words decides - "normal", "unremarkable", "not enlarged" -> 0;
  "borderline", "top normal", "stable", "unchanged", "similar", "obscured" -> -1 (CheXpert's rule for a stable
  heart or mediastinum); "enlarged", "enlargement", "widened", "prominent", "increased", "large" -> 1.
  Distance counts words and commas but not other qualifiers or "and", so "normal and stable contours" ties;
  a tie goes to 0, then -1, then 1 (CheXpert's order), except that "stable"/"unchanged" tied with an enlargement
  word ("stable enlargement of the cardiac silhouette") is 1: it says the enlargement persists, not that the size is
  unknown. No qualifier -> not mentioned (CheXpert would call a bare "the heart" positive; this labeler does not).
- Change wording: "new", "increased", "unchanged" ... leave a finding positive; "resolution of", "removal of",
  "has resolved", "removed", "cleared", "no longer seen" negate it (negation triggers of rule 2).
- CheXpert's exception: a positive or uncertain "heart failure"/"CHF" also makes Cardiomegaly uncertain.
- Several mentions of one observation combine as CheXpert does: any 1 -> 1; else any -1 -> -1; else 0.
- No Finding is a report-level label (None in sentence labels): 1 when no observation other than Support
  Devices is positive or uncertain and no other abnormality (OTHER_FINDING_PHRASES: emphysema, granuloma,
  scoliosis, hernia, ...) is positive or uncertain; else None (CheXpert never writes 0 for No Finding).
- Laterality (`sentence_sides`): for the lung and pleural observations in LATERAL_OBSERVATIONS, the side word
  ("left", "right", "bilateral", "both", "bibasilar", "left and right", "left greater than right") nearest
  before the mention, looking back no further than the previous mention or a negation trigger; else a side
  after it in a prepositional phrase ("in the right middle lobe", "on the left"); else the side of the
  previous mention when only a few words ("or", "versus", "with obstructive") link the two.

Mention phrases are this module's own regular expressions, written from the published phrase lists of
stanfordmlgroup/chexpert-labeler (phrases/mention/*.txt, phrases/unmention/*.txt; MIT licence, Copyright (c)
2018 Stanford Machine Learning Group) and its negation/uncertainty patterns (patterns/*.txt). Additions beyond
those lists are marked "(added)".
"""

import re

OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
FINDINGS = OBSERVATIONS[1:]
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
LATERAL_OBSERVATIONS = ("Lung Opacity", "Lung Lesion", "Consolidation", "Pneumonia", "Atelectasis",
                        "Pneumothorax", "Pleural Effusion", "Fracture")
LABELER_NOTE = ("approximate rule labeler (CheXpert mention phrases + NegEx-style negation/uncertainty), "
                "not CheXbert: compare these scores only with scores from this labeler")

# Observation -> phrases that mention it (regular expressions, matched on lower-cased text from a word start).
MENTION_PHRASES = {
    "Cardiomegaly": [r"cardiomegaly", r"cardiac enlargement", r"enlarged heart"],
    "Lung Opacity": [r"opaci", r"decreased translucency", r"increased density", r"air[\s-]?space disease",
                     r"infiltrat", r"interstitial (?:marking|pattern|lung)", r"reticular (?:pattern|marking)",
                     r"reticulation", r"parenchymal scarring", r"peribronchial thickening", r"wall thickening",
                     r"scar"],
    "Lung Lesion": [r"mass(?:es)?\b", r"nodular (?:density|densities|opacity|opacities|opacification)", r"nodules?\b",
                    r"lump", r"cavitary lesion", r"carcinoma", r"neoplasm", r"tumou?r"],
    "Edema": [r"edema", r"heart failure", r"chf\b", r"vascular congestion", r"pulmonary congestion",
              r"indistinctness", r"vascular prominence"],
    "Consolidation": [r"consolidat"],
    "Pneumonia": [r"pneumonia", r"infection", r"infectious"],
    "Atelectasis": [r"atelecta", r"collapse"],
    "Pneumothorax": [r"pneumothora(?:x|ces)"],
    "Pleural Effusion": [r"pleural fluid", r"effusion"],
    "Pleural Other": [r"pleural thickening", r"fibrosis", r"fibrothorax", r"pleural scar",
                      r"pleur(?:al|o)[\s-]?(?:parenchymal|pericardial) scar"],
    "Fracture": [r"fractur"],
    # CheXpert's "plate" would catch "plate-like atelectasis": only a plate that is not "-like" counts.
    "Support Devices": [r"pacer", r"lines?\b", r"picc", r"tubes?\b", r"valve", r"catheter", r"pacemaker",
                        r"hardware", r"arthroplast", r"marker", r"icd\b", r"defib", r"device", r"drains?\b",
                        r"plates?\b(?![\s-]*like)", r"screws?\b", r"cannula", r"apparatus", r"coils?\b",
                        r"support", r"equipment", r"mediport",
                        r"wires?\b", r"fixation", r"prosthe", r"stents?\b", r"port\b", r"port-a-cath"],  # (added)
}

# Anatomy words that become a mention only with a qualifier (normal / enlarged / stable ...), see module doc.
ANATOMY_PHRASES = {
    "Cardiomegaly": [r"heart(?! failure)", r"cardiac (?:silhouette|size|shadow|contour)s?",
                     r"cardiac(?= and mediastinal (?:contour|silhouette))"],  # (added) "cardiac and mediastinal contours"
    "Enlarged Cardiomediastinum": [r"cardiomediastinum", r"(?:cardio[\s-]?)?mediastin(?:um|al)\b"],
}

# Observation -> phrases that look like a mention but are not one (CheXpert unmention lists, plus positional
# phrases for the heart such as "over the heart", as CheXpert builds them).
_POSITION = r"(?:over|overlying|overlie|overlies|in|behind|projecting over|projects over)(?: the)?(?: superior| left| right)? "
UNMENTION_PHRASES = {
    "Cardiomegaly": [_POSITION + r"(?:heart|cardiac)", r"heart (?:borders?|valve)"],  # (added) heart border/valve
    "Enlarged Cardiomediastinum": [_POSITION + r"(?:cardio)?mediastin",
                                   r"mediastin(?:um|al) (?:lymph|adenopathy|clips?|nodes?|mass|shift|air)"],  # (added)
    "Lung Opacity": [r"pleural scar", r"(?:bony|osseous) opacit"],  # (added) bony opacity
    "Lung Lesion": [r"calci\w*\s+(?:\w+\s+){0,2}nodul", r"massive", r"massengale"],  # (widened) calcified nodule
    "Pleural Effusion": [r"pericardial effusion", r"(?:joint|knee|shoulder) effusion"],  # (added) joint effusion
    "Support Devices": [r"(?:kerley|septal|b)[\s-]*lines?", r"pleural lines?", r"skin (?:fold|line)s?",
                        r"(?:fissure|azygos) lines?", r"lines? of", r"supportive", r"tube[\s-]?like"],  # (added)
    "Atelectasis": [r"(?:vertebral|compression|height) collapse"],  # (added) vertebral collapse
}

# Abnormalities outside the 14 observations; a positive or uncertain one rules out "No Finding"
# (CheXpert phrases/mention/no_finding.txt, as stems; "elevat" and "hyperexpan" widened from "elevation" and
# "hyperexpansion").
OTHER_FINDING_PHRASES = [
    r"emphysema", r"blunt", r"density", r"elevat", r"eventration", r"scoliosis", r"degenera", r"calcifi",
    r"hyperinflat", r"bronchospasm", r"asthma", r"hernia", r"copd", r"interstitial markings", r"plaque",
    r"osteophyt", r"aortic disease", r"bronchiolitis", r"airways? disease", r"thickening", r"cephalization",
    r"aspiration", r"bullae", r"contusion", r"atherosclero", r"osteopenia", r"metasta", r"granuloma",
    r"pneumomediastinum", r"pneumoperitoneum", r"osteodystrophy", r"cuffing", r"irregular lucency", r"inflam",
    r"fissure", r"hypertension", r"prominen", r"kyphosis", r"hyperexpan", r"bullet", r"reticula",
    r"thoracentesis", r"bronchitis", r"volume loss", r"deformity", r"hemorrhage", r"hematoma", r"radiopaque",
    r"aerophagia", r"arthropathy",
]  # CheXpert's list also has "defib" and "tracheostomy": devices here, so they do not rule out No Finding.

# CheXpert (patterns/post_negation_uncertainty.txt) calls these uncertain edema whatever surrounds them.
_ALWAYS_UNCERTAIN = re.compile(r"vascular congestion|pulmonary congestion|indistinctness|vascular prominence")

_CLAUSE_BOUNDARY = re.compile(
    r"[;:]|\b(?:but|however|although|though|except|aside from|apart from|which|whereas|nevertheless)\b"
    r"|(?<!^)\bthere (?:is|are|has been|have been)\b"
)
# Phrases that contain a trigger word but negate nothing (NegEx pseudo-triggers).
_PSEUDO_TRIGGERS = re.compile(
    r"\b(?:no|without)(?: significant| appreciable| definite| substantial)?(?: interval)? (?:change|increase)"
    r"|\bgram negative\b|\bnot only\b"
)
_UNCERTAIN_FIRST_BEFORE = re.compile(
    r"\b(?:cannot|can not|could not)(?: \w+){0,2} (?:exclude|rule out)\b|\bno new\b")
_UNCERTAIN_FIRST_AFTER = re.compile(
    r"\b(?:cannot|can not|could not|not)(?: \w+){0,2} (?:be )?(?:excluded|ruled out)\b")
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|absent|resolution of|resolved|"
    r"removal of|rather than|rule out|ruled out)\b")
_NEGATION_AFTER = re.compile(
    r"\b(?:(?:is|are|was|were|has|have)(?: been)? )?not (?:\w+ )?(?:seen|identified|present|demonstrated|"
    r"visualized|evident|noted|enlarged|visible|detected)\b|\babsent\b|\bresolved\b|\bremoved\b|\bcleared\b|"
    r"\bno longer\b")
_UNCERTAINTY_BEFORE = re.compile(
    r"\b(?:may|might|could|can|possible|possibly|probable|probably|likely|presumabl[ey]|presumed|suspect\w*|"
    r"suspicious|suspicion|concern(?:ing)? for|worrisome|question\w*|equivocal|indeterminate|versus|vs|"
    r"differential|consider(?:ed|ation)?|suggest\w*|favou?r\w*|borderline|correlat\w*|obscur\w*|not well|"
    r"poorly|difficult to)\b")
# After the mention only copular or participle forms: "opacity, likely atelectasis" leaves the opacity positive.
_UNCERTAINTY_AFTER = re.compile(
    r"\b(?:(?:(?:is|are|was|were) )?(?:suspected|questioned|not excluded|obscured|not appreciated)|"
    r"(?:is|are|was|were) (?:possible|likely|favou?red|considered)|versus|vs|"
    r"not well (?:seen|visualized|evaluated)|poorly (?:seen|visualized|evaluated))\b")
_ALTERNATIVE_AFTER = re.compile(r"^\s*,?\s*(?:and/)?or\b")
_ALTERNATIVE_BEFORE = re.compile(r"\b(?:and/)?or\s+(?:[a-z]+\s+)?$")
_AFTER_WINDOW_WORDS = 6

# Qualifiers of an anatomy mention; the nearest one decides (see module doc).
_ANATOMY_QUALIFIERS = [
    (UNCERTAIN, r"borderline|top[\s-]normal|obscur\w*|difficult to assess"),
    (UNCERTAIN, r"stable|unchanged|not (?:significantly )?changed|similar"),  # _STABILITY
    (NEGATIVE, r"normal(?:ly)?|unremarkable|not (?:\w+ )?(?:enlarged|widened|increased)|negative"),
    (POSITIVE, r"enlarg\w*|widen\w*|wide|prominen\w*|increased|large|globular"),  # _ENLARGEMENT
    (POSITIVE, r"cardiomegaly"),  # for the mediastinum: "stable cardiomegaly and mediastinum" leaves it uncertain
]
_STABILITY, _ENLARGEMENT = 1, 3  # indexes in _ANATOMY_QUALIFIERS
_ANATOMY_WINDOW_WORDS = 8

_SIDE = re.compile(r"\b(?:bilateral(?:ly)?|both|bi(?:basilar|basal|apical|hilar)|"
                   r"(?:left|right) (?:and|&|(?:greater|more|larger|worse) than) (?:left|right)|left|right)\b")
_SIDE_AFTER = re.compile(
    r"^\W*(?:[a-z]+\s+){0,3}?(?:on|in|at|of|within|involving|along|over)\s+(?:the\s+)?(?:[a-z]+\s+){0,2}?"
    r"(bilateral(?:ly)?|both|left|right)\b")
_INHERIT_SIDE_WORDS = 4
_WORD = re.compile(r"[a-z0-9']+")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _compile(phrases):
    return [re.compile(r"\b" + phrase) for phrase in phrases]


_MENTION_PATTERNS = {obs: _compile(phrases) for obs, phrases in MENTION_PHRASES.items()}
_ANATOMY_PATTERNS = {obs: _compile(phrases) for obs, phrases in ANATOMY_PHRASES.items()}
_UNMENTION_PATTERNS = {obs: _compile(phrases) for obs, phrases in UNMENTION_PHRASES.items()}
_OTHER_FINDING_PATTERNS = _compile(OTHER_FINDING_PHRASES)
_QUALIFIER_PATTERN = re.compile("|".join(rf"(?P<q{index}>\b(?:{pattern})\b)"
                                         for index, (_, pattern) in enumerate(_ANATOMY_QUALIFIERS)))


def split_sentences(text):
    """The sentence split used throughout: after ".", "!" or "?" followed by white space; empty pieces dropped."""
    return [sentence.strip() for sentence in _SENTENCE_END.split((text or "").strip()) if sentence.strip()]


def _words(text):
    return len(_WORD.findall(text))


def _clause_bounds(text, position):
    """Start and end of the clause holding `position`."""
    start, end = 0, len(text)
    for match in _CLAUSE_BOUNDARY.finditer(text):
        if match.end() <= position:
            start = match.end()
        elif match.start() >= position:
            end = match.start()
            break
    return start, end


def _hide_pseudo_triggers(text):
    return _PSEUDO_TRIGGERS.sub(lambda match: " " * len(match.group()), text)


def _is_within(pattern, text, max_words):
    """Whether `pattern` occurs in `text` starting within `max_words` words of its beginning."""
    return any(_words(text[:match.start()]) <= max_words for match in pattern.finditer(text))


def _finding_status(text, start, end, observation, matched):
    clause_start, clause_end = _clause_bounds(text, start)
    before, after = text[clause_start:start], text[end:clause_end]
    if _UNCERTAIN_FIRST_BEFORE.search(before) or _is_within(_UNCERTAIN_FIRST_AFTER, after, _AFTER_WINDOW_WORDS):
        return UNCERTAIN
    if _NEGATION_BEFORE.search(before) or _is_within(_NEGATION_AFTER, after, _AFTER_WINDOW_WORDS):
        return NEGATIVE
    if observation is not None and _ALWAYS_UNCERTAIN.fullmatch(matched):
        return UNCERTAIN
    if (_UNCERTAINTY_BEFORE.search(before) or _is_within(_UNCERTAINTY_AFTER, after, _AFTER_WINDOW_WORDS)
            or _ALTERNATIVE_AFTER.search(after) or _ALTERNATIVE_BEFORE.search(before)):
        return UNCERTAIN
    return POSITIVE


def _anatomy_status(text, start, end):
    clause_start, clause_end = _clause_bounds(text, start)
    before, after = text[clause_start:start], text[end:clause_end]
    if _UNCERTAIN_FIRST_BEFORE.search(before) or _is_within(_UNCERTAIN_FIRST_AFTER, after, _AFTER_WINDOW_WORDS):
        return UNCERTAIN
    # Only strong negations here: "not" is a qualifier ("not enlarged"), and "heart ... without" is rare.
    if re.search(r"\b(?:no|without|negative for|free of)\b", before):
        return NEGATIVE
    qualifiers = []
    for match in _QUALIFIER_PATTERN.finditer(text, clause_start, clause_end):
        if match.end() <= start:
            between = text[match.end():start]
        elif match.start() >= end:
            between = text[end:match.start()]
        else:
            continue
        distance = _qualifier_distance(between)
        if distance <= _ANATOMY_WINDOW_WORDS:
            group = next(name for name, value in match.groupdict().items() if value is not None)
            qualifiers.append((distance, int(group[1:])))
    if not qualifiers:
        return None
    nearest = min(distance for distance, _ in qualifiers)
    tied = {index for distance, index in qualifiers if distance == nearest}
    if {_STABILITY, _ENLARGEMENT} <= tied:
        tied.discard(_STABILITY)  # "stable enlargement": the course of an enlargement, still an enlargement
    # Equally near qualifiers ("normal and stable", "borderline enlarged"): CheXpert's order, negation first.
    statuses = {_ANATOMY_QUALIFIERS[index][0] for index in tied}
    return next(status for status in (NEGATIVE, UNCERTAIN, POSITIVE) if status in statuses)


def _qualifier_distance(between):
    """Words between a qualifier and its anatomy word; other qualifiers and "and" do not count, commas do."""
    between = _QUALIFIER_PATTERN.sub(" ", between)
    return _words(re.sub(r"\band\b", " ", between)) + between.count(",")


def _overlaps(spans, start, end):
    return any(start < other_end and end > other_start for other_start, other_end in spans)


def _find_mentions(text):
    """All mentions in a lower-cased sentence: (start, end, observation or None for other findings, status)."""
    text_for_triggers = _hide_pseudo_triggers(text)
    mentions = []
    for observation in FINDINGS:
        unmentions = [match.span() for pattern in _UNMENTION_PATTERNS.get(observation, ())
                      for match in pattern.finditer(text)]
        for kind, patterns in (("finding", _MENTION_PATTERNS.get(observation, ())),
                               ("anatomy", _ANATOMY_PATTERNS.get(observation, ()))):
            for pattern in patterns:
                for match in pattern.finditer(text):
                    if _overlaps(unmentions, *match.span()):
                        continue
                    if kind == "anatomy":
                        status = _anatomy_status(text_for_triggers, *match.span())
                        if status is None:
                            continue
                    else:
                        status = _finding_status(text_for_triggers, *match.span(), observation, match.group())
                    mentions.append((match.start(), match.end(), observation, status, match.group()))
    for pattern in _OTHER_FINDING_PATTERNS:
        for match in pattern.finditer(text):
            status = _finding_status(text_for_triggers, *match.span(), None, match.group())
            mentions.append((match.start(), match.end(), None, status, match.group()))
    mentions.sort()
    return mentions


def _combine(statuses):
    """CheXpert's aggregation of several mentions of one observation: 1 wins, then -1 (also over 0), then 0."""
    statuses = set(statuses)
    if POSITIVE in statuses:
        return POSITIVE
    if UNCERTAIN in statuses:
        return UNCERTAIN
    return NEGATIVE if statuses else None


def _sentence_statuses(sentence):
    """{observation: [statuses]} for the 13 findings, and whether another abnormality is positive/uncertain."""
    statuses = {observation: [] for observation in FINDINGS}
    other_finding = False
    for _, _, observation, status, matched in _find_mentions(sentence.lower()):
        if observation is None:
            other_finding = other_finding or status in (POSITIVE, UNCERTAIN)
            continue
        statuses[observation].append(status)
        # CheXpert's exception: heart failure implies an uncertain cardiomegaly.
        if matched in ("chf", "heart failure") and status in (POSITIVE, UNCERTAIN):
            statuses["Cardiomegaly"].append(UNCERTAIN)
    return statuses, other_finding


def label_sentence(sentence):
    """{observation: 1 | 0 | -1 | None} for one sentence; "No Finding" is always None here (report-level label)."""
    statuses, _ = _sentence_statuses(sentence)
    labels = {observation: None for observation in OBSERVATIONS}
    labels.update({observation: _combine(found) for observation, found in statuses.items()})
    return labels


def label_sentences(text):
    """[(sentence, {observation: status})] for each sentence of `text` (see `split_sentences`)."""
    return [(sentence, label_sentence(sentence)) for sentence in split_sentences(text)]


def label_report(text):
    """{observation: 1 | 0 | -1 | None} for a whole report, with CheXpert's "No Finding" rule.

    Approximate rule labeler, not CheXbert (see module docstring).
    """
    statuses = {observation: [] for observation in FINDINGS}
    other_finding = False
    for sentence in split_sentences(text):
        sentence_statuses, sentence_other = _sentence_statuses(sentence)
        other_finding = other_finding or sentence_other
        for observation, found in sentence_statuses.items():
            statuses[observation].extend(found)
    labels = {observation: _combine(found) for observation, found in statuses.items()}
    abnormal = other_finding or any(status in (POSITIVE, UNCERTAIN) for observation, status in labels.items()
                                    if observation != "Support Devices")
    return {"No Finding": None if abnormal else POSITIVE, **labels}


def _side_word(match_text):
    if match_text.startswith(("bi", "both")) or " " in match_text:
        return "bilateral"
    return match_text


def _merge_sides(sides):
    sides = set(sides)
    if not sides:
        return None
    if "bilateral" in sides or sides == {"left", "right"}:
        return "bilateral"
    return sides.pop()


def sentence_sides(sentence):
    """{observation: "left" | "right" | "bilateral"} for the lateral observations mentioned in `sentence`.

    A side is reported whatever the mention's status ("no right pleural effusion" -> right).
    """
    text = sentence.lower()
    mentions = _find_mentions(text)
    stops = [match.end() for match in _NEGATION_BEFORE.finditer(_hide_pseudo_triggers(text))]
    stops += [match.end() for match in _CLAUSE_BOUNDARY.finditer(text) if match.group() in (";", "but", "however")]
    found = {}
    previous = None  # (end, side) of the previous lateral mention
    previous_end = 0
    for start, end, observation, _, _ in mentions:
        if start < previous_end:  # overlapping mentions ("nodular opacity") share the previous one's window
            window_start = max([0] + [mention[1] for mention in mentions if mention[1] <= start])
        else:
            window_start = previous_end
        window_start = max([window_start] + [stop for stop in stops if stop <= start])
        side = None
        before = list(_SIDE.finditer(text, window_start, start))
        if before:
            side = _side_word(before[-1].group())
        else:
            after = _SIDE_AFTER.match(text[end:])
            if after:
                side = _side_word(after.group(1))
            elif previous is not None and previous[0] <= start:
                gap = text[previous[0]:start]
                if _words(gap) <= _INHERIT_SIDE_WORDS and previous[0] >= window_start:
                    side = previous[1]
        if observation in LATERAL_OBSERVATIONS:
            if side is not None:
                found.setdefault(observation, []).append(side)
            previous = (end, side)
        previous_end = max(previous_end, end)
    return {observation: _merge_sides(sides) for observation, sides in found.items()}


def labels_to_vector(labels, observations=OBSERVATIONS, uncertain_as_positive=False):
    """A 0/1 list in `observations` order: 1 where the status is positive (and uncertain, if asked)."""
    positive = (POSITIVE, UNCERTAIN) if uncertain_as_positive else (POSITIVE,)
    return [1 if labels.get(observation) in positive else 0 for observation in observations]


def precision_recall_f1(true_positive, predicted, actual):
    """{"precision", "recall", "f1"} from counts; 0.0 where a denominator is 0."""
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def clinical_efficacy_from_vectors(generated_vectors, reference_vectors, observations=OBSERVATIONS):
    """Micro, macro and example-based precision/recall/F1 of 0/1 label vectors (positive = 1).

    - micro: true/false positives summed over every (report, observation);
    - macro: mean over the observations that are positive in at least one reference or generated report
      (an observation absent from both has no defined score and is left out; `macro_observations` counts them);
    - example-based: per report, then averaged; a report with no positive label in either counts 1.0.
    """
    if len(generated_vectors) != len(reference_vectors):
        raise ValueError(f"{len(generated_vectors)} generated label vectors but {len(reference_vectors)} references")
    if not reference_vectors:
        raise ValueError("no reports to score")
    per_observation = {}
    for index, observation in enumerate(observations):
        predicted = sum(vector[index] for vector in generated_vectors)
        actual = sum(vector[index] for vector in reference_vectors)
        hits = sum(g[index] and r[index] for g, r in zip(generated_vectors, reference_vectors))
        per_observation[observation] = {**precision_recall_f1(hits, predicted, actual), "support": actual,
                                        "predicted": predicted, "true_positive": hits}
    total = {key: sum(scores[key] for scores in per_observation.values())
             for key in ("true_positive", "predicted", "support")}
    present = [scores for scores in per_observation.values() if scores["support"] or scores["predicted"]]
    macro = {key: sum(scores[key] for scores in present) / len(present) if present else 0.0
             for key in ("precision", "recall", "f1")}
    examples = []
    for generated, reference in zip(generated_vectors, reference_vectors):
        hits = sum(g and r for g, r in zip(generated, reference))
        if not any(generated) and not any(reference):
            examples.append({"precision": 1.0, "recall": 1.0, "f1": 1.0})
        else:
            examples.append(precision_recall_f1(hits, sum(generated), sum(reference)))
    example = {key: sum(scores[key] for scores in examples) / len(examples) for key in ("precision", "recall", "f1")}
    return {
        "micro": precision_recall_f1(total["true_positive"], total["predicted"], total["support"]),
        "macro": macro,
        "macro_observations": len(present),
        "example": example,
        "per_observation": per_observation,
        "n_reports": len(reference_vectors),
        "labeler": LABELER_NOTE,
    }


def clinical_efficacy(generated, references, observations=OBSERVATIONS, uncertain_as_positive=False):
    """Approximate clinical efficacy of generated report texts against reference texts (positive = 1).

    Both sides are labelled with this module's rule labeler (not CheXbert): the numbers are approximate.
    Returns micro/macro/example-based precision, recall and F1 (see `clinical_efficacy_from_vectors`).
    """
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports but {len(references)} references")
    generated_vectors = [labels_to_vector(label_report(text), observations, uncertain_as_positive)
                         for text in generated]
    reference_vectors = [labels_to_vector(label_report(text), observations, uncertain_as_positive)
                         for text in references]
    return clinical_efficacy_from_vectors(generated_vectors, reference_vectors, observations)

"""Which image of a study is the frontal one, from what each file says about itself.

A one-view model reads a study's first image and a two-view model expects the frontal, then the lateral: the order
matters, and the order files arrive in (file names, upload order) says nothing about it. A DICOM header does:
ViewPosition (PA, AP, LL, RL, LATERAL), else the first item of the View Code Sequence (its code meaning, e.g.
"postero-anterior", "left lateral"). PNG and JPEG carry no view; where no header names a frontal view, the order
given stays and the note says which image is taken as the frontal. A reader (on the page) or the command line
(`--frontal`) can name the frontal image itself: it then goes first, and a note says when its header disagrees.
"""

from __future__ import annotations

FRONTAL, LATERAL = "frontal", "lateral"
_FRONTAL_NAMES = {"pa", "ap", "frontal", "postero-anterior", "posteroanterior", "antero-posterior", "anteroposterior",
                  "ap supine", "ap erect", "pa erect", "ap semi-erect"}
_LATERAL_NAMES = {"ll", "rl", "lat", "lateral", "left lateral", "right lateral", "latero-lateral", "lld", "rld"}
# With a frontal named: it, then the laterals, then images of no stated view. Without one, an image of no stated
# view may be the frontal: those first, the laterals after them.
_ORDER = {True: {FRONTAL: 0, LATERAL: 1, None: 2}, False: {None: 0, LATERAL: 1}}


def view_kind(view: str | None) -> str | None:
    """FRONTAL, LATERAL or None for a view as a header or a metadata column names it ("PA", "LL", "lateral")."""
    text = " ".join(str(view or "").lower().replace("_", " ").split())
    if text in _FRONTAL_NAMES:
        return FRONTAL
    if text in _LATERAL_NAMES:
        return LATERAL
    return None


def header_view(source) -> str:
    """The view a DICOM file's header names (see dataset_view); "" for a PNG or JPEG, or a header that cannot be
    read, pydicom missing included (the image reader names that problem)."""
    from modeling_cliptt5.images.dicom import read_header

    try:
        dataset = read_header(source)
    except ImportError:
        return ""
    return "" if dataset is None else dataset_view(dataset)


def dataset_view(dataset) -> str:
    """A read header's view: ViewPosition, else the View Code Sequence's first code meaning ("" if neither)."""
    view = str(dataset.get("ViewPosition", "") or "").strip()
    codes = dataset.get("ViewCodeSequence") or []
    if not view and len(codes):
        view = str(codes[0].get("CodeMeaning", "") or "").strip()
    return view


def frontal_first(items: list, views: list[str], names: list[str],
                  chosen: str | None = None) -> tuple[list, list[str], str | None]:
    """(items, views) reordered so that a view the headers name frontal comes first (then laterals, then images of
    no stated view; without a named frontal, images of no stated view before the laterals), the given order within
    each, and a note, or None: which image is taken as the frontal when no header names one, or that the only image
    is a lateral. `chosen`: the name of the image someone named the frontal one; it comes first whatever the
    headers say, and the note says when its header names a lateral view, or another image's a frontal one."""
    kinds = [view_kind(view) for view in views]
    rank = _ORDER[FRONTAL in kinds]
    order = sorted(range(len(items)), key=lambda index: rank[kinds[index]])
    note = None
    if chosen is not None and chosen in names:
        index = names.index(chosen)
        order = [index] + [other for other in order if other != index]
        others = [names[other] for other in order[1:] if kinds[other] == FRONTAL]
        if kinds[index] == LATERAL:
            note = f"{chosen} was named the frontal image, but its header names a lateral view ({views[index]})"
        elif kinds[index] != FRONTAL and others:
            note = f"{chosen} was named the frontal image, while the header of {others[0]} names a frontal view"
    elif len(items) > 1 and FRONTAL not in kinds:
        first = names[order[0]]
        if kinds[order[0]] == LATERAL:
            note = f"every header names a lateral view: {first} is read first, where the model expects a frontal one"
        else:
            note = (f"no header names a frontal view: {first} is taken as the frontal"
                    f"{', the laterals after it' if LATERAL in kinds else ''}")
    elif len(items) == 1 and kinds[0] == LATERAL:
        note = f"the only image, {names[0]}, is a lateral view ({views[0]}); the model expects a frontal one"
    return [items[index] for index in order], [views[index] for index in order], note

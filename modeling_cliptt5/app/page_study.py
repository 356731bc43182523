"""The study the page shows: its images (frontal first), whose study it is, which image the reader named the
frontal, and the prior study it is compared with (refused when its headers name another patient or a date not before
the study's); what joins it when the file list changes, and when a draft no longer matches it."""

import hashlib
import json
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from modeling_cliptt5.app.study_identity import file_identity, file_key, file_reference, mismatch, study_identity
from modeling_cliptt5.images.views import frontal_first
from modeling_cliptt5.inference.drafting import Study as DraftingStudy
from modeling_cliptt5.inference.priors import prior_problem

# How the page names a study or prior whose files carry no DICOM header, or a prior given as a report alone (file
# names can carry a patient's name)
UNNAMED_STUDY = "on the page"
UNNAMED_PRIOR = "the prior study"


@dataclass(frozen=True)
class StudyImage:
    """One file of the study: its path and name, its content hash (`key`: the same image dropped twice is one
    file), the view its header names ("" without one) and its DICOM UIDs (None for PNG/JPEG)."""

    name: str
    path: str
    key: str
    view: str = ""
    reference: dict | None = None


@dataclass
class Study:
    """The files dropped since the last Clear that belong together. `token` tells one study from the next (None:
    no study); `images` are the files used, frontal first; `listed` the content keys of every file in the list,
    refused ones too, so that a re-sent list is recognised; `identity` what the headers say of the patient and
    study; `frontal` the file name the reader chose as the frontal image, else None; `prior` the earlier study dropped
    in the prior slot (a Study of its own, None without one) and `prior_report` its report as typed ("" without)."""

    token: str | None = None
    images: list[StudyImage] = field(default_factory=list)
    listed: list[str] = field(default_factory=list)
    identity: dict = field(default_factory=dict)
    frontal: str | None = None
    prior: "Study | None" = None
    prior_report: str = ""

    @property
    def files(self):
        return [image.path for image in self.images]

    @property
    def names(self):
        return [image.name for image in self.images]

    @property
    def keys(self):
        return [image.key for image in self.images]

    @property
    def views(self):
        return [image.view for image in self.images]

    @property
    def references(self):
        return [image.reference for image in self.images]

    @property
    def prior_key(self):
        return prior_key(self.prior, self.prior_report)


def prior_key(prior, report):
    """What a draft read of the prior slot, as one hash ("" for nothing): its images' content and its report. A
    draft keeps it, so that a changed prior marks the draft stale as changed images do."""
    keys = prior.keys if prior else []
    report = " ".join((report or "").split())
    if not keys and not report:
        return ""
    return hashlib.sha1(json.dumps([keys, report]).encode("utf-8")).hexdigest()


def update_study(paths, study):
    """The study after the file list changed to `paths`: (study, refused, notes, is_new).

    A list that keeps none of the study's files starts a new study (new token); files added to a study join it
    unless their header names another patient or study; a file without a header joins with a note. Frontal views
    come first (images/views.py), or the image the reader chose (choose_frontal) while it stays in the study. The prior
    stays with the study, and goes when a new study replaces one that had files (Clear too): a prior dropped before
    the study's own files is kept for it.
    """
    study = study or Study()
    listed, unique = [], []
    for path in paths or []:
        key = file_key(path)
        if key not in listed:
            listed.append(key)
            unique.append((path, key))
    is_new = not set(listed) & set(study.listed)
    previous = {} if is_new else {image.key: image for image in study.images}
    identity = {} if is_new else dict(study.identity)
    images, refused, notes = [], [], []
    for path, key in unique:
        name = Path(path).name
        if key in previous:  # already read: its header is in the study's identity, views and references
            images.append(replace(previous[key], name=name, path=path))
            continue
        header = file_identity(path)
        reason = mismatch(identity, header)
        if reason:
            refused.append(f"{name} is of another patient or study, {reason}. Clear the study (x at the top "
                           "right of the file list) to start a new one.")
            continue
        if not is_new:
            notes.append(f"Added {name} to this study.")
            if identity.get("patient_id") and not header:
                notes.append(f"{name} has no DICOM header: check that it is of patient ID "
                             f"{identity['patient_id']}.")
        identity = study_identity([identity, header])
        images.append(StudyImage(name, path, key, header.get("view_position", ""), file_reference(header)))
    notes += [f"Removed {image.name} from this study." for key, image in previous.items() if key not in listed]
    # Frontal first, as the headers say: the viewer's numbering, the identity line and the model agree.
    names = [image.name for image in images]
    frontal = study.frontal if not is_new and study.frontal in names else None
    images = frontal_first(images, [image.view for image in images], names, frontal)[0]
    token = new_token() if is_new else study.token
    keeps_prior = not is_new or not study.listed
    prior, prior_report = (study.prior, study.prior_report) if keeps_prior else (None, "")
    return Study(token, images, listed, identity, frontal, prior, prior_report), refused, notes, is_new


def choose_frontal(study, name):
    """The study with the image the reader named (`name`, a file name of the study) first: the one the model reads
    as the frontal, whatever the headers say; and a note where a header disagrees (views.frontal_first). The same
    object when nothing changes."""
    if not study or name not in study.names or name == study.names[0]:
        return study, None
    images, _, note = frontal_first(study.images, study.views, study.names, name)
    return replace(study, images=images, frontal=name), note


def new_token():
    return uuid.uuid4().hex


def stale_note(draft, study):
    """Why the draft no longer matches the study's images, or its prior (for a draft that records the prior it read),
    or None."""
    keys = study.keys if study else []
    if not draft or "keys" not in draft:
        return None
    if draft["keys"] == keys:
        if "prior_key" in draft and draft["prior_key"] != (study.prior_key if study else ""):
            return "The prior study changed after this draft: draft again before exporting."
        return None
    if sorted(draft["keys"]) == sorted(keys):
        return "Another image was chosen as the frontal after this draft: draft again before exporting."
    return (f"The images changed after this draft (drafted from {draft['images']} image(s); the study now has "
            f"{len(keys)}): draft again before exporting.")


def study_name(identity, unnamed):
    """A study's name in messages, drafts and exports: its accession number, else its Study Instance UID."""
    return identity.get("accession_number") or identity.get("study_instance_uid") or unnamed


def prior_name(prior, report=""):
    """How the page, the draft record (DraftedReport.prior_id) and the exports name the prior: its accession number,
    else its Study Instance UID, else "the prior study"; "" for an empty prior slot."""
    if prior and prior.files:
        return study_name(prior.identity, UNNAMED_PRIOR)
    return UNNAMED_PRIOR if (report or "").strip() else ""


def prior_refusal(files, prior):
    """Why the prior (a Study) may not be compared with the study of `files`, naming both, or None. The DICOM headers
    decide, as for cliptt5-generate (inference.priors.prior_problem: another patient by PatientID, or a prior not
    dated before the study), and the study itself dropped as its prior is refused; what a PNG/JPEG does not say
    cannot be checked and passes."""
    if not files or not prior or not prior.files:
        return None
    identity = file_identity(files[0])
    current = DraftingStudy(study_name(identity, UNNAMED_STUDY), [Path(path) for path in files])
    earlier = DraftingStudy(prior_name(prior), [Path(path) for path in prior.files])
    same = identity.get("study_instance_uid") and identity["study_instance_uid"] == prior.identity.get(
        "study_instance_uid")
    problem = f"the prior {earlier.study_id} is this study itself" if same else prior_problem(current, earlier)
    if problem is None:
        return None
    return (f"Not used as the prior: {problem}. Nothing is drafted against it: remove it (x of the prior's file list) "
            "or drop this patient's earlier study.")

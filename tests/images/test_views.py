"""Which image is the frontal one: named by the DICOM header (ViewPosition, else the View Code Sequence), put first
for the model by generate.py's reader and the image-folder converter whatever the file order; files whose headers
name no frontal keep their order, with a note naming the image taken as the frontal."""

import json

import pytest
from PIL import Image

pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402

from dicom_files import block_image, grayscale_dicom  # noqa: E402
from modeling_cliptt5.data.converters.imagefolder import study_records  # noqa: E402
from modeling_cliptt5.images.views import FRONTAL, LATERAL, frontal_first, header_view, view_kind  # noqa: E402
from modeling_cliptt5.inference.drafting import Study, read_study_images  # noqa: E402


def dicom_view(path, view=None, code_meaning=None, size=(24, 20)):
    """A DICOM file of `size` (rows, columns: it tells the images apart) whose header names `view` and/or a view
    code."""
    header = {} if view is None else {"ViewPosition": view}
    if code_meaning is not None:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10214", "SRT", code_meaning
        header["ViewCodeSequence"] = [code]
    return grayscale_dicom(block_image(size=size), path, header=header)


@pytest.mark.parametrize("view, kind", [("PA", FRONTAL), ("AP", FRONTAL), ("postero-anterior", FRONTAL),
                                        ("AP SUPINE", FRONTAL), ("LL", LATERAL), ("RL", LATERAL),
                                        ("LATERAL", LATERAL), ("Left Lateral", LATERAL), ("", None),
                                        ("OBLIQUE", None), (None, None)])
def test_view_names_from_headers_and_metadata(view, kind):
    assert view_kind(view) == kind


def test_the_header_names_the_view(tmp_path):
    assert header_view(dicom_view(tmp_path / "a.dcm", "LL")) == "LL"
    assert header_view(dicom_view(tmp_path / "b.dcm", code_meaning="postero-anterior")) == "postero-anterior"
    assert header_view(dicom_view(tmp_path / "c.dcm", "PA", code_meaning="lateral")) == "PA"  # ViewPosition first
    assert header_view(dicom_view(tmp_path / "d.dcm")) == ""
    assert header_view((tmp_path / "a.dcm").read_bytes()) == "LL"  # bytes, as the converters hold them
    Image.new("L", (8, 8)).save(tmp_path / "e.png")
    (tmp_path / "f.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"not a dataset")
    assert header_view(tmp_path / "e.png") == "" and header_view(tmp_path / "f.dcm") == ""


def test_frontal_first_orders_by_view_and_says_when_it_guesses():
    assert frontal_first(["a", "b"], ["LL", "PA"], ["a", "b"]) == (["b", "a"], ["PA", "LL"], None)
    # a named frontal, then laterals, then images of no stated view
    assert frontal_first(["a", "b", "c"], ["", "LL", "PA"], ["a", "b", "c"])[0] == ["c", "b", "a"]
    # no frontal named: the image of no stated view may be it, the laterals after it; the note says which
    ordered, views, note = frontal_first(["a", "b"], ["LL", ""], ["a.png", "b.png"])
    assert ordered == ["b", "a"] and "b.png is taken as the frontal" in note
    ordered, _, note = frontal_first(["a", "b"], ["", ""], ["a.png", "b.png"])
    assert ordered == ["a", "b"] and note == "no header names a frontal view: a.png is taken as the frontal"
    assert "lateral" in frontal_first(["a"], ["LL"], ["a.dcm"])[2]
    assert frontal_first(["a"], [""], ["a.png"])[2] is None  # one image: nothing to choose


def test_generate_reads_the_frontal_first_whatever_the_file_names(tmp_path):
    lateral = dicom_view(tmp_path / "s1_a.dcm", "LL")
    frontal = dicom_view(tmp_path / "s1_b.dcm", "PA", size=(30, 26))
    study = Study("s1", [lateral, frontal])  # file-name order: the lateral first
    images, errors = read_study_images(study, num_views=1, max_pixels=10 ** 7)
    assert errors == [] and study.files == [frontal, lateral]
    assert images[0].size == (26, 30)  # the frontal is what the model reads
    assert not any("no header names" in warning for warning in study.warnings)

    first, second = tmp_path / "s2_a.png", tmp_path / "s2_b.png"
    for path in (first, second):
        Image.new("L", (20, 24), 90).save(path)
    unnamed = Study("s2", [first, second])
    read_study_images(unnamed, num_views=2, max_pixels=10 ** 7)
    assert unnamed.files == [first, second]
    assert "s2: no header names a frontal view: s2_a.png is taken as the frontal" in unnamed.warnings


def test_a_named_frontal_comes_first_and_a_header_that_disagrees_is_said(tmp_path):
    # PNGs carry no view: the file-name order would make the lateral the frontal; --frontal names it instead
    lateral, frontal = tmp_path / "s3_lat.png", tmp_path / "s3_pa.png"
    Image.new("L", (20, 24), 90).save(lateral)
    Image.new("L", (26, 30), 90).save(frontal)
    study = Study("s3", [lateral, frontal])
    images, _ = read_study_images(study, num_views=1, max_pixels=10 ** 7, frontal="*_pa.*")
    assert study.files == [frontal, lateral] and images[0].size == (26, 30)
    assert not any("taken as the frontal" in warning for warning in study.warnings)
    # a pattern that names nothing leaves the usual order, and says so
    missed = Study("s3", [lateral, frontal])
    read_study_images(missed, num_views=1, max_pixels=10 ** 7, frontal="*frontal*")
    assert missed.files == [lateral, frontal]
    assert "s3: no file matches --frontal '*frontal*': the headers (else the file names) order the views" in \
        missed.warnings
    # named against the headers: it is read first, with a note naming the header that disagrees
    headed = Study("s1", [dicom_view(tmp_path / "s1_a.dcm", "LL"), dicom_view(tmp_path / "s1_b.dcm", "PA")])
    read_study_images(headed, num_views=1, max_pixels=10 ** 7, frontal="s1_a.*")
    assert [path.name for path in headed.files] == ["s1_a.dcm", "s1_b.dcm"]
    assert "s1: s1_a.dcm was named the frontal image, but its header names a lateral view (LL)" in headed.warnings


def test_the_image_folder_converter_puts_the_frontal_first_by_its_header(tmp_path):
    dicom_view(tmp_path / "lat.dcm", "LL")
    dicom_view(tmp_path / "front.dcm", code_meaning="antero-posterior")
    rows = [{"file_name": "lat.dcm", "study_id": "s1", "report": "FINDINGS: Clear. IMPRESSION: Normal."},
            {"file_name": "front.dcm", "study_id": "s1", "report": "FINDINGS: Clear. IMPRESSION: Normal."},
            {"file_name": "x_lat.png", "study_id": "s2", "view": "lateral", "report": "FINDINGS: Clear."},
            {"file_name": "x_pa.png", "study_id": "s2", "view": "PA", "report": "FINDINGS: Clear."}]
    metadata = tmp_path / "metadata.jsonl"
    metadata.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    records = study_records(metadata, None, "test", 0.0, 0.0)
    assert [[view.name for view in record.views] for record in records] == [["front.dcm", "lat.dcm"],
                                                                            ["x_pa.png", "x_lat.png"]]

"""Every `cliptt5-*` command ends as a shell script expects: status 0 when it did its work, 1 when some of its inputs
failed (each named in one line), 2 when the command itself is wrong (a bad option, no release or model where it was
told to look), and never with a Python object or a traceback dumped on stderr.

Each command's `main` is run the way its console script runs it (`sys.exit(main())`), so what the shell sees is
what `console_exit` returns here: an int is the status, None is 0, anything else is printed to stderr with status 1
(the dumped dictionary `cliptt5-score` used to end with)."""

import json

import pytest
from PIL import Image

from conftest import noise_image
from training_helpers import make_tiny_dataset, tiny_settings
from modeling_cliptt5.cli import (
    app, convert_biomedclip_t5, convert_imagefolder, convert_kaggle_cxr, convert_openi, convert_r2gen, generate,
    make_demo_data, node, release, score_reports, train,
)


def console_exit(main, argv, capsys):
    """(status, stdout, stderr) as the shell sees them after `sys.exit(main(argv))`."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    printed = capsys.readouterr()
    err = printed.err
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # what the interpreter does with any other exit value
        err += f"{code}\n"
        status = 1
    assert "Traceback" not in err
    return status, printed.out, err


def error_lines(err):
    return [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scores")
    references = folder / "references.jsonl"
    references.write_text("".join(json.dumps({"id": f"s{i}", "report": text}) + "\n" for i, text in
                                  enumerate(["Heart size normal.", "Small left effusion.", "Mild cardiomegaly."])))
    generated = folder / "generated.jsonl"
    generated.write_text(references.read_text())
    partial = folder / "partial.jsonl"
    partial.write_text(references.read_text().splitlines(keepends=True)[0])
    return references, generated, partial


def test_score(reports, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java: METEOR is skipped, the rest is scored in a second
    references, generated, partial = reports
    status, out, err = console_exit(score_reports.main, ["--generated", str(generated), "--references",
                                                         str(references), "--no-baselines"], capsys)
    assert status == 0 and "3 studies scored" in out
    assert "{" not in err  # the scores are the table on stdout, not a dict on stderr
    status, _, err = console_exit(score_reports.main, ["--generated", str(partial), "--references",
                                                       str(references)], capsys)
    assert status == 1 and error_lines(err) == [
        f"cliptt5-score: error: {partial}: no generated report for 2 of 3 reference ids, e.g. ['s1', 's2']"]
    assert console_exit(score_reports.main, ["--generated", str(generated)], capsys)[0] == 2


def test_generate(trained_release_dir, tmp_path, capsys):
    image = tmp_path / "study.png"
    noise_image(0).save(image)
    drafted = ["--model", str(trained_release_dir), "--max-new-tokens", "4"]
    assert console_exit(generate.main, [*drafted, str(image)], capsys)[0] == 0
    status, _, err = console_exit(generate.main, [*drafted, str(image), str(tmp_path / "missing.png")], capsys)
    assert status == 1 and f"error: {tmp_path / 'missing.png'}: file not found" in err
    status, _, err = console_exit(generate.main, ["--model", str(tmp_path / "no_release"), str(image)], capsys)
    assert status == 2
    assert error_lines(err) == [f"cliptt5-generate: error: no release folder at {tmp_path / 'no_release'} (and not "
                                "a Hub id that can be reached offline: not a Hub id either)"]
    assert console_exit(generate.main, [str(image)], capsys)[0] == 2  # no --model


def test_app_refuses_a_missing_release_in_one_line(tmp_path, capsys):
    pytest.importorskip("gradio")
    status, _, err = console_exit(app.main, ["--model", str(tmp_path / "no_release")], capsys)
    assert status == 2 and error_lines(err) == [
        f"cliptt5-app: error: no release folder at {tmp_path / 'no_release'} (and not a Hub id that can be reached "
        "offline: not a Hub id either)"]
    assert console_exit(app.main, [], capsys)[0] == 2  # --model is required: there is no default release


def test_train(tmp_path, capsys):
    dataset = make_tiny_dataset(tmp_path / "data")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(tiny_settings(dataset, tmp_path / "run", max_steps=1, eval_every_steps=1)))
    assert console_exit(train.main, ["--config", str(settings)], capsys)[0] == 0
    assert (tmp_path / "run" / "best" / "config.json").is_file()
    status, _, err = console_exit(train.main, ["--config", str(settings), "--dataset", str(tmp_path / "none")],
                                  capsys)
    assert status == 2 and error_lines(err) == [
        f"cliptt5-train: error: {settings}: dataset folder {str(tmp_path / 'none')!r} does not exist (convert one "
        "with cliptt5-convert-*, or use 'phantom')"]
    assert console_exit(train.main, ["--config", str(tmp_path / "none.yaml")], capsys)[0] == 2


def test_release(trained_release_dir, tmp_path, capsys):
    assert console_exit(release.main, [str(trained_release_dir), "--no-such-option"], capsys)[0] == 2
    status, _, err = console_exit(release.main, [str(tmp_path / "no_release")], capsys)
    assert status == 2 and "no release folder at" in err


def test_make_demo_data(tmp_path, capsys):
    status, out, _ = console_exit(make_demo_data.main, ["--num-studies", "3", "--image-size", "32", "--output",
                                                        str(tmp_path / "demo")], capsys)
    assert status == 0 and "wrote" in out
    assert console_exit(make_demo_data.main, ["--num-studies", "0"], capsys)[0] == 2


def image_folder(folder):
    folder.mkdir()
    rows = []
    for index in range(3):
        Image.new("L", (40, 40), 60 * index).save(folder / f"s{index}.png")
        rows.append({"file_name": f"s{index}.png", "study_id": f"s{index}", "findings": "The lungs are clear.",
                     "impression": "No acute process."})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_the_converters(tmp_path, capsys):
    folder = image_folder(tmp_path / "cxr")
    assert console_exit(convert_imagefolder.main, [str(folder), "--output", str(tmp_path / "out")], capsys)[0] == 0
    missing = str(tmp_path / "missing")
    for main, argv in ((convert_imagefolder.main, [missing]), (convert_r2gen.main, [f"{missing}.json"]),
                       (convert_openi.main, ["--images", missing, "--reports", missing]),
                       (convert_kaggle_cxr.main, [missing])):
        status, _, err = console_exit(main, [*argv, "--output", str(tmp_path / "never")], capsys)
        assert status == 1 and missing in err, (main.__module__, err)
        assert console_exit(main, [*argv, "--no-such-option"], capsys)[0] == 2
    assert not (tmp_path / "never").exists()


def test_convert_biomedclip_names_a_missing_model(tmp_path, capsys):
    status, _, err = console_exit(convert_biomedclip_t5.main, ["--clip-model", str(tmp_path / "no_clip"), "--output",
                                                               str(tmp_path / "release")], capsys)
    assert status == 1 and error_lines(err) == [
        f"cliptt5-convert-biomedclip: error: the image-text model (clip_model): no folder at {tmp_path / 'no_clip'} "
        "(not a Hub id either)"]
    assert console_exit(convert_biomedclip_t5.main, [], capsys)[0] == 2  # --output is required


def test_node(tmp_path, capsys):
    from modeling_cliptt5.node.database import NodeDatabase

    storage = tmp_path / "storage"
    status, _, err = console_exit(node.main, ["status", "--storage", str(storage)], capsys)
    assert status == 2 and error_lines(err) == [
        f"cliptt5-node: error: no node database in {storage} (no node.sqlite3): is that the node's storage folder, "
        "and has the node run?"]
    storage.mkdir()
    NodeDatabase(storage / "node.sqlite3").close()
    status, out, _ = console_exit(node.main, ["status", "--storage", str(storage)], capsys)
    assert status == 0 and "studies: none yet" in out
    serving = ["--storage", str(storage), "--accept", "PACS", "--destination", "PACS@127.0.0.1:104"]
    status, _, err = console_exit(node.main, [*serving, "--release", str(tmp_path / "no_release")], capsys)
    assert status == 2 and error_lines(err)[-1] == (
        f"cliptt5-node: error: no release folder at {tmp_path / 'no_release'} (and not a Hub id that can be reached "
        "offline: not a Hub id either)")
    status, _, err = console_exit(node.main, [*serving, "--release", "x", "--accept", "NOT A VALID AE TITLE"], capsys)
    assert status == 2 and error_lines(err) == [
        "cliptt5-node: error: accept: calling AE title 'NOT A VALID AE TITLE' is not a DICOM AE title (1 to 16 "
        "printable ASCII characters, no backslash)"]
    assert console_exit(node.main, ["--no-such-option"], capsys)[0] == 2


def test_every_command_is_covered_here():
    import configparser
    from conftest import REPO_ROOT

    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    modules = {line.split("=")[1].strip().split(":")[0].rsplit(".", 1)[1]
               for line in parser["options.entry_points"]["console_scripts"].strip().splitlines()}
    tested = {module.__name__.rsplit(".", 1)[1] for module in (
        app, convert_biomedclip_t5, convert_imagefolder, convert_kaggle_cxr, convert_openi, convert_r2gen, generate,
        make_demo_data, node, release, score_reports, train)}
    assert modules == tested
    for module in modules:  # `python -m modeling_cliptt5.cli.X` ends with main's status too
        source = (REPO_ROOT / "modeling_cliptt5" / "cli" / f"{module}.py").read_text()
        assert source.rstrip().endswith('if __name__ == "__main__":\n    sys.exit(main())'), module

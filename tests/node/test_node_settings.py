"""The node's settings (a YAML or JSON file, flags on top, each refusal one line naming the setting), the UIDs that
may become file names, the retry waits, and a --help that answers without loading torch or pynetdicom."""

import json
import subprocess
import sys

import pytest

from modeling_cliptt5.cli.node import flag_settings, parse_args
from modeling_cliptt5.node.instances import is_uid
from modeling_cliptt5.node.sender import retry_delay
from modeling_cliptt5.node.settings import (
    EXAMPLE, Caller, Destination, SettingsError, TlsSettings, load_settings, read_settings_file,
)
from modeling_cliptt5.node.storage import StorageLayout

SETTINGS = """
ae_title: READROOM
port: 11113
release: models/best
storage: node-data
study_complete_seconds: 5
accept:
  - ae_title: PACS
    addresses: [10.1.2.3]
  - MODALITY
destinations:
  - {ae_title: PACS, host: 10.1.2.3, port: 104}
  - ARCHIVE@[::1]:11112
tls: {certificate: node.crt, private_key: node.key}
"""


def test_a_settings_file_with_flags_on_top(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "models" / "best").mkdir(parents=True)
    for name in ("node.crt", "node.key"):
        (tmp_path / "etc" / name).write_text("pem")
    path = tmp_path / "etc" / "node.yaml"
    path.write_text(SETTINGS)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(path)
    # paths in the file are read from the file's folder
    assert settings.release == str(tmp_path / "etc" / "models" / "best")
    assert settings.storage == str(tmp_path / "etc" / "node-data")
    assert settings.tls == TlsSettings(str(tmp_path / "etc" / "node.crt"), str(tmp_path / "etc" / "node.key"), "")
    assert (settings.ae_title, settings.port, settings.study_complete_seconds) == ("READROOM", 11113, 5.0)
    assert settings.accept == [Caller("PACS", ("10.1.2.3",)), Caller("MODALITY")]
    assert settings.destinations == [Destination("PACS", "10.1.2.3", 104), Destination("ARCHIVE", "::1", 11112)]
    assert settings.accept[0].admits("PACS", "10.1.2.3") and not settings.accept[0].admits("PACS", "10.9.9.9")
    assert settings.accept[1].admits("MODALITY", "10.9.9.9") and not settings.accept[1].admits("PACS2", "10.1.2.3")

    # flags win, and their paths are read from the current folder; repeated flags replace the file's lists
    args = parse_args(["--config", str(path), "--storage", "elsewhere", "--port", "2000", "--accept",
                       "CT1@10.0.0.1,10.0.0.2", "--refuse-ood", "--num-beams", "3", "--prior-source",
                       "CT1@10.0.0.1:104"])
    assert args.command == "serve"  # the default subcommand
    settings = load_settings(path, flag_settings(args))
    assert settings.storage == str(tmp_path / "elsewhere") and settings.port == 2000
    assert settings.accept == [Caller("CT1", ("10.0.0.1", "10.0.0.2"))]
    assert settings.prior_source == Destination("CT1", "10.0.0.1", 104)
    assert settings.refuse_ood is True and settings.num_beams == 3 and settings.optimize is False
    assert settings.destinations[0].name == "PACS@10.1.2.3:104"

    # JSON is read the same way
    as_json = tmp_path / "etc" / "node.json"
    as_json.write_text(json.dumps({"storage": "node-data", "release": "models/best", "accept": ["PACS"],
                                   "destinations": ["PACS@pacs.example:104"]}))
    assert load_settings(as_json).destinations == [Destination("PACS", "pacs.example", 104)]


@pytest.mark.parametrize("text, message", [
    ("storage: x\nrelese: y\n", "unknown setting 'relese' (did you mean release?)"),
    ("storage: x\nrelease: y\naccept: [WAY_TOO_LONG_AE_TITLE]\ndestinations: [A@h:1]\n",
     "accept: calling AE title 'WAY_TOO_LONG_AE_TITLE' is not a DICOM AE title"),
    ("storage: x\nrelease: y\naccept: [A]\ndestinations: [A@host:99999]\n", "port 99999 is not between 1 and 65535"),
    ("storage: x\nrelease: y\naccept: [A]\ndestinations: [A@host]\n", "no host (write AE@HOST:PORT)"),
    ("storage: x\nrelease: y\ndestinations: [A@h:1]\n", "no calling AE title is accepted"),
    ("storage: x\nrelease: y\naccept: [A]\n", "no destination for the results"),
    ("release: y\n", "no storage folder"),
    ("storage: x\nrelease: y\naccept: [A]\ndestinations: [A@h:1]\nstudy_complete_seconds: 0\n",
     "study_complete_seconds must be more than 0"),
    ("storage: x\nrelease: y\naccept: [A]\ndestinations: [A@h:1]\ntls: {certificate: missing.pem, private_key: k}\n",
     "tls: certificate"),
    ("[not, a, mapping]\n", "settings must be a mapping"),
    ("storage: x\nrelease: y\naccept: [A]\ndestinations: [A@h:1]\nprior_source: PACS@h:104\n",
     "prior_source PACS@h:104: add PACS to accept"),
])
def test_a_setting_the_node_cannot_use_is_named_in_one_line(tmp_path, text, message):
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError) as refused:
        load_settings(path)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_example_in_the_help_is_a_settings_file_the_node_reads(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(EXAMPLE)
    assert set(read_settings_file(path)) >= {"ae_title", "release", "storage", "accept", "destinations", "tls"}
    settings = load_settings(path, {"tls": TlsSettings(__file__, __file__)})
    assert settings.accept == [Caller("PACS", ("10.1.2.3",))] and settings.study_complete_seconds == 30
    assert settings.prior_source == Destination("PACS", "10.1.2.3", 104)


def test_status_needs_the_storage_folder_only(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text("storage: data\n")
    assert load_settings(path, serving=False).storage == str(tmp_path / "data")


def test_only_dicom_uids_become_file_names(tmp_path):
    assert is_uid("1.2.840.10008.5.1.4.1.1.1") and is_uid("0.1") and is_uid("2.25." + "1" * 59)
    for text in ("", "1.2.03", "1..2", "1.2.", ".1.2", "1.2.3/../../x", "1.2.a", "1.2 3", "2.25." + "1" * 60,
                 "../../etc/passwd", None):
        assert not is_uid(text), text
    layout = StorageLayout(tmp_path)
    assert layout.instance_path("1.2.3", "1.2.3.4") == tmp_path / "instances" / "1.2.3" / "1.2.3.4.dcm"
    for study, instance in (("1.2.3/../..", "1.2.3.4"), ("1.2.3", "../1.2"), ("..", "1")):
        with pytest.raises(ValueError, match="not a DICOM UID"):
            layout.instance_path(study, instance)


def test_retries_wait_longer_each_time_up_to_the_longest_wait():
    assert [retry_delay(attempt, 5, 300) for attempt in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_help_answers_without_loading_torch_or_pynetdicom():
    probe = ("import sys\nfrom modeling_cliptt5.cli import node\n"
             "try:\n    node.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'pynetdicom', 'pydicom') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith("[]"), result.stdout + result.stderr
    assert "Storage SCP" in result.stdout and "status" in result.stdout


def test_a_prior_source_that_does_not_answer_leaves_the_study_to_be_drafted_as_a_first_one(tmp_path, caplog):
    """No prior source listening on its port: the fetch fails, is logged, and the study is drafted without a prior
    (the node does not stop or wait)."""
    from app_harness import free_port
    from modeling_cliptt5.node.database import NodeDatabase
    from modeling_cliptt5.node.drafter import StudyDrafter
    from modeling_cliptt5.node.instances import Instance

    pytest.importorskip("pynetdicom")
    settings = load_settings(None, {"storage": str(tmp_path), "release": "x", "accept": ["PACS"],
                                    "destinations": ["PACS@127.0.0.1:104"],
                                    "prior_source": f"PACS@127.0.0.1:{free_port()}"})
    settings.network_timeout_seconds = 5
    database = NodeDatabase(tmp_path / "node.sqlite3")
    database.add_instance(Instance("1.2.3", "1.2.3.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.1.1", "PAT-1",
                                   "2024-03-01T10:15:00"), tmp_path / "a.dcm", 10, "PACS", 0.0)
    with caplog.at_level("WARNING", logger="cliptt5.node"):
        assert StudyDrafter(settings, None, database, None).fetched_prior("1.2.3") is None
    assert "study 1.2.3: no prior fetched from PACS@127.0.0.1" in caplog.text
    assert "drafted as the patient's first" in caplog.text
    assert database.rows("SELECT state FROM studies") == [{"state": "receiving"}]  # nothing recorded as a prior

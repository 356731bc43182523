"""Helpers for the DICOM node's tests and benchmark: the node (cliptt5-node) and a real Orthanc PACS as processes on
free loopback ports, dcmtk's storescu as the sender, and radiographs written as DICOM files.

Orthanc and dcmtk are Debian packages (`apt-get install -y orthanc dcmtk dicom3tools`); each Orthanc here runs from
a generated JSON configuration with its own storage folder, never as the system service."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from app_harness import REPO_ROOT, free_port, server_env
from conftest import MAX_NEW_TOKENS
from dicom_files import grayscale_dicom

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
NODE_AE, ORTHANC_AE, SENDER_AE = "CLIPT5", "ORTHANC", "MODALITY"
START_SECONDS = 120  # the node imports torch and transformers and loads its release: ~10 s on 2 busy cores
COMPUTED_RADIOGRAPHY = "1.2.840.10008.5.1.4.1.1.1"
DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


# Fixtures the node's test modules import. Their release: the tiny finding-head release of tests/conftest.py (its
# head calls Cardiomegaly on odd noise images, and its draft then says the heart is enlarged), with a summary of
# noise images as its training images, so that a study unlike them is flagged.


@pytest.fixture(scope="session")
def node_release(head_release_dir, tmp_path_factory):
    return with_ood_summary(head_release_dir, tmp_path_factory.mktemp("node_release") / "release")


@pytest.fixture(scope="session")
def dicom_tools():
    reason = missing_tools_reason()
    if reason:
        pytest.skip(reason)


def dcmtk_tool(name):
    """The path of the DICOM tool `name` (dcmtk's storescu, echoscu, dsrdump; dicom3tools' dciodvfy), or None.
    pynetdicom installs its own apps named echoscu, storescu, findscu... into the Python environment, with other
    options: with the environment activated, those come first on PATH and would be run instead."""
    environment = (Path(sys.prefix) / "bin").resolve()
    path = os.pathsep.join(folder for folder in os.environ.get("PATH", "").split(os.pathsep)
                           if folder and Path(folder).resolve() != environment)
    return shutil.which(name, path=path)


def missing_tools_reason():
    """Why the node's tests against real DICOM software cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("pynetdicom") is None:
        return "pynetdicom is not installed: pip install '.[node]'"
    for tool, package in (("storescu", "dcmtk"), ("dsrdump", "dcmtk"), ("dciodvfy", "dicom3tools")):
        if dcmtk_tool(tool) is None:
            return f"{tool} not found: apt-get install -y {package}"
    if not Path(ORTHANC).exists():
        return "Orthanc not found: apt-get install -y orthanc (then stop and disable its service)"
    return None


def wait_for(condition, timeout, what, interval=0.2):
    """condition()'s first truthy value within `timeout` seconds, else AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# DICOM files


def radiograph(path, study_uid, seed, sop_class=DIGITAL_XRAY, modality="DX", view="PA", series_uid=None,
               instance_number=1, **header):
    """A small radiograph (noise pixels of conftest.noise_image `seed`) in `study_uid`, as a DICOM file of SOP class
    `sop_class`, with a patient whose name the node must never log."""
    from conftest import noise_image

    pixels = np.asarray(noise_image(seed))
    values = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid or generate_uid(),
              "PatientID": "PAT-0001", "PatientName": "Doe^Jane", "PatientBirthDate": "19700101", "PatientSex": "F",
              "AccessionNumber": "ACC-0001", "StudyDate": "20240301", "StudyTime": "101500", "StudyID": "S1",
              "ReferringPhysicianName": "", "SeriesNumber": 1, "InstanceNumber": instance_number,
              "ViewPosition": view, "BodyPartExamined": "CHEST", **header}
    grayscale_dicom(pixels, path, modality=modality, header=values)
    if sop_class != DIGITAL_XRAY:
        dataset = pydicom.dcmread(path)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = sop_class
        dataset.save_as(path, enforce_file_format=True)
    return Path(path)


def study_files(folder, count=2, seed=1, study_uid=None, **options):
    """`count` instances of one new study in `folder` (views PA, then LL), all from noise image `seed`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    return study_uid, [radiograph(folder / f"{study_uid}_{index}.dcm", study_uid, seed, series_uid=series_uid,
                                  instance_number=index + 1, view="PA" if index == 0 else "LL", **options)
                       for index in range(count)]


def storescu(port, files, calling=SENDER_AE, called=NODE_AE, timeout=120):
    """dcmtk's storescu sending `files` to 127.0.0.1:`port`; the finished process (its output in stdout)."""
    return subprocess.run([dcmtk_tool("storescu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port),
                           *map(str, files)],
                          capture_output=True, text=True, timeout=timeout)


def sent_ok(result):
    """storescu stored every file: exit status 0 and no failure in its output (it exits 0 on a failed C-STORE)."""
    output = result.stdout + result.stderr
    return result.returncode == 0 and "E:" not in output and "Failed" not in output and "Refused" not in output


# Orthanc


class Orthanc:
    """A real Orthanc (Debian package) on free loopback ports, with the node registered as the modality "cliptt5"."""

    def __init__(self, folder, node_port, node_ae=NODE_AE):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.node_port, self.node_ae = node_port, node_ae
        self.process = None
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "cliptt5-test-pacs", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AE, "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomModalities": {"cliptt5": [node_ae, "127.0.0.1", node_port]}, "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 30, "HttpTimeout": 60, "StableAge": 2,
        }))

    @property
    def url(self):
        return f"http://127.0.0.1:{self.http_port}"

    def start(self):
        self.log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=self.log, stderr=subprocess.STDOUT,
                                        cwd=self.folder)
        wait_for(self.answers, 60, f"Orthanc to answer on {self.url}")
        return self

    def answers(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.process.returncode}: "
                               f"{(self.folder / 'orthanc.log').read_text(errors='replace')[-2000:]}")
        try:
            return self.get("/system")
        except OSError:
            return None

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.log.close()
        self.process = None

    def request(self, method, path, body=None, raw=False):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            content = response.read()
        return content if raw else json.loads(content or b"null")

    def get(self, path, raw=False):
        return self.request("GET", path, raw=raw)

    def post(self, path, body=None):
        return self.request("POST", path, body)

    def upload(self, path):
        """POST /instances: the file stored in Orthanc as if a modality had sent it; its Orthanc id."""
        return self.post("/instances", Path(path).read_bytes())["ParentStudy"]

    def study_id(self, study_uid):
        found = self.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        return found[0] if found else None

    def srs(self, study_uid):
        """[(Orthanc instance id, SOP Instance UID)] of the SR instances in the study."""
        study = self.study_id(study_uid)
        if study is None:
            return []
        found = []
        for series in self.get(f"/studies/{study}/series"):
            if series["MainDicomTags"].get("Modality") == "SR":
                found += [(instance["ID"], instance["MainDicomTags"]["SOPInstanceUID"])
                          for instance in self.get(f"/series/{series['ID']}/instances")]
        return found

    def instance_file(self, instance_id, path):
        Path(path).write_bytes(self.get(f"/instances/{instance_id}/file", raw=True))
        return Path(path)


@contextlib.contextmanager
def running_orthanc(folder, node_port):
    orthanc = Orthanc(folder, node_port).start()
    try:
        yield orthanc
    finally:
        orthanc.stop()


# the node


class Node:
    """cliptt5-node in a process of its own, from a settings file it writes; its log kept in `folder`/node.log."""

    def __init__(self, folder, release, destination_port, study_complete_seconds=1.0, **settings):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = settings.pop("port", None) or free_port()
        self.settings = {
            "ae_title": NODE_AE, "port": self.port, "release": str(release), "storage": str(self.folder / "storage"),
            "study_complete_seconds": study_complete_seconds, "accept": [SENDER_AE, ORTHANC_AE],
            "destinations": [f"{ORTHANC_AE}@127.0.0.1:{destination_port}"], "retry_first_seconds": 0.5,
            "retry_max_seconds": 2, "network_timeout_seconds": 10, "max_new_tokens": MAX_NEW_TOKENS, **settings}
        self.config = self.folder / "node.json"
        self.config.write_text(json.dumps(self.settings, indent=1))
        self.log_path = self.folder / "node.log"
        self.process = None

    def start(self, threads=1):
        self.log = open(self.log_path, "ab")
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modeling_cliptt5.cli.node", "serve", "--config", str(self.config)],
            cwd=REPO_ROOT, env=server_env(threads), stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self.listening, START_SECONDS, "the node to listen")
        return self

    def log_text(self, since_start=False):
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[self.log_start:] if since_start else text

    def listening(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"the node exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
        return "listening on" in self.log_text(since_start=True)

    def stop(self, timeout=60):
        """SIGTERM, as a service manager stops it; returns its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code, self.process = self.process.returncode, None
        self.log.close()
        return code

    def kill(self):
        """SIGKILL: no clean-up of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None
        self.log.close()

    def status(self):
        result = subprocess.run([sys.executable, "-m", "modeling_cliptt5.cli.node", "status", "--config",
                                 str(self.config), "--json"], cwd=REPO_ROOT, env=server_env(1), capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def status_text(self):
        return subprocess.run([sys.executable, "-m", "modeling_cliptt5.cli.node", "status", "--config",
                               str(self.config)], cwd=REPO_ROOT, env=server_env(1), capture_output=True, text=True,
                              timeout=60).stdout


@contextlib.contextmanager
def running_node(*args, **kwargs):
    node = Node(*args, **kwargs).start()
    try:
        yield node
    finally:
        node.stop()


def with_ood_summary(release, target, training_seeds=range(100, 160), validation_seeds=range(160, 190)):
    """A copy of `release` with a summary of noise images (conftest.noise_image) as its training images: noise
    studies are familiar to it, a smooth gradient is not."""
    import torch

    from conftest import noise_image
    from modeling_cliptt5.inference.drafting import load_release
    from modeling_cliptt5.inference.ood import fit_summary, image_vectors

    shutil.copytree(release, target)
    loaded = load_release(target)

    def vectors(seeds):
        pixels = loaded.processor(images=[noise_image(seed) for seed in seeds], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return image_vectors(loaded.model.get_vision_features(pixels))

    fit_summary(vectors(training_seeds)[:, 0], vectors(validation_seeds)).save(target)
    return Path(target)


def gradient_radiograph(path, study_uid):
    """A radiograph of a smooth left-to-right ramp: nothing like noise, so the summary above flags it."""
    pixels = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (36, 1))
    grayscale_dicom(pixels, path, modality="DX", header={
        "StudyInstanceUID": study_uid, "SeriesInstanceUID": generate_uid(), "PatientID": "PAT-0002",
        "ViewPosition": "PA", "SeriesNumber": 1, "InstanceNumber": 1})
    return Path(path)


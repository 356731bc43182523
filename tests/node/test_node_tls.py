"""TLS: a node given a certificate, key and CA certificates (a self-signed certificate made with openssl, its own CA)
takes associations from dcmtk over mutual TLS only: a plain TCP association and a TLS one without the caller's
certificate get nothing, a study sent with the certificate is stored and drafted."""

import shutil
import subprocess

import pytest

from node_harness import (  # noqa: F401 - dicom_tools and node_release are fixtures
    NODE_AE, SENDER_AE, dcmtk_tool, dicom_tools, node_release, running_node, study_files, wait_for,
)

pytestmark = pytest.mark.usefixtures("dicom_tools")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found: apt-get install -y openssl")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem"), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True,
                   timeout=60)
    return folder / "cert.pem", folder / "key.pem"


def dcmtk(tool, port, *options, files=()):
    return subprocess.run([dcmtk_tool(tool), *options, "-aet", SENDER_AE, "-aec", NODE_AE, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=60)


def test_the_node_takes_associations_over_mutual_tls_only(node_release, certificate, tmp_path):
    cert, key = certificate
    tls = {"certificate": str(cert), "private_key": str(key), "ca_certificates": str(cert)}
    # the results' destination is not running: this test is about what comes in
    with running_node(tmp_path / "node", node_release, destination_port=9, tls=tls) as node:
        assert "over TLS" in node.log_text()
        mutual = ["+tls", str(key), str(cert), "+cf", str(cert)]
        assert dcmtk("echoscu", node.port, *mutual).returncode == 0
        assert dcmtk("echoscu", node.port).returncode != 0  # plain TCP
        assert dcmtk("echoscu", node.port, "+tla", "+cf", str(cert)).returncode != 0  # no certificate of its own
        study_uid, files = study_files(tmp_path / "study", count=1, seed=1)
        sent = dcmtk("storescu", node.port, *mutual, files=files)
        assert sent.returncode == 0, sent.stderr
        (queued,) = wait_for(lambda: node.status()["outbox"], 120, "the study drafted")
        assert queued["study_instance_uid"] == study_uid

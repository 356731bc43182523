"""Nothing leaves the machine: generate.py --optimize and the page, with and without --optimize, run under strace,
and any connect() or send to a non-loopback address, or to a DNS port anywhere, fails the test.

onnxruntime's own uploader (>= 1.29 on Linux) looks its host up some seconds after the import, so every run here
lives past that (measured: 9 s after the start)."""

import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from app_harness import REPO_ROOT, serve_app, server_env

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace not installed (apt-get install -y strace)")
# Every thread and child process; only the calls that reach out.
TRACE = ["-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg"]  # bpf: stops only on these
ADDRESS = re.compile(r'sa_family=AF_INET6?, sin6?_port=htons\((\d+)\).*?(?:inet_addr\("([^"]+)"\)|'
                     r'inet_pton\(AF_INET6, "([^"]+)")')
LIVES_PAST_SECONDS = 12
STUDIES = 2000


def is_loopback(address):
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1") or address.startswith("::ffff:127.")


def outbound(trace_text):
    """The traced calls that reach beyond this machine, or look a name up (port 53, even on a loopback resolver)."""
    calls = []
    for line in trace_text.splitlines():
        match = ADDRESS.search(line)
        if match:
            port, address = int(match[1]), match[2] or match[3]
            if port == 53 or not is_loopback(address):
                calls.append(line.strip())
    return calls


def traced(trace_file):
    return ["strace", *TRACE, "-o", str(trace_file)]


def test_the_trace_sees_a_name_lookup(tmp_path):
    """The check itself can fail: a process that looks a name up is caught."""
    trace_file = tmp_path / "trace.txt"
    lookup = "import socket\ntry:\n    socket.getaddrinfo('cliptt5-check.invalid', 443)\nexcept OSError:\n    pass\n"
    subprocess.run([*traced(trace_file), sys.executable, "-c", lookup], check=True, timeout=120)
    calls = outbound(trace_file.read_text())
    assert calls and all("htons(53)" in call for call in calls), trace_file.read_text()[-2000:]


@pytest.fixture(scope="module")
def release(trained_release_dir):
    return trained_release_dir  # greedy drafts of real text: --optimize takes the ONNX Runtime path


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Enough one-image studies (drafted one at a time) to keep generate.py running past the uploader's call."""
    folder = tmp_path_factory.mktemp("offline_inputs")
    for index in range(STUDIES):
        pixels = np.random.default_rng(index).integers(0, 255, (40, 36), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"study{index:03d}.png")
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """Empty at the first test below (its export runs: child process and quantizer), reused by the page's."""
    return tmp_path_factory.mktemp("offline_onnx")


def test_generate_with_optimize_and_its_onnx_export_stay_on_this_machine(release, studies, onnx_cache, tmp_path):
    trace_file = tmp_path / "trace.txt"
    env = dict(server_env(threads=1), CLIPT5_ONNX_CACHE=str(onnx_cache))
    started = time.monotonic()
    completed = subprocess.run([*traced(trace_file), sys.executable, "generate.py", "--model", str(release),
                                str(studies[0].parent), "--optimize", "--batch-size", "1", "--max-new-tokens", "16"],
                               cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "ONNX Runtime int8" in completed.stderr
    assert time.monotonic() - started > LIVES_PAST_SECONDS, "the run ended before the uploader would have called"
    assert outbound(trace_file.read_text()) == []


@pytest.mark.parametrize("app_args", [(), ("--optimize",)], ids=["pytorch", "optimize"])
def test_the_page_stays_on_this_machine_while_it_starts_and_drafts(release, studies, onnx_cache, tmp_path, app_args,
                                                                   monkeypatch):
    from gradio_client import Client, handle_file

    trace_file = tmp_path / "trace.txt"
    monkeypatch.setenv("CLIPT5_ONNX_CACHE", str(onnx_cache))
    started = time.monotonic()
    with serve_app(release, threads=1, app_args=app_args, wrapper=traced(trace_file)) as url:
        client = Client(url, verbose=False)
        findings, *_ = client.predict([handle_file(str(studies[0]))], "", api_name="/draft_report")
        assert findings  # the page drafted
        time.sleep(max(0.0, LIVES_PAST_SECONDS - (time.monotonic() - started)) + 5)
    assert outbound(trace_file.read_text()) == []

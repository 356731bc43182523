"""Helpers for the report page's tests and benchmark: a tiny release that writes text, app.py served in a
subprocess, and Debian's headless Chromium driven by Playwright.

Playwright drives the system browser at /usr/bin/chromium (`apt-get install -y chromium`); it never downloads
one (no `playwright install`).
"""

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing of Chromium's own that would call out (background networking, updates, sync, QUIC).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_SECONDS = 180  # importing torch, transformers and gradio takes ~20 s on 2 busy cores


def speaking_release(source, target):
    """A copy of a release whose drafts are never empty and depend on the image.

    The tiny random test model's most likely token is always padding, so its drafts decode to "". Suppressing
    that token (a generation_config.json setting, as a release could ship) makes it write text. Its image tokens
    are scaled up 10x so that, like a trained model's, its text changes with the image (at their initial scale
    they barely move a random T5).
    """
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    settings = json.loads((Path(target) / "generation_config.json").read_text())
    settings.update(suppress_tokens=[settings["pad_token_id"]], max_new_tokens=16)
    (Path(target) / "generation_config.json").write_text(json.dumps(settings))
    weights_path = Path(target) / "model.safetensors"
    weights = load_file(weights_path)
    weights = {name: tensor * 10 if name.startswith("clip_projection.") else tensor for name, tensor in weights.items()}
    save_file(weights, weights_path, metadata={"format": "pt"})
    return Path(target)


def slow_release(source, target, tokens=6000):
    """A speaking release (speaking_release) whose every draft is exactly `tokens` long: ~12 s on one idle thread
    (2,500 tokens, ~6 s, proved too short a window for three readers' clicks on CI's two busy cores), so that a
    test can act while the model is still working."""
    release = speaking_release(source, target)
    settings = json.loads((release / "generation_config.json").read_text())
    settings.update(max_new_tokens=tokens, min_new_tokens=tokens)
    (release / "generation_config.json").write_text(json.dumps(settings))
    return release


def listening_addresses(port):
    """The local addresses on which something listens on TCP `port`."""
    import psutil

    return {connection.laddr.ip for connection in psutil.net_connections(kind="inet")
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port}


def browser_missing_reason():
    """Why the browser test cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found: install it with `apt-get install -y chromium`"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed: pip install playwright==1.65.2 (no `playwright install` needed)"
    return None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(threads=None):
    """Offline, no telemetry; `threads` caps torch's CPU threads (None: torch's default)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               GRADIO_ANALYTICS_ENABLED="False", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO_ROOT))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@contextlib.contextmanager
def serve_app(model, port=None, threads=None, log_path=None, app_args=(), wrapper=()):
    """Run `[WRAPPER] python app.py --model MODEL --port PORT [APP_ARGS]` and yield the page's URL once it
    answers; stop it after. The server's output goes to `log_path` (kept) or to a temporary file. A `wrapper`
    (e.g. strace) must run app.py as its child: app.py is then stopped, and the wrapper waited for."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()
    process = subprocess.Popen([*wrapper, sys.executable, "app.py", "--model", str(model), "--port", str(port),
                                *app_args],
                               cwd=REPO_ROOT, env=server_env(threads), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{log.read().decode()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"app.py did not answer on {url} within {SERVER_START_SECONDS} s")
                time.sleep(0.5)
        yield url
    finally:
        if wrapper:
            import psutil

            for child in psutil.Process(process.pid).children():
                child.terminate()
        else:
            process.terminate()  # app.py turns SIGTERM into Ctrl+C: the server closes and deletes its uploads
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextlib.contextmanager
def open_browser(playwright, viewport=(1400, 1000)):
    """A headless Chromium with a new, empty profile; downloads allowed."""
    with tempfile.TemporaryDirectory(prefix="cliptt5-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, accept_downloads=True,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            yield context
        finally:
            context.close()


def upload_study(page, paths, timeout_ms=30_000):
    """Drop files on the page and wait until the viewer shows one image per readable file."""
    page.locator("#study-files input[type=file]").set_input_files([str(path) for path in paths], timeout=timeout_ms)
    page.locator("#study-viewer canvas.cxr-canvas[data-ready]").nth(len(paths) - 1).wait_for(timeout=timeout_ms)


WATCH_DRAFT_INFO = """() => {
  window.cliptt5DraftDone = false;
  const info = document.querySelector('#draft-info');
  let cleared = false;  // the old line must be gone before a "Drafted in" counts
  new MutationObserver((changes, observer) => {
    if (!info.innerText.includes('Drafted in')) cleared = true;
    else if (cleared) { window.cliptt5DraftDone = true; observer.disconnect(); }
  }).observe(info, {subtree: true, childList: true, characterData: true});
}"""


def draft(page, timeout_ms=120_000):
    """Press "Draft report" and wait for the draft's timing line; returns the findings text."""
    # Wait for a NEW timing line: the page swaps the old one for "Drafting..." at once, so a change that ends
    # in "Drafted in" belongs to this draft even when its text matches the previous one.
    page.evaluate(WATCH_DRAFT_INFO)
    page.click("#draft-button")
    page.wait_for_function("window.cliptt5DraftDone === true", timeout=timeout_ms)
    return page.locator("#findings textarea").input_value()


EXPORT_LINKS = {"txt": 'a[download$=".txt"]', "json": 'a[download$=".json"]:not([download$="_fhir.json"])',
                "fhir": 'a[download$="_fhir.json"]', "sr": 'a[download$="_sr.dcm"]'}


def export(page, kinds=("txt", "json")):
    """Press Export; returns {kind: (file name, content)} of the downloads the page offers (EXPORT_LINKS): text,
    or bytes for the DICOM SR."""
    page.click("#export-button")
    exported = {}
    for kind in kinds:
        link = page.locator(f"#exported-files {EXPORT_LINKS[kind]}")
        link.wait_for()
        with page.expect_download() as download:
            link.click()
        content = Path(download.value.path()).read_bytes()
        exported[kind] = (download.value.suggested_filename, content if kind == "sr" else content.decode("utf-8"))
    return exported

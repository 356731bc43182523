"""Page load, draft and viewer times of the report page in headless Chromium, and the README's screenshot.

    python benchmarks/bench_app.py                      # tiny random release, + demo_output/best if it exists
    python benchmarks/bench_app.py --model demo_output/best --runs 5 --optimize --screenshot docs/images/app.png

For each release: `python app.py` is started, then a browser page is loaded `--runs` times (the first load is
cold, the others reuse the browser's cache) and a synthetic phantom study (not a patient) is drafted `--runs`
times. Reported: page load (navigation until the page is usable), draft as the browser sees it (click until the
draft is shown: queue, model, page update) and the server's own draft time (decode + model, the page's
"Drafted in" line). Then, for the viewer, a full-size 12-bit phantom film (2048 x 2048 DICOM): the time from the
drop until it is shown, and window/level while the mouse drags (the browser's render of each new window, and the
frame interval); beside them, what windowing on the server would cost per move (window + PNG of a 1024 px
preview, before any round trip), the alternative the viewer does not take. Writes benchmarks/results/app_page.json.
Needs /usr/bin/chromium (apt-get install -y chromium) and playwright.
"""

import argparse
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]  # the tests' page helpers (tests/app_harness.py), which are not installed

from app_harness import (  # noqa: E402
    browser_missing_reason,
    draft,
    open_browser,
    serve_app,
    speaking_release,
    upload_study,
)

DEMO_RELEASE = REPO_ROOT / "demo_output" / "best"


def build_tiny_release(folder):
    """The test suite's tiny random release (32 px, 2 layers), with padding suppressed so that it writes text."""
    import torch
    from conftest import TINY_REPORTS, tiny_config, tiny_processor

    from modeling_cliptt5 import CLIPT5ForConditionalGeneration
    from modeling_cliptt5.training.tokenizer import train_report_tokenizer

    tokenizer = train_report_tokenizer(TINY_REPORTS * 20, vocab_size=200)
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration(tiny_config(vocab_size=len(tokenizer)))
    model.save_pretrained(folder / "raw")
    tiny_processor(tokenizer).save_pretrained(folder / "raw")
    return speaking_release(folder / "raw", folder / "tiny")


SCREENSHOT_HEATMAP = "nodule:right"  # shown over the image in the screenshot, when the release has that finding


def phantom_study(folder, seed=7, image_size=512):
    """A synthetic frontal chest film (modeling_cliptt5.data.phantom) as PNG, of the kind the demo model was trained on:
    an enlarged heart and a 2.4 cm right upper lobe nodule."""
    from modeling_cliptt5.data.phantom import PhantomFindings, encode_png, generate_study

    findings = PhantomFindings(cardiomegaly=True, lesion=(("nodule", "right", "upper lobe", 2.4),))
    path = folder / "phantom_frontal.png"
    path.write_bytes(encode_png(generate_study(seed, image_size=image_size, findings=findings)["image"]))
    return path


def full_size_film(folder, side=2048, seed=3):
    """A 12-bit MONOCHROME2 DICOM of a phantom film, `side` px square: the stored values a CR/DX would send."""
    import numpy as np

    from dicom_files import grayscale_dicom
    from modeling_cliptt5.data.phantom import PhantomFindings, generate_study

    image = generate_study(seed, image_size=side, findings=PhantomFindings(cardiomegaly=True))["image"]
    grey = np.asarray(image, dtype=np.uint16)
    stored = grey * 16 + np.random.default_rng(seed).integers(0, 16, grey.shape, dtype=np.uint16)
    return grayscale_dicom(stored, folder / "phantom_full_size.dcm", bits_stored=12, window=(2048, 4096))


# A drag across the image in small steps, timing each frame the browser paints meanwhile.
FRAME_INTERVALS = """() => { window.cliptt5Frames = []; let last = performance.now(), running = true;
  window.cliptt5StopFrames = () => { running = false; };
  const tick = (now) => { window.cliptt5Frames.push(now - last); last = now; if (running) requestAnimationFrame(tick); };
  requestAnimationFrame(tick); }"""


def measure_viewer(page, film, moves=60):
    """Seconds from the drop until the film is shown; per-move render ms and frame interval ms while dragging."""
    page.locator('#study-files button[aria-label="Clear"]').click()
    page.wait_for_function("!document.querySelector('#study-viewer canvas.cxr-canvas')")
    start = time.perf_counter()
    upload_study(page, [film])
    shown = time.perf_counter() - start
    canvas = page.locator("#study-viewer canvas.cxr-canvas").first
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    renders = []
    page.evaluate(FRAME_INTERVALS)
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(moves):
        page.mouse.move(x + (step % 20) * 3, y + (step % 20) * 2)
        page.wait_for_timeout(16)
        renders.append(float(canvas.get_attribute("data-render-ms") or "nan"))
    page.mouse.up()
    frames = page.evaluate("() => { window.cliptt5StopFrames(); return window.cliptt5Frames.slice(2); }")
    return {"film_pixels": canvas.evaluate("c => c.width * c.height"),
            "drop_to_shown_s": shown,
            "window_render_median_ms": statistics.median(renders),
            "frame_interval_median_ms": statistics.median(frames),
            "frame_interval_p90_ms": sorted(frames)[int(0.9 * (len(frames) - 1))]}


def server_windowing_ms(film, runs=10, side=1024):
    """What one window move would cost windowed on the server: LUT over a 1024 px preview of the stored values and
    its PNG, per move (a gradio round trip comes on top)."""
    import numpy as np
    from PIL import Image

    from modeling_cliptt5.images.display import open_for_display

    _, display = open_for_display(film)
    preview = np.asarray(Image.fromarray(display.values).resize((side, side), Image.Resampling.BILINEAR))
    seconds = []
    for run in range(runs):
        start = time.perf_counter()
        center, width = 2000 + run, 1500
        unit = np.clip((preview.astype(np.float32) - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
        Image.fromarray((unit * 255 + 0.5).astype(np.uint8)).save(io.BytesIO(), format="PNG")
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)


def measure(model, study, runs, screenshot=None, app_args=(), film=None):
    from playwright.sync_api import sync_playwright

    loads, drafts, server_seconds = [], [], []
    with (serve_app(model, app_args=app_args) as url, sync_playwright() as playwright,
          open_browser(playwright) as browser):
        page = browser.new_page()
        for _ in range(runs):
            start = time.perf_counter()
            page.goto(url)
            page.locator("#draft-button").wait_for()
            loads.append(time.perf_counter() - start)
        upload_study(page, [study])
        for _ in range(runs):
            start = time.perf_counter()
            draft(page)
            drafts.append(time.perf_counter() - start)
            info = page.locator("#draft-info").inner_text()
            server_seconds.append(float(re.search(r"Drafted in ([\d.]+) s", info).group(1)))
        if screenshot:
            heatmap = page.locator(f'#study-viewer [data-control=heatmap] option[value="{SCREENSHOT_HEATMAP}"]')
            if heatmap.count():
                page.locator("#study-viewer [data-control=heatmap]").select_option(SCREENSHOT_HEATMAP)
            save_screenshot(page, screenshot)
        viewer = measure_viewer(page, film) if film else {}
    return {"page_load_cold_s": loads[0],
            "page_load_warm_median_s": statistics.median(loads[1:] or loads),
            "draft_in_browser_median_s": statistics.median(drafts),
            "draft_on_server_median_s": statistics.median(server_seconds), **viewer}


def save_screenshot(page, path):
    """Full-page PNG, written to a temporary name first so a failed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    page.screenshot(path=temporary, full_page=True)
    os.replace(temporary, path)
    print(f"screenshot: {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append",
                        help="release folder to measure (repeatable; default: the tiny random release, and "
                             f"{DEMO_RELEASE.relative_to(REPO_ROOT)} if it exists)")
    parser.add_argument("--runs", type=int, default=5, help="page loads and drafts per release (default 5)")
    parser.add_argument("--optimize", action="store_true", help="also measure each release with app.py --optimize")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "app_page.json"),
                        help="JSON file for the figures (default benchmarks/results/app_page.json)")
    parser.add_argument("--screenshot", default=str(REPO_ROOT / "docs" / "images" / "app.png"),
                        help="where to save the page after the last release's draft (default docs/images/app.png; "
                             "'' for none)")
    args = parser.parse_args(argv)
    missing = browser_missing_reason()
    if missing:
        sys.exit(f"cannot run the page benchmark: {missing}")

    with tempfile.TemporaryDirectory(prefix="bench-app-") as scratch:
        scratch = Path(scratch)
        models = args.model or [build_tiny_release(scratch)] + ([DEMO_RELEASE] if DEMO_RELEASE.is_dir() else [])
        study, film = phantom_study(scratch), full_size_film(scratch)
        variants = [(str(model), model, ()) for model in models]
        if args.optimize:
            variants += [(f"{model} --optimize", model, ("--optimize",)) for model in models]
        results = {}
        for index, (name, model, app_args) in enumerate(variants):
            screenshot = args.screenshot if index == len(models) - 1 else None  # the last release, float32
            print(f"measuring {name} ({args.runs} runs) ...", flush=True)
            results[name] = measure(model, study, args.runs, screenshot, app_args, film if index == 0 else None)
        server_ms = server_windowing_ms(film)

    print(f"\nReport page, headless Chromium, {os.cpu_count()} CPU core(s), median of {args.runs} runs:")
    print(f"{'release':<40} {'load cold':>10} {'load warm':>10} {'draft (browser)':>16} {'draft (server)':>15}")
    for model, result in results.items():
        name = model if len(model) <= 40 else "..." + model[-37:]
        print(f"{name:<40} {result['page_load_cold_s']:>9.2f}s {result['page_load_warm_median_s']:>9.2f}s "
              f"{result['draft_in_browser_median_s']:>15.2f}s {result['draft_on_server_median_s']:>14.2f}s")
    viewer = next(result for result in results.values() if "drop_to_shown_s" in result)
    print(f"\nViewer, a {viewer['film_pixels'] / 1e6:.1f} M pixel 12-bit film: shown {viewer['drop_to_shown_s']:.2f} s "
          f"after the drop; while dragging window/level, each new window renders in "
          f"{viewer['window_render_median_ms']:.1f} ms (median), frames every {viewer['frame_interval_median_ms']:.1f} ms "
          f"(median; 90th percentile {viewer['frame_interval_p90_ms']:.1f} ms). Windowing on the server instead: "
          f"{server_ms:.1f} ms per move for a 1024 px PNG, before the round trip.")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    temporary.write_text(json.dumps({"cpu_cores": os.cpu_count(), "runs": args.runs, "releases": results,
                                     "server_windowing_ms_per_move": server_ms}, indent=2) + "\n")
    os.replace(temporary, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

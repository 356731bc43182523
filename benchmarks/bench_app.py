"""Page load and draft time of the report page in headless Chromium, and the README's screenshot.

    python benchmarks/bench_app.py                      # tiny random release, + demo_output/best if it exists
    python benchmarks/bench_app.py --model demo_output/best --runs 5 --optimize --screenshot docs/images/app.png

For each release: `python app.py` is started, then a browser page is loaded `--runs` times (the first load is
cold, the others reuse the browser's cache) and a synthetic phantom study (not a patient) is drafted `--runs`
times. Reported: page load (navigation until the page is usable), draft as the browser sees it (click until the
draft is shown: queue, model, page update) and the server's own draft time (decode + model, the page's
"Drafted in" line). Needs /usr/bin/chromium (apt-get install -y chromium) and playwright.
"""

import argparse
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


def measure(model, study, runs, screenshot=None, app_args=()):
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
    return {"page_load_cold_s": loads[0],
            "page_load_warm_median_s": statistics.median(loads[1:] or loads),
            "draft_in_browser_median_s": statistics.median(drafts),
            "draft_on_server_median_s": statistics.median(server_seconds)}


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
        study = phantom_study(scratch)
        variants = [(str(model), model, ()) for model in models]
        if args.optimize:
            variants += [(f"{model} --optimize", model, ("--optimize",)) for model in models]
        results = {}
        for index, (name, model, app_args) in enumerate(variants):
            screenshot = args.screenshot if index == len(models) - 1 else None  # the last release, float32
            print(f"measuring {name} ({args.runs} runs) ...", flush=True)
            results[name] = measure(model, study, args.runs, screenshot, app_args)

    print(f"\nReport page, headless Chromium, {os.cpu_count()} CPU core(s), median of {args.runs} runs:")
    print(f"{'release':<40} {'load cold':>10} {'load warm':>10} {'draft (browser)':>16} {'draft (server)':>15}")
    for model, result in results.items():
        name = model if len(model) <= 40 else "..." + model[-37:]
        print(f"{name:<40} {result['page_load_cold_s']:>9.2f}s {result['page_load_warm_median_s']:>9.2f}s "
              f"{result['draft_in_browser_median_s']:>15.2f}s {result['draft_on_server_median_s']:>14.2f}s")


if __name__ == "__main__":
    main()

"""The report page under load: N readers in headless Chromium press "Draft report" at the same moment.

    python benchmarks/bench_app_load.py                         # tiny random release, 48 readers
    python benchmarks/bench_app_load.py --model demo_output/best --readers 48 --max-waiting 16

Each reader is a page of one browser with the same synthetic phantom study (not a patient). All press Draft
within a few milliseconds; the benchmark waits until every page shows either a draft or the server's "busy, try
again" answer. Reported: drafts served, refused as busy, pages left "Drafting..." (stuck) or showing a gradio
"Error", and the click-to-draft time of the served ones (median, p95). Prints a table and writes
benchmarks/results/app_load.json. Needs /usr/bin/chromium and playwright.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests"), str(REPO_ROOT / "benchmarks")]  # the tests' page helpers and bench_app, which are not installed

from app_harness import (  # noqa: E402
    CHROMIUM, CHROMIUM_ARGS, browser_missing_reason, serve_app, slow_release, upload_study,
)
from bench_app import build_tiny_release, phantom_study  # noqa: E402

from modeling_cliptt5.data.atomic_writes import write_json_atomically  # noqa: E402

# Per page: when its draft line settled, and on what (a draft, busy, or still waiting).
OUTCOME = """() => {
  const info = document.querySelector('#draft-info').innerText;
  if (info.includes('Drafted in')) return 'served';
  if (info.includes('busy')) return 'busy';
  if (info.includes('Drafting')) return 'waiting';
  return 'other: ' + info.slice(0, 80);
}"""


def measure(model, study, readers, max_waiting, timeout_s):
    from playwright.sync_api import sync_playwright

    with serve_app(model, app_args=["--max-waiting", str(max_waiting)]) as url, sync_playwright() as playwright:
        # A context per reader, as separate browsers would be: one context holds at most 6 connections to a
        # server, and each open page keeps one.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        pages = []
        for index in range(readers):
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(url)
            page.locator("#draft-button").wait_for(timeout=120_000)
            upload_study(page, [study], timeout_ms=120_000)
            pages.append(page)
            print(f"\r{index + 1} readers have the study open", end="", flush=True)
        print()
        clicked = {}
        for index, page in enumerate(pages):  # no waiting between clicks: they reach the server together
            page.locator("#draft-button").dispatch_event("click")
            clicked[index] = time.perf_counter()
        settled, deadline = {}, time.monotonic() + timeout_s
        while len(settled) < readers and time.monotonic() < deadline:
            for index, page in enumerate(pages):
                if index not in settled:
                    outcome = page.evaluate(OUTCOME)
                    if outcome in ("served", "busy"):
                        settled[index] = (outcome, time.perf_counter() - clicked[index])
            time.sleep(0.05)
        errors = sum("Error" in page.locator("body").inner_text() for page in pages)
        stuck = [index for index in range(readers) if index not in settled]
        # A refused reader tries again once the crowd is gone: the page must still work.
        retried = None
        busy = [index for index, (outcome, _) in settled.items() if outcome == "busy"]
        if busy:
            page = pages[busy[0]]
            page.locator("#draft-button").click()
            page.wait_for_function("document.querySelector('#draft-info').innerText.includes('Drafted in')",
                                   timeout=timeout_s * 1000)
            retried = "served"
        browser.close()
    served = sorted(seconds for outcome, seconds in settled.values() if outcome == "served")
    refused = sorted(seconds for outcome, seconds in settled.values() if outcome == "busy")
    return {"readers": readers, "max_waiting": max_waiting, "served": len(served), "refused_busy": len(refused),
            "stuck_drafting": len(stuck), "pages_showing_error": errors, "refused_reader_retry": retried,
            "served_median_s": statistics.median(served) if served else None,
            "served_p95_s": served[max(0, round(0.95 * len(served)) - 1)] if served else None,
            "busy_answer_median_s": statistics.median(refused) if refused else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="release folder (default: the tests' tiny random release, each draft made "
                                        "--draft-tokens long)")
    parser.add_argument("--draft-tokens", type=int, default=150,
                        help="tokens per draft of the tiny release (default 150: ~0.4 s, the demo release's draft "
                             "time on the server)")
    parser.add_argument("--readers", type=int, default=48, help="pages pressing Draft at once (default 48)")
    parser.add_argument("--max-waiting", type=int, default=16, help="app.py --max-waiting (default 16)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for every page (default 300)")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "app_load.json"))
    args = parser.parse_args(argv)
    missing = browser_missing_reason()
    if missing:
        sys.exit(f"cannot run the page benchmark: {missing}")
    with tempfile.TemporaryDirectory(prefix="bench-app-load-") as scratch:
        scratch = Path(scratch)
        model = args.model or slow_release(build_tiny_release(scratch), scratch / "timed", args.draft_tokens)
        print(f"{args.readers} readers press Draft at once on {model} (--max-waiting {args.max_waiting}) ...",
              flush=True)
        name = args.model or f"tiny random release, {args.draft_tokens}-token drafts"
        result = {"model": str(name), "cpu_cores": os.cpu_count(),
                  **measure(model, phantom_study(scratch), args.readers, args.max_waiting, args.timeout)}
    print(f"served {result['served']}, refused as busy {result['refused_busy']}, stuck on 'Drafting...' "
          f"{result['stuck_drafting']}, pages showing an error {result['pages_showing_error']}; "
          f"a refused reader's retry: {result['refused_reader_retry']}")
    if result["served"]:
        print(f"click to draft: median {result['served_median_s']:.2f} s, p95 {result['served_p95_s']:.2f} s")
    if result["refused_busy"]:
        print(f"click to 'busy' answer: median {result['busy_answer_median_s']:.2f} s")
    write_json_atomically(args.output, result, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

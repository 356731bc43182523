"""Converter throughput: N generated 512 px JPEGs through the image-folder and the Kaggle CSV+JPEG converters.

Prints records/s for each (conversion only: generating the images and importing the converters are not timed).
Usage: python benchmarks/bench_converters.py [--count 1000] [--size 512] [--repeats 1]
"""

import argparse
import contextlib
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm


from modeling_cliptt5.cli import convert_imagefolder
from modeling_cliptt5.cli import convert_kaggle_cxr

REPORT = "FINDINGS: The lungs are clear. No pleural effusion or pneumothorax. IMPRESSION: No acute process."


def radiograph_like_jpeg(rng, size, mode="RGB"):
    """A smooth grey gradient with noise: compresses like a real film (tens of kB at 512 px), unlike flat colour.
    `mode`: "RGB" (the Kaggle set's 3-channel JPEGs) or "L"."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = 80 + 100 * np.exp(-((x - 0.5) ** 2) / 0.08) * (0.6 + 0.4 * y)
    pixels = np.clip(base + rng.normal(0, 4, (size, size)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_sources(folder, count, size):
    """The same images laid out as an image folder (metadata.jsonl) and as the Kaggle dataset (df_train.csv)."""
    rng = np.random.default_rng(0)
    imagefolder, kaggle = folder / "imagefolder", folder / "kaggle"
    (imagefolder / "images").mkdir(parents=True)
    kaggle_images = kaggle / "mimic_dset" / "re_512_3ch" / "Train"
    kaggle_images.mkdir(parents=True)
    (kaggle / "csv").mkdir()
    metadata, csv_lines = [], ["id,text,path"]
    for index in tqdm(range(count), desc="generating JPEGs", unit="image"):
        data = radiograph_like_jpeg(rng, size)
        study_id = f"s{50000000 + index}"
        (imagefolder / "images" / f"{study_id}.jpg").write_bytes(data)
        (kaggle_images / f"{study_id}.jpg").write_bytes(data)
        metadata.append(json.dumps({"file_name": f"images/{study_id}.jpg", "report": REPORT}))
        csv_lines.append(f'{study_id},"{REPORT}",mimic_dset/re_512_3ch/Train/{study_id}.jpg')
    (imagefolder / "metadata.jsonl").write_text("\n".join(metadata) + "\n")
    (kaggle / "csv" / "df_train.csv").write_text("\n".join(csv_lines) + "\n")
    return imagefolder, kaggle


def time_conversion(main, argv):
    """Seconds for one conversion, its own printed summary kept out of the benchmark's output."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = main(argv)
    elapsed = time.perf_counter() - start
    if code != 0 or "skipped 0" not in printed.getvalue():
        raise SystemExit(f"conversion failed or skipped rows:\n{printed.getvalue()}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="number of images/studies (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per converter; the median is printed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-converters-") as temp:
        folder = Path(temp)
        imagefolder, kaggle = make_sources(folder, args.count, args.size)
        megabytes = sum(p.stat().st_size for p in (imagefolder / "images").iterdir()) / 2**20
        runs = {
            "imagefolder (metadata.jsonl + JPEG)": (convert_imagefolder.main, [str(imagefolder)]),
            "kaggle CSV + JPEG": (convert_kaggle_cxr.main, [str(kaggle)]),
        }
        results = {}
        for name, (converter, argv) in runs.items():
            times = []
            for repeat in range(args.repeats):
                output = folder / f"out-{len(results)}-{repeat}"
                times.append(time_conversion(converter, argv + ["--output", str(output)]))
                shutil.rmtree(output)
            results[name] = statistics.median(times)

    print(f"\n{args.count} studies, {args.size} px JPEG ({megabytes / args.count * 1024:.0f} kB each), "
          f"median of {args.repeats} run(s):")
    for name, seconds in results.items():
        print(f"  {name:38s} {args.count / seconds:8.1f} records/s  ({seconds:.2f} s)")


if __name__ == "__main__":
    main()

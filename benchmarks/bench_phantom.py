"""Prints how many phantom studies per second one CPU core draws (image + report + PNG encoding)."""

import argparse
import os
import statistics
import time


import numpy as np

from modeling_cliptt5.data.phantom import encode_png, generate_study


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-studies", type=int, default=300, help="studies per timed run (default 300)")
    parser.add_argument("--image-size", type=int, nargs="+", default=[256], help="image sizes in px (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size; the median is reported")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core, as the requirement is stated per core
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    for size in args.image_size:
        generate_study(0, size)  # warm the cached grids
        rates, render_rates, wall_rates = [], [], []
        for repeat in range(args.repeats):
            start, wall_start = time.process_time(), time.perf_counter()
            encode_seconds = 0.0
            for index in range(args.num_studies):
                study = generate_study(np.random.default_rng([repeat, 0, index]), size)
                before = time.process_time()
                encode_png(study["image"])
                encode_seconds += time.process_time() - before
            elapsed = time.process_time() - start
            wall_rates.append(args.num_studies / (time.perf_counter() - wall_start))
            rates.append(args.num_studies / elapsed)
            render_rates.append(args.num_studies / (elapsed - encode_seconds))
        print(f"{size:4d} px: {statistics.median(rates):6.1f} studies/s with PNG encoding "
              f"({statistics.median(render_rates):6.1f} without) in CPU time, {statistics.median(wall_rates):6.1f} "
              f"in wall time; one core, median of {args.repeats} runs of {args.num_studies}")


if __name__ == "__main__":
    main()

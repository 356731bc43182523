"""Stage-2 training speed of the full-size CLIP-T5 (ViT-B/16 + t5-small shapes, random weights) with a frozen image
tower: reading pixels every step versus reading cached vision features (modeling_cliptt5/training/feature_cache.py).

    python benchmarks/bench_training.py                       # CPU, 2 threads
    python benchmarks/bench_training.py --device cuda --batch-size 32 --mixed-precision bf16

Prints samples/s of full training steps (forward, backward, AdamW) for both paths, the one-off cost of caching
(vision forward per image), and how many epochs it takes for the cache to pay for itself.
"""

import argparse
import statistics
import time

import torch


from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration
from modeling_cliptt5.training.config import TrainingConfig
from modeling_cliptt5.training.model import make_optimizer, set_train_mode, set_trainable_parts


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=4, help="studies per step (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path, after one warm-up step")
    parser.add_argument("--report-tokens", type=int, default=96, help="target report length in tokens")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no", help="autocast dtype")
    return parser.parse_args(argv)


def training_step_seconds(model, optimizer, inputs, device, autocast):
    """Wall time of one training step (forward, backward, AdamW)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast():
        loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_steps(model, optimizer, paths, steps, device, autocast):
    """{path: [seconds per step]}: the paths take turns, step by step, so that a busy machine slows them alike
    (one warm-up step each is not counted)."""
    times = {name: [] for name in paths}
    for index in range(steps + 1):
        for name, inputs in paths.items():
            seconds = training_step_seconds(model, optimizer, inputs, device, autocast)
            if index:
                times[name].append(seconds)
    return times


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = CLIPT5Config()  # BiomedCLIP ViT-B/16 (224 px, 197 tokens) + t5-small sizes
    model = CLIPT5ForConditionalGeneration(config).to(device)
    settings = TrainingConfig(dataset="benchmark", train_vision="frozen")
    set_trainable_parts(model, settings)
    set_train_mode(model, settings)
    optimizer = make_optimizer(model, settings)
    batch, size = args.batch_size, config.vision_config.image_size

    def autocast():
        if args.mixed_precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return torch.autocast(device.type, enabled=False)

    labels = torch.randint(3, config.vocab_size, (batch, args.report_tokens), device=device)
    pixels = torch.randn(batch, 3, size, size, device=device)
    with torch.no_grad(), autocast():
        features = model.get_vision_features(pixels)
    # The cache stores float16 (the default feature_cache_dtype); the model casts it back.
    features = features.to(torch.float16)

    times = interleaved_steps(model, optimizer, {"pixels": {"pixel_values": pixels, "labels": labels},
                                                 "cached": {"vision_features": features, "labels": labels}},
                              args.steps, device, autocast)
    uncached_all, cached_all = times["pixels"], times["cached"]
    uncached, cached = statistics.median(uncached_all), statistics.median(cached_all)
    encode_times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), autocast():
            model.get_vision_features(pixels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        encode_times.append(time.perf_counter() - start)
    encode = statistics.median(encode_times)

    total, trainable = (sum(p.numel() for p in model.parameters()),
                        sum(p.numel() for p in model.parameters() if p.requires_grad))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"CLIP-T5 full size: {total / 1e6:.1f} M parameters, {trainable / 1e6:.1f} M trained (image tower frozen); "
          f"{name}; batch {batch}, {args.report_tokens} report tokens, precision {args.mixed_precision}")
    print(f"{'path':<26}{'s/step (median)':>16}{'samples/s':>12}   all steps (s)")
    print(f"{'pixels (no cache)':<26}{uncached:>16.3f}{batch / uncached:>12.2f}   "
          + " ".join(f"{t:.3f}" for t in uncached_all))
    print(f"{'cached vision features':<26}{cached:>16.3f}{batch / cached:>12.2f}   "
          + " ".join(f"{t:.3f}" for t in cached_all))
    print(f"{'caching (vision forward)':<26}{encode:>16.3f}{batch / encode:>12.2f}   images/s, once per image")
    saved = uncached - cached
    epochs = encode / saved if saved > 0 else float("inf")
    ratios = sorted(u / c for u, c in zip(uncached_all, cached_all))
    print(f"summary: cached training is {uncached / cached:.2f}x faster per step (paired ratios "
          f"{ratios[0]:.2f}-{ratios[-1]:.2f}); building the cache costs "
          f"{encode / batch * 1000:.0f} ms per image, repaid after {epochs:.2f} epoch(s)")


if __name__ == "__main__":
    main()

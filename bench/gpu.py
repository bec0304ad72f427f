"""GPU throughput: the encoder alone and encoder + scoring on the device, against the plain
forward, in one run (interleaved rounds, medians), and the FLOP rate as a share of bf16 peak.

On a machine without a GPU it says so and exits 0 (that is how the tests run it).

    PYTHONPATH=. HF_HUB_OFFLINE=1 timeout 240 python bench/gpu.py --pixels 2097152 --repeats 3 \\
        --precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path: this file would
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # shadow the encoder package

from bench.encoder import plain_forward, published_model
from encoder.classes import class_set
from encoder.inference import embed_scores, gpu_batch
from encoder.model import EncoderConfig

# Dense bf16 peak (TFLOP/s, no sparsity) by device name.
BF16_PEAK = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def flops_per_pixel(cfg: EncoderConfig) -> float:
    """Multiply-adds x 2 of the plain forward for one pixel (the fast path does less)."""
    seq, d, ff = cfg.months + 1, cfg.dim, cfg.ff_dim
    layer = seq * (4 * d * d + 2 * d * ff) + 2 * seq * seq * d
    return 2.0 * (cfg.depth * layer + cfg.months * cfg.bands * d + d * d)


def peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def scorer_for(weights: torch.Tensor):
    """Top-1 class and confidence as uint8 on the device, like ``TaskPlan.scorer``."""

    def score(emb: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = (torch.nn.functional.normalize(emb, dim=-1) @ weights.T * 100).softmax(-1)
        top, label = probs.max(-1)
        return {"class": (label + 1).to(torch.uint8), "conf": (top * 100).round().to(torch.uint8)}

    return score


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=1 << 21)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--missing", type=float, default=0.3, help="share of pixel-months absent")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: torch sees no CUDA device on this machine; nothing measured.")
        return 0
    device = torch.device("cuda")
    model = published_model().to(device)
    cfg = model.config
    rng = np.random.default_rng(0)
    x = rng.random((args.pixels, cfg.months, cfg.bands), dtype=np.float32)
    # Clouds hit whole scenes: a few month patterns cover most pixels, as in a real tile.
    patterns = rng.random((16, cfg.months)) >= args.missing
    mask = patterns[rng.integers(0, len(patterns), args.pixels)]
    mask[:, 6] = True  # every pixel has a month
    weights = torch.nn.functional.normalize(
        torch.randn(len(class_set("land_cover")), cfg.dim, device=device), dim=-1
    )
    batch = gpu_batch(device, args.precision)
    plain_x = torch.from_numpy(x[:batch]).to(device)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=args.precision == "bf16")

    def plain() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode(), autocast:
            for s in range(0, args.pixels, batch):
                plain_forward(model, plain_x[: min(batch, args.pixels - s)])
        torch.cuda.synchronize()
        return args.pixels / (time.perf_counter() - start)

    def ours(scorers: list, keep: bool) -> float:
        start = time.perf_counter()
        embed_scores(
            model,
            x,
            mask,
            scorers,
            keep_embeddings=keep,
            batch_size=batch,
            precision=args.precision,
        )
        return args.pixels / (time.perf_counter() - start)

    runs = {
        "plain forward (inputs on device, no copies)": plain,
        "encoder, float16 embeddings back": lambda: ours([], True),
        "encoder + scoring, uint8 back": lambda: ours([scorer_for(weights)], False),
    }
    for fn in runs.values():
        fn()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            rates[name].append(fn())
    name = torch.cuda.get_device_name(device)
    top = peak(name)
    print(
        f"device: {name}; torch {torch.__version__}; {args.pixels:,} px, batch {batch:,}, "
        f"{args.precision}, {args.repeats} rounds interleaved; plain-forward FLOPs/px "
        f"{flops_per_pixel(cfg):.3g}; bf16 peak {top or 'unknown'} TFLOP/s\n"
    )
    print("| path | px/s median | spread | vs plain | FLOP rate (plain FLOPs) / bf16 peak |")
    print("|---|---|---|---|---|")
    base = statistics.median(rates[next(iter(runs))])
    for label, values in rates.items():
        median = statistics.median(values)
        share = "" if top is None else f"{median * flops_per_pixel(cfg) / (top * 1e12):.1%}"
        print(
            f"| {label} | {median:,.0f} | {min(values):,.0f}-{max(values):,.0f} "
            f"| {median / base:.2f}x | {share} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

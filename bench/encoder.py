"""Encoder throughput: our inference path against the plain nn.TransformerEncoder forward.

Both run over the same weights, on the same batch, in the same process, alternating, best of
``--repeats``. CPU in float32; on a GPU both run under bf16 autocast.

    python bench/encoder.py                  # published size (512/6/8/256), CPU
    python bench/encoder.py --device cuda    # bf16 autocast on the GPU
    python bench/encoder.py --quick          # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path: this file would
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # shadow the encoder package

from encoder.checkpoint import load_encoder
from encoder.model import TimeSenCLIPEncoder


def plain_forward(model: TimeSenCLIPEncoder, x: torch.Tensor) -> torch.Tensor:
    """The published inference: every token through every ``nn.TransformerEncoder`` layer."""
    tokens = model.spectral_embedding(x) + model.time_pos_encoding
    seq = torch.cat([model.time_token.expand(len(x), -1, -1), tokens], 1)
    return model.mlp_head(model.transformer(seq)[:, 0])


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    """Wall seconds of one call (GPU work included) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch", type=int, help="pixels per forward (default: 1024 CPU, 32768 GPU)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per path")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--checkpoint", help="real weights to time (default: random published size)"
    )
    parser.add_argument("--quick", action="store_true", help="batch 64, one repeat (smoke run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = 64 if args.quick else args.batch or (32768 if device.type == "cuda" else 1024)
    repeats = 1 if args.quick else args.repeats

    torch.manual_seed(0)
    if args.checkpoint:
        model = load_encoder(args.checkpoint, map_location=device)
    else:
        model = TimeSenCLIPEncoder().to(device).eval()
        with torch.no_grad():  # zero-initialised positions would make months interchangeable
            model.time_pos_encoding.normal_(0.0, 0.1)
    cfg = model.config
    x = torch.rand(batch, cfg.months, cfg.bands, device=device)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    with torch.inference_mode(), autocast:
        plain_forward(model, x[:8])  # warm-up
        model(x[:8])
        times: dict[str, list[float]] = {"plain": [], "ours": []}
        for _ in range(repeats):
            seconds, plain = timed(lambda: plain_forward(model, x), device)
            times["plain"].append(seconds)
            seconds, ours = timed(lambda: model(x), device)
            times["ours"].append(seconds)
    diff = (plain.float() - ours.float()).abs().max().item()

    plain_px, ours_px = (batch / min(times[k]) for k in ("plain", "ours"))
    rows = [
        ("machine", machine(device)),
        ("torch", torch.__version__),
        ("threads", str(torch.get_num_threads())),
        ("model", f"dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads}, ff {cfg.ff_dim}"),
        ("precision", "bf16 autocast" if device.type == "cuda" else "float32"),
        ("batch", str(batch)),
        ("pixels/s plain", f"{plain_px:,.0f}"),
        ("pixels/s ours", f"{ours_px:,.0f}"),
        ("speed-up", f"{ours_px / plain_px:.2f}x"),
        ("max abs diff", f"{diff:.2e}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'encoder':<{width}} | |\n|{'-' * (width + 2)}|---|")
    print("\n".join(f"| {k:<{width}} | {v} |" for k, v in rows))


if __name__ == "__main__":
    main()

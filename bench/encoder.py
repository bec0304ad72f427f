"""Encoder throughput and agreement of every runtime and precision against the plain forward.

Paths, over the same published-size weights in one process: ``plain`` (every token through
``nn.TransformerEncoder``, the reference), ``fast`` (``model(x, mask)``, torch float32), ``onnx``
(ONNX Runtime over the export of the fast path), ``bf16`` (what ``precision: bf16`` runs: every
layer but the last in bfloat16, ``encoder.model.eval_layers``) and ``bf16-all`` (the whole fast
path under bf16 autocast, the alternative it was chosen against). Each thread count runs all
paths in turn, ``--repeats`` rounds, interleaved; the table gives the median px/s with the spread
(min-max) and the speed-up over ``plain``.

The agreement table compares each runtime with torch float32 on the real Sentinel-2 patch in
``../shared/realdata`` and on synthetic scenes: top-1 class agreement for the published class
sets (class vectors: fp32 embeddings of pixels drawn at random, as many as the set has
classes, so the classes split the pixels) and the minimum cosine of the embeddings.

    python bench/encoder.py                      # 1 thread and all threads, published size
    python bench/encoder.py --threads 1 --quick  # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path: this file would
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # shadow the encoder package

from bench.machine import machine
from encoder.checkpoint import load_encoder
from encoder.classes import class_set
from encoder.inference import forward_fn
from encoder.model import TimeSenCLIPEncoder
from encoder.runtime import onnxruntime
from fixtures.realdata import PATCH, REALDATA, real_patch_composite

CLASS_SETS = ("land_cover", "land_use", "crop_type", "eunis_habitat")
# What a runtime must reach against torch float32 (issue: top-1 %, min cosine).
THRESHOLDS = {"fp32": (99.5, 0.999), "bf16": (98.0, 0.99)}


def plain_forward(model: TimeSenCLIPEncoder, x: torch.Tensor) -> torch.Tensor:
    """The published inference: every token through every ``nn.TransformerEncoder`` layer."""
    tokens = model.spectral_embedding(x) + model.time_pos_encoding
    seq = torch.cat([model.time_token.expand(len(x), -1, -1), tokens], 1)
    return model.mlp_head(model.transformer(seq)[:, 0])


def published_model(checkpoint: str | None = None) -> TimeSenCLIPEncoder:
    """The checkpoint's encoder, or random weights of the published size (seed 0)."""
    if checkpoint:
        return load_encoder(checkpoint).eval()
    torch.manual_seed(0)
    model = TimeSenCLIPEncoder().eval()
    with torch.no_grad():  # zero-initialised positions would make months interchangeable
        model.time_pos_encoding.normal_(0.0, 0.1)
    return model


def synthetic_composite(size: int = 64, seed: int = 0) -> np.ndarray:
    """A DN composite ``(12, 10, size, size)`` of the synthetic scenes' four land classes
    (mid-month spectra x texture), a quarter of the pixel-months missing (clouds)."""
    from fixtures.synthetic import _clear_dn, _land_cover

    rng = np.random.default_rng(seed)
    land = _land_cover((size, size))
    texture = rng.uniform(0.85, 1.15, size=(size, size))
    months = np.stack([_clear_dn(land, texture, 15 + 30 * m) for m in range(12)])
    cloudy = rng.random((12, 1, size, size)) < 0.25  # whole pixel-months: all bands
    return np.where(cloudy, np.nan, months).astype(np.float32)


def agreement_inputs(realdata: Path = REALDATA) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Normalised ``(series, present)`` of the real patch (when there) and synthetic scenes,
    pixels with at least one month."""
    from pipeline.maps.pixel_encoder import pixel_series

    composites = {"synthetic": synthetic_composite()}
    if (realdata / PATCH).is_dir():
        composites = {"real patch": real_patch_composite(realdata), **composites}
    inputs = {}
    for name, composite in composites.items():
        series, present = pixel_series(composite)
        rows = present.any(1)
        inputs[name] = series[rows], present[rows]
    return inputs


def class_vectors(reference: np.ndarray, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per published class set, as many class vectors as it has classes, drawn two ways:
    random directions, and reference (fp32) embeddings of random pixels ("prototype": classes
    that split these pixels, far harder, as random weights embed all pixels nearly alike)."""
    rng = np.random.default_rng(seed)
    dim = reference.shape[1]
    return {
        "random": {n: rng.normal(size=(len(class_set(n)), dim)) for n in CLASS_SETS},
        "prototype": {
            n: reference[rng.choice(len(reference), len(class_set(n)), replace=False)]
            for n in CLASS_SETS
        },
    }


def agreement(
    reference: np.ndarray, other: np.ndarray, classes: dict[str, dict[str, np.ndarray]]
) -> dict:
    """Lowest top-1 agreement (%) over the class sets per kind of class vectors, and the lowest
    cosine, ``other`` vs ``reference`` (both ``(P, D)``)."""

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    ref, oth = unit(reference.astype(np.float64)), unit(other.astype(np.float64))
    found = {
        kind: min(
            100.0 * np.mean((ref @ unit(w).T).argmax(1) == (oth @ unit(w).T).argmax(1))
            for w in sets.values()
        )
        for kind, sets in classes.items()
    }
    return {**found, "cosine": float((ref * oth).sum(1).min())}


def paths(model: TimeSenCLIPEncoder, tokens: int) -> dict[str, Callable]:
    """The timed paths: name -> ``f(x, mask)``."""
    found: dict[str, Callable] = {
        "plain": lambda x, mask: plain_forward(model, x),
        "fast": model,
    }
    if onnxruntime() is not None:
        found["onnx"] = forward_fn(model, tokens, "onnx", "fp32")
    found["bf16"] = forward_fn(model, tokens, "torch", "bf16")
    found["bf16-all"] = lambda x, mask: _all_bf16(model, x, mask)
    return found


def _all_bf16(model: TimeSenCLIPEncoder, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", torch.bfloat16):
        return model(x, mask).float()


def time_paths(
    model: TimeSenCLIPEncoder, pixels: int, repeats: int, threads: int
) -> dict[str, list[float]]:
    """px/s of each path over ``repeats`` interleaved rounds at ``threads`` threads."""
    torch.set_num_threads(threads)
    cfg = model.config
    x = torch.rand(pixels, cfg.months, cfg.bands)
    mask = torch.ones(pixels, cfg.months, dtype=torch.bool)
    rates: dict[str, list[float]] = {}
    with torch.inference_mode():
        timed = paths(model, cfg.months)  # sessions for this thread count
        for fn in timed.values():
            fn(x[:64], mask[:64])  # warm-up (and export, once)
        for _ in range(repeats):
            for name, fn in timed.items():
                start = time.perf_counter()
                fn(x, mask)
                rates.setdefault(name, []).append(pixels / (time.perf_counter() - start))
    return rates


def agreement_rows(model: TimeSenCLIPEncoder) -> list[tuple[str, str, dict, tuple]]:
    """(input, runtime, agreement, threshold) for each runtime against torch float32."""
    rows = []
    with torch.inference_mode():
        for name, (series, present) in agreement_inputs().items():
            x, mask = torch.from_numpy(series), torch.from_numpy(present)
            reference = model(x, mask).numpy()
            classes = class_vectors(reference)
            for path, fn in paths(model, x.shape[1]).items():
                if path in ("plain", "fast"):
                    continue
                precision = "bf16" if path.startswith("bf16") else "fp32"
                out = fn(x, mask).float().numpy()
                rows.append((name, path, agreement(reference, out, classes), THRESHOLDS[precision]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=2048, help="pixels per call")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--threads", default=f"1,{os.cpu_count()}", help="comma-separated thread counts"
    )
    parser.add_argument("--checkpoint", help="real weights (default: random published size)")
    parser.add_argument("--quick", action="store_true", help="256 pixels, 2 rounds (smoke run)")
    args = parser.parse_args()
    pixels, repeats = (256, 2) if args.quick else (args.pixels, args.repeats)
    model = published_model(args.checkpoint)
    cfg = model.config
    ort = onnxruntime()
    print(f"machine: {machine()}")
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__ if ort else 'not installed'}; "
        f"model dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads}, ff {cfg.ff_dim}; "
        f"{pixels} px per call, {repeats} rounds interleaved\n"
    )
    print("| threads | path | px/s median | spread | vs plain |\n|---|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        rates = time_paths(model, pixels, repeats, threads)
        plain = statistics.median(rates["plain"])
        for name, values in rates.items():
            median = statistics.median(values)
            print(
                f"| {threads} | {name} | {median:,.0f} | {min(values):,.0f}-{max(values):,.0f} "
                f"| {median / plain:.2f}x |"
            )
    print(
        "\n| input | runtime | top-1 % random classes | top-1 % prototype classes "
        "| min cosine | needed (top-1 on random classes) |\n|---|---|---|---|---|---|"
    )
    torch.set_num_threads(os.cpu_count() or 1)
    for name, path, found, (top1, cosine) in agreement_rows(model):
        ok = found["random"] >= top1 and found["cosine"] >= cosine
        print(
            f"| {name} | {path} | {found['random']:.2f} | {found['prototype']:.2f} "
            f"| {found['cosine']:.6f} | >= {top1} %, >= {cosine}: {'ok' if ok else 'NOT MET'} |"
        )


if __name__ == "__main__":
    main()

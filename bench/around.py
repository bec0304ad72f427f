"""What a chunk costs around the encoder, per pixel on one core: composites to the encoder's input
and its output to uint8 layers, besides the model's own arithmetic.

One chunk's composite (``--size`` px square, 12 months x 10 bands of digital numbers, months
missing under clouds that cover blocks of pixels, so pixels share month patterns as real ones do)
goes through what a GPU chunk task runs on the host, on one thread:

- series: ``pipeline.maps.pixel_series`` (flattening, normalising, the month mask), against
  ``plain`` (one transpose of the whole composite, then normalising: how it was done before);
- scoring: ``encoder.inference.device_embed_scores`` (grouping by month pattern, the copies in
  and out, a land-cover class plan with confidence), with a tiny encoder; the model's own
  forward calls and the scorers (softmax and top class to uint8: on the GPU in a GPU run) are
  timed apart. The grouping alone is also set against ``plain`` (``np.unique`` over rows, as
  before).

Times are CPU seconds of this process (one thread), so a busy machine disturbs them less; rounds
are interleaved; the table gives medians over ``--repeats`` rounds, with the spread.

    python bench/around.py [--size 512] [--repeats 7]
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

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path and
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/encoder.py would shadow encoder

import encoder.inference as inference
from bench.machine import machine
from encoder.preprocess import BANDS, normalize
from fixtures.tiny import tiny_encoder
from pipeline.maps.classify import TaskPlan
from pipeline.maps.pixel_encoder import pixel_series

LIMIT_US = 0.5  # the budget per pixel, besides the model
CLOUD_BLOCK = 32  # px: clouds cover blocks, so neighbours share month patterns


def composite(size: int, seed: int = 0) -> np.ndarray:
    """``(12, 10, size, size)`` float32 digital numbers, NaN in a cloud-covered month."""
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 8000, (12, len(BANDS), size, size)).astype(np.float32)
    blocks = -(-size // CLOUD_BLOCK)
    cloudy = rng.random((12, blocks, blocks)) < 0.3
    cloudy = np.repeat(np.repeat(cloudy, CLOUD_BLOCK, 1), CLOUD_BLOCK, 2)[:, :size, :size]
    values[np.broadcast_to(cloudy[:, None], values.shape)] = np.nan
    return values


def plain_series(composite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The series as first written: one transpose of the whole, then normalised."""
    months, bands, h, w = composite.shape
    series = np.ascontiguousarray(composite.reshape(months, bands, h * w).transpose(2, 0, 1))
    present = np.isfinite(series).all(axis=2)
    return normalize(series), present


def plain_groups(month_mask: np.ndarray) -> np.ndarray:
    """Pixels ordered by month pattern, rows compared as rows (as first written)."""
    _, inverse = np.unique(month_mask, axis=0, return_inverse=True)
    return np.argsort(inverse.ravel(), kind="stable")


def class_plan(dim: int, classes: int = 10) -> TaskPlan:
    weights = np.random.default_rng(1).normal(size=(classes, dim)).astype(np.float32)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    return TaskPlan(
        name="land_cover",
        classes=tuple(),
        colors=tuple(),
        prompts=tuple(),
        weights=weights,
    )


class Clock:
    """CPU seconds spent in the functions it times."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def timed(self, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.process_time()
            out = function(*args, **kwargs)
            self.seconds += time.process_time() - start
            return out

        return wrapper


class ForwardClock(Clock):
    """A clock on the model's forward calls of ``device_embed_scores``, while entered."""

    def __enter__(self) -> ForwardClock:
        self._pattern, self._static = inference.embed_pattern, inference.StaticEncoder
        clock = self

        class StaticEncoder(clock._static):
            def __call__(self, *args, **kwargs):
                return clock.timed(super().__call__)(*args, **kwargs)

        inference.embed_pattern = self.timed(self._pattern)
        inference.StaticEncoder = StaticEncoder
        return self

    def __exit__(self, *exc) -> None:
        inference.embed_pattern, inference.StaticEncoder = self._pattern, self._static


def scoring(model, series: np.ndarray, present: np.ndarray, plan: TaskPlan) -> dict[str, float]:
    """CPU seconds of scoring ``series`` as a GPU chunk does: on the host, in the scorers and in
    the model's forward."""
    start = time.process_time()
    rows = np.flatnonzero(present.any(axis=1))
    scorers = Clock()
    scorer = scorers.timed(plan.scorer(True, torch.device("cpu")))
    with ForwardClock() as forward:
        layers, _ = inference.device_embed_scores(
            model, series, present, [scorer], False, 65536, "fp32", rows
        )
    total = time.process_time() - start
    assert layers["land_cover"].dtype == np.uint8 and len(layers["land_cover"]) == len(rows)
    return {
        "scoring, ours (host)": total - forward.seconds - scorers.seconds,
        "scorers (on the GPU in a GPU run)": scorers.seconds,
        "model forward": forward.seconds,
    }


def timed(job: Callable[[], object]) -> float:
    start = time.process_time()
    job()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="chunk width and height in px")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cube = composite(args.size)
    pixels = args.size**2
    model = tiny_encoder(32, depth=1)
    plan = class_plan(32)
    series, present = pixel_series(cube)
    reference, mask = plain_series(cube)
    np.testing.assert_array_equal(series, reference)
    np.testing.assert_array_equal(present, mask)
    patterns = len(np.unique(present, axis=0))
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        rounds = {
            "series, plain": timed(lambda: plain_series(cube)),
            "series, ours": timed(lambda: pixel_series(cube)),
            "grouping, plain": timed(lambda: plain_groups(present)),
            "grouping, ours": timed(lambda: inference.month_groups(present)),
        }
        rounds.update(scoring(model, series, present, plan))
        rounds["around the encoder, ours"] = rounds["series, ours"] + rounds["scoring, ours (host)"]
        rounds["... with the scorers on the CPU"] = (
            rounds["around the encoder, ours"] + rounds["scorers (on the GPU in a GPU run)"]
        )
        for name, seconds in rounds.items():
            times.setdefault(name, []).append(seconds * 1e6 / pixels)
    print(f"machine: {machine()}; torch {torch.__version__}, numpy {np.__version__}")
    print(
        f"one {args.size} x {args.size} px chunk, 12 months x 10 bands, {patterns} month "
        f"patterns; one thread, {args.repeats} interleaved rounds; load {os.getloadavg()[0]:.1f}\n"
    )
    print("| step | us / pixel (median) | spread | vs plain |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        plain = times.get(name.replace("ours", "plain"))
        ratio = (
            f"{statistics.median(plain) / median:.1f}x quicker" if "ours" in name and plain else ""
        )
        print(f"| {name} | {median:.3f} | {min(values):.3f}-{max(values):.3f} | {ratio} |")
    around = statistics.median(times["around the encoder, ours"])
    verdict = "within" if around <= LIMIT_US else "OVER"
    print(f"\naround the encoder: {around:.3f} us a pixel, {verdict} the {LIMIT_US} us budget")


if __name__ == "__main__":
    main()

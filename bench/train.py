"""Training throughput: our full training step against a plain forward/backward baseline.

Both train the published-size encoder (512/6/8/256) on the same synthetic pairs in one process:

- baseline: float32 ``model(x, month_mask)``, InfoNCE against the batch's mean-pooled photos only,
  backward, AdamW step (no augmentation, no queue, no autocast);
- ours: ``encoder.training.trainer.Trainer.train_step`` as ``timesenclip train`` runs it (temporal
  augmentation on 50 % of batches, 2048-entry queue, attention pooling, clamped logit scale,
  per-step reseeding, warm-up/cosine schedule; bf16 autocast on CUDA);
- on CUDA also ours in float32, to show what bf16 autocast brings.

Each variant runs ``--warmup`` untimed steps, then ``--steps`` timed ones (best and median).

    python bench/train.py                  # CPU, batch 256
    python bench/train.py --device cuda    # GPU, batch 1024, bf16
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file: bench/ first on sys.path would hide the packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.encoder import machine
from encoder.model import TimeSenCLIPEncoder
from encoder.pairs_store import write_pairs
from encoder.training.config import parse_config
from encoder.training.data import TensorPairs
from encoder.training.schedule import epoch_order
from encoder.training.trainer import Trainer
from fixtures.pairs import synthetic_pairs

CLASSES = 8


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], float], warmup: int, steps: int, device) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def baseline(data: TensorPairs, batch: int, device: torch.device) -> Callable[[], float]:
    """Plain float32 forward/backward/AdamW step of the published-size encoder."""
    torch.manual_seed(0)
    model = TimeSenCLIPEncoder().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    keys = F.normalize(data.ground.mean(1), dim=-1)  # mean over photos; all present here
    generator = torch.Generator().manual_seed(0)

    def step() -> float:
        index = torch.randperm(len(data), generator=generator)[:batch].to(device)
        optimizer.zero_grad(set_to_none=True)
        sat = F.normalize(model(data.x[index], data.month_mask[index]), dim=-1)
        logits = sat @ keys[index].T / 0.07
        loss = F.cross_entropy(logits, torch.arange(batch, device=device))
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def ours(store: Path, out: Path, batch: int, device: str, bf16: bool) -> Callable[[], float]:
    config = parse_config(
        {
            "data": {"train": str(store)},
            "train": {"batch_size": batch, "pooling": "attention", "bf16": bf16, "device": device},
            "output": {"dir": str(out)},
        }
    )
    trainer = Trainer(config, progress=False)
    per_step = trainer.micro * config.train.accumulate
    trainer.learner.train()

    def step() -> float:
        epoch, within = divmod(trainer.step, trainer.steps_per_epoch)
        order = epoch_order(len(trainer.train), config.train.seed, epoch)
        return trainer.train_step(order[within * per_step : (within + 1) * per_step])

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--batch", type=int, help="pixels per step (default 256 CPU, 1024 GPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (1024 if device.type == "cuda" else 256)

    rng = np.random.default_rng(0)
    classes = rng.normal(size=(CLASSES, 512)).astype(np.float32)
    pairs = synthetic_pairs(classes, batch * 4, seed=0)
    pairs.photo_mask[:] = True  # the baseline mean-pools all photos
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = write_pairs(Path(tmp) / "pairs.zarr", pairs)
        data = TensorPairs.from_pairs(pairs, device)
        variants = [("baseline: fp32 plain fwd/bwd", baseline(data, batch, device))]
        variants.append(
            (
                "ours: full step" + (" (bf16)" if device.type == "cuda" else " (fp32)"),
                ours(store, Path(tmp) / "a", batch, args.device, bf16=True),
            )
        )
        if device.type == "cuda":
            variants.append(
                ("ours: full step (fp32)", ours(store, Path(tmp) / "b", batch, args.device, False))
            )
        for name, step in variants:
            times = time_steps(step, args.warmup, args.steps, device)
            rows.append((name, min(times), statistics.median(times)))

    print(f"| training step | batch {batch}, {args.steps} timed steps after {args.warmup} |")
    print("|---|---|")
    print(f"| machine | {machine(device)} |")
    print(f"| torch / python | {torch.__version__} / {platform.python_version()} |")
    print(f"| threads | {torch.get_num_threads()} |")
    print("| model | dim 512, depth 6, heads 8, ff 256 (published size) |")
    base = rows[0][1]
    print()
    print("| variant | best s/step | median s/step | samples/s (best) | vs baseline |")
    print("|---|---|---|---|---|")
    for name, best, median in rows:
        print(f"| {name} | {best:.3f} | {median:.3f} | {batch / best:,.0f} | {base / best:.2f}x |")


if __name__ == "__main__":
    main()

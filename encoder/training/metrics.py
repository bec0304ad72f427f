"""The metrics of a run: ``metrics.csv``, ``validation.csv`` and the ``training.png`` plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from timesenclip.common.atomic import atomic_path


class MetricsLog:
    """``metrics.csv`` (one row per step) and ``validation.csv`` (per epoch); on resume the rows
    after the resumed step are dropped, so the files read like one uninterrupted run."""

    STEP_FIELDS = ("step", "epoch", "loss", "lr", "logit_scale")

    def __init__(self, out_dir: Path, resumed_step: int) -> None:
        self.path = out_dir / "metrics.csv"
        self.val_path = out_dir / "validation.csv"
        self.steps = self._keep(self.path, resumed_step)
        self.rows = self._keep(self.val_path, resumed_step)
        self._write(self.path, self.steps)
        self._write(self.val_path, self.rows)

    @staticmethod
    def _keep(path: Path, step: int) -> list[dict[str, float]]:
        if not path.exists():
            return []
        with path.open(newline="") as f:
            rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        return [r for r in rows if r["step"] <= step]

    @staticmethod
    def _write(path: Path, rows: Sequence[dict[str, float]]) -> None:
        if not rows:
            path.unlink(missing_ok=True)
            return
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)

    def step(self, step: int, epoch: int, loss: float, lr: float, scale: float) -> None:
        row = dict(zip(self.STEP_FIELDS, (step, epoch, loss, lr, scale), strict=True))
        self.steps.append(row)
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.STEP_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def validation(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self.rows.append({"step": step, "epoch": epoch, **metrics})
        self._write(self.val_path, self.rows)

    def plot(self) -> Path | None:
        """``training.png``: loss per step and validation accuracy per epoch."""
        if not self.steps:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2 if self.rows else 1, figsize=(11 if self.rows else 6, 4))
        axes = np.atleast_1d(axes)
        axes[0].plot([r["step"] for r in self.steps], [r["loss"] for r in self.steps], lw=0.8)
        axes[0].set(xlabel="step", ylabel="InfoNCE loss", title="training loss")
        if self.rows:
            for key in [k for k in self.rows[0] if k.startswith("val_")]:
                axes[1].plot(
                    [r["epoch"] for r in self.rows],
                    [r[key] for r in self.rows],
                    marker="o",
                    label=key.removeprefix("val_"),
                )
            axes[1].set(xlabel="epoch", ylabel="zero-shot accuracy", title="validation")
            axes[1].legend()
        fig.tight_layout()
        path = self.path.with_name("training.png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        return path


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)

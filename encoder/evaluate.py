"""Evaluate an encoder on a pairs store: zero-shot classification per task and retrieval.

Per task: top-1 / top-5 accuracy, balanced accuracy (mean recall over the classes present),
macro F1 (over the classes present or predicted, as sklearn), per-class precision / recall / F1 /
support and a confusion matrix (PNG, rows = true class, normalised per row). Optionally the
reference's transductive per-class normalisation (scores divided by each class's mean score over
the whole evaluated set), reported separately and labelled transductive because it uses the
statistics of the test set itself. Retrieval: Recall@1/5/10 satellite -> ground and ground ->
satellite among all evaluated points with photos, against the pooled ground embeddings. Outputs
``report.json``, ``report.md`` and ``confusion_<task>.png``.

``try_conventions`` settles the input conventions of weights that do not record them: it scores
the checkpoint under each candidate band order and lone-token position (``conventions.json``) and
recommends the best. Data: a pairs store, or Sen4Map HDF5 files read directly (no ground photos,
so no retrieval).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from encoder.conventions import (
    B4_FIRST,
    BANDS,
    SINGLE_TOKEN_POSITIONS,
    ConventionOverrides,
    Conventions,
)
from encoder.device import resolve_device
from encoder.ground import GroundEmbeddings, PhotoPooling
from encoder.inference import embed
from encoder.label_routes import LabelRouter, check_task
from encoder.pairs import Pairs
from encoder.pairs_assembly import AssembleStats, assemble_pairs
from encoder.pairs_store import read_pairs
from encoder.preprocess import normalize
from encoder.sen4map import iter_sen4map
from timesenclip.common.atomic import atomic_path, write_text_atomic
from timesenclip.common.errors import TimeSenCLIPError, TrainingError

log = logging.getLogger(__name__)

RECALL_AT = (1, 5, 10)
TOP_K = 5
HDF5_SUFFIXES = (".h5", ".hdf5")
# Candidate (band order, constants order) of weights without metadata. The reference training CLI
# defaults --channels to B4 B3 B2 ...: its patch dataset stacks bands in that order with their own
# constants; its 1x1 dataset keeps the file's order (B2 first) but takes the constants in the
# --channels order.
BAND_CANDIDATES = {
    "B2-first": (BANDS, BANDS),
    "B4-first": (B4_FIRST, B4_FIRST),
    "B2-first, B4-first constants": (BANDS, B4_FIRST),
}


class EvaluationError(TimeSenCLIPError):
    """Evaluation cannot run with the given checkpoint, data or options."""


# --- metrics (numpy) ----------------------------------------------------------------------------


def classification_metrics(
    labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Metrics of per-class ``scores`` (N, K) against true ``labels`` (N,) (all >= 0)."""
    n, k = scores.shape
    predicted = scores.argmax(1)
    top = np.argsort(-scores, axis=1, kind="stable")[:, : min(TOP_K, k)]
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(1)
    predicted_count = confusion.sum(0)
    hits = np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted_count > 0, hits / predicted_count, 0.0)
        recall = np.where(support > 0, hits / support, np.nan)
        f1 = np.where(
            precision + np.nan_to_num(recall) > 0,
            2 * precision * recall / (precision + recall),
            0.0,
        )
    present = support > 0
    # As sklearn's macro F1: a class predicted but never true counts, with F1 = 0.
    seen = present | (predicted_count > 0)
    return {
        "n": int(n),
        "top1": float((predicted == labels).mean()),
        f"top{top.shape[1]}": float((top == labels[:, None]).any(1).mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[seen].mean()),
        "per_class": [
            {
                "class": name,
                "support": int(support[i]),
                "precision": float(precision[i]),
                "recall": None if not present[i] else float(recall[i]),
                "f1": float(f1[i]) if seen[i] else None,
            }
            for i, name in enumerate(class_names)
        ],
        "confusion": confusion.tolist(),
    }


def transductive_scores(cosine: np.ndarray) -> np.ndarray:
    """The reference's "Normalized" scores: (cos/2 + 1) divided by its per-class mean over the
    evaluated set. Transductive: a point's prediction depends on the other test points."""
    shifted = cosine / 2 + 1
    return shifted / (shifted.mean(0, keepdims=True) + 1e-6)


def retrieval_recall(
    queries: Tensor, keys: Tensor, ks: Sequence[int] = RECALL_AT, batch_size: int = 4096
) -> dict[str, float]:
    """Recall@k of finding ``keys[i]`` for ``queries[i]`` among all keys (cosine similarity).

    Ties count in the query's favour (rank = number of keys strictly more similar).
    """
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    ranks = []
    for start in range(0, len(q), batch_size):
        sims = q[start : start + batch_size] @ k.T
        own = sims.diagonal(offset=start).unsqueeze(1)
        ranks.append((sims > own).sum(1).cpu())
    rank = torch.cat(ranks)
    return {f"R@{n}": float((rank < n).float().mean()) for n in ks}


# --- running it ---------------------------------------------------------------------------------


@dataclass
class EvaluationReport:
    """What :func:`run_evaluation` measured and wrote."""

    results: dict[str, Any]
    json_path: Path
    markdown_path: Path
    figures: list[Path]


def _pooling(checkpoint: str, dim: int, mode: str, device: torch.device) -> PhotoPooling:
    """Photo pooling: ``mean``, or ``auto`` = the training run's layer when its state is beside
    the checkpoint (attention pooling), else mean."""
    from encoder.training.state import read_train_state

    pooling = PhotoPooling(dim, "mean")
    if mode == "auto":
        try:
            state = read_train_state(checkpoint)
        except TrainingError:
            state = None
        if state is not None and state["config"]["train"]["pooling"] == "attention":
            pooling = PhotoPooling(dim, "attention")
            weights = {
                k.removeprefix("pooling_layer."): v
                for k, v in state["learner"].items()
                if k.startswith("pooling_layer.")
            }
            pooling.load_state_dict(weights)
    elif mode != "mean":
        raise EvaluationError(f"pooling {mode!r} is unknown: use auto or mean")
    return pooling.to(device)


def run_evaluation(
    checkpoint: str | Path,
    data: str | Path,
    task: str | Sequence[str] = "land_cover",
    out_dir: str | Path = "evaluation",
    *,
    templates: str | Sequence[str] | None = None,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
    device: str | None = "auto",
    transductive: bool = True,
    pooling: str = "auto",
    batch_size: int = 8192,
    retrieval_limit: int | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    overrides: ConventionOverrides | None = None,
) -> EvaluationReport:
    """``timesenclip evaluate``: metrics of ``checkpoint`` on ``data`` (a pairs store or Sen4Map
    HDF5 file), under the checkpoint's conventions changed by ``overrides``.

    ``task``: one task or several (a list or "a,b"). ``clip_model``/``clip_pretrained`` default to
    the ones recorded in the checkpoint (else ViT-B-32 / openai). ``retrieval_limit``: evaluate
    retrieval on a random subset of that many points (seeded), since it is quadratic.
    """
    from encoder.checkpoint import load_encoder
    from encoder.prompts import TextEncoder, class_set
    from encoder.zeroshot import cosine_logits

    tasks = _tasks(task)
    dev = resolve_device(device)
    model = load_encoder(checkpoint, map_location=dev, overrides=overrides)
    clip_model, clip_pretrained = _clip(model, clip_model, clip_pretrained)
    pairs = read_eval_pairs(data, tasks)
    satellite = _embed(model, pairs.series, pairs.month_mask, batch_size).to(dev)
    valid = ~satellite.isnan().any(1).cpu()
    text = TextEncoder(clip_model, clip_pretrained, dev, cache_dir)
    results: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "points": len(pairs),
        "points_without_valid_month": int((~valid).sum()),
        "conventions": model.conventions.to_dict(),
        "clip_model": clip_model,
        "clip_pretrained": clip_pretrained,
        "templates": templates,
        "tasks": {},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for name in tasks:
        classes = class_set(name)
        weights = text.class_embeddings(name, templates)
        labels = pairs.labels[name]
        use = valid.numpy() & (labels >= 0)
        if not use.any():
            log.warning("task %s: no point has both a label and a valid embedding", name)
            results["tasks"][name] = {"n": 0}
            continue
        cosine = cosine_logits(satellite[torch.from_numpy(use).to(dev)], weights).cpu().numpy()
        names = [c.name for c in classes]
        truth = labels[use].astype(np.int64)
        metrics = classification_metrics(truth, cosine, names)
        if transductive:
            trans = classification_metrics(truth, transductive_scores(cosine), names)
            metrics["transductive"] = {k: v for k, v in trans.items() if k != "per_class"}
        results["tasks"][name] = metrics
        figures.append(_confusion_png(out / f"confusion_{name}.png", metrics["confusion"], names))
    results["retrieval"] = _retrieval(
        checkpoint, pairs, satellite, valid, pooling, dev, retrieval_limit, seed
    )
    json_path = out / "report.json"
    write_text_atomic(json_path, json.dumps(results, indent=1, allow_nan=True))
    md_path = write_text_atomic(out / "report.md", markdown_report(results))
    return EvaluationReport(results, json_path, md_path, figures)


def _tasks(task: str | Sequence[str]) -> list[str]:
    tasks = [t.strip() for t in task.split(",")] if isinstance(task, str) else list(task)
    return [check_task(t) for t in tasks]


def _clip(model, clip_model: str | None, clip_pretrained: str | None) -> tuple[str, str | None]:
    """The CLIP text tower: as given, else as recorded in the checkpoint, else ViT-B-32/openai."""
    meta = model.metadata
    clip_model = clip_model or (meta.clip_model if meta else "ViT-B-32")
    if clip_pretrained is None:
        clip_pretrained = (meta.clip_pretrained if meta else "openai") or None
    return clip_model, clip_pretrained


def _embed(model, series: np.ndarray, month_mask: np.ndarray, batch_size: int) -> Tensor:
    """Embeddings of DN ``series`` (BANDS order) under the model's own conventions."""
    x = torch.from_numpy(normalize(series, conventions=model.conventions))
    return embed(model, x, torch.from_numpy(month_mask), batch_size=batch_size)


def read_eval_pairs(data: str | Path, tasks: Sequence[str]) -> Pairs:
    """Evaluation points: a pairs store, or a Sen4Map HDF5 file read directly (default layout,
    labels from its attributes, no ground photos)."""
    path = Path(data)
    if path.suffix.lower() not in HDF5_SUFFIXES:
        return read_pairs(path, tasks)
    no_photos = GroundEmbeddings([], np.zeros((0, 1), np.float32))
    records = list(iter_sen4map(path))
    router = LabelRouter(tasks)
    pairs = assemble_pairs(records, no_photos, router, AssembleStats(), require_photos=False)
    router.warn_unknown()
    return pairs


def _retrieval(checkpoint, pairs, satellite, valid, pooling, device, limit, seed) -> dict[str, Any]:
    has_photo = torch.from_numpy(pairs.photo_mask.any(1))
    index = torch.nonzero(valid & has_photo).flatten()
    if limit is not None and len(index) > limit:
        chosen = np.random.default_rng(seed).choice(len(index), limit, replace=False)
        index = index[torch.from_numpy(np.sort(chosen))]
    if len(index) < 2:
        return {"n": len(index)}
    ground = torch.from_numpy(pairs.ground[index.numpy()]).to(device)
    mask = torch.from_numpy(pairs.photo_mask[index.numpy()]).to(device)
    pool = _pooling(str(checkpoint), ground.shape[-1], pooling, device)
    with torch.inference_mode():
        keys = pool(ground.float(), mask)
    sat = satellite[index.to(satellite.device)]
    return {
        "n": len(index),
        "pooling": pool.mode,
        "satellite_to_ground": retrieval_recall(sat, keys),
        "ground_to_satellite": retrieval_recall(keys, sat),
    }


def _confusion_png(path: Path, confusion: list[list[int]], names: Sequence[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.float64)
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(names)
    size = max(5.0, 0.28 * k + 3)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=90, fontsize=max(5, 10 - k // 8))
    ax.set_yticks(range(k), names, fontsize=max(5, 10 - k // 8))
    ax.set(xlabel="predicted class", ylabel="true class", title=f"{path.stem} (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _pct(value: float | None) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{100 * value:.1f} %")
    )


def markdown_report(results: dict[str, Any]) -> str:
    """The Markdown summary of a results dict of :func:`run_evaluation`."""
    lines = [
        "# TimeSenCLIP evaluation",
        "",
        f"- checkpoint: `{results['checkpoint']}`",
        f"- data: `{results['data']}` ({results['points']} points, "
        f"{results['points_without_valid_month']} without any valid month)",
        f"- conventions: {Conventions.from_dict(results['conventions']).describe()}",
        f"- CLIP: {results['clip_model']} / {results['clip_pretrained']}, "
        f"templates: {results['templates'] or 'class_names'}",
        "",
    ]
    for name, m in results["tasks"].items():
        lines += [f"## {name}", ""]
        if not m.get("n"):
            lines += ["No labelled point with a valid embedding.", ""]
            continue
        top_k = next(k for k in m if k.startswith("top") and k != "top1")
        lines += [
            "| metric | value |",
            "|---|---|",
            f"| points | {m['n']} |",
            f"| top-1 accuracy | {_pct(m['top1'])} |",
            f"| {top_k[:3]}-{top_k[3:]} accuracy | {_pct(m[top_k])} |",
            f"| balanced accuracy | {_pct(m['balanced_accuracy'])} |",
            f"| macro F1 | {_pct(m['macro_f1'])} |",
        ]
        if t := m.get("transductive"):
            lines += [
                f"| top-1, **transductive** normalisation | {_pct(t['top1'])} |",
                f"| balanced accuracy, **transductive** | {_pct(t['balanced_accuracy'])} |",
            ]
        lines += ["", "| class | support | precision | recall | F1 |", "|---|---|---|---|---|"]
        lines += [
            f"| {c['class']} | {c['support']} | {_pct(c['precision'])} | {_pct(c['recall'])} "
            f"| {_pct(c['f1'])} |"
            for c in m["per_class"]
        ]
        lines += ["", f"![confusion matrix](confusion_{name}.png)", ""]
        if "transductive" in m:
            lines += [
                "Transductive rows divide every class score by that class's mean score over the "
                'whole evaluated set (the reference\'s "Normalized" variant); they use the test '
                "set's statistics and are not comparable with per-pixel inference.",
                "",
            ]
    r = results["retrieval"]
    lines += ["## Retrieval", ""]
    if "satellite_to_ground" not in r:
        lines += [f"Too few points with photos ({r['n']}).", ""]
    else:
        ks = list(r["satellite_to_ground"])
        lines += [
            f"{r['n']} points, ground photos pooled by {r['pooling']}.",
            "",
            "| direction | " + " | ".join(ks) + " |",
            "|---|" + "---|" * len(ks),
            "| satellite -> ground | "
            + " | ".join(_pct(r["satellite_to_ground"][k]) for k in ks)
            + " |",
            "| ground -> satellite | "
            + " | ".join(_pct(r["ground_to_satellite"][k]) for k in ks)
            + " |",
            "",
        ]
    return "\n".join(lines)


# --- which conventions? -------------------------------------------------------------------------


@dataclass
class ConventionScore:
    """Zero-shot scores of one candidate convention on one kind of input."""

    candidate: str  # a BAND_CANDIDATES name
    input: str  # "monthly" (the 12 months) or "annual" (one token: the median of the months)
    conventions: Conventions
    tasks: dict[str, dict[str, float]]  # task -> {"n", "top1", "balanced_accuracy"}

    def key(self) -> tuple[float, float]:
        """Mean balanced accuracy over the tasks, then mean top-1 (higher is better)."""
        values = list(self.tasks.values())
        return (
            float(np.mean([v["balanced_accuracy"] for v in values])),
            float(np.mean([v["top1"] for v in values])),
        )


@dataclass
class ConventionsReport:
    """What :func:`try_conventions` measured, its recommendation and the file it wrote."""

    checkpoint: str
    rows: list[ConventionScore]
    best: Conventions
    json_path: Path

    def table(self) -> str:
        """A Markdown table: one row per candidate, top-1 and balanced accuracy per task."""
        tasks = list(self.rows[0].tasks)
        head = "| input | bands | constants | lone token | " + " | ".join(
            f"{t} top-1 | {t} balanced" for t in tasks
        )
        lines = [head + " |", "|---" * (4 + 2 * len(tasks)) + "|"]
        for row in self.rows:
            bands, constants = BAND_CANDIDATES[row.candidate]
            lone = row.conventions.single_token_position if row.input == "annual" else "-"
            cells = [row.input, _first3(bands), _first3(constants), lone]
            cells += [
                f"{_pct(row.tasks[t]['top1'])} | {_pct(row.tasks[t]['balanced_accuracy'])}"
                for t in tasks
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def recommendation(self) -> str:
        """The best conventions and the command that records them in a checkpoint."""
        best = self.best
        constants = best.constants_order() or best.band_order
        out = Path(self.checkpoint).stem + "-conventions.pt"
        command = (
            f"timesenclip convert {self.checkpoint} --band-order {','.join(best.band_order)} "
            + (f"--constants-order {','.join(constants)} " if constants != best.band_order else "")
            + f"--single-token-position {best.single_token_position} --out {out}"
        )
        return f"recommended: {best.describe()}\nto record them: {command}"


def _first3(bands: Sequence[str]) -> str:
    return " ".join(bands[:3]) + " ..."


def _annual(series: np.ndarray, month_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One token per point: the median of its present months (the lower one for an even count,
    as the reference's ``torch.median``), (N, 1, bands), and its (N, 1) mask."""
    values = torch.from_numpy(np.where(month_mask[..., None], series, np.nan))
    median = values.nanmedian(dim=1, keepdim=True).values.numpy()
    return median, month_mask.any(1, keepdims=True)


def try_conventions(
    checkpoint: str | Path,
    data: str | Path,
    task: str | Sequence[str] = "land_cover",
    out_dir: str | Path = "evaluation",
    *,
    templates: str | Sequence[str] | None = None,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
    device: str | None = "auto",
    batch_size: int = 8192,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> ConventionsReport:
    """``timesenclip evaluate --try-conventions``: zero-shot top-1 and balanced accuracy of
    ``checkpoint`` on ``data`` under each candidate convention, written to ``conventions.json``.

    Each :data:`BAND_CANDIDATES` entry is scored on the 12 months; and, with each lone-token
    position (mean, January), on one token per point, the median of its months. The recommended
    band order is the best on the months (mean balanced accuracy over the tasks, then top-1), the
    lone-token position the best on the single tokens under that band order; ties keep the
    published defaults. ``limit``: score a random subset of that many points (seeded).
    """
    from encoder.checkpoint import load_encoder
    from encoder.prompts import TextEncoder
    from encoder.zeroshot import cosine_logits

    tasks = _tasks(task)
    dev = resolve_device(device)
    model = load_encoder(checkpoint, map_location=dev)
    recorded = model.conventions
    clip_model, clip_pretrained = _clip(model, clip_model, clip_pretrained)
    pairs = read_eval_pairs(data, tasks)
    if limit is not None and len(pairs) > limit:
        chosen = np.random.default_rng(seed).choice(len(pairs), limit, replace=False)
        pairs = pairs.subset(np.sort(chosen))
    text = TextEncoder(clip_model, clip_pretrained, dev, cache_dir)
    weights = {t: text.class_embeddings(t, templates) for t in tasks}
    inputs = {
        "monthly": (pairs.series, pairs.month_mask),
        "annual": _annual(pairs.series, pairs.month_mask),
    }

    def score(candidate: str, kind: str, conventions: Conventions) -> ConventionScore:
        model.conventions = conventions
        satellite = _embed(model, *inputs[kind], batch_size)
        valid = ~satellite.isnan().any(1).numpy()
        scores = {}
        for name in tasks:
            labels = pairs.labels[name]
            use = valid & (labels >= 0)
            if not use.any():
                raise EvaluationError(f"{data}: no point has a {name} label and a valid month")
            cosine = cosine_logits(satellite[torch.from_numpy(use)], weights[name]).cpu().numpy()
            m = classification_metrics(labels[use].astype(np.int64), cosine, [""] * len(cosine[0]))
            scores[name] = {k: m[k] for k in ("n", "top1", "balanced_accuracy")}
        log.info("%s %s: %s", kind, conventions.describe(), scores)
        return ConventionScore(candidate, kind, conventions, scores)

    rows = []
    for candidate, (bands, constants) in BAND_CANDIDATES.items():
        conventions = recorded.override(ConventionOverrides(bands, constants))
        rows.append(score(candidate, "monthly", conventions))
        for single in SINGLE_TOKEN_POSITIONS:
            single_conv = dataclasses.replace(conventions, single_token_position=single)
            rows.append(score(candidate, "annual", single_conv))
    monthly = max((r for r in rows if r.input == "monthly"), key=ConventionScore.key)
    annual = max(
        (r for r in rows if r.input == "annual" and r.candidate == monthly.candidate),
        key=ConventionScore.key,
    )
    best = annual.conventions
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "points": len(pairs),
        "recorded": recorded.to_dict(),
        "recommended": best.to_dict(),
        "rows": [
            {
                "candidate": r.candidate,
                "input": r.input,
                "conventions": r.conventions.to_dict(),
                "tasks": r.tasks,
            }
            for r in rows
        ],
    }
    json_path = write_text_atomic(out / "conventions.json", json.dumps(record, indent=1))
    return ConventionsReport(str(checkpoint), rows, best, json_path)

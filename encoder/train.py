"""Contrastive training of the encoder against frozen CLIP ground-photo embeddings.

One-way InfoNCE (satellite -> ground): each pixel embedding must pick its own point's pooled ground
embedding against a FIFO queue of earlier ground embeddings, not the batch's other keys (MoCo-style;
the key side is frozen, so there is no momentum encoder; the queue starts as random unit vectors).
Learnable logit scale, its parameter clamped to at most ``log(logit_scale_max)`` after each step.
Temporal augmentation on a fraction of the (micro-)batches, AdamW, per-step linear warm-up then
cosine, bf16 autocast on CUDA, gradient accumulation.

Reproducibility: the data order is a function of (seed, epoch) and every step reseeds dropout and
augmentation from (seed, step), so a resumed run repeats an uninterrupted one exactly without
carrying RNG states. Checkpoints: ``<out>/checkpoints/step_NNNNNNNN.pt`` (the encoder, written by
``encoder.checkpoint.save_checkpoint``) with a ``.train_state.pt`` sidecar (optimizer, scheduler,
queue, pooling layer, logit scale, step); ``<out>/encoder.pt`` (+ sidecar) at the end.

Config file (YAML; every key optional except ``data.train`` and ``output.dir``; relative paths are
read from the config file's folder)::

    data:       {train: train.zarr, val: val.zarr, val_fraction: 0.0}
    model:      {dim: 512, depth: 6, heads: 8, ff_dim: 256, dropout: 0.2, init: null,
                 band_order: null, constants_order: null, single_token_position: null}
    clip:       {model: ViT-B-32, pretrained: openai, cache_dir: null}
    train:      {epochs: 200, batch_size: 1024, accumulate: 1, lr: 1.0e-4, weight_decay: 1.0e-4,
                 warmup_epochs: 10, min_lr: 0.0, queue_size: 2048, logit_scale_init: 14.2857,
                 logit_scale_max: 100, pooling: mean, augment: tsmixaug,
                 augment_probability: 0.5, augmentations: null, seed: 0, bf16: true,
                 device: auto, max_steps: null}
    validation: {tasks: [land_cover], templates: null, batch_size: 8192}
    output:     {dir: runs/exp1, checkpoint_every: 1000, keep_checkpoints: 3}

The schedule against the published recipe, which the paper and the reference code state differently:

============== ===================== =================================== ==================
setting        paper                 reference code (CLI defaults)       default here
============== ===================== =================================== ==================
weight_decay   1e-6                  0.01                                1e-4
warm-up        10 epochs             none                                10 epochs
schedule       cosine                CosineAnnealingLR(T_max=10) per     cosine over all
                                     epoch: it cycles every 20 epochs    epochs
epochs         200                   300                                 200
augmentation   50 % of batches:      TSMixAug: 50 % of batches, median   tsmixaug, 0.5
               median, quarter drop  or quarter drop (equal odds)
               or random subset
============== ===================== =================================== ==================

Set ``weight_decay: 1.0e-6`` to follow the paper, ``weight_decay: 0.01, warmup_epochs: 0`` for the
code (its cycling cosine is not offered). ``model.band_order`` / ``constants_order`` /
``single_token_position`` set the input conventions the run trains under and records in its
checkpoints (``encoder.conventions``); unset, they are those of ``model.init`` (or the resumed
checkpoint), else the published defaults.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from torch import Tensor, nn

from encoder import augment
from encoder.atomic import atomic_path
from encoder.conventions import ConventionOverrides, Conventions
from encoder.device import resolve_device
from encoder.errors import TimeSenCLIPError
from encoder.ground import PhotoPooling
from encoder.inference import embed
from encoder.model import TimeSenCLIPEncoder
from encoder.pairs import TASKS, Pairs, read_pairs
from encoder.preprocess import normalize
from encoder.safe_yaml import parse_yaml, short_repr

log = logging.getLogger(__name__)

STATE_FORMAT = "timesenclip-train-state"
STATE_SUFFIX = ".train_state.pt"
_CKPT_NAME = re.compile(r"^step_(\d{8})\.pt$")
# Changing these on resume would break the promise that a resumed run repeats an uninterrupted one.
_RESUME_FIXED = ("data", "model", "clip", "train")
_RESUME_FREE = {"max_steps", "device", "cache_dir"}


class TrainConfigError(TimeSenCLIPError):
    """A training config that cannot be read or does not validate."""


class TrainingError(TimeSenCLIPError):
    """Training cannot start or continue (data, resume or output problems)."""


# --- configuration ------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    train: Path
    val: Path | None = None
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # held out of `train` when `val` is unset

    @model_validator(mode="after")
    def _one_validation_source(self) -> DataConfig:
        if self.val is not None and self.val_fraction > 0:
            raise ValueError("give data.val or data.val_fraction, not both")
        return self


class ModelConfig(_Section):
    dim: int = Field(512, ge=1)
    depth: int = Field(6, ge=1)
    heads: int = Field(8, ge=1)
    ff_dim: int = Field(256, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    init: str | None = None  # checkpoint (path or hf-hub:) to start from instead of random weights
    # Input conventions (None: those of `init`, else the published defaults).
    band_order: list[str] | None = None
    constants_order: list[str] | None = None
    single_token_position: Literal["mean", "january"] | None = None

    @model_validator(mode="after")
    def _valid_conventions(self) -> ModelConfig:
        self.overrides()  # raises ConventionsError (a ValueError) on unknown or missing bands
        return self

    def overrides(self) -> ConventionOverrides:
        """The conventions this section sets."""
        return ConventionOverrides(
            band_order=None if self.band_order is None else tuple(self.band_order),
            constants_order=None if self.constants_order is None else tuple(self.constants_order),
            single_token_position=self.single_token_position,
        )


class ClipConfig(_Section):
    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    cache_dir: Path | None = None


class OptimConfig(_Section):
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(1024, ge=2)
    accumulate: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)  # paper 1e-6, reference code 0.01 (module doc)
    warmup_epochs: float = Field(10.0, ge=0.0)  # paper 10, reference code none
    min_lr: float = Field(0.0, ge=0.0)
    queue_size: int = Field(2048, ge=1)  # the only negatives
    logit_scale_init: float = Field(1 / 0.07, gt=0.0)
    logit_scale_max: float = Field(100.0, gt=0.0)
    pooling: Literal["mean", "attention"] = "mean"
    # tsmixaug: the published weights' recipe (median token or quarter drop, equal odds);
    # all: one of `augmentations` (default every kind), what earlier versions did.
    augment: Literal["tsmixaug", "all"] = "tsmixaug"
    augment_probability: float = Field(0.5, ge=0.0, le=1.0)  # share of augmented batches
    augmentations: list[Literal["median", "quarter_drop", "subset"]] | None = None
    seed: int = 0
    bf16: bool = True
    device: str = "auto"
    max_steps: int | None = Field(None, ge=1)  # stop early; the schedule still spans `epochs`

    @model_validator(mode="after")
    def _augmentations_of_all(self) -> OptimConfig:
        if self.augment == "tsmixaug" and self.augmentations is not None:
            raise ValueError(
                "augmentations applies to augment: all only (tsmixaug is median and quarter_drop)"
            )
        return self

    def augment_kinds(self) -> tuple[str, ...]:
        """The augmentations a batch may draw."""
        kinds = augment.AUGMENTATIONS if self.augmentations is None else tuple(self.augmentations)
        return augment.recipe_kinds(self.augment, kinds)


class ValidationConfig(_Section):
    tasks: list[str] = ["land_cover"]
    templates: str | list[str] | None = None
    batch_size: int = Field(8192, ge=1)

    @field_validator("tasks")
    @classmethod
    def _known(cls, tasks: list[str]) -> list[str]:
        if unknown := [t for t in tasks if t not in TASKS]:
            raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
        return tasks


class OutputConfig(_Section):
    dir: Path
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(3, ge=1)


class TrainingConfig(_Section):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    clip: ClipConfig = ClipConfig()
    train: OptimConfig = OptimConfig()
    validation: ValidationConfig = ValidationConfig()
    output: OutputConfig

    def resolved(self, base: Path) -> TrainingConfig:
        """A copy with relative paths read from ``base``."""

        def fix(p: Path | None) -> Path | None:
            return None if p is None else (base / p.expanduser()).resolve()

        data = self.data.model_copy(
            update={"train": fix(self.data.train), "val": fix(self.data.val)}
        )
        clip = self.clip.model_copy(update={"cache_dir": fix(self.clip.cache_dir)})
        output = self.output.model_copy(update={"dir": fix(self.output.dir)})
        model = self.model
        if model.init and not model.init.startswith("hf-hub:"):
            model = model.model_copy(update={"init": str(fix(Path(model.init)))})
        return self.model_copy(
            update={"data": data, "clip": clip, "output": output, "model": model}
        )


def load_config(path: str | Path) -> TrainingConfig:
    """Read and validate a training config YAML; every problem is named in one error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"cannot read training config {path}: {exc}") from exc
    raw, _ = parse_yaml(text, f"training config {path}", TrainConfigError)
    return parse_config(raw, base=path.resolve().parent, source=str(path))


def parse_config(raw: Any, base: Path = Path("."), source: str = "config") -> TrainingConfig:
    """Validate a config mapping (relative paths are read from ``base``)."""
    if not isinstance(raw, dict):
        raise TrainConfigError(f"training config {source} must be a YAML mapping of sections")
    try:
        config = TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"])
            got = "" if err["type"] == "missing" else f" (got {short_repr(err.get('input'))})"
            problems.append(f"  - {where}: {err['msg']}{got}")
        raise TrainConfigError(
            f"training config {source} has {len(problems)} problem(s):\n" + "\n".join(problems)
        ) from None
    return config.resolved(base)


# --- the contrastive learner --------------------------------------------------------------------


class ContrastiveLearner(nn.Module):
    """Encoder + photo pooling + logit scale + FIFO queue of pooled ground embeddings.

    Attribute names follow the reference checkpoints (``pooling_layer``, ``logit_scale``,
    ``queue``, ``queue_ptr``), which encoder loaders drop.
    """

    def __init__(
        self,
        encoder: TimeSenCLIPEncoder,
        ground_dim: int,
        pooling: str = "mean",
        queue_size: int = 2048,
        logit_scale_init: float = 1 / 0.07,
        logit_scale_max: float = 100.0,
    ) -> None:
        super().__init__()
        if encoder.config.dim != ground_dim:
            raise TrainingError(
                f"the encoder is {encoder.config.dim}-d but the ground embeddings are "
                f"{ground_dim}-d: set model.dim to {ground_dim} (the CLIP embedding width)"
            )
        self.encoder = encoder
        self.pooling_layer = PhotoPooling(ground_dim, pooling)
        if queue_size < 1:
            raise TrainingError("queue_size must be at least 1: the queue holds the negatives")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.logit_scale_max = logit_scale_max
        self.clamp_logit_scale()
        # Random unit keys (as the reference), so the queue is full from the first step.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, ground_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def scale(self) -> Tensor:
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Cap the parameter itself (after each step): clamping exp() would zero its gradient."""
        self.logit_scale.clamp_(max=math.log(self.logit_scale_max))

    def embed(
        self, x: Tensor, month_mask: Tensor, kind: str | None, generator: torch.Generator
    ) -> Tensor:
        """Satellite embeddings (N, D); ``kind`` names a temporal augmentation or None."""
        if kind is None:
            return self.encoder(x, month_mask)
        x = torch.where(month_mask[..., None], x, 0.0)  # absent months may be NaN
        tokens = self.encoder.embed_spectral(x)
        pos = self.encoder.time_pos_encoding
        single = self.encoder.conventions.single_token_position
        return self.encoder.encode_tokens(
            *augment.augment(kind, tokens, month_mask, pos, generator, single)
        )

    def loss(self, satellite: Tensor, keys: Tensor) -> Tensor:
        """InfoNCE of each satellite row: its own (unit) key at index 0 against the queue."""
        s = F.normalize(satellite, dim=-1)
        logits = torch.cat([(s * keys).sum(-1, keepdim=True), s @ self.queue.T], 1)
        target = torch.zeros(len(keys), dtype=torch.long, device=keys.device)
        return F.cross_entropy(self.scale() * logits, target)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` at the pointer, wrapping around; only the newest ``size`` are kept."""
        size = self.queue.shape[0]
        n, ptr = len(keys), int(self.queue_ptr)
        # Same result as writing the rows one by one: the oldest of an oversize batch fall out.
        keys = keys.detach()[-size:].to(self.queue.dtype)
        start = ptr + n - len(keys)
        self.queue[(start + torch.arange(len(keys), device=self.queue.device)) % size] = keys
        self.queue_ptr.fill_((ptr + n) % size)


# --- data ---------------------------------------------------------------------------------------


@dataclass
class TensorPairs:
    """Model-ready tensors of a pairs set on one device."""

    x: Tensor  # (N, 12, 10) normalised (bands in the conventions' order), NaN where absent
    month_mask: Tensor  # (N, 12) bool
    ground: Tensor  # (N, P, D)
    photo_mask: Tensor  # (N, P) bool
    labels: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def from_pairs(
        cls, pairs: Pairs, device: torch.device, conventions: Conventions | None = None
    ) -> TensorPairs:
        def t(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        return cls(
            t(normalize(pairs.series.astype(np.float32), conventions=conventions)),
            t(pairs.month_mask),
            t(pairs.ground.astype(np.float32)),
            t(pairs.photo_mask),
            {k: t(v.astype(np.int64)) for k, v in pairs.labels.items()},
        )

    def __len__(self) -> int:
        return len(self.x)


def _run_conventions(model: ModelConfig, resume_from: Path | None) -> Conventions:
    """The run's input conventions: the config's over those of the checkpoint it resumes or
    starts from (published defaults when it starts from random weights)."""
    source = resume_from or model.init
    if source is None:
        return Conventions().override(model.overrides())
    from encoder.checkpoint import load_encoder

    return load_encoder(source, overrides=model.overrides()).conventions


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, step, stream...), stable across platforms."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of ``epoch``: a permutation that depends only on (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, epoch, 0)))


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _usable(pairs: Pairs, source: Path, need_photos: bool) -> Pairs:
    """The points with a valid month (else a NaN embedding) and, with ``need_photos``, a photo
    (else no positive); logs how many were left out."""
    has_month = pairs.month_mask.any(1)
    has_photo = pairs.photo_mask.any(1) | (not need_photos)
    keep = has_month & has_photo
    if not keep.all():
        log.info(
            "%s: left out %d of %d points (%d without a valid month, %d more without a photo)",
            source,
            int((~keep).sum()),
            len(pairs),
            int((~has_month).sum()),
            int((has_month & ~has_photo).sum()),
        )
    return pairs.subset(keep)


def _split(pairs: Pairs, fraction: float, seed: int) -> tuple[Pairs, Pairs | None]:
    if fraction <= 0:
        return pairs, None
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, round(fraction * len(pairs)))
    return pairs.subset(np.sort(order[n_val:])), pairs.subset(np.sort(order[:n_val]))


# --- checkpoints --------------------------------------------------------------------------------


def state_path(checkpoint: Path) -> Path:
    """The training-state sidecar of an encoder checkpoint."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".pt") + STATE_SUFFIX)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest ``checkpoints/step_*.pt`` whose sidecar is also complete."""
    folder = Path(out_dir) / "checkpoints"
    found = sorted(
        p for p in folder.glob("step_*.pt") if _CKPT_NAME.match(p.name) and state_path(p).exists()
    )
    return found[-1] if found else None


def read_train_state(checkpoint: str | Path) -> dict[str, Any]:
    """The training-state sidecar of ``checkpoint`` (see :func:`state_path`)."""
    path = state_path(Path(checkpoint))
    if not path.is_file():
        raise TrainingError(f"{checkpoint} has no training state beside it ({path.name})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path} is not a timesenclip training state")
    return state


# --- the loop -----------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    """What a :func:`run_training` call did."""

    out_dir: Path
    checkpoint: Path  # the final encoder checkpoint (<out>/encoder.pt, or the last step's)
    step: int  # optimizer steps done in total
    losses: list[float]  # loss of every step run by this call
    validation: list[dict[str, float]]  # one row per validated epoch
    metrics_csv: Path
    plot: Path | None


class Trainer:
    """Builds everything from a config and runs the steps; ``run()`` does the work."""

    def __init__(
        self, config: TrainingConfig, resume: bool | str | Path = False, progress: bool = True
    ) -> None:
        self.cfg = config
        self.opt_cfg = config.train
        self.device = resolve_device(config.train.device)
        self.out = config.output.dir
        self.progress = progress
        self.resume_from = self._find_resume(resume)
        self.conventions = _run_conventions(config.model, self.resume_from)
        pairs = _usable(read_pairs(config.data.train), config.data.train, need_photos=True)
        if config.data.val is not None:
            train, val = pairs, _usable(read_pairs(config.data.val), config.data.val, False)
        else:
            train, val = _split(pairs, config.data.val_fraction, config.train.seed)
        self.train = TensorPairs.from_pairs(train, self.device, self.conventions)
        self.val = (
            None if val is None else TensorPairs.from_pairs(val, self.device, self.conventions)
        )
        if self.val is not None and (
            missing := [t for t in config.validation.tasks if t not in self.val.labels]
        ):
            raise TrainingError(
                f"the validation pairs have no labels for {', '.join(missing)}: remove them from "
                "validation.tasks or write the pairs with those labels"
            )
        opt = config.train
        self.micro = opt.batch_size
        self.steps_per_epoch = len(self.train) // (opt.batch_size * opt.accumulate)
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"{len(self.train)} training pairs are fewer than one step's batch_size x "
                f"accumulate = {opt.batch_size * opt.accumulate}: lower train.batch_size"
            )
        self.total_steps = opt.epochs * self.steps_per_epoch
        self.warmup_steps = round(opt.warmup_epochs * self.steps_per_epoch)
        self.learner = self._build_learner().to(self.device)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.learner.parameters() if p.requires_grad],
            lr=opt.lr,
            weight_decay=opt.weight_decay,
        )
        min_ratio = opt.min_lr / opt.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, self.warmup_steps, self.total_steps, min_ratio),
        )
        self.step = 0
        if self.resume_from is not None:
            self._load_state(self.resume_from)
        self.class_weights = self._class_weights()

    def _find_resume(self, resume: bool | str | Path) -> Path | None:
        latest = latest_checkpoint(self.out)
        if resume is False or resume is None:
            if latest is not None:
                raise TrainingError(
                    f"{self.out} already holds checkpoints (newest {latest.name}): resume it "
                    "(--resume) or set output.dir to a new folder"
                )
            return None
        if resume is True or resume == "auto":
            if latest is None:
                log.info("no checkpoint in %s: starting from scratch", self.out)
            return latest
        path = Path(resume)
        if not path.is_file():
            raise TrainingError(f"resume checkpoint {path} does not exist")
        return path

    def _build_learner(self) -> ContrastiveLearner:
        m, opt = self.cfg.model, self.opt_cfg
        torch.manual_seed(seed_for(opt.seed, 0, 1))
        encoder = TimeSenCLIPEncoder(
            dim=m.dim, depth=m.depth, heads=m.heads, ff_dim=m.ff_dim, dropout=m.dropout
        )
        if m.init and self.resume_from is None:
            from encoder.checkpoint import load_encoder

            try:
                encoder.load_state_dict(load_encoder(m.init).state_dict())
            except RuntimeError as exc:
                raise TrainingError(
                    f"model.init {m.init} does not fit the configured model: {exc}"
                ) from exc
        encoder.conventions = self.conventions
        return ContrastiveLearner(
            encoder,
            self.train.ground.shape[-1],
            opt.pooling,
            opt.queue_size,
            opt.logit_scale_init,
            opt.logit_scale_max,
        )

    def _class_weights(self) -> dict[str, Tensor]:
        if self.val is None:
            return {}
        from encoder.prompts import TextEncoder

        clip = self.cfg.clip
        text = TextEncoder(clip.model, clip.pretrained, self.device, clip.cache_dir)
        templates = self.cfg.validation.templates
        return {t: text.class_embeddings(t, templates) for t in self.cfg.validation.tasks}

    # --- checkpoints ---

    def _metadata(self):
        from encoder.checkpoint import EncoderMetadata

        clip = self.cfg.clip
        return EncoderMetadata(clip_model=clip.model, clip_pretrained=clip.pretrained or "")

    def save(self, path: Path) -> Path:
        """Encoder checkpoint at ``path`` + training-state sidecar, each written atomically."""
        from encoder.checkpoint import save_checkpoint

        learner = {
            k: v for k, v in self.learner.state_dict().items() if not k.startswith("encoder.")
        }
        state = {
            "format": STATE_FORMAT,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "learner": learner,
            "config": self.cfg.model_dump(mode="json"),
        }
        # The sidecar first: a checkpoint counts (latest_checkpoint) once its encoder file exists.
        with atomic_path(state_path(path)) as tmp:
            torch.save(state, tmp)
        return save_checkpoint(self.learner.encoder, path, metadata=self._metadata())

    def _save_periodic(self) -> None:
        folder = self.out / "checkpoints"
        self.save(folder / f"step_{self.step:08d}.pt")
        kept = sorted(p for p in folder.glob("step_*.pt") if _CKPT_NAME.match(p.name))
        for old in kept[: -self.cfg.output.keep_checkpoints]:
            state_path(old).unlink(missing_ok=True)
            old.unlink(missing_ok=True)

    def _load_state(self, checkpoint: Path) -> None:
        from encoder.checkpoint import load_encoder

        state = read_train_state(checkpoint)
        before = state["config"]
        now = self.cfg.model_dump(mode="json")
        changed = [
            f"{section}.{key}"
            for section in _RESUME_FIXED
            for key in now[section]
            if key not in _RESUME_FREE and before[section].get(key) != now[section][key]
        ]
        if changed:
            raise TrainingError(
                f"cannot resume {checkpoint}: the config changed ({', '.join(changed)}); restore "
                "those values or train into a new output.dir"
            )
        self.learner.encoder.load_state_dict(load_encoder(checkpoint).state_dict())
        missing, unexpected = self.learner.load_state_dict(state["learner"], strict=False)
        if unexpected or [k for k in missing if not k.startswith("encoder.")]:
            raise TrainingError(
                f"{state_path(checkpoint)} does not fit this learner (missing "
                f"{[k for k in missing if not k.startswith('encoder.')]}, unexpected {unexpected})"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        log.info("resumed %s at step %d", checkpoint, self.step)

    # --- steps ---

    def train_step(self, indices: Tensor) -> float:
        """One optimizer step over ``indices`` (accumulate x micro-batches); returns the loss."""
        opt = self.opt_cfg
        torch.manual_seed(seed_for(opt.seed, self.step, 2))  # dropout
        gen = torch.Generator().manual_seed(seed_for(opt.seed, self.step, 3))
        autocast = torch.autocast("cuda", torch.bfloat16, enabled=self._bf16())
        self.optimizer.zero_grad(set_to_none=True)
        total, keys_seen = 0.0, []
        for micro in indices.split(self.micro):
            micro = micro.to(self.device)
            d = self.train
            kind = augment.choose(gen, opt.augment_probability, opt.augment_kinds())
            with autocast:
                satellite = self.learner.embed(d.x[micro], d.month_mask[micro], kind, gen)
            # Pooling and the loss stay in float32 (autocast would run their matmuls in bf16).
            keys = self.learner.pooling_layer(d.ground[micro], d.photo_mask[micro])
            loss = self.learner.loss(satellite.float(), keys) / opt.accumulate
            loss.backward()
            total += float(loss.detach())
            keys_seen.append(keys.detach())
        self.optimizer.step()
        self.learner.clamp_logit_scale()
        self.scheduler.step()
        for keys in keys_seen:  # after the step: this step's negatives were the queue before it
            self.learner.enqueue(keys)
        self.step += 1
        return total

    def _bf16(self) -> bool:
        return self.opt_cfg.bf16 and self.device.type == "cuda"

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Zero-shot top-1 accuracy per validation task (points with a label only)."""
        from encoder.zeroshot import score

        if self.val is None:
            return {}
        self.learner.eval()
        val = self.val
        size = self.cfg.validation.batch_size
        emb = embed(self.learner.encoder, val.x, val.month_mask, batch_size=size, bf16=self._bf16())
        self.learner.train()
        out = {}
        for task, weights in self.class_weights.items():
            labels = val.labels[task]
            known = labels >= 0
            predicted = score(emb, weights, device=self.device).label.to(labels.device)
            out[f"val_{task}_top1"] = (
                float((predicted[known] == labels[known]).float().mean())
                if known.any()
                else math.nan
            )
        return out

    def run(self) -> TrainingResult:
        from tqdm.auto import tqdm

        opt = self.opt_cfg
        self.out.mkdir(parents=True, exist_ok=True)
        logger = MetricsLog(self.out, self.step)
        stop = self.total_steps if opt.max_steps is None else min(opt.max_steps, self.total_steps)
        losses: list[float] = []
        per_step = self.micro * opt.accumulate
        self.learner.train()
        bar = tqdm(
            total=stop, initial=self.step, desc="train", unit="step", disable=not self.progress
        )
        order_epoch, order = -1, None
        while self.step < stop:
            epoch, within = divmod(self.step, self.steps_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(len(self.train), opt.seed, epoch)
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            loss = self.train_step(order[within * per_step : (within + 1) * per_step])
            if not math.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss} at step {self.step}: lower train.lr or check the data "
                    "for invalid values"
                )
            losses.append(loss)
            logger.step(self.step, epoch, loss, lr, float(self.learner.scale().detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
            if within == self.steps_per_epoch - 1 and self.val is not None:
                metrics = self.validate()
                logger.validation(self.step, epoch, metrics)
                log.info("epoch %d step %d: %s", epoch, self.step, metrics)
            if self.step % self.cfg.output.checkpoint_every == 0 or self.step == stop:
                self._save_periodic()
        bar.close()
        final = self.save(self.out / "encoder.pt") if self.step >= self.total_steps else None
        checkpoint = final or latest_checkpoint(self.out)
        plot = logger.plot()
        return TrainingResult(
            self.out, checkpoint, self.step, losses, logger.rows, logger.path, plot
        )


# --- metrics ------------------------------------------------------------------------------------


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


def run_training(
    config_path: str | Path,
    *,
    resume: bool | str | Path = False,
    max_steps: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> TrainingResult:
    """``timesenclip train CONFIG``: train as configured; returns what was done.

    ``resume``: True/"auto" continues from the newest checkpoint in ``output.dir``, a path from that
    checkpoint; ``max_steps`` and ``device`` override ``train.max_steps`` / ``train.device``.
    """
    config = load_config(config_path)
    overrides = {k: v for k, v in {"max_steps": max_steps, "device": device}.items() if v}
    if overrides:
        config = config.model_copy(update={"train": config.train.model_copy(update=overrides)})
    return Trainer(config, resume=resume, progress=progress).run()

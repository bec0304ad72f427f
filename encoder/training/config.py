"""The training config: its schema, and reading it from YAML with every problem named at once.

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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from encoder import augment
from encoder.conventions import ConventionOverrides
from encoder.label_routes import TASKS
from timesenclip.common.config_errors import problem_report
from timesenclip.common.errors import TimeSenCLIPError
from timesenclip.common.safe_yaml import parse_yaml


class TrainConfigError(TimeSenCLIPError):
    """A training config that cannot be read or does not validate."""


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


class TrainedEncoderConfig(_Section):
    """The ``model:`` section: the encoder's shape, its starting weights and input conventions."""

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
    def _valid_conventions(self) -> TrainedEncoderConfig:
        self.overrides()  # raises ConventionsError (a ValueError) on unknown or missing bands
        return self

    def overrides(self) -> ConventionOverrides:
        """The conventions this section sets."""
        return ConventionOverrides(
            band_order=None if self.band_order is None else tuple(self.band_order),
            constants_order=None if self.constants_order is None else tuple(self.constants_order),
            single_token_position=self.single_token_position,
        )


class TeacherClipConfig(_Section):
    """The ``clip:`` section: the frozen CLIP whose text tower scores validation (its image tower
    made the ground embeddings)."""

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
    model: TrainedEncoderConfig = TrainedEncoderConfig()
    clip: TeacherClipConfig = TeacherClipConfig()
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
    raw, node = parse_yaml(text, f"training config {path}", TrainConfigError)
    return parse_config(raw, base=path.resolve().parent, source=str(path), node=node)


def parse_config(
    raw: Any, base: Path = Path("."), source: str = "config", node: yaml.Node | None = None
) -> TrainingConfig:
    """Validate a config mapping (relative paths are read from ``base``; ``node``, the YAML it was
    parsed from, gives the problems their line numbers)."""
    if not isinstance(raw, dict):
        raise TrainConfigError(f"training config {source} must be a YAML mapping of sections")
    try:
        config = TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        report = problem_report(exc, TrainingConfig, node, f"training config {source}")
        raise TrainConfigError(report) from None
    return config.resolved(base)

"""Contrastive training of the encoder against frozen CLIP ground-photo embeddings: the loop.

The learner (``encoder.training.learner``) is trained with temporal augmentation on a fraction of
the (micro-)batches, AdamW, per-step linear warm-up then cosine (``encoder.training.schedule``),
bf16 autocast on CUDA and gradient accumulation. A resumed run repeats an uninterrupted one
exactly; checkpoints and their sidecars are laid out as ``encoder.training.state`` says.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from encoder import augment
from encoder.conventions import Conventions
from encoder.device import resolve_device
from encoder.inference import embed
from encoder.model import TimeSenCLIPEncoder
from encoder.training.config import TrainedEncoderConfig, TrainingConfig, load_config
from encoder.training.data import TensorPairs, training_pairs
from encoder.training.learner import ContrastiveLearner
from encoder.training.metrics import MetricsLog
from encoder.training.schedule import epoch_order, lr_factor, seed_for
from encoder.training.state import (
    STATE_FORMAT,
    latest_checkpoint,
    prune_checkpoints,
    read_train_state,
    state_path,
    step_path,
)
from timesenclip.common.atomic import atomic_path
from timesenclip.common.errors import TrainingError

log = logging.getLogger(__name__)

# Changing these on resume would break the promise that a resumed run repeats an uninterrupted one.
_RESUME_FIXED = ("data", "model", "clip", "train")
_RESUME_FREE = {"max_steps", "device", "cache_dir"}


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
        train, val = training_pairs(config.data, config.train.seed)
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
        self.save(step_path(self.out, self.step))
        prune_checkpoints(self.out, self.cfg.output.keep_checkpoints)

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
        precision = "bf16" if self._bf16() else "fp32"
        # torch: the weights change every epoch, so an ONNX export would not be reused.
        emb = embed(
            self.learner.encoder,
            val.x,
            val.month_mask,
            batch_size=size,
            runtime="torch",
            precision=precision,
        )
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


def _run_conventions(model: TrainedEncoderConfig, resume_from: Path | None) -> Conventions:
    """The run's input conventions: the config's over those of the checkpoint it resumes or
    starts from (published defaults when it starts from random weights)."""
    source = resume_from or model.init
    if source is None:
        return Conventions().override(model.overrides())
    from encoder.checkpoint import load_encoder

    return load_encoder(source, overrides=model.overrides()).conventions


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

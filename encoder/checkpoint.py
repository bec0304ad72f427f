"""Read published TimeSenCLIP weights in every known layout; write our own checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pickle
import re
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub import errors as hub_errors
from torch import Tensor

from encoder.conventions import ConventionOverrides, Conventions
from encoder.model import EncoderConfig, TimeSenCLIPEncoder
from timesenclip.common.atomic import atomic_path
from timesenclip.common.errors import TimeSenCLIPError
from timesenclip.common.files import (
    file_sha256 as file_sha256,  # re-exported: callers import it here
)
from timesenclip.common.version import package_version

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

FORMAT = "timesenclip-encoder"
HF_PREFIX = "hf-hub:"
# Where the encoder sits inside the published training checkpoints, most specific first.
PREFIXES = (
    "learner.ts_encoder.",
    "learner.TS_ViT.",
    "learner_val.ts_encoder.",
    "ts_encoder.",
    "TS_ViT.",
    "model.",
)
# Training-only entries of the published checkpoints (CLIP tower, MoCo queue, photo pooling).
DROPPED = re.compile(
    r"clip_model\.|learner\.queue$|learner\.queue_ptr$|learner\.pooling_layer\.|logit_scale$"
)
PUBLISHED_HEADS = 8
# Metadata keys of earlier versions of our format -> Conventions fields.
LEGACY_CONVENTIONS = {"bands": "band_order", "low": "low", "high": "high", "clamp": "clamp"}
# The tensors the architecture is read from, with their number of dimensions.
INFERENCE_KEYS = {
    "spectral_embedding.1.weight": 2,
    "time_pos_encoding": 3,
    "transformer.layers.0.linear1.weight": 2,
}


class CheckpointError(TimeSenCLIPError):
    """A checkpoint that cannot be read or does not match the encoder."""


@dataclass(frozen=True)
class EncoderMetadata:
    """What a checkpoint needs besides its tensors: architecture and the input conventions."""

    config: EncoderConfig = field(default_factory=EncoderConfig)
    conventions: Conventions = field(default_factory=Conventions)
    clip_model: str = "ViT-B-32"
    clip_pretrained: str | None = "openai"
    package_version: str = field(default_factory=package_version)

    def to_dict(self) -> dict[str, Any]:
        """Plain python types only, so ``torch.load(weights_only=True)`` reads it back."""
        return dataclasses.asdict(self) | {"conventions": self.conventions.to_dict()}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> EncoderMetadata:
        """Rebuild from ``to_dict`` output; unknown keys are ignored. Files of earlier versions
        kept ``bands``, ``low``, ``high`` and ``clamp`` at the top level: they are read too."""
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in record.items() if k in fields}
            values["config"] = EncoderConfig(**record.get("config", {}))
            legacy = {
                LEGACY_CONVENTIONS[k]: v for k, v in record.items() if k in LEGACY_CONVENTIONS
            }
            values["conventions"] = Conventions.from_dict(legacy | record.get("conventions", {}))
            return cls(**values)
        except (TypeError, AttributeError, TimeSenCLIPError) as err:
            raise CheckpointError(f"checkpoint metadata is malformed ({err}): {record!r}") from err


def save_checkpoint(
    model: TimeSenCLIPEncoder,
    path: str | os.PathLike,
    metadata: EncoderMetadata | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` in our format (bare published keys + metadata); atomic. Returns the path.

    The metadata's ``config`` and ``conventions`` are always the model's own; ``extra`` must hold
    plain python types and tensors only, so that the file loads with ``weights_only=True``.
    """
    meta = dataclasses.replace(
        metadata or EncoderMetadata(), config=model.config, conventions=model.conventions
    )
    record: dict[str, Any] = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": meta.to_dict(),
    }
    if extra is not None:
        record["extra"] = dict(extra)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return path


def load_encoder(
    source: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    overrides: ConventionOverrides | None = None,
) -> TimeSenCLIPEncoder:
    """Load an encoder (eval mode, on ``map_location``) from a file or ``hf-hub:OWNER/REPO/FILE``.

    Reads our checkpoints and every published layout; the architecture is inferred from the tensors
    (heads and band count from the metadata when present, else the published 8 heads and 10 bands).
    The returned model has ``.metadata`` (``EncoderMetadata`` or None) and ``.conventions``: the
    recorded ones (published defaults without metadata) with ``overrides`` applied.
    """
    path = resolve_source(source)
    # Always read onto the CPU: training checkpoints also hold CLIP, optimiser state and queues,
    # which must not be copied to the GPU only to be dropped.
    state, meta = _read(path)
    config = infer_config(state, meta)
    if meta is not None:
        _check_metadata(meta, config, path)
    model = TimeSenCLIPEncoder(**dataclasses.asdict(config))
    _check_tensors(model, state, path)
    model.load_state_dict(state, strict=True)
    model.metadata = meta
    recorded = meta.conventions if meta is not None else Conventions()
    model.conventions = recorded.override(overrides)
    if overrides and model.conventions != recorded:
        log.info("%s: conventions overridden: %s", path, model.conventions.describe())
    return model.to(map_location).eval()


def convert_checkpoint(
    source: str | os.PathLike, out: str | os.PathLike, overrides: ConventionOverrides
) -> Path:
    """``timesenclip convert``: write ``source`` (any layout) in our format with its conventions
    (recorded or published defaults) changed by ``overrides``, so maps use them from then on."""
    model = load_encoder(source, overrides=overrides)
    meta = model.metadata or EncoderMetadata()
    return save_checkpoint(model, out, dataclasses.replace(meta, package_version=package_version()))


HUB_RETRIES = 1
"""Default extra tries of the hub when it cannot be reached ($TIMESENCLIP_HUB_RETRIES)."""
HUB_TIMEOUT = 4.0
"""Seconds one hub request may take before it counts as unreachable ($TIMESENCLIP_HUB_TIMEOUT)."""


def resolve_source(source: str | os.PathLike, *, retries: int | None = None) -> Path:
    """A local path as is; ``hf-hub:OWNER/REPO/PATH/IN/REPO`` fetched (cached) via the hub.

    An unreachable hub is asked ``1 + retries`` times in all, a second apart and more, then the
    cached copy is used if there is one: so a machine without network fails (or carries on from
    the cache) within seconds, not after huggingface_hub's own minute of retries.
    """
    text = os.fspath(source)
    if not text.startswith(HF_PREFIX):
        path = Path(text).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} does not exist; pass an existing file.")
        return path
    owner, _, rest = text[len(HF_PREFIX) :].partition("/")
    repo, _, filename = rest.partition("/")
    if not (owner and repo and filename):
        raise CheckpointError(
            f"{text!r} is not a hub source; write hf-hub:OWNER/REPO/FILE, "
            "e.g. hf-hub:pallavijainpj/TimeSenCLIP/TimeSenCLIP_1x1.ckpt."
        )
    repo_id = f"{owner}/{repo}"
    if retries is None:
        retries = int(os.environ.get("TIMESENCLIP_HUB_RETRIES", HUB_RETRIES))
    unreachable = hub_unreachable(repo_id, filename, retries)
    try:
        # With the hub out of reach, only the local cache is read: no second round of retries.
        path = huggingface_hub.hf_hub_download(
            repo_id, filename, local_files_only=unreachable is not None
        )
    except (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled) as err:
        raise CheckpointError(
            f"cannot fetch {text}: the Hugging Face Hub is not reachable "
            f"({unreachable or err}) and the file is not in the local cache. Run once with network "
            "access to cache it, or pass the path of a local checkpoint file "
            "(more tries of the hub: TIMESENCLIP_HUB_RETRIES=N)."
        ) from None
    except hub_errors.HfHubHTTPError as err:
        raise CheckpointError(f"cannot fetch {text} from the Hugging Face Hub: {err}") from err
    if unreachable is not None and unreachable != _OFFLINE:
        log.warning(
            "the Hugging Face Hub is not reachable (%s): using the cached %s", unreachable, text
        )
    return Path(path)


_OFFLINE = "HF_HUB_OFFLINE is set"


def hub_unreachable(repo_id: str, filename: str, retries: int) -> str | None:
    """None when the hub answers for the file, else why not (offline mode, network, 5xx).

    Asks ``1 + retries`` times, waiting 1, 2, 4 (up to 8) seconds between tries, each try one
    request of at most $TIMESENCLIP_HUB_TIMEOUT seconds: so any hub download can first learn
    cheaply whether it should only read the cache.
    """
    url = huggingface_hub.hf_hub_url(repo_id, filename)
    timeout = float(os.environ.get("TIMESENCLIP_HUB_TIMEOUT", HUB_TIMEOUT))
    reason = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2.0 ** (attempt - 1), 8.0))
        try:
            # One request, no retries of its own (huggingface_hub retries only downloads).
            huggingface_hub.get_hf_file_metadata(url, timeout=timeout)
            return None
        except hub_errors.OfflineModeIsEnabled:
            return _OFFLINE
        except hub_errors.HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if status is not None and status < 500 and status not in (408, 429):
                return None  # the hub answered: hf_hub_download reports it (404, gated, ...)
            reason = f"HTTP {status}"
        except Exception as err:  # the network errors are requests' or httpx's, by version
            reason = f"{type(err).__name__}: {err}"
    return reason


def _check_metadata(meta: EncoderMetadata, config: EncoderConfig, path: Path) -> None:
    """The metadata must agree with the tensors, its band order with the model's input width."""
    if meta.config != config:
        raise CheckpointError(
            f"{path}: the metadata describes {meta.config} but the tensors are {config}."
        )
    if len(meta.conventions.band_order) != config.bands:
        raise CheckpointError(
            f"{path}: the conventions name {len(meta.conventions.band_order)} bands but the "
            f"model takes {config.bands}."
        )


def _read(path: Path) -> tuple[dict[str, Tensor], EncoderMetadata | None]:
    """Load a file onto the CPU; return the bare encoder state_dict and our metadata (if any)."""
    try:
        # Lightning's save_hyperparameters() stores the training args as a Namespace of plain
        # values: allow that class alone. mmap needs the zip format (PyTorch >= 1.6 files).
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(
                path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
            )
    except pickle.UnpicklingError as err:
        # torch words a refused global in several ways across versions and pickle opcodes.
        found = re.search(
            r"unsupported (?:global: )?GLOBAL (\S+)|reduce for unrecognized function (\S+)"
            r"|via `add_safe_globals`,? but got (.+)",
            str(err),
            re.IGNORECASE,
        )
        if found is None:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint file.") from err
        name = next(g for g in found.groups() if g).rstrip(".")
        raise CheckpointError(
            f"{path} holds code besides tensors ({name}): unpickling it would run that code, so "
            "safe loading (weights_only=True) refuses it. If you trust where the file came from, "
            "load it once in a trusted session, re-save the weights alone with "
            "torch.save(model.state_dict(), PATH) and pass that file."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file ({err!r}).") from err
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        meta = EncoderMetadata.from_dict(obj.get("metadata", {}))
        return _encoder_keys(obj.get("state_dict", {}), path), meta
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} is not an encoder checkpoint: it holds no state_dict of tensors "
            f"(found {type(obj).__name__})."
        )
    return _encoder_keys(obj, path), None


def _encoder_keys(state: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """Strip the encoder's prefix, rename ``class_token``, drop training-only entries."""
    anchor = "spectral_embedding.1.weight"
    prefix = next((p for p in ("", *PREFIXES) if p + anchor in state), "")
    out = {}
    for key, value in state.items():
        if DROPPED.match(key) or (key.startswith(PREFIXES) and not key.startswith(prefix)):
            continue  # training-only entries, or another copy of the encoder (e.g. learner_val)
        name = key[len(prefix) :] if key.startswith(prefix) else key
        out["time_token" if name == "class_token" else name] = value
    bad = [k for k, v in out.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: entries {bad} are not tensors; this is not an encoder state_dict."
        )
    return out


def infer_config(state: Mapping[str, Tensor], meta: EncoderMetadata | None = None) -> EncoderConfig:
    """The architecture the tensors describe (heads, bands and dropout from metadata if any)."""
    for key, ndim in INFERENCE_KEYS.items():
        if key not in state:
            raise CheckpointError(
                f"checkpoint is missing the key {key!r}; it is not a TimeSenCLIP encoder."
            )
        if state[key].ndim != ndim:
            raise CheckpointError(
                f"checkpoint key {key!r} has shape {tuple(state[key].shape)}, not {ndim}-d."
            )
    base = meta.config if meta is not None else EncoderConfig(heads=PUBLISHED_HEADS)
    dim, in_features = state["spectral_embedding.1.weight"].shape
    patch = round((in_features / base.bands) ** 0.5)
    if patch * patch * base.bands != in_features:
        raise CheckpointError(
            f"spectral_embedding.1.weight has {in_features} inputs, which is not "
            f"{base.bands} bands times a square patch k*k."
        )
    if dim % base.heads:
        raise CheckpointError(
            f"the checkpoint's dim={dim} is not divisible by heads={base.heads}; heads cannot be "
            "read from the tensors, so save the model with save_checkpoint to record them."
        )
    layers = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
    return dataclasses.replace(
        base,
        dim=dim,
        depth=max(layers) + 1,
        ff_dim=state["transformer.layers.0.linear1.weight"].shape[0],
        months=state["time_pos_encoding"].shape[1],
        patch=patch,
    )


def _check_tensors(model: TimeSenCLIPEncoder, state: Mapping[str, Tensor], path: Path) -> None:
    """Name every missing key, unexpected key and shape mismatch in one error."""
    expected = model.state_dict()
    problems = [f"missing key {k!r}" for k in expected if k not in state]
    problems += [f"unexpected key {k!r}" for k in state if k not in expected]
    problems += [
        f"{k!r} has shape {tuple(state[k].shape)} in the file but {tuple(v.shape)} is expected"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise CheckpointError(
            f"{path} does not match a TimeSenCLIP encoder with {model.config}: "
            + "; ".join(problems)
            + "."
        )

"""Which runtime and precision run the encoder: torch, or ONNX Runtime over an exported graph.

Measured by ``bench/encoder.py`` (published size, 2-core AMD EPYC machines with nothing else
running, interleaved): ONNX Runtime over the export of the fast path ran 1.6-1.8x the plain
forward on one and 2.2-2.6x on a Zen 5 one, at one thread and at two, against 1.15-1.35x for
torch's fast path, exact to float rounding; the export takes under a second and is cached. So
``auto`` runs ONNX Runtime for float32 on a CPU where it is installed, and torch otherwise (a
GPU; bf16; no onnxruntime). bf16 is faster still (2.5-3.5x the plain forward) but rounds, so it
runs only when asked (torch; see ``encoder.model.eval_layers``).

The export is cached on disk under ``default_cache_dir() / "onnx"``, named by a hash of the
weights, the architecture, the lone-token convention, the sequence length and the torch and
onnxruntime versions: new weights or a new runtime export again, the same ones load in a blink.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from encoder.model import PRECISIONS, TimeSenCLIPEncoder
from timesenclip.common.atomic import atomic_path
from timesenclip.common.errors import TimeSenCLIPError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
_LOCK = threading.Lock()  # one export per process at a time; sessions are shared by threads


def onnxruntime() -> ModuleType | None:
    """The onnxruntime module, or None when it (or the exporter it needs) is not installed.

    The exporter, onnxscript, is only looked for: importing it takes over a second, which
    only an export needs, not a worker whose first chunk finds the export cached."""
    if importlib.util.find_spec("onnxscript") is None:
        return None
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        return None


def select_runtime(runtime: str, precision: str, device: torch.device) -> str:
    """The runtime (``torch`` or ``onnx``) that runs ``precision`` on ``device``.

    ``auto`` takes the fastest one available for that precision and never changes the precision.
    """
    if runtime not in RUNTIMES or precision not in PRECISIONS:
        raise TimeSenCLIPError(
            f"runtime {runtime!r} with precision {precision!r} is not known: runtime is one of "
            f"{', '.join(RUNTIMES)} and precision one of {', '.join(PRECISIONS)}."
        )
    onnx_fits = device.type == "cpu" and precision == "fp32"
    if runtime == "auto":
        return "onnx" if onnx_fits and onnxruntime() is not None else "torch"
    if runtime == "onnx" and not onnx_fits:
        raise TimeSenCLIPError(
            f"runtime 'onnx' runs float32 on a CPU only, not {precision} on {device}: "
            "set model.runtime to auto or torch, or model.precision to fp32 on a CPU."
        )
    if runtime == "onnx" and onnxruntime() is None:
        raise TimeSenCLIPError(
            "runtime 'onnx' needs the onnxruntime and onnxscript packages, which are not "
            "installed: pip install timesenclip (they are among its dependencies), or set "
            "model.runtime to auto or torch."
        )
    return runtime


def weights_hash(model: TimeSenCLIPEncoder) -> str:
    """SHA-256 over the model's tensors and architecture: what an export depends on."""
    digest = hashlib.sha256(json.dumps(model.extra_repr()).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_path(model: TimeSenCLIPEncoder, tokens: int, cache_dir: Path | None = None) -> Path:
    """Where the ONNX export of ``model`` for ``tokens`` time steps is cached."""
    from encoder.prompts import default_cache_dir

    ort = onnxruntime()
    key = hashlib.sha256(
        json.dumps(
            [
                weights_hash(model),
                model.conventions.single_token_position,
                tokens,
                torch.__version__,
                ort.__version__ if ort else None,
            ]
        ).encode()
    ).hexdigest()
    return (cache_dir or default_cache_dir()) / "onnx" / f"encoder-{key[:32]}.onnx"


def export_onnx(model: TimeSenCLIPEncoder, tokens: int, path: Path) -> Path:
    """Export the fast path (``encoder.static``) for ``tokens`` time steps to ``path``."""
    from encoder.static import StaticEncoder

    cfg = model.config
    x = torch.zeros(2, tokens, cfg.bands * cfg.patch**2)
    present = torch.ones(2, tokens, dtype=torch.bool)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting the encoder to ONNX for %d time steps (once per checkpoint)", tokens)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            StaticEncoder(model, tokens).eval(),
            (x, present),
            str(tmp),
            input_names=["x", "present"],
            output_names=["embedding"],
            dynamic_axes={"x": {0: "pixels"}, "present": {0: "pixels"}},
            dynamo=False,
        )
    return path


# Sessions by (export file, threads): the file name carries the weights' hash, so a model whose
# weights changed gets a new session, and threads of one process share one.
_SESSIONS: dict[tuple[Path, int], Any] = {}


def onnx_session(model: TimeSenCLIPEncoder, tokens: int, cache_dir: Path | None = None) -> Any:
    """An ONNX Runtime session running ``model`` for ``tokens`` time steps, exported if needed.

    It runs on as many threads as torch has been given (one in a Dask task).
    """
    ort = onnxruntime()
    path = export_path(model, tokens, cache_dir)
    threads = torch.get_num_threads()
    with _LOCK:
        if (path, threads) not in _SESSIONS:
            if not path.exists():
                export_onnx(model, tokens, path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            _SESSIONS[path, threads] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        return _SESSIONS[path, threads]


def run_session(session: Any, x: Tensor, present: Tensor) -> Tensor:
    """Embeddings (N, D) of ``x`` (N, T, bands[, k, k]) with a bool ``present`` (N, T)."""
    feed = {
        "x": np.ascontiguousarray(x.flatten(2).numpy(), dtype=np.float32),
        "present": np.ascontiguousarray(present.numpy()),
    }
    return torch.from_numpy(session.run(None, feed)[0])

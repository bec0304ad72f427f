"""Where models run: a device name from a config or the command line, checked once."""

from __future__ import annotations

import torch

from timesenclip.common.errors import TimeSenCLIPError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) picks the GPU when there is one, else the CPU.

    Asking for CUDA on a machine without a usable GPU is an error, not a silent fall-back to a
    CPU that may be a thousand times slower.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise TimeSenCLIPError(
            f"device {device!r} is not valid: use auto, cpu or cuda[:N]"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TimeSenCLIPError(
            f"device {device!r} asks for a GPU but PyTorch sees no CUDA device on this machine: "
            "use 'auto' or 'cpu', or install a CUDA build of torch."
        )
    if resolved.type == "cuda" and resolved.index is not None:
        count = torch.cuda.device_count()
        if resolved.index >= count:
            raise TimeSenCLIPError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}; check CUDA_VISIBLE_DEVICES or pick another index."
            )
    return resolved

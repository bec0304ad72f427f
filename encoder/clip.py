"""open_clip models for the text and image towers, created in one place with one clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from timesenclip.common.errors import TimeSenCLIPError

SCHEMAS = ("local-dir:", "hf-hub:")


def clip_pretrained(model: str, pretrained: str | Path | None) -> str | None:
    """The pretrained argument open_clip gets: none with a schema, which carries its weights."""
    if model.startswith(SCHEMAS) or pretrained is None:
        return None
    return str(pretrained)


def open_clip_model(
    model: str,
    pretrained: str | Path | None,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
) -> tuple[Any, Any]:
    """(open_clip model in eval mode on ``device``, its eval image transform).

    ``model`` is an open_clip name (with ``pretrained`` a tag or a weights file), or a
    ``local-dir:FOLDER`` / ``hf-hub:ORG/REPO`` model. Random weights are refused: a model whose
    weights cannot be found is an error, not a silently meaningless tower.
    """
    import open_clip  # deferred: importing open_clip costs seconds

    pretrained = clip_pretrained(model, pretrained)
    try:
        clip, _, transform = open_clip.create_model_and_transforms(
            model,
            pretrained=pretrained,
            device=device,
            cache_dir=None if cache_dir is None else str(cache_dir),
            require_pretrained=True,
        )
    except Exception as exc:  # open_clip raises many types (RuntimeError, OSError, Assertion)
        raise TimeSenCLIPError(
            f"could not create the CLIP model {model!r} (pretrained={pretrained!r}): {exc}. Check "
            "the name (open_clip.list_models()), the pretrained tag (open_clip.list_pretrained()) "
            "or weights file path, the local-dir: folder, and, when offline, that the weights are "
            "already in the Hugging Face cache"
        ) from exc
    return clip.eval(), transform

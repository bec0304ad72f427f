"""The TimeSenCLIP encoder: a small Transformer over 12-month Sentinel-2 pixel series,
aligned to CLIP."""

from encoder.checkpoint import EncoderMetadata, load_encoder, save_checkpoint
from encoder.model import EncoderConfig, TimeSenCLIPEncoder
from encoder.preprocess import BANDS, normalize

__all__ = [
    "BANDS",
    "EncoderConfig",
    "EncoderMetadata",
    "TimeSenCLIPEncoder",
    "load_encoder",
    "normalize",
    "save_checkpoint",
]

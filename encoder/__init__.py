"""The TimeSenCLIP encoder: a small Transformer over 12-month Sentinel-2 pixel series, aligned to CLIP."""

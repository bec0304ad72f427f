"""Scenes to composites: reader, read retries, cloud masks, temporal medians. Uses search, geo."""

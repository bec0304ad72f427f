"""Scenes to composites: reader, retries, cloud masks, medians, users' stacks. Uses search, geo."""

"""Kept embeddings: the Zarr store and the verbs that read it. Uses maps, geo."""

"""Executing a plan on Dask: worker tasks, cluster, lock, cluster failures. Uses all below."""

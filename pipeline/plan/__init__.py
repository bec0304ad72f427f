"""Every decision of a run before any work: checkpoint, tasks, tiles, chunks. Uses all below."""

"""Generic helpers: errors, atomic writes, safe YAML, hashing, version. Uses nothing of ours."""

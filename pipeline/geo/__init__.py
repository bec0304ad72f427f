"""Grids, UTM tiles and chunk windows: the geometry all stages share. Uses no other stage."""

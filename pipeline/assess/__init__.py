"""Map accuracy, error-adjusted and zonal areas; uses only maps, geo, encoder, common (below it)."""

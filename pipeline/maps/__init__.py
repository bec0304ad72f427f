"""Pixels to styled maps: encoding, scoring, styles, COG/VRT, sidecars, provenance. Uses geo."""

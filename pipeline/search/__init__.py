"""Finding scenes: STAC APIs and files, item refs, harmonisation, Sentinel-2 facts. Uses geo."""

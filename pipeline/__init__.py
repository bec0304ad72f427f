"""The map half: from STAC searches to classified Cloud-Optimized GeoTIFFs, one sub-package per
stage. Imports run down this order only (``tests/test_layers.py``): ``geo``, ``search``, ``cube``,
``maps``, ``store``, ``workflow``, ``plan``, ``run``, then ``commands`` and ``cli``."""

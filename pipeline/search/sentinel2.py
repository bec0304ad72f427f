"""Facts about Sentinel-2 L2A products that several modules rely on."""

# Bands delivered at 20 m (the other model bands are at 10 m).
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")

# Scene classification (SCL) classes masked by default: no data, saturated or defective, cloud
# shadow, cloud of medium and of high probability, thin cirrus.
DEFAULT_CLOUD_MASK = (0, 1, 3, 8, 9, 10)

# The published training rule: cloud high probability, cirrus and snow are set to 0 and still
# enter the median.
REFERENCE_ZERO_CLASSES = (9, 10, 11)

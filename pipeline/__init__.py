"""From STAC searches to classified Cloud-Optimized GeoTIFFs with the TimeSenCLIP encoder."""

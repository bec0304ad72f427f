"""Map accuracy and areas: samples, reference points, estimators, zones. Uses maps, geo, encoder."""

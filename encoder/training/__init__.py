"""Training the encoder: config, learner, data, schedule, checkpoints, metrics, the loop."""

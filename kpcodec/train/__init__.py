"""Training of kpcodec's models (motion model and keypoint predictors)."""

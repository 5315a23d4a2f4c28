"""Training, evaluation and metrics (the training system around the plain model)."""

"""Experiment grids (issue 5): ablations, robustness to corrupted audio/video, speaker-graph
settings; every cell dev-selected and tested once, resumable, summarised with paired bootstrap
confidence intervals in a generated results page."""

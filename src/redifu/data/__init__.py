"""Dialogue containers, batching and datasets."""

"""Serving the notebook's model: its `serve` cell behind KServe's protocols."""

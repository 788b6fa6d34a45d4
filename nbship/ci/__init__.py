"""Notebooks as tests: nbval, papermill parameter sets, pipeline == notebook."""

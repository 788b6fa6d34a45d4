"""Watching a served model: golden signals, prediction distribution, input and prediction drift."""

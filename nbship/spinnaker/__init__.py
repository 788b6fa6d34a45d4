"""Spinnaker pipelines as code: offline validation (and, later, rendering and rehearsal)."""

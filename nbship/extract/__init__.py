"""Notebook -> StepGraph (def/use analysis, steps, edges, problems) -> pipeline source."""

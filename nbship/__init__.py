"""nbship: a tagged Jupyter notebook to a tested, traceable Kubeflow Pipelines v2 pipeline."""

__version__ = "0.1.0"

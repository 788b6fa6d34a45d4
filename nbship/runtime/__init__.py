"""What runs inside a pipeline step: serializers, the step wrapper, provenance."""

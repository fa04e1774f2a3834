"""Kubeflow pipelines of nasagent; ``search_pipeline.yaml`` is the compiled search pipeline (``make pipelines``)."""

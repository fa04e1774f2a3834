"""Kubeflow Pipelines (v2) components of nasagent: thin wrappers around the ``nasagent`` package.

| component | module | image | what it runs |
|---|---|---|---|
| ``prepare`` | ``components.prepare`` | trainer | ``prepare_dataset``: split once, store under ``datasets/`` |
| ``search_agent`` | ``components.search`` | agent | ``nasagent search`` with a cluster launcher, then the report |
| ``trial`` | ``components.trial`` | trainer | ``nasagent trial``: one architecture, standalone or a search's trial |
| ``finetune`` | ``components.finetune`` | trainer | ``nasagent.results.finetune.finetune_experiment`` for one rank |
| ``ensemble`` | ``components.ensemble`` | agent | ``nasagent.results.ensemble.ensemble_experiment`` on the test split |

All are *lightweight Python components* (``@dsl.component``) with ``install_kfp_package=False``:
KFP runs the function's source with the image's own Python, where nasagent (and with it kfp)
is installed, so nothing is pip-installed when a pod starts. That choice makes one definition
run both on a cluster (in the nasagent images, whose ``ENTRYPOINT`` the component's command
replaces) and under ``kfp.local``'s ``SubprocessRunner(use_venv=False)`` in the current
environment, which runs lightweight Python components only (container components need its
``DockerRunner``, which these machines cannot use). Each body only imports nasagent and calls it.

The default images are exactly what ``make images-push`` builds and pushes with its defaults
(``REGISTRY``, ``TAG`` = the package version; ``tests/test_images.py`` ties the two together):
a version tag, never ``latest``, so a run names one build. Push to your own registry with
``make images-push REGISTRY=...`` and pass ``agent_image``/``trainer_image``.

No ``from __future__ import annotations`` in these modules: KFP reads the parameter annotations
(``Output[Metrics]``) when the decorator runs and cannot resolve them from strings.
"""

REGISTRY = "ghcr.io/nasagent"
"""Where ``make images-push`` pushes by default (``mk/images.mk``: ``REGISTRY``)."""
VERSION = "0.1.0"
"""The images' tag: nasagent's version (``pyproject.toml``), ``make images-push``'s default ``TAG``."""
AGENT_IMAGE = f"{REGISTRY}/nasagent-agent:{VERSION}"
"""Default image of the CPU steps (``images/agent``); the pipeline's ``agent_image`` overrides it."""
TRAINER_IMAGE = f"{REGISTRY}/nasagent-trainer:{VERSION}"
"""Default image of the GPU steps (``images/trainer``, CUDA, torchvision); overridden by ``trainer_image``."""

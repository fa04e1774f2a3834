"""Kubeflow Pipelines (v2) components of nasagent: thin wrappers around the ``nasagent`` package.

| component | module | image | what it runs |
|---|---|---|---|
| ``prepare`` | ``components.prepare`` | trainer | ``nasagent.training.prepared.prepare_dataset``: split once, store under ``datasets/`` |
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

No ``from __future__ import annotations`` in these modules: KFP reads the parameter annotations
(``Output[Metrics]``) when the decorator runs and cannot resolve them from strings.
"""

AGENT_IMAGE = "nasagent-agent:latest"
"""Default image of the CPU steps (``images/agent``); the pipeline's ``agent_image`` overrides it."""
TRAINER_IMAGE = "nasagent-trainer:latest"
"""Default image of the GPU steps (``images/trainer``, CUDA, torchvision); overridden by ``trainer_image``."""

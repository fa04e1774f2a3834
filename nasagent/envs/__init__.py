"""The NAS Gym environment over the Neural Structure Code space (Gomez Robles & Vanschoren, §4).

:mod:`nasagent.envs.nas_env` holds the pure dynamics and the ``gymnasium`` environment;
:mod:`nasagent.strategies.env_driver` turns a searcher that acts in the environment inside out, so the agent
can ask it for networks to train and tell it their accuracies.
"""

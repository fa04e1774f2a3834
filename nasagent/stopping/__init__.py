"""Early stopping of hopeless trials (``--early-stop none|median|predict``): the rules, pure and testable.

- :mod:`nasagent.stopping.settings`: ``EarlyStopConfig``, the experiment's stored choice of rule and
  its settings (validated at the edge: bad values are one ``ConfigError`` line, exit 2);
- :mod:`nasagent.stopping.median`: Katib's and NNI's median stopping rule;
- :mod:`nasagent.stopping.predict`: Baker, Gupta, Raskar & Naik's performance prediction (ν-SVR
  sequential regression models and their probabilistic stopping rule);
- :mod:`nasagent.stopping.features`: what the rules read of a trial (its learning curve, its
  architecture's size and depth).

The rules decide nothing about how a decision travels: the agent's judge
(:mod:`nasagent.search.judge`) applies them to the epochs trials record in the store and writes
each decision back there, where the trial (a local worker or a cluster pod alike) reads it after
each epoch (:mod:`nasagent.execution.epochs`).
"""

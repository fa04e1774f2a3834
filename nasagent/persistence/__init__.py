"""Persistence: a PostgreSQL database (embedded under NASAGENT_HOME, or any server by URL).

Typical use::

    store = Store.connect(resolve_db_url(args.db))
    experiment = store.get_experiment("demo")
    with store.transaction() as tx:   # one agent step
        trial_id = tx.insert_trial(experiment.id, str(arch), arch.digest, epsilon)
"""

from __future__ import annotations

from nasagent.errors import DuplicateTrialError
from nasagent.persistence.embedded import embedded_url, nasagent_home, redact_url, resolve_db_url, stop_embedded
from nasagent.persistence.postgres import Experiment, Store, StoreTransaction, TrialRow

__all__ = [
    "DuplicateTrialError",
    "Experiment",
    "Store",
    "StoreTransaction",
    "TrialRow",
    "embedded_url",
    "nasagent_home",
    "redact_url",
    "resolve_db_url",
    "stop_embedded",
]

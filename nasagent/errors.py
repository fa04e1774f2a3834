"""Every exception nasagent raises, in one module.

The tree::

    NasagentError                  base of every nasagent exception
    ├── UserError                  the user can fix it: the CLI prints one line and exits 2
    │   ├── ConfigError            a flag, space, option, schedule or experiment setting is invalid
    │   ├── DataError              the dataset is missing, unreadable or malformed
    │   ├── StoreError             the database cannot be reached, or names no such experiment or trial
    │   ├── ArtifactError          the artifact store (file://, s3://) cannot be read or written
    │   ├── ModelError             a stored model or checkpoint is missing or unreadable
    │   └── ClusterError           the Kubernetes or KFP API cannot be reached, or refuses the search
    │       └── InfrastructureError  the machines cannot run trials (faults in a row, an image that cannot be pulled)
    └── InternalError              a broken invariant: a bug, shown with its traceback
        └── DuplicateTrialError    the agent tried to record an architecture twice in one experiment

    ApiError                       a cluster API refused a request or could not be reached (status: HTTP code)
    ├── KubeApiError               ... the Kubernetes API (the launcher's client interface raises it)
    │   └── WatchExpired           ... a watch's resourceVersion is too old (410 Gone): relist
    └── PipelineApiError           ... the KFP API
    AttemptError                   starting one trial attempt failed in a way a later attempt may not

``UserError`` and its subclasses are what a user can cause: bad data, configs, flags, URLs, an
unreachable service. ``InternalError`` means nasagent itself is wrong. ``ApiError`` and
``AttemptError`` are the launchers' own signals, caught and handled (retried, or turned into a
``ClusterError``) inside :mod:`nasagent.execution`; they never reach the user as they are.
"""

from __future__ import annotations


class NasagentError(Exception):
    """Base of every nasagent exception."""


class UserError(NasagentError):
    """A problem with the user's input or environment, never a bug: one line, exit code 2."""


class ConfigError(UserError):
    """A search space, preset, flag, option or experiment setting is invalid."""


class DataError(UserError):
    """The dataset is missing, unreadable or malformed."""


class StoreError(UserError):
    """The database cannot be reached, or the experiment (or trial) does not exist."""


class ArtifactError(UserError):
    """The artifact store cannot be reached, read or written (bad URL, credentials, bucket, disk)."""


class ModelError(UserError):
    """A stored model or checkpoint is missing or cannot be read."""


class ClusterError(UserError):
    """The Kubernetes or KFP API cannot be reached, or refuses what the search needs."""


class InfrastructureError(ClusterError):
    """The machines cannot run trials: infrastructure failures in a row, one trial requeued too
    often, an image that cannot be pulled, a trial configuration error. The search stopped with
    its state intact: fix the cause and run the same command again to continue."""


class InternalError(NasagentError):
    """An invariant nasagent relies on does not hold: a bug, reported with its traceback."""


class DuplicateTrialError(InternalError):
    """The agent tried to record an architecture its experiment already has (the replay dictionary
    guarantees each architecture is trained at most once, so this is a bug, not bad input)."""


class ApiError(Exception):
    """A cluster API (Kubernetes or KFP) refused a request (``status`` = HTTP code) or could not be
    reached (None). The launchers' client interfaces raise subclasses of it."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class KubeApiError(ApiError):
    """The Kubernetes API refused a request or could not be reached."""


class WatchExpired(KubeApiError):
    """A watch's resourceVersion is no longer available (410 Gone): list again, then watch from there."""

    def __init__(self, message: str = "watch expired (410 Gone)") -> None:
        super().__init__(410, message)


class PipelineApiError(ApiError):
    """The KFP API refused a request or could not be reached."""


class AttemptError(Exception):
    """Starting an attempt failed in a way a later attempt may not (a timeout, a 5xx, a quota).
    ``fault`` names the kind of infrastructure failure (a ``nasagent.core.trial.Fault`` value)."""

    def __init__(self, message: str, fault: str = "api") -> None:
        super().__init__(message)
        self.fault = fault

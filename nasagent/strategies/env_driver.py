"""Searchers that act in the NAS environment, run inside out for the agent's ask/tell loop.

A reinforcement-learning agent steps an environment and gets its reward at once; nasagent's agent
hands networks to workers and hears back minutes later, perhaps after a crash. :class:`EnvStrategy`
bridges the two. ``ask`` runs the policy in an environment *lane* until a step needs a network's
accuracy and returns that network; ``tell`` completes the step with the accuracy (times σ for a
pointer shift), lets the learner learn from the transition and moves the lane on. Steps whose
reward needs no evaluation (out-of-bounds pointers, invalid networks, shifts at σ = 0: reward 0)
complete inside ``ask``. A replay-dictionary hit is the environment's cache: the agent tells the
stored accuracy at once, so no network is trained twice.

Lanes. With W workers the agent asks again before the first answer is back, so every outstanding
proposal has a lane of its own: an independent copy of the environment with the learner's per-lane
memory (e.g. the recurrent state). With W = 1 there is one lane, the paper's single-worker setting;
a lane is added only when every lane waits for an accuracy. A told accuracy completes every lane
waiting on that network (two lanes may propose the same network, which the agent trains once), and
a tell for a network no lane waits on is ignored: the agent tells such duplicates again after the
first, and after a resume only once.

``state_dict`` holds everything (RNG, lanes with their pending actions, counters, the learner's
state), so a restored strategy continues exactly where the saved one stood.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasagent.core.limits import Limits
from nasagent.core.networks import Network
from nasagent.envs.nas_env import NSCSpace, NSCState, Step, step
from nasagent.strategies.base import Proposal, Strategy

# A guard against a policy that never asks for an evaluation (e.g. shifting pointers out of
# bounds forever); far beyond anything a learning policy does between two proposals.
MAX_SILENT_STEPS = 100_000
RECENT = 100


@dataclass(frozen=True)
class EnvOptions:
    """The NAS environment's ``--option`` settings, shared by every searcher acting in it (the options
    of dqn and meta-a2c extend this class). Defaults are the paper's (§6)."""

    depth: int = NSCSpace.depth
    """d: the most NSC rows a state holds (§6.1: 10)."""
    tau: int | None = None
    """τ: the most actions in one episode; None: 10 chained, 20 multi-branch (§6.1, §6.2)."""
    multi_branch: bool = NSCSpace.multi_branch
    """14 actions with merges and pointer shifts instead of the 8 chain-structured ones."""
    sigma: float = NSCSpace.sigma
    """σ: a pointer shift's reward is σ times the accuracy (§6.2 tried 0.0 and 0.1)."""
    padding: str = NSCSpace.padding
    """``valid`` (the authors' code: no padding, so deep chains become invalid, rule (e)) or ``same``."""
    score: str = "final"
    """A network's reward: its ``final`` epoch's validation accuracy (§4.1.2) or its ``best`` epoch's."""
    restarts: bool = False
    """Apply MetaQNN's first-epoch restart rule to the environment's networks (the paper does not)."""

    def space(self, input_shape: tuple[int, int, int], num_classes: int, limits: Limits | None = None) -> NSCSpace:
        """The environment these settings describe for data of this shape and class count, rejecting
        networks over ``limits`` (``--max-params``, ``--max-macs``; ConfigError if none can meet them)."""
        tau = self.tau if self.tau is not None else (20 if self.multi_branch else 10)
        shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
        limits = limits or Limits()
        return NSCSpace(
            shape,
            int(num_classes),
            self.depth,
            tau,
            self.multi_branch,
            self.sigma,
            self.padding,
            max_params=limits.max_params,
            max_macs=limits.max_macs,
        )


@dataclass
class Lane:
    """One copy of the environment: its state and the action whose accuracy it waits for."""

    state: NSCState = field(default_factory=NSCState)
    pending: int | None = None
    prev_action: int | None = None
    """The lane's previous action; None until its first step (the start of its trial)."""
    prev_reward: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.to_json(),
            "pending": self.pending,
            "prev_action": self.prev_action,
            "prev_reward": self.prev_reward,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lane:
        return cls(NSCState.from_json(data["state"]), data["pending"], data["prev_action"], float(data["prev_reward"]))


class EnvStrategy(Strategy):
    """Base of the searchers acting in the NAS environment. Subclasses choose actions (``act``) and
    learn from transitions (``learn``); this class runs the lanes and the persistence."""

    name = "env"

    def __init__(self, space: NSCSpace, seed: int) -> None:
        self.space = space
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.lanes: list[Lane] = []
        self.env_steps = 0
        self.episodes = 0
        self.recent: list[float] = []

    # -- what a searcher provides ---------------------------------------------------------------
    @abstractmethod
    def act(self, lane_id: int) -> int:
        """The action of lane ``lane_id`` in its current state (``self.lanes[lane_id]``)."""

    def learn(self, lane_id: int, result: Step, reward: float) -> None:
        """Called after each completed step; the lane already holds the next state (a fresh one
        when ``result.done``) and ``prev_action``/``prev_reward`` of this step."""

    def add_lane(self) -> None:
        """Set up the learner's memory of a lane that was just appended to ``self.lanes``."""

    def learner_state(self) -> dict[str, Any]:
        """The learner's part of ``state_dict`` (JSON)."""
        return {}

    def restore_learner(self, state: dict[str, Any]) -> None:
        """Load what ``learner_state`` returned."""

    def epsilon_now(self) -> float | None:
        """The exploration rate recorded with a proposal, for searchers that have one."""
        return None

    def summary(self) -> dict[str, float]:
        """Plain numbers ``nasagent status`` shows."""
        return {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "lanes": len(self.lanes),
            "mean_reward_last_100_steps": float(np.mean(self.recent)) if self.recent else 0.0,
        }

    # -- the ask/tell inversion -----------------------------------------------------------------
    def ask(self, unique_launched: int) -> Proposal:
        lane_id = next((i for i, lane in enumerate(self.lanes) if lane.pending is None), None)
        if lane_id is None:
            self.lanes.append(Lane())
            lane_id = len(self.lanes) - 1
            self.add_lane()
        for _ in range(MAX_SILENT_STEPS):
            lane = self.lanes[lane_id]
            action = int(self.act(lane_id))
            result = step(self.space, lane.state, action)
            if result.network is not None:
                lane.pending = action
                info = {"lane": lane_id, "action": action, "kind": result.kind, "env_step": self.env_steps}
                return Proposal(result.network, epsilon=self.epsilon_now(), info=info)
            self._complete(lane_id, result, 0.0)
        raise RuntimeError(f"{self.name}: {MAX_SILENT_STEPS} steps in a row needed no network evaluated")

    def tell(self, arch: Network, reward: float, first_training: bool) -> None:
        for lane_id, lane in enumerate(self.lanes):
            if lane.pending is None:
                continue
            result = step(self.space, lane.state, lane.pending)
            if result.network is not None and result.network.digest == arch.digest:
                lane.pending = None
                self._complete(lane_id, result, result.scale * float(reward))

    def _complete(self, lane_id: int, result: Step, reward: float) -> None:
        lane = self.lanes[lane_id]
        lane.state = NSCState() if result.done else result.after
        lane.prev_action, lane.prev_reward = result.action, reward
        self.env_steps += 1
        self.episodes += int(result.done)
        self.recent = (self.recent + [reward])[-RECENT:]
        self.learn(lane_id, result, reward)

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "space": self.space.describe(),
            "lanes": [lane.to_json() for lane in self.lanes],
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "recent": list(self.recent),
            "learner": self.learner_state(),
            "summary": self.summary(),
        }

    def restore(
        self, state: dict[str, Any] | None, values: dict[tuple[str, str], float], replay: list[tuple[Network, float]]
    ) -> None:
        """A new search keeps the freshly built strategy; otherwise everything comes from ``state``."""
        if state is None:
            return
        self.rng.bit_generator.state = state["rng"]
        self.lanes = [Lane.from_json(lane) for lane in state["lanes"]]
        self.env_steps = int(state["env_steps"])
        self.episodes = int(state["episodes"])
        self.recent = [float(r) for r in state["recent"]]
        self.restore_learner(state["learner"])

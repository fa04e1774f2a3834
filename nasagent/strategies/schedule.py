"""The ε schedule of MetaQNN (Table 2) and its proportional scaling to smaller budgets."""

from __future__ import annotations

from dataclasses import dataclass

from nasagent.errors import ConfigError

# Table 2 of Baker et al. (2017): unique models trained at each ε.
PAPER_SCHEDULE: tuple[tuple[float, int], ...] = (
    (1.0, 1500),
    (0.9, 100),
    (0.8, 100),
    (0.7, 100),
    (0.6, 150),
    (0.5, 150),
    (0.4, 150),
    (0.3, 150),
    (0.2, 150),
    (0.1, 150),
)


@dataclass(frozen=True)
class EpsilonSchedule:
    """Steps of (ε, number of unique models trained at that ε)."""

    steps: tuple[tuple[float, int], ...]

    @property
    def total(self) -> int:
        return sum(count for _, count in self.steps)

    def position(self, unique_launched: int) -> tuple[int, float]:
        """(step index, ε) for the next unique model; past the end the last ε holds."""
        seen = 0
        for index, (eps, count) in enumerate(self.steps):
            seen += count
            if unique_launched < seen:
                return index, eps
        return len(self.steps) - 1, self.steps[-1][0]

    @classmethod
    def paper(cls, trials: int | None = None) -> EpsilonSchedule:
        """Table 2, or Table 2 scaled to ``trials`` unique models (largest-remainder rounding, so the
        counts sum exactly to ``trials`` and keep the paper's proportions)."""
        if trials is None:
            return cls(PAPER_SCHEDULE)
        if trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {trials}")
        full = sum(c for _, c in PAPER_SCHEDULE)
        exact = [trials * c / full for _, c in PAPER_SCHEDULE]
        counts = [int(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
        for i in by_remainder[: trials - sum(counts)]:
            counts[i] += 1
        return cls(tuple((eps, n) for (eps, _), n in zip(PAPER_SCHEDULE, counts) if n > 0))

    @classmethod
    def parse(cls, text: str, trials: int | None = None) -> EpsilonSchedule:
        """``paper`` (scaled to ``trials`` when given) or explicit steps ``1.0:30,0.5:10,0.1:10``."""
        if text == "paper":
            return cls.paper(trials)
        steps = []
        try:
            for part in text.split(","):
                eps, count = part.split(":")
                steps.append((float(eps), int(count)))
        except ValueError:
            raise ConfigError(f"--schedule: expected 'paper' or EPS:COUNT,... got {text!r}") from None
        if not steps or any(not 0.0 <= e <= 1.0 or c < 1 for e, c in steps):
            raise ConfigError(f"--schedule: each ε must be in [0, 1] and each count >= 1: {text!r}")
        schedule = cls(tuple(steps))
        if trials is not None and trials != schedule.total:
            raise ConfigError(f"--trials {trials} disagrees with --schedule, which trains {schedule.total}")
        return schedule

"""Best-epoch tracking and early stopping on a validation metric: one rule for the in-process loop and the
Ray Train workers (whose state goes into each checkpoint, so a resumed run keeps counting)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    """Track the best `metric` (higher is better); `should_stop` once `patience` validations in a row brought
    no new best (`patience` None: never stop early)."""

    metric: str
    patience: int | None = None
    best: float = -math.inf
    since_best: int = 0

    def update(self, metrics: dict) -> bool:
        """Record one validation; True when it is a new best."""
        value = float(metrics[self.metric])
        if value > self.best:
            self.best, self.since_best = value, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, metric: str, patience: int | None, state: dict | None) -> EarlyStopping:
        """A stopper for `metric` / `patience`, continuing `state` (from a checkpoint) when it tracked the
        same metric."""
        stopper = cls(metric, patience)
        if state and state.get("metric") == metric:
            stopper.best, stopper.since_best = float(state["best"]), int(state["since_best"])
        return stopper

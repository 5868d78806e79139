"""What every policy-gradient learner shares: the optimiser and its schedules, a seeded RNG, the step count.

`ReinforceLearner` (on-policy, `training/loop.py`) and `OffPolicyLearner` (`offpolicy/learner.py`) each
hold one `PolicyOptimizer` and differ only in their step function (composition, not inheritance).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from barp_ray.training.config import TrainConfig


class PolicyOptimizer:
    """AdamW with the cosine lr schedule, the linear entropy-bonus decay, gradient clipping, a seeded
    generator for sampling, a checkpointable step counter, and (`cfg.ema_epochs`) an exponential moving
    average of the weights: `judged_policy` is what validation scores and checkpoints export."""

    def __init__(self, policy: nn.Module, cfg: TrainConfig, seed: int) -> None:
        self.policy = policy
        self.cfg = cfg
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.device = next(policy.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.step_count = 0
        self.module = getattr(policy, "module", policy)  # DDP wraps the policy: average the policy itself
        self.average: AveragedModel | None = None
        if cfg.ema_epochs:
            # decay per step: a horizon of `ema_epochs` epochs whatever the schedule's steps per epoch
            decay = max(0.0, 1.0 - 1.0 / (cfg.ema_epochs * cfg.steps_per_epoch))
            self.average = AveragedModel(self.module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def judged_policy(self) -> nn.Module:
        """The weights validation scores and checkpoints export: the moving average, else the live policy."""
        return self.average.module if self.average is not None else self.module

    @property
    def beta(self) -> float:
        """The entropy coefficient at the current step."""
        from barp_ray.training.loop import entropy_coefficient

        return entropy_coefficient(self.cfg, self.step_count)

    def apply(self, loss: torch.Tensor) -> None:
        """One optimiser step on `loss`: scheduled lr, clipped gradients, step counter."""
        from barp_ray.training.loop import learning_rate

        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, self.step_count)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step_count += 1
        if self.average is not None:
            self.average.update_parameters(self.module)

    def state_dict(self) -> dict:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "step_count": self.step_count,
            "generator": self.generator.get_state(),
        }
        if self.average is not None:
            state["average"] = self.average.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step_count"])
        self.generator.set_state(state["generator"].cpu())  # RNG state is a CPU ByteTensor
        if self.average is not None and "average" in state:
            self.average.load_state_dict(state["average"])

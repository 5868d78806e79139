"""Every hyperparameter of a BaRP training run, in one YAML-loadable object."""

from __future__ import annotations

from pydantic import Field

from barp_ray.config import JobConfig
from barp_ray.policy.model import HeadType
from barp_ray.training.reward import TauRule


class TrainConfig(JobConfig):
    """REINFORCE on Ray Train. Defaults are the ones chosen on the validation split (see README)."""

    # data and outputs
    data: str = Field(default="runs/demo/data", description="prepared + embedded shard directory")
    storage_path: str = Field(default="runs/ray_results", description="Ray Train storage: local path or URI")
    name: str = Field(default="barp-train", description="run name under storage_path; same name resumes")
    exclude_tasks: list[str] = Field(default_factory=list, description="train without these tasks (LOTO)")
    # Ray Train
    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=0.5, gt=0, description="fractional so Ray Data keeps a CPU")
    max_failures: int = Field(default=2, ge=-1, description="worker-group restarts from the last checkpoint")
    # optimisation
    seed: int = 0
    epochs: int = Field(default=20, ge=1)
    steps_per_epoch: int = Field(default=150, ge=1)
    batch_size: int = Field(default=512, ge=2, description="global batch; split across workers")
    lr: float = Field(default=1e-3, gt=0)
    lr_final_fraction: float = Field(default=0.1, gt=0, le=1, description="cosine decay to lr * this")
    weight_decay: float = Field(default=1e-4, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    # reward and exploration
    tau: float | None = Field(default=None, gt=0, description="cost scale in USD; None derives it")
    tau_rule: TauRule = "p99_top_model"
    beta_start: float = Field(default=0.1, ge=0, description="entropy bonus at step 0")
    beta_end: float = Field(default=0.005, ge=0, description="entropy bonus after the decay")
    beta_decay_fraction: float = Field(default=0.7, gt=0, le=1, description="share of steps to decay over")
    baseline_bins: int = Field(default=10, ge=1, description="batch-mean baseline per w_c bin (1: plain)")
    normalize_advantage: bool = Field(default=False, description="divide (r - b) by its std (per w_c bin)")
    samples_per_prompt: int = Field(default=1, ge=1, description="actions drawn per (x, w) in a batch")
    # policy
    head: HeadType = "mlp"
    hidden_dim: int = Field(default=256, gt=0)
    pref_dim: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    inject_failure_at_epoch: int | None = Field(
        default=None, description="testing: crash the workers once at this epoch to exercise FailureConfig"
    )
    # validation
    val_grid_points: int = Field(default=11, ge=2, description="w_c grid for the validation curve")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

"""Every hyperparameter of a BaRP training run, in one YAML-loadable object."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from barp_ray.config import JobConfig, Location
from barp_ray.objective import CostScale, CostScaleKind, PreferenceSampling, TauRule, build_cost_scale
from barp_ray.policy.model import HeadType, Pooling


class TrainConfig(JobConfig):
    """REINFORCE on Ray Train. Defaults are the ones chosen on the validation split (see README)."""

    # data and outputs
    data: Location = Field(default="runs/demo/data", description="prepared + embedded shard directory")
    storage_path: Location = Field(default="runs/ray_results", description="Ray Train storage: local path or URI")
    name: str = Field(default="barp-train", description="run name under storage_path; same name resumes")
    exclude_tasks: list[str] = Field(default_factory=list, description="train without these tasks (LOTO)")
    # Ray Train
    num_workers: int = Field(default=1, ge=1, description="Ray Train workers (one per GPU with use_gpu)")
    use_gpu: bool = Field(default=False, description="one GPU per worker")
    cpus_per_worker: float = Field(default=0.5, gt=0, description="fractional so Ray Data keeps a CPU")
    max_failures: int = Field(default=2, ge=-1, description="worker-group restarts from the last checkpoint")
    # ingestion (barp_ray.training.ingest)
    ingest: Literal["auto", "memory", "stream"] = Field(
        default="auto",
        description="how a worker gets its rows: `memory` reads its shard once into tensors, "
        "`stream` pulls shuffled batches from Ray Data pass after pass, `auto` streams above the memory budget",
    )
    worker_memory_budget_mb: float = Field(
        default=1024.0,
        gt=0,
        description="with ingest=auto: stream when a worker's share of the training rows "
        "would take more than this many MiB in memory",
    )
    shuffle_buffer_rows: int = Field(
        default=65_536, ge=1, description="with streaming: rows in each worker's local shuffle buffer"
    )
    # optimisation
    seed: int = Field(default=0, description="seed of the initial weights and every sampling draw")
    passes: float | None = Field(
        default=400.0,
        gt=0,
        description="schedule in interactions per training prompt (one interaction = one sampled model's "
        "score and cost); sets steps_per_epoch from the training-set size (see `for_data`). None: fixed "
        "`steps_per_epoch` (also used when steps_per_epoch is given and passes is not). Chosen on validation "
        "across pools (benchmarks/barp_defaults.py)",
    )
    epochs: int = Field(default=20, ge=1, description="validation points (checkpoints) over the run")
    steps_per_epoch: int = Field(
        default=150, ge=1, description="learner steps between validations (derived from `passes` when that is set)"
    )
    patience: int | None = Field(
        default=8,
        ge=1,
        description="stop after this many validations without a new best `select_metric` (None: run every epoch)",
    )
    select_metric: Literal["val_reward", "val_aiq"] = Field(
        default="val_reward",
        description="validation metric that picks the best epoch and drives early stopping: "
        "mean greedy reward over the w grid (smoother than AIQ), or AIQ",
    )
    batch_size: int = Field(default=256, ge=2, description="global batch; split across workers")
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate at step 0")
    lr_final_fraction: float = Field(default=0.1, gt=0, le=1, description="cosine decay to lr * this")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(default=1.0, gt=0, description="gradient-norm clip")
    # reward and exploration
    tau: float | None = Field(default=None, gt=0, description="cost scale in USD; None derives it")
    tau_rule: TauRule = Field(
        default="p99_top_model", description="how tau is derived when not given (barp_ray.objective.derive_tau)"
    )
    cost_scale: CostScaleKind = Field(
        default="log",
        description="map from USD to the reward's cost term: log between a floor and tau (equal cost ratios "
        "weigh the same) or linear min(c / tau, 1), the paper's (barp_ray.objective.CostScale)",
    )
    cost_floor: float | None = Field(
        default=None, gt=0, description="log scale's floor in USD; None derives it (objective.derive_cost_floor)"
    )
    beta_start: float = Field(default=0.1, ge=0, description="entropy bonus at step 0")
    beta_end: float = Field(default=0.005, ge=0, description="entropy bonus after the decay")
    beta_decay_fraction: float = Field(default=0.7, gt=0, le=1, description="share of steps to decay over")
    preference_sampling: PreferenceSampling = Field(
        default="uniform",
        description="how each example's w_c is drawn: uniform on the simplex (the paper) or arcsine "
        "(Beta(1/2, 1/2): more examples near both ends of the dial)",
    )
    baseline_bins: int = Field(default=10, ge=1, description="batch-mean baseline per w_c bin (1: plain)")
    leave_one_out: bool = Field(
        default=False,
        description="baseline of each sampled model = the mean reward of the other samples_per_prompt - 1 models "
        "sampled for the same (x, w) (REINFORCE leave-one-out, Kool et al. 2019) instead of the w_c-binned "
        "batch mean; needs samples_per_prompt >= 2",
    )
    normalize_advantage: bool = Field(default=False, description="divide (r - b) by its std (per w_c bin)")
    samples_per_prompt: int = Field(default=1, ge=1, description="actions drawn per (x, w) in a batch")
    w_samples: int = Field(
        default=1,
        ge=1,
        description="re-scalarise each observed (a, q, c) at this many preferences w (the first "
        "is the one a was sampled under; the others are importance-weighted, ratio clipped at `ratio_clip`)",
    )
    ratio_clip: float = Field(default=5.0, gt=0, description="clip of pi(a|x,w') / pi(a|x,w) for extra w")
    critic: Literal["none", "mlp"] = Field(
        default="none",
        description="a learned control variate (training only): 'mlp' fits predicted score and cost of every "
        "model to the observed bandit feedback and uses them in the doubly robust policy gradient "
        "(training/critic.py); 'none' is plain REINFORCE with the batch baseline",
    )
    critic_hidden_dim: int = Field(default=256, gt=0, description="hidden width of the critic MLP")
    critic_lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate of the critic")
    critic_weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay of the critic")
    critic_direct: bool = Field(
        default=True,
        description="true: the doubly robust gradient (the critic's sum over every model plus the sampled "
        "model's correction); false: the critic only as a baseline, r - sum_a pi(a) r_hat(a)",
    )
    ema_epochs: float | None = Field(
        default=0.5,
        gt=0,
        description="validate and export an exponential moving average of the weights with a horizon of this "
        "many epochs (decay 1 - 1 / (ema_epochs * steps_per_epoch)); None: the live weights. Chosen on "
        "validation across pools (README, 'Weight averaging')",
    )
    refit: bool = Field(
        default=False,
        description="after the best epoch is selected on val, train a fresh policy on train + val for that "
        "many epochs of the same schedule and export it (the learned baselines fit on train + val too); "
        "its validation metrics are the selection run's. Judged on validation by benchmarks/refit.py",
    )
    # policy
    head: HeadType = Field(default="mlp", description="decision head g over [h(x); phi(w)]")
    hidden_dim: int = Field(default=256, gt=0, description="hidden width of the decision head")
    pref_dim: int = Field(default=32, gt=0, description="width of the preference encoder phi(w)")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout in the MLP head")
    pooling: Pooling = Field(
        default="mean",
        description="mean: the encoder's mean pool (the shards' embeddings); attention: a learned attention pool "
        "over the encoder's token states, in-process runs on a token-state table only (benchmarks/barp_defaults.py "
        "--token-states; measured on validation, not a default)",
    )
    encoder_finetune: Literal["none", "lora"] = Field(
        default="none",
        description="none: the frozen encoder (the paper's); lora: LoRA adapters on the encoder trained end to end "
        "by the REINFORCE loss, in-process runs on a token-id table only (benchmarks/lora_finetune.py)",
    )
    lora_rank: int = Field(default=8, ge=1, description="rank of the LoRA adapters (encoder_finetune: lora)")
    inject_failure_at_epoch: int | None = Field(
        default=None, description="testing: crash the workers once at this epoch to exercise FailureConfig"
    )
    # validation
    val_grid_points: int = Field(default=11, ge=2, description="w_c grid for the validation curve")
    val_max_rows: int | None = Field(
        default=50_000,
        gt=0,
        description="validate on a seeded random subset of this many val rows when the split is larger (every "
        "worker holds its val rows: this bounds their memory at log scale); null: the whole split",
    )

    @model_validator(mode="before")
    @classmethod
    def _fixed_steps_mean_no_passes(cls, data):
        """`steps_per_epoch` given without `passes` fixes the schedule in steps: store that as `passes: null`,
        so that the config written to YAML (or sent to a Tune trial or a Ray task) keeps its meaning when read
        back, instead of the default `passes` re-deriving the steps."""
        if isinstance(data, dict) and "steps_per_epoch" in data and "passes" not in data:
            data = {**data, "passes": None}
        return data

    @model_validator(mode="after")
    def _leave_one_out_needs_samples(self):
        if self.leave_one_out and self.samples_per_prompt < 2:
            raise ValueError(
                "leave_one_out: true needs samples_per_prompt >= 2 (the other samples of the same prompt and w "
                "are the baseline); set samples_per_prompt: 4, or leave_one_out: false"
            )
        return self

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def resolve_cost_scale(self, train_costs: np.ndarray | None) -> CostScale:
        """The run's cost scale: `tau` / `cost_floor` as configured, the rest derived from the training costs."""
        return build_cost_scale(train_costs, self.cost_scale, self.tau, self.cost_floor, self.tau_rule)

    def interactions_per_step(self) -> int:
        """Logged interactions (prompt, sampled model, its score and cost) one learner step consumes."""
        return self.batch_size * self.samples_per_prompt

    def for_data(self, n_train: int) -> TrainConfig:
        """This config with `steps_per_epoch` derived from `passes` for `n_train` training prompts (a copy;
        unchanged when `passes` is None): total interactions = passes * n_train, spread over `epochs`."""
        fixed_steps = "steps_per_epoch" in self.model_fields_set and "passes" not in self.model_fields_set
        if self.passes is None or fixed_steps:
            return self.model_copy()
        if n_train < 1:
            raise ValueError("cannot derive a schedule from an empty training split")
        total = self.passes * n_train / self.interactions_per_step()
        return self.model_copy(update={"steps_per_epoch": max(1, math.ceil(total / self.epochs))})

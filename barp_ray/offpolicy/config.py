"""Configs of the off-policy jobs: training from decision logs (`barp train-offpolicy`) and OPE (`barp ope`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from barp_ray.config import JobConfig, Location
from barp_ray.offpolicy.logged import MissingFeedback
from barp_ray.training.config import TrainConfig

Weighting = Literal["clipped_ips", "snips", "dr"]


class LogSource(JobConfig):
    """Where the logged bandit rows come from and how unusable rows are treated."""

    logs: Location = Field(description="decision log root of the Serve router (local path or URI)")
    embeddings_from: Location | None = Field(
        default=None, description="embedded shard folder to look logged prompts up in by hash (else encode text)"
    )
    missing_feedback: MissingFeedback = Field(default="skip", description="rows without feedback: skip or default")
    default_score: float | None = Field(default=None, ge=0, le=1, description="score when missing_feedback=default")
    prompt_split: str | None = Field(
        default=None, description="keep only logged prompts of this split of `embeddings_from` (e.g. train)"
    )


class OffPolicyTrainConfig(TrainConfig):
    """Importance-weighted REINFORCE on logged bandit rows; every other hyperparameter as in `TrainConfig`.

    `data` (the on-policy shard folder) is not read for training; the logs are.
    """

    source: LogSource = Field(description="the decision log to learn from and how its rows are read")
    name: str = Field(default="barp-offpolicy", description="run name under storage_path; same name resumes")
    weighting: Weighting = Field(
        default="snips",
        description="clipped_ips, snips (self-normalised per batch), or dr (doubly robust: a "
        "reward model fitted on the logs for every model + the clipped IPS correction of the logged one)",
    )
    clip: float = Field(default=20.0, gt=0, description="importance weights above this are clipped")
    resample_preferences: bool = Field(
        default=True, description="draw w ~ U(simplex) per step (outcomes do not depend on w); else the logged w"
    )
    val_fraction: float = Field(default=0.15, gt=0, lt=1, description="logged prompts held out for selection")
    init_policy: Location | None = Field(default=None, description="warm start from this checkpoint (e.g. the logger)")
    epochs: int = Field(default=20, ge=1, description="validation points (checkpoints) over the run")
    steps_per_epoch: int = Field(default=150, ge=1, description="learner steps between validations")
    batch_size: int = Field(default=256, ge=2, description="logged rows per step (global; split across workers)")


class OPEConfig(JobConfig):
    """Off-policy evaluation of a candidate checkpoint on a decision log."""

    source: LogSource = Field(description="the decision log the estimates are computed on")
    candidate: Location = Field(description="policy checkpoint to evaluate (greedy, as served)")
    baseline: Location | None = Field(default=None, description="checkpoint to compare with (default: the logger)")
    w_grid: list[float] = Field(default=[0.0, 0.5, 1.0], description="preferences w_c to estimate at")
    estimators: list[Literal["ips", "snips", "dr"]] = Field(
        default=["ips", "snips", "dr"], description="estimators to report"
    )
    reward_model: Literal["logs", "full_information"] = Field(
        default="logs", description="DR's outcome model: fitted on the logs, or the full-information router"
    )
    reward_data: Location | None = Field(default=None, description="shard folder for reward_model=full_information")
    clip: float | None = Field(default=None, gt=0, description="clip importance weights (None: unbiased IPS)")
    bootstrap: int = Field(default=1000, ge=100, description="bootstrap resamples per interval")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - coverage of the intervals")
    tau: float | None = Field(default=None, gt=0, description="cost scale (default: the candidate's)")
    seed: int = Field(default=0, description="seed of the bootstrap and the reward model")
    out_dir: Location = Field(default="runs/ope", description="ope.json and ope.md go here")


def read_source(source: LogSource, models: list[str] | None = None, encoder: str | None = None):
    """The `LoggedBandit` rows a `LogSource` names (see `read_logged_bandit`)."""
    from barp_ray.offpolicy.logged import read_logged_bandit

    embeddings_from, hashes = source.embeddings_from, None
    if source.prompt_split is not None:
        if embeddings_from is None:
            raise ValueError("prompt_split: needs embeddings_from (the shard folder whose split it names)")
        from barp_ray.data.shards import read_shards

        embeddings_from = read_shards(embeddings_from)  # read once: the split here, the embeddings below
        hashes = set(embeddings_from.where_split(source.prompt_split).content_hashes)
    return read_logged_bandit(
        source.logs,
        models=models,
        embeddings_from=embeddings_from,
        encoder=encoder,
        missing_feedback=source.missing_feedback,
        default_score=source.default_score,
        prompt_hashes=hashes,
    )

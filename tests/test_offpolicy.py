"""Off-policy learning and evaluation: estimators by hand, log reading and its errors, a toy that must be
learned from uniformly random logs (in-process and on Ray Train from a real parquet decision log)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
import torch

from barp_ray.offpolicy.estimators import (
    bootstrap_interval,
    doubly_robust,
    effective_sample_size,
    estimate_all,
    importance_weights,
    ips,
    snips,
)
from barp_ray.offpolicy.logged import LoggedBandit, read_logged_bandit
from barp_ray.serving.decision_log import DecisionLog
from barp_ray.serving.log_store import new_decision_id

# ---- estimators against hand-computed values ----------------------------------------------------------
ACTIONS = np.array([0, 1, 0, 1])
PROPENSITIES = np.array([0.5, 0.25, 0.8, 0.5])
Y = np.array([1.0, 0.0, 1.0, 1.0])
TARGET = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
Y_HAT = np.array([[0.6, 0.4], [0.5, 0.5], [0.9, 0.2], [0.3, 0.7]])


def test_importance_weights_by_hand():
    np.testing.assert_allclose(importance_weights(TARGET, ACTIONS, PROPENSITIES), [2.0, 4.0, 0.625, 0.0])
    np.testing.assert_allclose(importance_weights(TARGET, ACTIONS, PROPENSITIES, clip=1.5), [1.5, 1.5, 0.625, 0.0])
    assert effective_sample_size(np.array([2.0, 4.0, 0.625, 0.0])) == pytest.approx(6.625**2 / 20.390625)


def test_ips_snips_dr_by_hand():
    rho = importance_weights(TARGET, ACTIONS, PROPENSITIES)
    assert ips(Y, rho) == pytest.approx(2.625 / 4)  # (2*1 + 4*0 + 0.625*1 + 0*1) / 4
    assert snips(Y, rho) == pytest.approx(2.625 / 6.625)
    # DR terms: direct [0.6, 0.5, 0.55, 0.3] + rho * (y - yhat_a) [0.8, -2.0, 0.0625, 0]
    assert doubly_robust(Y, rho, TARGET, Y_HAT, ACTIONS) == pytest.approx((1.4 - 1.5 + 0.6125 + 0.3) / 4)
    clipped = importance_weights(TARGET, ACTIONS, PROPENSITIES, clip=1.5)
    assert ips(Y, clipped) == pytest.approx((1.5 + 0.625) / 4)


def test_estimate_all_intervals_cover_the_truth_about_95_percent_of_the_time():
    """40 simulated logs of a uniformly random logger; target: always model 0, whose true mean score is 0.8."""
    n, covered, widths = 300, {"ips": 0, "snips": 0, "dr": 0}, {"ips": [], "dr": []}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        actions = rng.integers(0, 2, n)
        y = np.where(actions == 0, rng.random(n) < 0.8, rng.random(n) < 0.3).astype(float)
        target = np.tile([1.0, 0.0], (n, 1))
        est = estimate_all(
            y, target, actions, np.full(n, 0.5), y_hat=np.tile([0.8, 0.3], (n, 1)), bootstrap=200, seed=seed
        )
        assert set(est) == {"ips", "snips", "dr"}
        for name, e in est.items():
            assert e.low <= e.value <= e.high and e.n == n
            covered[name] += e.covers(0.8)
        widths["ips"].append(est["ips"].high - est["ips"].low)
        widths["dr"].append(est["dr"].high - est["dr"].low)
    assert all(c >= 34 for c in covered.values()), covered  # >= 85% of 40 (nominal 95%)
    assert np.mean(widths["dr"]) < np.mean(widths["ips"])  # a good reward model cuts the variance
    y = np.random.default_rng(0).random(200)
    low, high = bootstrap_interval(lambda idx: y[idx].mean(axis=-1), len(y), 500)
    assert low < y.mean() < high


# ---- decision logs: reading, counting, rejecting ---------------------------------------------------------
MODELS = ["good", "cheap"]
TAU = 0.01
QUALITY = {"good": 0.9, "cheap": 0.5}
COST = {"good": 0.01, "cheap": 0.0001}


def _decision(prompt: str, model: str, propensity, w: float, **extra) -> dict:
    from barp_ray.data.table import prompt_hash

    return {
        "decision_id": new_decision_id(),
        "decided_at": datetime.now(timezone.utc),
        "endpoint": "chat",
        "prompt_id": None,
        "prompt_hash": prompt_hash(prompt),
        "prompt": prompt,
        "prompt_chars": len(prompt),
        "w_cost": w,
        "policy_version": "v-test",
        "chosen_model": model,
        "chosen_index": MODELS.index(model),
        "probability": 0.5,
        "propensity": propensity,
        "exploration": "sample",
        "explored": False,
        "served_model": model,
        "status": "ok",
        "fallback_count": 0,
        "cost_usd": COST[model],
        **extra,
    }


def _write_log(root, rows: list[dict], scores: dict[str, float]) -> None:
    log = DecisionLog(str(root), writer="test")
    from barp_ray.embeddings.encoder import DEFAULT_ENCODER

    # the logging policy's spec, with a log cost scale (floor): off-policy learning continues on its reward
    log.write_policy("v-test", {"models": MODELS, "tau": TAU, "cost_floor": TAU / 100, "encoder": DEFAULT_ENCODER})
    for row in rows:
        log.append(row)
    log.flush()
    now = datetime.now(timezone.utc)
    log.write_feedback(
        [{"decision_id": d, "score": s, "comment": None, "recorded_at": now, "replica": "t"} for d, s in scores.items()]
    )


def _toy_rows(n_prompts: int = 40, seed: int = 0) -> tuple[list[dict], dict[str, float]]:
    """Uniformly random logging (propensity 1/2) over `good` (q ~ 0.9, $0.01) and `cheap` (q ~ 0.5, $0.0001)."""
    rng = np.random.default_rng(seed)
    rows, scores = [], {}
    for i in range(n_prompts):
        prompt = f"Question {i}: what is {i} plus {i * 3}?"
        for _ in range(4):
            model = MODELS[int(rng.integers(0, 2))]
            row = _decision(prompt, model, 0.5, float(rng.random()))
            rows.append(row)
            scores[row["decision_id"]] = float(rng.random() < QUALITY[model])
    return rows, scores


def test_missing_or_zero_propensities_are_rejected(tmp_path):
    rows = [
        _decision("a prompt", "good", 0.5, 0.2),
        _decision("b prompt", "cheap", 0.0, 0.4),
        _decision("c prompt", "cheap", None, 0.4),
    ]
    _write_log(tmp_path / "log", rows, {r["decision_id"]: 1.0 for r in rows})
    with pytest.raises(ValueError, match=r"propensity: 2 of 3 logged rows have a missing \(1\), zero") as err:
        read_logged_bandit(tmp_path / "log")
    assert rows[1]["decision_id"] in str(err.value)
    with pytest.raises(ValueError, match="propensity"):
        LoggedBandit(
            models=MODELS,
            embeddings=np.zeros((1, 2)),
            w_cost=np.zeros(1),
            actions=np.zeros(1, int),
            propensities=np.array([1.5]),
            scores=np.ones(1),
            costs=np.ones(1),
            prompt_hashes=np.array(["h"], dtype=object),
            policy_versions=np.array(["v"], dtype=object),
        )


def test_unusable_rows_are_counted_not_lost(tmp_path):
    ok = _decision("first prompt", "good", 0.5, 0.1)
    no_feedback = _decision("second prompt", "cheap", 0.5, 0.9)
    fallback = _decision("third prompt", "good", 0.5, 0.3, served_model="cheap", status="fallback")
    route_only = _decision("fourth prompt", "good", 0.5, 0.3, served_model=None, status="route_only", cost_usd=None)
    rows = [ok, no_feedback, fallback, route_only]
    _write_log(tmp_path / "log", rows, {r["decision_id"]: 1.0 for r in rows if r is not no_feedback})

    skipped = read_logged_bandit(tmp_path / "log")
    assert len(skipped) == 1 and skipped.report.decisions == 4
    assert skipped.report.dropped == {
        "no feedback": 1,
        "route_only (no answer served)": 1,
        "answered by a fallback model (its propensity is not logged)": 1,
    }
    assert skipped.models == MODELS and skipped.tau == TAU and skipped.cost_floor == pytest.approx(TAU / 100)
    assert skipped.embeddings.shape == (1, 384)  # real MiniLM on the logged prompt text

    defaulted = read_logged_bandit(tmp_path / "log", missing_feedback="default", default_score=0.0)
    assert len(defaulted) == 2 and defaulted.report.defaulted_feedback == 1
    assert sorted(defaulted.scores.tolist()) == [0.0, 1.0]
    with pytest.raises(ValueError, match="default_score"):
        read_logged_bandit(tmp_path / "log", missing_feedback="default")


# ---- learning the better model from uniformly random logs ------------------------------------------------
def _toy_bandit(n: int = 600, seed: int = 0) -> LoggedBandit:
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 2, n)
    scores = np.where(actions == 0, rng.random(n) < 0.9, rng.random(n) < 0.5).astype(float)
    costs = np.where(actions == 0, COST["good"], COST["cheap"])
    return LoggedBandit(
        models=MODELS,
        embeddings=rng.normal(size=(n, 8)).astype(np.float32),
        w_cost=rng.random(n),
        actions=actions,
        propensities=np.full(n, 0.5),
        scores=scores,
        costs=costs,
        prompt_hashes=np.array([f"h{i}" for i in range(n)], dtype=object),
        policy_versions=np.array(["v"] * n, dtype=object),
        tau=TAU,
    )


@pytest.mark.parametrize("weighting", ["snips", "clipped_ips", "dr"])
def test_learns_the_better_model_from_uniform_logs(weighting):
    """good beats cheap iff 0.4 (1 - w_c) > w_c (1 - 0.01), i.e. w_c < ~0.29: the policy must switch."""
    from barp_ray.offpolicy.config import LogSource, OffPolicyTrainConfig
    from barp_ray.offpolicy.learner import LoggedTensors, OffPolicyLearner, greedy_probs
    from barp_ray.policy.model import BarpPolicy
    from barp_ray.training.loop import policy_spec

    torch.manual_seed(0)
    cfg = OffPolicyTrainConfig(
        source=LogSource(logs="unused"), weighting=weighting, epochs=1, steps_per_epoch=1200, hidden_dim=32, pref_dim=8
    )
    data = _toy_bandit()
    if weighting == "dr":
        from barp_ray.offpolicy.reward_model import cross_fitted_predictions

        data.predicted_scores, data.predicted_costs = cross_fitted_predictions(data)
        assert np.abs(data.predicted_scores.mean(axis=0) - [0.9, 0.5]).max() < 0.08  # per-model means, roughly
    policy = BarpPolicy(policy_spec(cfg, MODELS, TAU, "toy", 8))
    learner = OffPolicyLearner(policy, cfg, TAU, batch_size=128, seed=0)
    tensors = LoggedTensors.from_logged(data)
    for _ in range(cfg.total_steps):
        stats = learner.step(tensors)
    assert np.isfinite(stats["loss"])
    emb = torch.as_tensor(_toy_bandit(seed=1).embeddings)  # unseen prompts
    assert greedy_probs(policy, emb, 0.0)[:, 0].mean() > 0.95  # quality first: good
    assert greedy_probs(policy, emb, 1.0)[:, 1].mean() > 0.95  # cost first: cheap


def test_train_offpolicy_on_ray_train_and_ope(ray_cluster, tmp_path):
    """The whole path: parquet decision log -> logged rows (real MiniLM) -> Ray Train -> policy -> OPE."""
    from barp_ray.offpolicy.config import LogSource, OffPolicyTrainConfig, OPEConfig
    from barp_ray.offpolicy.ope import run_ope
    from barp_ray.offpolicy.trainer import train_offpolicy

    rows, scores = _toy_rows(n_prompts=40)
    _write_log(tmp_path / "log", rows, scores)
    cfg = OffPolicyTrainConfig(
        source=LogSource(logs=str(tmp_path / "log")),
        storage_path=str(tmp_path / "runs"),
        epochs=3,
        steps_per_epoch=300,
        batch_size=128,
        hidden_dim=64,
        val_fraction=0.2,
    )
    outcome, context = train_offpolicy(cfg)
    assert context["train_rows"] + context["val_rows"] == len(rows)
    assert context["report"]["dropped"] == {}
    assert {"val_ope_reward", "weight_mean", "epoch"} <= set(outcome.best_metrics)
    assert len(outcome.history) == 3 and outcome.policy_dir.exists()
    # the new policy is trained on, and records, the logging policy's reward (its log cost scale)
    from barp_ray.objective import CostScale
    from barp_ray.policy import load_policy

    assert load_policy(outcome.policy_dir).spec.cost_scale == outcome.scale == CostScale(TAU, TAU / 100)

    ope_cfg = OPEConfig(
        source=LogSource(logs=str(tmp_path / "log")),
        candidate=str(outcome.policy_dir),
        w_grid=[0.0, 1.0],
        bootstrap=200,
        out_dir=str(tmp_path / "ope"),
    )
    result = run_ope(ope_cfg)
    assert result["cost_scale"] == CostScale(TAU, TAU / 100).describe()
    at0, at1 = result["grid"]["candidate"]["0"], result["grid"]["candidate"]["1"]
    # quality-first routing picks `good` (true mean score 0.9); cost-first picks `cheap` (cost $0.0001)
    assert at0["score"]["snips"]["value"] > 0.75 and at1["cost"]["snips"]["value"] < 0.001
    for est in ("ips", "snips", "dr"):
        assert at0["score"][est]["low"] <= at0["score"][est]["value"] <= at0["score"][est]["high"]
    assert result["vs_logging"]["verdict"] in {"beats", "inconclusive", "worse"}
    assert (tmp_path / "ope" / "ope.md").read_text().startswith("# Off-policy evaluation")

    # the same through the CLI, with a baseline: the candidate against itself is a zero difference
    from barp_ray.cli import main

    out = tmp_path / "ope-cli"
    assert (
        main(
            [
                "ope",
                "--logs",
                str(tmp_path / "log"),
                "--candidate",
                str(outcome.policy_dir),
                "--baseline",
                str(outcome.policy_dir),
                "--w-grid",
                "0",
                "1",
                "--bootstrap",
                "100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    import json

    cli = json.loads((out / "ope.json").read_text())
    assert cli["vs_baseline"]["0"]["difference"] == 0.0 and cli["vs_baseline"]["0"]["verdict"] == "inconclusive"


def test_cli_names_the_missing_field(capsys):
    from barp_ray.cli import main

    assert main(["ope", "--candidate", "runs/nowhere"]) == 2
    assert "source.logs is required: pass --logs" in capsys.readouterr().err

"""Policy shapes, checkpoints, reward, and the REINFORCE update's direction on a toy problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from barp_ray.objective import derive_tau, normalized_cost, reward
from barp_ray.policy import BarpPolicy, PolicySpec, load_policy, preference_tensor, save_policy
from barp_ray.training.config import TrainConfig
from barp_ray.training.loop import PolicyData, ReinforceLearner, advantages, greedy_curve

MODELS = ["big", "small", "mid"]


def _spec(head="mlp", k=3, d=16) -> PolicySpec:
    return PolicySpec(models=MODELS[:k], tau=0.01, encoder="test", embed_dim=d, pref_dim=8, hidden_dim=32, head=head)


@pytest.mark.parametrize("head", ["mlp", "linear", "bilinear"])
def test_policy_shapes_and_probabilities(head):
    policy = BarpPolicy(_spec(head))
    x, w = torch.randn(5, 16), preference_tensor(torch.rand(5))
    logits = policy(x, w)
    assert logits.shape == (5, 3)
    probs = policy.probabilities(x, w)
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    assert policy.act(x, w).shape == (5,)


def test_preference_tensor_is_on_the_simplex_and_rejects_bad_values():
    w = preference_tensor(0.25, 3)
    assert w.shape == (3, 2) and torch.allclose(w.sum(-1), torch.ones(3)) and float(w[0, 1]) == 0.25
    with pytest.raises(ValueError, match="w_cost"):
        preference_tensor(1.5, 2)


def test_checkpoint_round_trip_is_self_describing(tmp_path):
    policy = BarpPolicy(_spec("bilinear"))
    save_policy(policy, tmp_path / "ckpt", extra={"epoch": 3})
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.spec == policy.spec and loaded.spec.models == MODELS and loaded.spec.tau == 0.01
    x, w = torch.randn(4, 16), preference_tensor(0.5, 4)
    policy.eval()
    assert torch.allclose(policy(x, w), loaded(x, w))
    with pytest.raises(FileNotFoundError, match=r"policy\.json"):
        load_policy(tmp_path)


def test_reward_and_tau():
    assert reward(1.0, 0.005, 0.0, 0.01) == 1.0
    assert reward(1.0, 0.005, 1.0, 0.01) == -0.5
    assert float(normalized_cost(np.array([0.05]), 0.01)[0]) == 1.0  # clipped at 1
    costs = np.array([[0.001, 0.01], [0.003, 0.03]])
    assert derive_tau(costs, "max_cost") == 0.03
    assert derive_tau(costs, "p99_top_model") == pytest.approx(np.quantile([0.01, 0.03], 0.99))
    assert derive_tau(costs, "max_mean_cost") == pytest.approx(0.02)
    with pytest.raises(ValueError, match="tau rule"):
        derive_tau(costs, "nope")


def test_binned_baseline_centres_each_preference_bin():
    r = torch.tensor([[1.0], [0.0], [-1.0], [-0.5]])
    w = torch.tensor([0.05, 0.05, 0.95, 0.95])
    adv = advantages(r, w, bins=10, normalize=False).squeeze(1)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.25, 0.25]))
    plain = advantages(r, w, bins=1, normalize=False).squeeze(1)
    assert torch.allclose(plain, r.squeeze(1) - r.mean())


def test_leave_one_out_baseline_is_the_mean_of_the_other_samples_of_the_same_prompt():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [-0.2, -0.2, -0.2, -0.2]])  # a prompt every model fails: no signal
    w = torch.tensor([0.1, 0.9])
    adv = advantages(r, w, bins=10, normalize=False, leave_one_out=True)
    assert torch.allclose(adv[0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    assert torch.equal(adv[1], torch.zeros(4))
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        TrainConfig(leave_one_out=True)


def test_in_process_training_with_the_leave_one_out_baseline_learns_the_switch():
    from barp_ray.training.bare import train_in_process

    train, val = _toy_tables()
    cfg = TrainConfig(
        passes=200,
        epochs=5,
        batch_size=32,
        samples_per_prompt=4,
        leave_one_out=True,
        lr=3e-3,
        hidden_dim=32,
        pref_dim=8,
        seed=3,
    )
    out = train_in_process(cfg, train, val, scale=0.01)
    x = torch.as_tensor(val.embeddings)
    assert (out.policy.act(x, preference_tensor(0.0, len(x))) == 0).float().mean() > 0.9
    assert (out.policy.act(x, preference_tensor(1.0, len(x))) == 1).float().mean() > 0.9


def test_reinforce_learns_better_model_at_wc0_and_cheaper_at_wc1():
    """Two models: 'big' always right but costs tau; 'small' right half the time for free."""
    gen = torch.Generator().manual_seed(0)
    n, d = 256, 16
    data = PolicyData(
        embeddings=torch.randn(n, d, generator=gen),
        scores=torch.stack([torch.ones(n), (torch.rand(n, generator=gen) < 0.5).float()], dim=1),
        costs=torch.stack([torch.full((n,), 0.01), torch.zeros(n)], dim=1),
    )
    spec = PolicySpec(models=["big", "small"], tau=0.01, encoder="toy", embed_dim=d, pref_dim=8, hidden_dim=32)
    torch.manual_seed(0)
    policy = BarpPolicy(spec)
    cfg = TrainConfig(epochs=1, steps_per_epoch=300, batch_size=128, lr=3e-3, beta_start=0.1, beta_end=0.005)
    learner = ReinforceLearner(policy, cfg, scale=0.01, batch_size=128, seed=0)
    before = greedy_curve(policy, data, np.array([0.0, 1.0]))
    for _ in range(cfg.total_steps):
        learner.step(data)
    x = data.embeddings
    pick_wc0 = policy.act(x, preference_tensor(0.0, n))
    pick_wc1 = policy.act(x, preference_tensor(1.0, n))
    # r_big = 1 - 2 w_c, r_small = 0.5 (1 - w_c): big is better below w_c = 1/3, small above.
    assert (pick_wc0 == 0).float().mean() > 0.95, "quality-only preference must pick the better model"
    assert (pick_wc1 == 1).float().mean() > 0.95, "cost-only preference must pick the cheaper model"
    after = greedy_curve(policy, data, np.array([0.0, 1.0]))
    assert after["reward"][0] >= before["reward"][0] and after["reward"][1] >= before["reward"][1]


def _toy_tables(n: int = 300, d: int = 16, seed: int = 0):
    """Two models as in the REINFORCE toy above, as (train, val) RoutingTables."""
    from barp_ray.data.table import RoutingTable

    rng = np.random.default_rng(seed)

    def table(m: int, tag: str) -> RoutingTable:
        scores = np.stack([np.ones(m), (rng.random(m) < 0.5).astype(float)], axis=1)
        costs = np.stack([np.full(m, 0.01), np.zeros(m)], axis=1)
        return RoutingTable(
            prompt_ids=[f"{tag}{i}" for i in range(m)],
            prompts=[f"{tag} {i}" for i in range(m)],
            tasks=np.full(m, "t", dtype=object),
            models=["big", "small"],
            scores=scores,
            costs=costs,
            embeddings=rng.normal(size=(m, d)).astype(np.float32),
        )

    return table(n, "tr"), table(n // 3, "va")


def test_pass_schedule_scales_with_the_training_set():
    cfg = TrainConfig(passes=10, epochs=4, batch_size=100, samples_per_prompt=2)
    assert cfg.for_data(2000).steps_per_epoch == 25  # 10 * 2000 interactions / (100 * 2) / 4 epochs
    assert cfg.for_data(200).steps_per_epoch == 3  # ceil(2.5)
    assert TrainConfig(passes=None, steps_per_epoch=7).for_data(10_000).steps_per_epoch == 7
    with pytest.raises(ValueError, match="empty"):
        cfg.for_data(0)


def test_a_fixed_step_schedule_survives_yaml_and_dumps(tmp_path):
    """steps_per_epoch without passes is a fixed schedule, also once written to YAML (a `--config` file, a Ray
    Job) or dumped to a dict (a Tune trial, a Ray task) and read back: the default passes must not re-derive it."""
    fixed = TrainConfig(steps_per_epoch=5, epochs=1)
    assert fixed.passes is None and fixed.for_data(1500).steps_per_epoch == 5
    fixed.to_yaml(tmp_path / "train.yaml")
    assert TrainConfig.from_yaml(tmp_path / "train.yaml").for_data(1500).steps_per_epoch == 5
    assert TrainConfig.model_validate(fixed.model_dump()).for_data(1500).steps_per_epoch == 5
    both = TrainConfig(steps_per_epoch=5, passes=10, epochs=1, batch_size=100)  # passes given: passes wins
    assert TrainConfig.model_validate(both.model_dump()).for_data(1500).steps_per_epoch == 150


def test_in_process_training_is_deterministic_and_learns_the_switch():
    from barp_ray.training.bare import train_in_process

    train, val = _toy_tables()
    cfg = TrainConfig(passes=200, epochs=5, batch_size=64, lr=3e-3, hidden_dim=32, pref_dim=8, seed=3)
    a = train_in_process(cfg, train, val, scale=0.01)
    b = train_in_process(cfg, train.take(np.arange(len(train))[::-1]), val, scale=0.01)  # row order must not matter
    assert [h["val_reward"] for h in a.history] == [h["val_reward"] for h in b.history]
    for (ka, va), (kb, vb) in zip(a.policy.state_dict().items(), b.policy.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    x = torch.as_tensor(val.embeddings)
    assert (a.policy.act(x, preference_tensor(0.0, len(x))) == 0).float().mean() > 0.9
    assert (a.policy.act(x, preference_tensor(1.0, len(x))) == 1).float().mean() > 0.9
    assert a.history[-1]["passes"] == pytest.approx(a.history[-1]["interactions"] / len(train))


def test_early_stopping_keeps_the_best_validation_epoch():
    from barp_ray.training.bare import train_in_process

    train, val = _toy_tables()
    cfg = TrainConfig(
        passes=400, epochs=20, patience=2, batch_size=64, lr=3e-3, hidden_dim=32, pref_dim=8, select_metric="val_reward"
    )
    out = train_in_process(cfg, train, val, scale=0.01)
    rewards = [h["val_reward"] for h in out.history]
    assert out.best["val_reward"] == max(rewards)
    if len(out.history) < cfg.epochs:  # stopped early: the last `patience` epochs were no better
        assert all(r <= out.best["val_reward"] for r in rewards[-cfg.patience :])
        assert out.best["epoch"] == len(out.history) - 1 - cfg.patience


def test_refit_replays_the_selected_schedule_on_train_plus_val():
    """`refit`: the exported policy is a fresh one trained on train + val for the selected epochs (same passes
    per epoch, so more steps on more rows), deterministic, and it still solves the toy; validation metrics
    stay the selection run's."""
    from barp_ray.data.table import RoutingTable
    from barp_ray.training.bare import refit_in_process, train_in_process

    train, val = _toy_tables()
    cfg = TrainConfig(passes=200, epochs=5, batch_size=64, lr=3e-3, hidden_dim=32, pref_dim=8, seed=3)
    selected = train_in_process(cfg, train, val, scale=0.01)
    refit = train_in_process(cfg.model_copy(update={"refit": True}), train, val, scale=0.01)
    assert refit.best == selected.best and refit.history == selected.history
    again = refit_in_process(cfg, RoutingTable.concat([train, val]), selected.best["epoch"] + 1, selected.scale)
    for (ka, va), (kb, vb) in zip(refit.policy.state_dict().items(), again.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(refit.policy.state_dict().values(), selected.policy.state_dict().values(), strict=True)
    )
    x = torch.as_tensor(val.embeddings)
    assert (refit.policy.act(x, preference_tensor(0.0, len(x))) == 0).float().mean() > 0.9
    assert (refit.policy.act(x, preference_tensor(1.0, len(x))) == 1).float().mean() > 0.9


def test_rescalarised_preferences_keep_the_toy_solution():
    train, _ = _toy_tables()
    from barp_ray.training.loop import PolicyData as PD

    data = PD.from_table(train)
    torch.manual_seed(0)
    spec = PolicySpec(models=["big", "small"], tau=0.01, encoder="toy", embed_dim=16, pref_dim=8, hidden_dim=32)
    policy = BarpPolicy(spec)
    cfg = TrainConfig(epochs=1, steps_per_epoch=300, batch_size=128, lr=3e-3, w_samples=4)
    learner = ReinforceLearner(policy, cfg, scale=0.01, batch_size=128, seed=0)
    for _ in range(cfg.total_steps):
        learner.step(data)
    x = data.embeddings
    assert (policy.act(x, preference_tensor(0.0, len(x))) == 0).float().mean() > 0.95
    assert (policy.act(x, preference_tensor(1.0, len(x))) == 1).float().mean() > 0.95


def test_weight_average_is_the_ema_of_the_steps_and_survives_a_checkpoint():
    """`ema_epochs`: decay 1 - 1 / (ema_epochs * steps_per_epoch); the first step copies the weights, each later
    one blends them in; `judged_policy` is the average (the live policy keeps training); state round-trips."""
    from barp_ray.training.optim import PolicyOptimizer

    torch.manual_seed(0)
    policy = torch.nn.Linear(3, 2)
    cfg = TrainConfig(ema_epochs=1.0, steps_per_epoch=4, passes=None, lr=0.1)  # decay 0.75
    opt = PolicyOptimizer(policy, cfg, seed=0)
    x = torch.randn(8, 3)
    snapshots = []
    for _ in range(3):
        opt.apply(policy(x).pow(2).mean())
        snapshots.append({k: v.clone() for k, v in policy.state_dict().items()})
    for name, value in opt.judged_policy.state_dict().items():
        want = 0.75 * (0.75 * snapshots[0][name] + 0.25 * snapshots[1][name]) + 0.25 * snapshots[2][name]
        assert torch.allclose(value, want, atol=1e-6), name
        assert not torch.equal(value, snapshots[2][name])  # not the live weights
    restored = PolicyOptimizer(torch.nn.Linear(3, 2), cfg, seed=0)
    restored.load_state_dict(opt.state_dict())
    for a, b in zip(restored.judged_policy.state_dict().values(), opt.judged_policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert PolicyOptimizer(policy, TrainConfig(ema_epochs=None), seed=0).judged_policy is policy  # off: live weights


def test_in_process_training_with_the_weight_average_still_learns_the_switch():
    from barp_ray.training.bare import train_in_process

    train, val = _toy_tables()
    cfg = TrainConfig(passes=200, epochs=5, batch_size=64, lr=3e-3, hidden_dim=32, pref_dim=8, seed=3, ema_epochs=1.0)
    out = train_in_process(cfg, train, val, scale=0.01)
    x = torch.as_tensor(val.embeddings)
    assert (out.policy.act(x, preference_tensor(0.0, len(x))) == 0).float().mean() > 0.9
    assert (out.policy.act(x, preference_tensor(1.0, len(x))) == 1).float().mean() > 0.9
    plain = train_in_process(cfg.model_copy(update={"ema_epochs": None}), train, val, scale=0.01)  # live weights
    assert [h["val_reward"] for h in out.history] != [h["val_reward"] for h in plain.history]

"""The report of benchmarks/offpolicy_loop.py: its markdown page and its cost-quality plot."""

from __future__ import annotations

from pathlib import Path

TARGET_AIQ_FRACTION = 0.9  # v1 (learned from logs only) vs the on-policy reference


def plot(curves: dict[str, dict], singles: dict[str, tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, t in curves.items():
        pts = sorted((v["cost"], v["score"]) for v in t["curve"].values())
        ax.plot([c for c, _ in pts], [s for _, s in pts], marker="o", label=f"{name} (AIQ {t['aiq']:.3f})")
    for m, (s, c) in singles.items():
        ax.scatter([c], [s], color="grey", s=12)
        ax.annotate(m.split("/")[-1][:14], (c, s), fontsize=6, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (USD, log)")
    ax.set_ylabel("mean score (test split)")
    ax.set_title("Learning from served traffic: v0 -> v1 (logs only) vs on-policy reference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(r: dict, log) -> str:
    a, tr, tg = r["args"], r["truth"], r["targets"]
    lines = [
        f"# Learning from served traffic: the loop on RouterBench ({r['machine_start']['time']})",
        "",
        f"v0: on-policy BaRP trained on `{a['v0_task']}` only ({a['v0_epochs']} x 100 steps), served with "
        f"epsilon-greedy exploration (epsilon {a['epsilon']}). Train prompts replayed {a['train_passes']}x, test "
        f"prompts {a['test_passes']}x, w_c ~ U(0,1) per request, feedback = the recorded 0/1 score of the "
        f"model that answered. v1: SNIPS-weighted REINFORCE on Ray Train from the train-prompt logs only "
        f"({a['weighting']}, {a['v1_epochs']} epochs). Reference: on-policy BaRP with simulated bandit feedback "
        f"on the same train prompts (`{a['reference']}`). cost scale {r.get('cost_scale', r['tau'])}. Machine: "
        f"{r['machine_start']['cpus']} CPUs, load {r['machine_start']['loadavg_1_5_15']} at start.",
        "",
        "## Traffic and logs",
        "",
        f"- train-prompt traffic in the log: {r['logged']['train']}",
        f"- test-prompt traffic in the log: {r['logged']['test']}",
        f"- replay client: {r.get('replay_train', 'reused from an earlier run')} / {r.get('replay_test', '')}",
        "- rows usable for v1 (train prompts): "
        f"{r['v1_training']['train_rows']} + {r['v1_training']['val_rows']} held out; read report "
        f"{r['v1_training']['log_read']}",
        "",
        "## Ground truth on the test split (full information)",
        "",
        "| policy | AIQ | reward w_c=0 | reward w_c=0.5 | reward w_c=1 | score w_c=0 | cost w_c=0 | score w_c=1 "
        "| cost w_c=1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, t in tr.items():
        lines.append(
            f"| {name} | {t['aiq']:.4f} | {t['reward']['0']:.4f} | {t['reward']['0.5']:.4f} | "
            f"{t['reward']['1']:.4f} | {t['curve']['0']['score']:.4f} | ${t['curve']['0']['cost']:.6f} | "
            f"{t['curve']['1']['score']:.4f} | ${t['curve']['1']['cost']:.6f} |"
        )
    frac = tg["aiq_fraction_of_reference"]
    lines += [
        "",
        f"- v1 beats v0 (test reward) at w_c in {{0, 0.5, 1}}: {tg['v1_beats_v0_reward']} -> "
        f"**{'met' if tg['v1_beats_v0_all'] else 'NOT met'}**",
        f"- v1 AIQ / reference AIQ = {frac:.3f} (target >= {TARGET_AIQ_FRACTION}): "
        f"**{'met' if tg['aiq_target_met'] else 'NOT met'}**",
        "",
        "![cost-quality](cost_quality.png)",
        "",
        "## OPE of v1's mean score on the logged test-prompt traffic vs the truth",
        "",
    ]
    for model, cov in r["ope"]["coverage_of_v1_score"].items():
        ests = [e for e in next(iter(cov.values())) if e != "truth"]
        lines += [
            f"DR reward model: `{model}`",
            "",
            "| w_c | truth | " + " | ".join(f"{e} [95% CI]" for e in ests) + " |",
            "| --- | ---: | " + " | ".join("---" for _ in ests) + " |",
        ]
        covered_by = {e: 0 for e in ests}
        for w, row in cov.items():
            cells = []
            for e in ests:
                v = row[e]
                covered_by[e] += v["covers"]
                cells.append(f"{v['value']:.4f} [{v['low']:.4f}, {v['high']:.4f}] {'ok' if v['covers'] else 'MISS'}")
            lines.append(f"| {w} | {row['truth']:.4f} | " + " | ".join(cells) + " |")
        n = len(cov)
        per_w = [sum(row[e]["covers"] for e in ests) for row in cov.values()]
        lines += [
            "",
            "- intervals covering the truth: "
            + ", ".join(f"{e} {covered_by[e]}/{n}" for e in ests)
            + f"; estimators covering at each w: {per_w} (target: >= 2 of 3)",
            "",
        ]
    lines += ["## OPE verdicts", ""]
    for model in r["ope"]["vs_logging"]:
        v = r["ope"]["vs_logging"][model]
        lines.append(
            f"- `{model}`: v1 vs the logging rule at the callers' preferences ({v['estimator']}): "
            f"{v['difference']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}] -> {v['verdict']}; v1 vs v0 at "
            + ", ".join(
                f"w_c={w}: {d['verdict']} ({d['difference']:+.4f})" for w, d in r["ope"]["v1_vs_v0"][model].items()
            )
        )
    ro = r["rollout"]
    lines += ["", "## Rollout", ""]
    if "error" in ro:
        lines.append(f"- FAILED: {ro['error']}")
    else:
        lines += [
            f"- v1 ({ro['v1_version']}) rolled out in {ro['seconds']} s: {ro['info']}",
            f"- requests after the rollout: {ro['requests_after']}",
            f"- decisions by policy version: {ro['decisions_by_version']} ({ro['v1_decisions']} by v1)",
        ]
    lines += ["", f"Timings (s): {r['timings_s']}", ""]
    return "\n".join(lines)

"""Each `barp` command of README.md, run exactly as written (relative paths) from a repo-root-like folder.

The folder mirrors the repo layout (`../shared/data/routerbench` links to the real data), so relative paths
mean what they mean from the repo root, without writing into the real `runs/`. Commands are run in-process
on the session Ray cluster; the only additions are flags that make them cheap (fewer epochs / seeds), and
the prepared data is cut to a few rows per task right after `barp prepare`.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from barp_ray.evaluation.evaluate import DEFAULT_BASELINES

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

#: flags appended to a README command to keep it cheap (the command as written is the prefix)
CHEAP = {
    "train": ["--epochs", "1", "--steps-per-epoch", "5", "--batch-size", "32"],
    "demo": [
        "--max-rows-per-task",
        "12",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "5",
        "--seeds",
        "0",
        "1",
        "--loto-seeds",
        "0",
    ],
}
#: README commands checked elsewhere or needing a running service (the reason is the value)
ELSEWHERE = {
    "train-offpolicy": "needs a served decision log (tests/test_offpolicy.py runs it through the CLI)",
    "ope": "needs a served decision log (tests/test_offpolicy.py runs it through the CLI)",
    "rollout": "needs a running Serve app (tests/serving/test_rollout.py runs it through the CLI)",
    "tune": "tests/tuning/test_tuning_sweep.py runs tune/README.md's quick sweep with relative paths",
}


def readme_commands(path: Path = REPO / "README.md") -> list[list[str]]:
    """Every `barp ...` line of the README's bash blocks, comments stripped, as argv (without `barp`)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("barp "):
                out.append(shlex.split(line)[1:])
    return out


@pytest.fixture
def repo_root(tmp_path, routerbench_dir, monkeypatch) -> Path:
    root = tmp_path / "main"
    root.mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "routerbench").symlink_to(routerbench_dir)
    monkeypatch.chdir(root)
    monkeypatch.delenv("BARP_DATA_DIR", raising=False)  # the default ../shared/data/routerbench, as in the repo
    return root


def test_readme_commands_as_written(repo_root, ray_cluster, capsys):
    from barp_ray.cli import main
    from barp_ray.pipeline import _subsample

    commands = readme_commands()
    names = [c[0] for c in commands]
    assert {"prepare", "embed", "train", "evaluate", "demo", "calibrate"} <= set(names), names
    ran = []
    for argv in commands:
        if argv[0] in ELSEWHERE or any("<" in a or "$" in a for a in argv):
            continue
        code = main(argv + CHEAP.get(argv[0], []))
        printed = capsys.readouterr()
        assert code in (0, 1), (argv, code, printed.err[-2000:])  # calibrate: 1 = budget not met
        ran.append(argv[0])
        if argv[0] == "prepare":  # tiny data: the commands below read what prepare wrote
            _subsample(repo_root / argv[argv.index("--out") + 1], 12)
        if argv[0] == "demo":
            out = repo_root / "runs" / "demo"
            metrics = json.loads((out / "eval" / "metrics.json").read_text())
            assert len(metrics["routers"]["barp"]["points"]) == 11 and 0 <= metrics["routers"]["barp"]["aiq"] <= 1
            # every baseline, those fitted in tasks of their own included, in the registry's order
            listed = [name for name in metrics["routers"] if not name.startswith("single:")]
            assert listed == ["barp", *(b for b in DEFAULT_BASELINES if b != "single")], listed
            seeds = json.loads((out / "eval" / "seeds.json").read_text())
            assert seeds["n"] == 2 and seeds["low"] <= seeds["mean"] <= seeds["high"]
            assert (out / "eval" / "loto_metrics.json").exists() and "== summary ==" in printed.out
            assert sorted(p.name for p in (out / "runs").iterdir()) == [
                "seed0-loto-arc-challenge",
                "seed0-loto-mbpp",
                "seed0-loto-winogrande",
                "seed1",
            ]
            assert "run seed1 " in printed.out  # one line per finished run
    assert ran.count("prepare") == 1 and {"embed", "train", "evaluate", "demo", "calibrate"} <= set(ran)
    # everything landed under the repo-root-like folder, where the relative paths point
    assert (repo_root / "runs" / "ray" / "barp" / "best_policy" / "policy.json").exists()
    assert (repo_root / "runs" / "eval" / "metrics.json").exists()
    assert (repo_root / ".barp_cache" / "embeddings").is_dir()

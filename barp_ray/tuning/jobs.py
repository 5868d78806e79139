"""Ray Jobs helpers: the upload excludes for `ray job submit`, and a scoped local head with token auth.

`LocalHead` starts `ray start --head --block` in its own process group, with its own `--temp-dir`, free
ports for every Ray server (so it never collides with another cluster on the host) and Ray 2.60 token
authentication switched on deliberately: a fresh token is written to `<temp_dir>/auth_token` and passed
through `RAY_AUTH_MODE=token` + `RAY_AUTH_TOKEN_PATH` (never `~/.ray/auth_token`, which other clusters on
the host may use). `stop()` ends only the processes this head started; it never runs `ray stop`.

    python -m barp_ray.tuning.jobs --runtime-env      # the JSON that scripts/submit_train.sh uploads with
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# Never upload these with `--working-dir` (Ray 2.60 rejects packages over 100 MiB with HTTP 413).
JOB_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "runs",
    ".barp_cache",
    "**/__pycache__",
    "*.egg-info",
    ".ruff_cache",
    ".pytest_cache",
    ".whl",
    ".gl",
    "*.parquet",
    "*.pt",
    "*.whl",
]
AUTH_TOKEN_FILE = "auth_token"
_PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


def job_runtime_env(extra_excludes: list[str] | None = None, env_vars: dict[str, str] | None = None) -> dict:
    """The runtime env for `ray job submit --working-dir <repo>`: excludes data, caches and the venv."""
    env: dict = {"excludes": [*JOB_EXCLUDES, *(extra_excludes or [])]}
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process from /proc (Linux), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")  # a zombie is gone, only not reaped yet


def _descendants(root: int) -> dict[int, int]:
    """All live descendants of `root` (children, grandchildren, ...): pid -> start time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[1], []).append(int(entry.name))
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return {pid: st[2] for pid in out if (st := _stat(pid)) is not None and st[0] not in ("Z", "X")}


def _cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd and _alive(int(entry.name)):
                out[int(entry.name)] = cmd
    return out


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _ray_cli() -> list[str]:
    exe = Path(sys.executable).parent / "ray"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


class LocalHead:
    """A single-node Ray head with the dashboard (the Jobs API needs it), scoped to one temp dir."""

    def __init__(
        self,
        num_cpus: int = 2,
        auth: str = "token",
        temp_dir: str | os.PathLike | None = None,
        extra_env: dict[str, str] | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        if auth not in ("token", "disabled"):
            raise ValueError("auth must be 'token' or 'disabled'")
        # Short path: Ray puts unix sockets under the temp dir (108-byte limit).
        self.temp_dir = Path(temp_dir or tempfile.mkdtemp(prefix="barpray-", dir="/tmp"))
        self.num_cpus = num_cpus
        self.auth = auth
        self.extra_env = dict(extra_env or {})
        self.start_timeout_s = start_timeout_s
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        self.token_path = self.temp_dir / AUTH_TOKEN_FILE
        self.proc: subprocess.Popen | None = None
        self.log_path = self.temp_dir / "ray_start.log"
        self._pids: dict[int, int] = {}  # pid -> start time (so a reused pid is never taken for ours)
        self._log = None

    # ---- addresses and environment ----------------------------------------------------------------
    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports['--port']}"

    @property
    def token(self) -> str | None:
        return self.token_path.read_text().strip() if self.auth == "token" else None

    def auth_env(self) -> dict[str, str]:
        """What a client (`ray job submit`, `ray.init`) needs to talk to this head."""
        if self.auth == "disabled":
            return {"RAY_AUTH_MODE": "disabled"}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A full environment for CLI clients: auth, RAY_ADDRESS = the dashboard, venv first on PATH."""
        env = dict(os.environ if base is None else base)
        env.pop("RAY_AUTH_TOKEN", None)  # only the token file of this head counts
        env.pop("RAY_API_SERVER_ADDRESS", None)  # a local `connect()` exports its own dashboard: not this head's
        env.update(self.auth_env())
        env["RAY_ADDRESS"] = self.dashboard_url
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    # ---- lifecycle --------------------------------------------------------------------------------
    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-agent-listen-port']}"

    def start(self) -> LocalHead:
        """Start the head and wait until it takes jobs: the dashboard answers an authenticated request and the
        head's dashboard agent (which runs submitted jobs) answers its health check. The agent registers a
        little after the dashboard is up; a job submitted before that fails with 'No available agent'."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        if self.auth == "token":
            # 256 random bits, hex: the format of `ray get-auth-token --generate`
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)
        env = self.client_env()
        env.pop("RAY_ADDRESS")
        env.update(
            {
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # nothing to drain on a local head: stop at once
                **self.extra_env,
            }
        )
        cmd = [
            *_ray_cli(),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--temp-dir",
            str(self.temp_dir),
            "--num-cpus",
            str(self.num_cpus),
            "--num-gpus",
            "0",
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--node-ip-address",
            "127.0.0.1",
        ]
        for flag, port in self.ports.items():
            cmd += [flag, str(port)]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() never touches another cluster
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`ray start` exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                self._remember_pids()
                return self
            time.sleep(0.2)  # poll interval
        self.stop()
        raise TimeoutError(f"Ray head not up after {self.start_timeout_s:.0f}s:\n{self.log_tail()}")

    def ready(self) -> bool:
        """Whether the dashboard (Jobs API) and the head's job agent both answer."""
        return (
            self.request("/api/version", timeout=2.0)[0] == 200
            and self.request("/api/healthz", timeout=2.0, base=self.agent_url)[0] == 200
        )

    def request(
        self, path: str, token: str | bool | None = True, timeout: float = 10.0, base: str | None = None
    ) -> tuple[int, str]:
        """GET a dashboard path (or one under `base`); token=True sends this head's token, a string sends that
        one, None none."""
        req = urllib.request.Request((base or self.dashboard_url) + path)
        send = self.token if token is True else (token or None)
        if send:
            req.add_header("Authorization", f"Bearer {send}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            return -1, str(exc)

    def job_status(self, submission_id: str) -> str | None:
        code, body = self.request(f"/api/jobs/{submission_id}")
        return json.loads(body).get("status") if code == 200 else None

    def log_tail(self, n: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-n:]

    def _remember_pids(self) -> None:
        if self.proc is not None:
            self._pids.update(_descendants(self.proc.pid))

    def own_processes(self) -> list[int]:
        """Live pids of this head: its `ray start` tree, and any process whose command names its temp dir."""
        self._remember_pids()
        marker = str(self.temp_dir)
        found = {pid for pid, start in self._pids.items() if _alive(pid) and _stat(pid)[2] == start}
        if self.proc is not None and self.proc.poll() is None:
            found.add(self.proc.pid)
        found |= {pid for pid, cmd in _cmdlines().items() if marker in cmd}
        found.discard(os.getpid())
        return sorted(found)

    def stop(self, timeout_s: float = 30.0) -> list[int]:
        """SIGTERM the head (it tears down its own children), then SIGKILL what is left of *its* processes.

        Returns the pids still alive afterwards (empty on a clean stop). Never signals another process.
        """
        if self.proc is None:
            return []
        self._remember_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (left := self.own_processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.5 if left else 0)
        if self._log is not None:
            self._log.close()
        return self.own_processes()

    def cleanup(self) -> None:
        """Remove the temp dir (logs, token, session files) after `stop()`."""
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime-env", action="store_true", help="print the job runtime env JSON (excludes)")
    p.add_argument("--exclude", action="append", default=[], help="extra exclude pattern")
    args = p.parse_args(argv)
    if args.runtime_env:
        print(json.dumps(job_runtime_env(args.exclude)))
        return 0
    p.print_help()
    return 1


if __name__ == "__main__":
    sys.exit(main())

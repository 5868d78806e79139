"""One way to connect to Ray, for every job and CLI.

`connect()` joins `address` / `$RAY_ADDRESS` (under `ray job submit`, on a cluster) or starts a local
instance sized for this machine. It sets the environment defaults every job here wants before Ray is
imported by workers (no preemption watcher, no usage stats) and returns the dashboard URL, if any.
"""

from __future__ import annotations

import os

#: Environment defaults of every Ray process this package starts (a value already set wins).
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # print() in Train workers goes to stdout once (the patch re-logs it, and the console showed it twice)
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # the Train V2 controller polls its workers every 2 s by default, so a run notices its workers' start,
    # reports and end up to 2 s late each time; this package's runs are short (seconds per epoch), and polling
    # every 0.5 s made a small 2-worker run ~4-5 s shorter here (Ray reads it in the driver and propagates it)
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def apply_env_defaults() -> None:
    """Set `RAY_ENV_DEFAULTS` unless the caller set them."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connect(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    dashboard: bool = True,
    existing_only: bool = False,
    quiet: bool = False,
    object_store_memory: int | None = None,
) -> str | None:
    """Connect to Ray once per process; returns the dashboard URL when this call started or joined one.

    - `address` (else `$RAY_ADDRESS`): join that cluster.
    - `existing_only`: join a running cluster (`auto`) and never start one (e.g. `barp rollout`).
    - otherwise start a local instance with `num_cpus` logical CPUs (default: the cores, at least 2;
      fractional train/tune/serve actors oversubscribe real cores), with the dashboard on loopback.
      The dashboard is on by default because Ray's State API needs it: without it Ray Train's placement-group
      cleaner cannot query its controller and logs "Failed to query Ray Train Controller actor state" every
      few seconds.

    Token auth: set `RAY_AUTH_MODE` before Python starts (scripts/main.sh and scripts/test.sh export
    `token`); Ray reads it once per process, so setting it here would be too late.
    """
    import ray

    if ray.is_initialized():
        return None
    apply_env_defaults()
    address = address or os.environ.get("RAY_ADDRESS") or ("auto" if existing_only else None)
    quiet_kwargs = {"log_to_driver": False, "logging_level": "ERROR"} if quiet else {}
    if address:
        ctx = ray.init(address=address, **quiet_kwargs)
    else:
        extra: dict = {}
        if dashboard:
            # A free port, and every Ray process told where its State API is: with the address unset, State
            # API clients inside Ray (Train's placement-group cleaner) look for "the" cluster on the host and
            # fail when more than one runs there (tests, several users).
            port = free_port()
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            extra["dashboard_port"] = port
        if object_store_memory:
            extra["object_store_memory"] = int(object_store_memory)
        ctx = ray.init(
            num_cpus=int(num_cpus or max(2, os.cpu_count() or 2)),
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            **extra,
            **quiet_kwargs,
        )
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if url and "://" not in url else url


__all__ = ["RAY_ENV_DEFAULTS", "apply_env_defaults", "connect", "free_port"]

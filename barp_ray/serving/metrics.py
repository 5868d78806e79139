"""Ray Serve custom metrics of the router (exported to Prometheus by Ray's metrics agent).

Every tag takes values from a bounded set (candidate models, fixed status / reason names, the policy
versions rolled out to the replica), so the number of time series is bounded whatever the traffic. Serve
adds `deployment`, `replica` and `application` tags.
"""

from __future__ import annotations

from ray.serve import metrics

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


class RouterMetrics:
    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "barp_router_requests_total",
            description="Requests per chosen model, endpoint (chat, route) and outcome status.",
            tag_keys=("model", "endpoint", "status"),
        )
        self.served = metrics.Counter(
            "barp_router_served_total", description="Answers per model that served them.", tag_keys=("model",)
        )
        self.cost = metrics.Counter(
            "barp_router_cost_usd_total", description="USD cost of served answers per model.",
            tag_keys=("model",),
        )
        self.fallbacks = metrics.Counter(
            "barp_router_fallbacks_total",
            description="Upstream attempts that failed and moved on to the next-ranked model.",
            tag_keys=("model", "reason"),
        )
        self.decision_latency = metrics.Histogram(
            "barp_router_decision_latency_ms",
            description="Time from request to routing decision (encoder + policy, batching wait included).",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("batched",),
        )
        self.batch_size = metrics.Histogram(
            "barp_router_forward_batch_size", description="Prompts per encoder + policy forward pass.",
            boundaries=BATCH_BOUNDARIES,
        )
        self.rejected = metrics.Counter(
            "barp_router_rejected_total", description="Requests answered with a 4xx, by status code.",
            tag_keys=("status",),
        )
        self.log_dropped = metrics.Counter(
            "barp_router_decision_log_dropped_total",
            description="Decision-log rows dropped because the buffer bound was hit while the store failed.",
        )
        self.policy = metrics.Gauge(
            "barp_router_policy_active",
            description="1 for the policy version this replica routes with, 0 for the one a rollout replaced.",
            tag_keys=("policy_version",),
        )
        self.policy_rollouts = metrics.Counter(
            "barp_router_policy_rollouts_total",
            description="Policy rollouts (user_config changes) per outcome: ok, refused (old policy kept).",
            tag_keys=("outcome",),
        )

    def set_policy(self, version: str, replaced: str | None) -> None:
        if replaced is not None and replaced != version:
            self.policy.set(0, tags={"policy_version": replaced})
        self.policy.set(1, tags={"policy_version": version})

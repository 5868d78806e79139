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
            "barp_router_cost_usd_total",
            description="USD cost of served answers per model.",
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
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("batched",),
        )
        self.batch_size = metrics.Histogram(
            "barp_router_forward_batch_size",
            description="Prompts per encoder + policy forward pass.",
            boundaries=BATCH_BOUNDARIES,
        )
        self.rejected = metrics.Counter(
            "barp_router_rejected_total",
            description="Requests answered with a 4xx, by status code.",
            tag_keys=("status",),
        )
        self.log_dropped = metrics.Counter(
            "barp_router_decision_log_dropped_total",
            description="Decision-log rows lost: dropped past the byte-bounded buffer while the store failed, or "
            "still unwritten when the replica's final flush gave up.",
        )
        self.log_written = metrics.Counter(
            "barp_router_decision_log_written_total",
            description="Decision rows written to the log store.",
        )
        self.log_write_errors = metrics.Counter(
            "barp_router_decision_log_write_errors_total",
            description="Failed writes to the decision-log store (rows stay buffered and are retried).",
        )
        self.log_buffered_bytes = metrics.Gauge(
            "barp_router_decision_log_buffered_bytes",
            description="Decision rows waiting in the replica's buffer (bytes, estimated).",
        )
        self.feedback_commits = metrics.Counter(
            "barp_router_feedback_commits_total",
            description="Feedback group commits (one file each, shared by the feedback requests of its window).",
        )
        self.shed = metrics.Counter(
            "barp_router_shed_total",
            description="Requests refused before any work: overload (503, max_queued_requests) or rate_limit (429).",
            tag_keys=("reason",),
        )
        self.isolated = metrics.Counter(
            "barp_router_forward_isolated_total",
            description="Batched forward passes that raised and were retried one request at a time.",
        )
        self.policy = metrics.Gauge(
            "barp_router_policy_active",
            description="1 for the policy version this replica routes with, 0 for the one a rollout replaced.",
            tag_keys=("policy_version",),
        )
        self.circuit = metrics.Gauge(
            "barp_router_upstream_circuit_state",
            description="Per-model circuit breaker of this replica: 0 closed, 1 open (model skipped), 2 half-open "
            "(cooldown over, the next attempt decides).",
            tag_keys=("model",),
        )
        self.policy_rollouts = metrics.Counter(
            "barp_router_policy_rollouts_total",
            description="Policy rollouts (user_config changes) per outcome: ok, refused (old policy kept).",
            tag_keys=("outcome",),
        )

        self._log_seen: dict[str, int] = {}

    def sync_log(self, stats: dict) -> None:
        """Export a DecisionLog.stats() snapshot (counters advance by the change since the last call)."""
        for key, counter in (
            ("dropped", self.log_dropped),
            ("written", self.log_written),
            ("write_errors", self.log_write_errors),
            ("feedback_commits", self.feedback_commits),
        ):
            delta = int(stats.get(key, 0)) - self._log_seen.get(key, 0)
            if delta > 0:
                counter.inc(delta)
                self._log_seen[key] = int(stats[key])
        self.log_buffered_bytes.set(float(stats.get("buffered_bytes", 0)))

    def set_policy(self, version: str, replaced: str | None) -> None:
        if replaced is not None and replaced != version:
            self.policy.set(0, tags={"policy_version": replaced})
        self.policy.set(1, tags={"policy_version": version})

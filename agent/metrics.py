"""Prometheus metrics of one agent, in their own registry (several agents can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Counters and gauges the loop updates; ``render`` gives the text exposition for ``/metrics``."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.events_in = Counter("shadowscale_events_in", "Messages consumed, by topic", ["topic"], registry=r)
        self.dead_lettered = Counter(
            "shadowscale_events_dead_lettered", "Messages sent to the dead-letter topic, by kind", ["kind"], registry=r
        )
        self.duplicates = Counter("shadowscale_events_duplicate", "Traffic events dropped as duplicates", registry=r)
        self.late = Counter("shadowscale_events_late", "Traffic events dropped as too late to deduplicate", registry=r)
        self.decisions = Counter(
            "shadowscale_decisions", "Decisions made, by trigger and outcome", ["trigger", "outcome"], registry=r
        )
        self.decision_latency = Histogram(
            "shadowscale_decision_latency_seconds",
            "From receiving the batch (or the tick) to the actuator's answer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.desired = Gauge("shadowscale_desired_replicas", "Target replicas last decided", ["model"], registry=r)
        self.spec_recommended = Gauge(
            "shadowscale_spec_recommended",
            "1 for the alternative spec (models[].specs) right-sizing recommends instead of the configured one",
            ["model", "spec"],
            registry=r,
        )
        self.actual = Gauge("shadowscale_actual_replicas", "Replicas the actuator reports", ["model"], registry=r)
        self.ready = Gauge("shadowscale_ready_replicas", "Ready replicas the actuator reports", ["model"], registry=r)
        self.scale_failures = Counter(
            "shadowscale_scale_failures", "Scale calls that failed after retries", ["model"], registry=r
        )
        self.pending = Gauge("shadowscale_pending_targets", "Targets not applied yet (retrying)", registry=r)
        self.leader = Gauge("shadowscale_leader", "1 while this agent holds the leader lease", registry=r)
        self.lag_commits = Counter("shadowscale_commits", "Offset commits", registry=r)
        self.lag = Gauge(
            "shadowscale_consumer_lag_events",
            "Events on the broker not handled yet (high watermark minus the next offset handled), by partition",
            ["topic", "partition"],
            registry=r,
        )
        self.commit_age = Gauge(
            "shadowscale_last_commit_age_seconds", "Seconds since the last successful offset commit", registry=r
        )
        self.event_age = Gauge(
            "shadowscale_event_age_seconds",
            "Seconds since the newest traffic event of the model (staleness; a model never heard from is absent)",
            ["model"],
            registry=r,
        )
        self.fallback = Gauge(
            "shadowscale_fallback_active",
            "1 while the model is on its fallback replicas (stale events)",
            ["model"],
            registry=r,
        )
        self.profiling_running = Gauge(
            "shadowscale_profiling_searches_running", "Profiling searches in flight (one per model at most)", registry=r
        )
        self.profiling_searches = Counter(
            "shadowscale_profiling_searches",
            "Profiling searches ended, by outcome (published, infeasible, failed, cancelled)",
            ["outcome"],
            registry=r,
        )
        self.rollouts = Counter(
            "shadowscale_rollouts",
            "Rollouts of a profile's chosen spec, by outcome (started, promoted, rolled_back, dry_run)",
            ["outcome"],
            registry=r,
        )
        self.rollouts_in_progress = Gauge(
            "shadowscale_rollouts_in_progress", "Canaries being watched (rollouts started, not yet judged)", registry=r
        )

        self.placement_decision = Histogram(
            "shadowscale_placement_decision_seconds",
            "One placement decision of the secondary scheduler (CPU spent deciding, no API call)",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1),
            registry=r,
        )
        self.placement_outcomes = Counter(
            "shadowscale_placement_outcomes",
            "Secondary scheduler outcomes: bound, failed, abandoned, or the unschedulable kind",
            ["outcome"],
            registry=r,
        )
        self.placement_migrations = Counter(
            "shadowscale_placement_migrations",
            "Migration plans run, by outcome (done, stopped)",
            ["outcome"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

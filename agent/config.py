"""The agent's configuration: YAML, then environment overrides, validated in one step with msgspec.

``load_config(path, environ)`` reads the YAML file, applies every ``SHADOWSCALE_AGENT__SECTION__KEY=value``
variable (keys lower-cased; the value stays the string it is — a Secret such as a SASL password ``123456``, ``on``,
``null`` or ``pass #word`` arrives verbatim — and is converted to the field's type by msgspec's lax conversion, so
``true`` and ``5`` still work for a bool or an int; a list or mapping field takes JSON), and converts the result
into :class:`AgentConfig`. Any problem raises :class:`ConfigError` (a ``ValueError``) whose message names
the file or variable and the offending field, e.g. ``agent.yaml: Expected `int`, got `str` - at `$.kafka.max_batch```.
The CLI turns it into exit status 2.
"""

from __future__ import annotations

import json
import math
import os
import socket
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import yaml

from shadowscale.errors import UsageError
from shadowscale.policies.profiling.drift import DriftSettings

if TYPE_CHECKING:  # the planner imports scikit-optimize: loaded only when profiling is configured
    from shadowscale.policies.profiling.objective import Objective
    from shadowscale.policies.profiling.planner import PlannerSettings
    from shadowscale.policies.profiling.rollout import RolloutSettings
    from shadowscale.policies.profiling.space import SearchSpace

ENV_PREFIX = "SHADOWSCALE_AGENT__"
LIVE_POLICIES = ("hpa", "keda", "kpa", "shadowscale")

PositiveFloat = Annotated[float, msgspec.Meta(gt=0.0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]


class ConfigError(UsageError):
    """The configuration file or an override is invalid; the message says where and why."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class Topics(_Section, frozen=True, kw_only=True):
    traffic: str = "shadowscale.traffic"
    gpu: str = "shadowscale.gpu"
    decisions: str = "shadowscale.decisions"
    dead_letter: str = "shadowscale.dead-letter"
    trials: str = "shadowscale.trials"
    """Where shadow trials' load generators publish their results (``profiling.runner: shadow`` only)."""


class KafkaConfig(_Section, frozen=True, kw_only=True):
    bootstrap: str = "127.0.0.1:9092"
    group_id: str = "shadowscale-agent"
    client_id: str = "shadowscale-agent"
    topics: Topics = Topics()
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 2_000
    """Most records handled per loop iteration (one poll): bounds how long a flash crowd waits behind a batch."""
    poll_timeout_s: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)] = 0.1
    """Longest wait for records before the loop looks at its tick and its retries again."""
    commit_interval_s: NonNegFloat = 0.2
    commit_timeout_s: PositiveFloat = 2.0
    """Longest one commit may take; a broker that is away makes it fail (retried later), never holds the loop."""
    max_unsent: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    """Audit and dead-letter records buffered while the broker does not take them; beyond this the loop stops
    polling new events (back-pressure) instead of dropping records whose offsets would then be committed."""
    max_commit_hold_s: NonNegFloat = 2.0
    """Longest a model's failing scale call holds back the commit of its partition's offsets; after that the offsets
    are committed anyway (the target stays pending, retried with back-off): one failing model never stalls the
    consumer group's progress for long, and every other partition commits at once. Also counted per partition: calls
    that follow one another (each younger than the hold) never keep a partition uncommitted for longer in all."""
    session_timeout_ms: Annotated[int, msgspec.Meta(ge=1000)] = 10_000
    heartbeat_interval_ms: Annotated[int, msgspec.Meta(ge=100)] = 3_000
    fetch_max_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 20
    create_topics: bool = False
    """Create the four topics at start (handy against a development broker)."""
    partitions: PositiveInt = 4
    """Partitions of topics the agent creates."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    """Mutual TLS: the client certificate (PEM) the agent presents to the brokers, with ``ssl_keyfile``."""
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = None


class KubernetesConfig(_Section, frozen=True, kw_only=True):
    namespace: str | None = None
    """Only this namespace (None: every namespace the agent may list)."""
    label: str = "shadowscale.io/model"
    """Workloads carry this label; its value is the model name."""
    host: str | None = None
    """API server URL without credentials (tests, ``kubectl proxy``); otherwise in-cluster or kubeconfig."""
    kubeconfig: str | None = None
    in_cluster: bool = False
    request_timeout_s: PositiveFloat = 5.0
    retry_delays_s: tuple[NonNegFloat, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)
    """Back-off before each retry of a scale call answered 409/429/5xx or timed out; then it is left pending."""
    events: bool = True
    """Write a Kubernetes Event on the workload for every scale and every ignored annotation."""
    respect_other_autoscalers: bool = True
    """Leave alone a workload that an HPA or a KEDA ScaledObject already scales (checked every
    ``conflict_check_s``), with a Warning Event, instead of fighting over its replica count."""
    conflict_check_s: PositiveFloat = 30.0


class ActuatorConfig(_Section, frozen=True, kw_only=True):
    kind: Literal["simulated", "kubernetes"] = "simulated"
    backoff_s: PositiveFloat = 0.5
    """A model whose scale call failed is tried again after this long, doubling per failure (with jitter) ..."""
    max_backoff_s: PositiveFloat = 30.0
    """... up to this long; other models are called as usual meanwhile."""
    cold_start_s: NonNegFloat = 0.0
    """Simulated cluster only: seconds before a new replica is ready."""
    kubernetes: KubernetesConfig = KubernetesConfig()


class GuardConfig(_Section, frozen=True, kw_only=True):
    max_step: NonNegInt = 0
    """Largest change of one model's replicas per decision (0: unlimited)."""
    scale_up_cooldown_s: NonNegFloat = 0.0
    scale_down_cooldown_s: NonNegFloat = 30.0
    """No change in that direction sooner than this after the model's last change."""
    gpu_budget: NonNegFloat | None = None
    """GPUs all managed workloads together may hold (replicas x gpu_fraction); None: no limit."""


class IngestConfig(_Section, frozen=True, kw_only=True):
    max_future_s: PositiveFloat = 60.0
    max_age_s: PositiveFloat = 3600.0
    pod_stale_s: PositiveFloat = 30.0
    dedupe_s: PositiveFloat = 60.0
    stale_s: PositiveFloat = 60.0
    """A model whose newest traffic event is older than this is stale (``shadowscale_event_age_seconds``; the
    model's ``fallback_replicas``, if set, take over)."""
    max_rps: PositiveFloat = 100_000.0
    """Most requests per second one pod can plausibly receive or complete: a traffic event claiming more is
    dead-lettered."""
    max_concurrency: PositiveFloat = 10_000.0
    """Most requests one pod can plausibly hold in flight (``queue_depth``, ``concurrency_s / window_s``)."""


class TriggerConfig(_Section, frozen=True, kw_only=True):
    enabled: bool = True
    """Decide a model at once when its demand crosses its capacity (either way), besides the reconcile tick."""
    headroom: PositiveFloat = 1.0
    """Capacity = ready replicas x capacity_rps x headroom."""


class HttpConfig(_Section, frozen=True, kw_only=True):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464


class LeaderConfig(_Section, frozen=True, kw_only=True):
    enabled: bool = False
    namespace: str = "default"
    name: str = "shadowscale-agent"
    lease_duration_s: PositiveFloat = 15.0
    """How long a Lease not renewed stays with its holder in the other candidates' eyes."""
    renew_deadline_s: PositiveFloat | None = None
    """A leader that has not renewed within this long (counted from *before* its last successful request) acts as a
    follower; below ``lease_duration_s`` so it has stopped before anyone else may take over. None: 2/3 of it."""
    renew_period_s: PositiveFloat = 2.0
    request_timeout_s: PositiveFloat = 2.0
    """Time limit of each Lease call (a hung API server must not hold a leader past its deadline)."""

    @property
    def deadline_s(self) -> float:
        return self.renew_deadline_s if self.renew_deadline_s is not None else self.lease_duration_s * 2.0 / 3.0


class LogConfig(_Section, frozen=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class WorkloadClass(_Section, frozen=True, kw_only=True):
    """One task class of the target workload FGD-style policies score against (``scheduler.workload``)."""

    cpu_milli: NonNegInt
    memory_mib: NonNegInt = 0
    num_gpu: Annotated[int, msgspec.Meta(ge=0, le=8)] = 0
    gpu_milli: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    gpu_models: tuple[str, ...] = ()
    weight: PositiveFloat = 1.0
    """Relative popularity (weights are normalised)."""


class SchedulerConfig(_Section, frozen=True, kw_only=True):
    """The secondary scheduler for pods with ``schedulerName: <name>`` (agent/scheduler.py; off by default)."""

    enabled: bool = False
    name: Annotated[str, msgspec.Meta(min_length=1)] = "shadowscale"
    policy: str = "shadowscale"
    """Placement policy (``policies.placement.POLICY_NAMES``, case-insensitive)."""
    migrations: bool = False
    """Evict pods along a defragmentation plan when a pod finds no room though enough GPU shares are free."""
    max_moves: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3
    retry_s: PositiveFloat = 5.0
    """A pod that found no room is decided again after this long (sooner when capacity is freed)."""
    migration_wait_s: PositiveFloat = 60.0
    """How long one migration waits for its evicted pod to be gone before the plan is abandoned."""
    migration_interval_s: NonNegFloat = 300.0
    """At most one migration plan starts per this many seconds (plans run on their own task)."""
    reservation_s: PositiveFloat = 120.0
    """How long a migration holds the planned destination for the moved pod's replacement (and the freed node
    for the pod it made room for) before the capacity goes back to everyone."""
    workload: tuple[WorkloadClass, ...] = ()
    """The target workload (task classes) FGD-style policies score against; empty: the last
    ``workload_window`` pods that arrived for this scheduler."""
    workload_window: PositiveInt = 2000
    workload_refresh_s: PositiveFloat = 60.0
    """Observed task classes are recomputed at most this often (each change rebuilds the policy's cache)."""
    bind_concurrency: PositiveInt = 16
    """Bindings (annotate + bind) in flight at once; decisions go on while they run."""
    hami_node_lock: bool = True
    """Take HAMi's node lock (``hami.io/mutex.lock``) before binding a GPU pod to a HAMi node, as HAMi's scheduler
    does, so its device plugin never sees two pods allocating on one node; the plugin releases it."""
    node_lock_wait_s: PositiveFloat = 30.0
    """How long a binding waits for another pod's node lock before the pod is decided again."""


class DriftConfig(_Section, frozen=True, kw_only=True):
    """:class:`policies.profiling.drift.DriftSettings`, field for field (checked there: errors name the field)."""

    windows_to_stale: int = 3
    latency_tolerance: float = 0.25
    load_margin: float = 0.8
    capacity_tolerance: float = 0.2
    min_requests: float = 20.0
    min_utilisation: float = 0.05
    calibration_windows: int = 5
    default_target_utilisation: float = 0.8
    memory: int = 40


class RetrialConfig(_Section, frozen=True, kw_only=True):
    max_parallel: PositiveInt = 1
    """Re-trial searches at once, across all models (the global trial budget)."""
    cooldown_s: NonNegFloat = 3600.0
    """No model is re-profiled sooner than this after its previous re-trial started."""


class ProfilesConfig(_Section, frozen=True, kw_only=True):
    """Profiles from the profile store drive each model's capacity (off by default: ``capacity_rps`` is used)."""

    enabled: bool = False
    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=249)] = "shadowscale.profiles"
    """Compacted topic keyed by model (created with ``cleanup.policy=compact`` if missing)."""
    partitions: PositiveInt = 1
    create_topic: bool = True
    load_timeout_s: PositiveFloat = 30.0
    refresh_s: NonNegFloat = 60.0
    """Re-read the store this often and take newer records (other replicas' searches and stale marks); 0: only at
    start."""
    drift: DriftConfig = DriftConfig()
    retrials: RetrialConfig = RetrialConfig()


class PlannerConfig(_Section, frozen=True, kw_only=True):
    """:class:`policies.profiling.planner.PlannerSettings`' main knobs (checked there: errors name the field)."""

    budget: int = 40
    """Most trials in one search."""
    ei_threshold: float = 0.01
    min_trials: int = 6
    initial_points: int = 3
    warm_min_trials: int = 3
    """With a transfer prior that explains every trial, the EI rule may stop from this many trials on."""
    prior_trials: int = 2
    """The transfer prior's agreement rule may stop a warm search from this many trials on (0: never)."""


class LocalRunnerConfig(_Section, frozen=True, kw_only=True):
    """:class:`agent.profiling.local.LocalSettings`: trials on this machine against the bundled model server."""

    step_s: PositiveFloat = 2.0
    start_rps: PositiveFloat = 50.0
    max_rps: PositiveFloat = 20_000.0
    bisect_steps: NonNegInt = 4
    ready_timeout_s: PositiveFloat = 20.0
    server_args: tuple[str, ...] = ()
    """Appended to the server's command line (e.g. ``["--hidden", "128"]``)."""


class LoadConfig(_Section, frozen=True, kw_only=True):
    """:class:`agent.profiling.loadgen.LoadPlan`: the load generator's rate search."""

    step_s: PositiveFloat = 2.0
    start_rps: PositiveFloat = 10.0
    max_rps: PositiveFloat = 20_000.0
    bisect_steps: NonNegInt = 4
    drain_s: PositiveFloat | None = None
    connect_timeout_s: PositiveFloat = 60.0
    warmup_s: Annotated[float, msgspec.Meta(ge=0.0)] = 5.0
    """Unmeasured load at the first rate before the rate search starts."""


class ShadowRunnerConfig(_Section, frozen=True, kw_only=True):
    """:class:`agent.profiling.shadow.ShadowSettings`: trials as shadow Deployments plus a load-generator Job."""

    kafka_bootstrap: str | None = None
    """The broker as the load generator's pod reaches it (HOST:PORT[,…]); None: ``kafka.bootstrap``."""
    loadgen_image: Annotated[str, msgspec.Meta(min_length=1)] = "ghcr.io/shadowscale/shadowscale:latest"
    loadgen_command: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)] = ("shadowscale", "loadgen")
    loadgen_args: tuple[str, ...] = ()
    loadgen_env: dict[str, str] = msgspec.field(default_factory=dict)
    ready_timeout_s: PositiveFloat = 600.0
    result_timeout_s: PositiveFloat = 900.0
    poll_s: PositiveFloat = 2.0
    gpu_type_label: str = "nvidia.com/gpu.product"
    load: LoadConfig = LoadConfig()
    kafka_ca_secret: str | None = None
    """A Secret with ``ca.crt`` in each model's namespace, mounted into the load generator (brokers behind TLS with
    a private CA); the security protocol and SASL mechanism are the agent's own (``kafka``)."""
    kafka_sasl_secret: str | None = None
    """A Secret with ``username`` and ``password`` in each model's namespace: the load generator's SASL login
    (required when ``kafka.security_protocol`` is SASL_*)."""


class ModelProfilingConfig(_Section, frozen=True, kw_only=True):
    """One model's profiling: whether it is profiled, its search space, and (shadow runner) its workload."""

    enabled: bool = True
    space: dict[str, Any] | None = None
    """Search space and objective in :mod:`policies.profiling.config`'s form (``slo_ms``, ``dimensions``,
    ``forbid``, ``pricing``); None: ``profiling.space``. A missing ``slo_ms`` is the model's own."""
    deployment: str | None = None
    """The Deployment shadow trials clone (in the model's namespace); None: the model's name."""
    container: str | None = None
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    path: str = "/"
    protocol: Literal["http", "https", "tcp", "openai"] = "http"
    shape: dict[str, Any] | None = None
    """The load's request shape (:class:`agent.profiling.loadgen.RequestShape`); None: empty POSTs, evenly spaced."""
    knobs: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)
    """Configuration keys that set a container argument, an environment variable or a templated config file
    (:class:`agent.profiling.shadow.Knob`: ``{arg: --max-num-seqs}``, ``{env: NAME}``, ``{file: PATH, template:
    TEXT}``)."""


class ProfilingConfig(_Section, frozen=True, kw_only=True):
    """Profiling searches run by the agent (off by default; needs ``profiles.enabled``): a re-trial for a model whose
    profile went stale, and (``profile_missing``) a search for a model that has no profile; the result is
    published to the profile store."""

    enabled: bool = False
    runner: Literal["shadow", "local"] = "shadow"
    """``shadow``: Kubernetes shadow Deployments (needs ``actuator.kind: kubernetes``); ``local``: the bundled model
    server on this machine (demos and tests without a cluster)."""
    profile_missing: bool = False
    """Search for every profiled model that has no usable stored profile (checked at start and every
    ``check_interval_s``; a model whose search failed is tried again after ``profiles.retrials.cooldown_s``)."""
    space: dict[str, Any] | None = None
    """Default search space and objective of every profiled model (see ``models.<name>.space``)."""
    models: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """Per model (by name): :class:`ModelProfilingConfig`, read by :func:`model_profiling` so errors name the model."""
    max_trials: PositiveInt = 1
    """Trials at once across every search (the shared trial gate)."""
    gpu_share_cap: PositiveFloat | None = None
    """GPUs the running trials may hold together (needs ``gpu_share_dimension``); None: no cap."""
    gpu_share_dimension: str | None = None
    """The search-space dimension that says how much GPU a trial holds."""
    gpu_share_unit: PositiveFloat = 1.0
    """GPUs per unit of ``gpu_share_dimension`` (0.01 for a percentage)."""
    max_parallel: PositiveInt = 1
    """Trials at once within one search."""
    trial_timeout_s: PositiveFloat = 900.0
    transfer: bool = True
    """Warm-start a search from the other profiled models' stored profiles (same dimension names)."""
    check_interval_s: PositiveFloat = 10.0
    planner: PlannerConfig = PlannerConfig()
    local: LocalRunnerConfig = LocalRunnerConfig()
    shadow: ShadowRunnerConfig = ShadowRunnerConfig()


class RolloutConfig(_Section, frozen=True, kw_only=True):
    """Rolling a profile's chosen spec out to the model's Deployment (off by default; needs ``profiles.enabled`` and
    ``actuator.kind: kubernetes``): :class:`policies.profiling.rollout.RolloutSettings` plus the loop's timing.
    Only the leader acts (with ``leader_election.enabled``)."""

    enabled: bool = False
    dry_run: bool = False
    """Decide and report (log, Event, metric) what would be rolled out; change nothing. ``dry_run`` at the top level
    implies it."""
    min_gain: float = 0.10
    """The threshold: roll out only when the chosen spec's objective beats the running spec's by this share."""
    check_interval_s: PositiveFloat = 60.0
    """How often each profiled model's workload is read and its profile considered (sooner after a new profile)."""
    canary_window_s: PositiveFloat = 15.0
    """Length of one canary window (its pods' traffic events summed)."""
    canary_windows: int = 4
    """Windows with traffic before the canary is judged ..."""
    canary_min_requests: float = 50.0
    """... and requests the canary must have completed in them."""
    canary_timeout_s: float = 1800.0
    """A canary without enough traffic by then is rolled back."""
    min_attainment: float = 0.9
    max_error_ratio: float = 0.01
    throughput_tolerance: float = 0.1
    max_surge_ratio: float = 0.25
    """Rolling update: new pods at once, as a share of the replicas (at least one)."""
    max_unavailable: int = 0
    """Rolling update: pods that may be down at once (0: serving capacity never drops)."""
    model_interval_s: float = 6 * 3600.0
    """Per-model rate limit: at most one rollout start per this long."""
    cluster_max_active: int = 1
    """Cluster-wide: rollouts in progress at once."""
    cluster_per_hour: int = 4
    """Cluster-wide: rollout starts in any hour."""
    opt_out_annotation: str = "shadowscale.io/rollout"
    """A workload with this annotation set to ``disabled`` is never rolled out to."""


SPEC_NAME = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
"""A spec's name: a Prometheus label value and a log field, so letters, digits, ``.``, ``_`` and ``-``."""


class SpecOption(_Section, frozen=True, kw_only=True):
    """A measured alternative spec of a model (another GPU share), which the shadowscale policy's right-sizing may
    recommend in place of the configured one (``gpu_fraction`` and ``capacity_rps``)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=SPEC_NAME)]
    gpu_fraction: Annotated[float, msgspec.Meta(gt=0.0, le=8.0)]
    capacity_rps: PositiveFloat
    """Requests per second one replica on this spec serves within the model's SLO (measured, like the model's).
    As for the configured spec, one request is taken to need ``1 / capacity_rps`` s, and a spec where that is
    over 40 % of the model's SLO is never recommended."""


class ModelConfig(_Section, frozen=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    namespace: str = "default"
    min_replicas: NonNegInt = 1
    max_replicas: NonNegInt = 100
    capacity_rps: PositiveFloat
    """Requests per second one replica serves within its SLO (from the model's profile)."""
    gpu_fraction: Annotated[float, msgspec.Meta(gt=0.0, le=8.0)] = 1.0
    slo_ms: PositiveFloat | None = None
    """Latency objective of one request; default twice the time one replica takes per request (1 / capacity)."""
    cold_start_s: NonNegFloat = 60.0
    """Seconds from asking for a replica to its serving: the horizon shadowscale forecasts demand over."""
    fallback_replicas: NonNegInt | None = None
    """KEDA's ``fallback``: when the model's traffic events are older than ``ingest.stale_s`` (its producers or
    their pipeline broke), ask for this many replicas instead of deciding on stale data; None: keep deciding."""
    specs: Annotated[tuple[SpecOption, ...], msgspec.Meta(max_length=16)] = ()
    """Measured alternatives to the configured spec (policy shadowscale): its right-sizing recommends one once it
    has watched the model's traffic for ``spec_learn_s``; the agent reports it (audit record, log, metric
    ``shadowscale_spec_recommended``) and does not apply it."""


class AgentConfig(_Section, frozen=True, kw_only=True):
    models: Annotated[tuple[ModelConfig, ...], msgspec.Meta(min_length=1)]
    policy: str = "kpa"
    policy_knob: float | None = None
    """Overrides the policy's main parameter (HPA target utilization, KEDA lag threshold, KPA target concurrency)."""
    dry_run: bool = False
    agent_id: str | None = None
    audit_file: str | None = None
    """Also append every decision record to this JSON-lines file."""
    audit_holds: bool = True
    """Audit reconcile-tick decisions that keep the replica count (event-triggered ones are always audited)."""
    kafka: KafkaConfig = KafkaConfig()
    actuator: ActuatorConfig = ActuatorConfig()
    guards: GuardConfig = GuardConfig()
    ingest: IngestConfig = IngestConfig()
    trigger: TriggerConfig = TriggerConfig()
    http: HttpConfig = HttpConfig()
    leader_election: LeaderConfig = LeaderConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    profiles: ProfilesConfig = ProfilesConfig()
    profiling: ProfilingConfig = ProfilingConfig()
    rollout: RolloutConfig = RolloutConfig()
    log: LogConfig = LogConfig()

    @property
    def identity(self) -> str:
        return self.agent_id or f"{socket.gethostname()}-{os.getpid()}"


def _check(cfg: AgentConfig) -> None:
    if cfg.policy not in LIVE_POLICIES:
        hint = " (it is sized from the whole trace: simulator only)" if cfg.policy in ("static", "oracle") else ""
        raise ConfigError(f"policy {cfg.policy!r} cannot run live{hint}; valid policies: {', '.join(LIVE_POLICIES)}")
    if cfg.policy_knob is not None and not (math.isfinite(cfg.policy_knob) and cfg.policy_knob > 0):
        raise ConfigError("policy_knob must be a positive, finite number")
    names = [m.name for m in cfg.models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"models listed twice: {', '.join(dupes)}")
    for m in cfg.models:
        if m.min_replicas > m.max_replicas:
            raise ConfigError(f"model {m.name!r}: min_replicas {m.min_replicas} > max_replicas {m.max_replicas}")
        if m.specs and cfg.policy != "shadowscale":
            raise ConfigError(
                f"model {m.name!r}: specs are recommended by policy shadowscale's right-sizing only (policy is "
                f"{cfg.policy!r})"
            )
        if m.specs and m.slo_ms is None:
            raise ConfigError(
                f"model {m.name!r}: specs need slo_ms (the default, twice the configured spec's time per request, "
                "would rule out every slower spec)"
            )
        spec_names = [o.name for o in m.specs]
        twice = sorted({n for n in spec_names if spec_names.count(n) > 1})
        if twice:
            raise ConfigError(f"model {m.name!r}: specs named twice: {', '.join(twice)}")
        for o in m.specs:
            if not math.isfinite(o.capacity_rps):  # gpu_fraction is bounded by its type
                raise ConfigError(f"model {m.name!r}: specs.{o.name}.capacity_rps must be finite")
            if (o.gpu_fraction, o.capacity_rps) == (m.gpu_fraction, m.capacity_rps):
                raise ConfigError(
                    f"model {m.name!r}: specs.{o.name} is the configured spec (gpu_fraction and capacity_rps); "
                    "list only the alternatives"
                )
    if cfg.scheduler.enabled:
        from shadowscale.policies.placement import UnknownPolicyError, canonical_name

        try:
            canonical_name(cfg.scheduler.policy)
        except UnknownPolicyError as e:
            raise ConfigError(f"scheduler.policy: {e}") from None
        from shadowscale.policies.placement import PodRequest

        for i, w in enumerate(cfg.scheduler.workload):
            try:
                PodRequest(w.cpu_milli, w.memory_mib, w.num_gpu, w.gpu_milli, frozenset(w.gpu_models))
            except ValueError as e:
                raise ConfigError(f"scheduler.workload[{i}]: {str(e).split(': ', 1)[-1]}") from None
    try:
        drift_settings(cfg.profiles)
    except ValueError as e:
        raise ConfigError(f"profiles.drift: {e}") from None
    if cfg.profiling.enabled:
        _check_profiling(cfg)
    _check_rollout(cfg)
    le = cfg.leader_election
    if not le.renew_period_s < le.deadline_s < le.lease_duration_s:
        raise ConfigError(
            "leader_election: need renew_period_s < renew_deadline_s < lease_duration_s, got "
            f"{le.renew_period_s:g} / {le.deadline_s:g} / {le.lease_duration_s:g}"
        )
    k = cfg.kafka
    if k.heartbeat_interval_ms >= k.session_timeout_ms:
        raise ConfigError("kafka.heartbeat_interval_ms must be below kafka.session_timeout_ms")
    if k.security_protocol.startswith("SASL") and (k.sasl_mechanism is None or k.sasl_username is None):
        raise ConfigError("kafka.security_protocol SASL_* needs kafka.sasl_mechanism and kafka.sasl_username")
    if (k.ssl_certfile is None) != (k.ssl_keyfile is None):
        raise ConfigError("kafka.ssl_certfile and kafka.ssl_keyfile go together (mutual TLS needs both)")
    if k.ssl_certfile is not None and not k.security_protocol.endswith("SSL"):
        raise ConfigError("kafka.ssl_certfile needs kafka.security_protocol SSL or SASL_SSL")
    if not k.bootstrap.strip():
        raise ConfigError("kafka.bootstrap must name at least one HOST:PORT")


def _check_profiling(cfg: AgentConfig) -> None:
    p = cfg.profiling
    if not cfg.profiles.enabled:
        raise ConfigError("profiling.enabled needs profiles.enabled (searches publish to the profile store)")
    if p.runner == "shadow" and cfg.actuator.kind != "kubernetes":
        raise ConfigError("profiling.runner shadow needs actuator.kind kubernetes (use runner local without a cluster)")
    if p.gpu_share_cap is not None and p.gpu_share_dimension is None:
        raise ConfigError("profiling.gpu_share_cap needs profiling.gpu_share_dimension (which dimension holds GPU)")
    try:
        planner_settings(p)
    except ValueError as e:
        raise ConfigError(f"profiling.planner: {e}") from None
    unknown = sorted(set(p.models) - {m.name for m in cfg.models})
    if unknown:
        raise ConfigError(f"profiling.models: {', '.join(map(repr, unknown))} not in models")
    for name, (space, _) in profiling_plans(cfg).items():
        d = p.gpu_share_dimension
        if d is not None and d not in space.names:
            raise ConfigError(f"profiling.gpu_share_dimension {d!r} is not a dimension of model {name!r}'s space")
    for name in p.models:
        m = model_profiling(p, name)
        if not m.path.startswith("/"):
            raise ConfigError(f"profiling.models.{name}.path must start with '/', got {m.path!r}")
        if m.shape is not None:
            from shadowscale.agent.profiling.loadgen import RequestShape

            try:
                msgspec.convert(m.shape, RequestShape)
            except (msgspec.ValidationError, ValueError) as e:
                raise ConfigError(f"profiling.models.{name}.shape: {e}") from None
    boot = p.shadow.kafka_bootstrap
    if boot is not None and not all(":" in b for b in boot.split(",")):
        raise ConfigError(f"profiling.shadow.kafka_bootstrap must be HOST:PORT[,HOST:PORT…], got {boot!r}")
    if p.shadow.load.start_rps > p.shadow.load.max_rps:
        raise ConfigError("profiling.shadow.load.start_rps must not be above profiling.shadow.load.max_rps")
    if p.runner == "shadow" and cfg.kafka.security_protocol.startswith("SASL") and not p.shadow.kafka_sasl_secret:
        raise ConfigError(
            f"profiling.shadow.kafka_sasl_secret: kafka.security_protocol is {cfg.kafka.security_protocol}, so the "
            "load generator needs SASL credentials: name a Secret with username and password in each model's "
            "namespace"
        )
    if p.local.start_rps > p.local.max_rps:
        raise ConfigError("profiling.local.start_rps must not be above profiling.local.max_rps")


def _check_rollout(cfg: AgentConfig) -> None:
    try:
        rollout_settings(cfg)
    except ValueError as e:  # "rollout settings: min_gain is out of range: -1.0"
        field, _, why = str(e).removeprefix("rollout settings: ").partition(" ")
        raise ConfigError(f"rollout.{field} {why}") from None
    if not cfg.rollout.enabled:
        return
    if not cfg.profiles.enabled:
        raise ConfigError("rollout.enabled needs profiles.enabled (it rolls out the stored profiles' chosen specs)")
    if cfg.actuator.kind != "kubernetes":
        raise ConfigError("rollout.enabled needs actuator.kind kubernetes (it patches the models' Deployments)")


def rollout_settings(cfg: AgentConfig) -> RolloutSettings:
    """The rollout policy's settings from ``rollout`` (raises ``ValueError`` naming a bad field); the top-level
    ``dry_run`` makes rollouts dry runs too."""
    from shadowscale.policies.profiling.rollout import RolloutSettings

    r = cfg.rollout
    fields = {
        k: v
        for k, v in msgspec.structs.asdict(r).items()
        if k not in ("enabled", "check_interval_s", "canary_window_s")
    }
    fields["dry_run"] = r.dry_run or cfg.dry_run
    return RolloutSettings(**fields)


def model_profiling(p: ProfilingConfig, model: str) -> ModelProfilingConfig:
    """``profiling.models.<model>`` (defaults if absent); raises :class:`ConfigError` naming the model and field."""
    try:
        return msgspec.convert(p.models.get(model, {}), ModelProfilingConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"profiling.models.{model}: {e}") from None


def planner_settings(p: ProfilingConfig) -> PlannerSettings:
    """The planner's settings from ``profiling.planner`` (raises ``ValueError`` naming a bad field)."""
    from shadowscale.policies.profiling.planner import PlannerSettings

    return PlannerSettings(**msgspec.structs.asdict(p.planner))


def profiling_plans(cfg: AgentConfig) -> dict[str, tuple[SearchSpace, Objective]]:
    """The search space and objective of every profiled model (``profiling.models.<name>.enabled``, default on),
    parsed by :mod:`policies.profiling.config`. Raises :class:`ConfigError` naming the model and the field: a
    profiled model needs a space (its own or ``profiling.space``)."""
    return {m: (space, objective) for m, (space, objective, _) in profiling_plans_raw(cfg).items()}


def profiling_plans_raw(cfg: AgentConfig) -> dict[str, tuple[SearchSpace, Objective, dict[str, Any]]]:
    """:func:`profiling_plans` with the mapping each was parsed from (workload annotations are applied to it)."""
    from shadowscale.policies.profiling.config import objective_from_config, space_from_config

    p = cfg.profiling
    out: dict[str, tuple[SearchSpace, Objective, dict[str, Any]]] = {}
    for m in cfg.models:
        own = model_profiling(p, m.name)
        if not own.enabled:
            continue
        where = f"profiling.models.{m.name}.space" if own.space is not None else "profiling.space"
        raw = own.space if own.space is not None else p.space
        if raw is None:
            raise ConfigError(
                f"profiling: model {m.name!r} has no search space: give profiling.models.{m.name}.space or "
                f"profiling.space, or set profiling.models.{m.name}.enabled: false"
            )
        if "slo_ms" not in raw and m.slo_ms is not None:
            raw = {**raw, "slo_ms": m.slo_ms}
        try:
            space = space_from_config(raw)
            out[m.name] = (space, objective_from_config(raw, space), dict(raw))
        except ValueError as e:
            raise ConfigError(f"{where} (model {m.name!r}): {e}") from None
    return out


def drift_settings(cfg: ProfilesConfig) -> DriftSettings:
    """The drift detector's settings from ``profiles.drift`` (raises ``ValueError`` naming a bad field)."""
    return DriftSettings(**msgspec.structs.asdict(cfg.drift))


def parse_config(data: object, *, source: str = "config") -> AgentConfig:
    """Validate an already-parsed mapping (YAML/JSON) into :class:`AgentConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        # lax: environment overrides are strings ("5", "true"); a value is never echoed in the error
        cfg = msgspec.convert(data, AgentConfig, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        _check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Apply ``SHADOWSCALE_AGENT__A__B=value`` overrides to ``data`` in place; return the variables used."""
    used = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"environment variable {name}: empty key in the path")
        value: Any = environ[name]
        if _is_collection(path):
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(f"environment variable {name}: expected a JSON list or object") from None
        node = data
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name}: {key!r} is not a section")
            node = child
        node[path[-1]] = value
        used.append(name)
    return used


def _is_collection(path: list[str]) -> bool:
    """Whether the field at ``path`` (from :class:`AgentConfig`) holds a list, tuple or mapping."""
    cls: Any = AgentConfig
    for k, key in enumerate(path):
        if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
            return False
        hint = typing.get_type_hints(cls).get(key)
        if hint is None:
            return False
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
            hint = args[0]
        if k == len(path) - 1:
            return typing.get_origin(hint) in (tuple, list, dict) or hint in (tuple, list, dict)
        cls = hint
    return False


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, override from the environment and validate; raises :class:`ConfigError` with a clear message."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    used = apply_env(data, os.environ if environ is None else environ)
    source = f"{p}" + (f" (with {', '.join(used)})" if used else "")
    return parse_config(data, source=source)

"""Configuration of the gateway process."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.item_filter import FilterLimits
from common.server_options import ServerOptions
from feedback.config import FeedbackConfig
from common.tls import check_pair
from gateway.admission import AdmissionConfig
from gateway.experiments import Experiments
from gateway.quality import QualityConfig
from gateway.stage_target import stage_target
from rank_server.config import RankConfig
from recall_server.config import RecallConfig
from rerank_server.config import RerankConfig


@dataclass
class Budget:
    """Each stage's share of the time left when it starts (``gateway.budget.stage_timeout``): recall may use
    recall / (recall + rank + rerank) of the deadline, rank rank / (rank + rerank) of what recall left, rerank
    all that is left; ``reserve_ms`` is kept back throughout for the gateway's own work."""

    recall: float = 0.3
    rank: float = 0.4
    rerank: float = 0.2

    def validate(self) -> None:
        for name in ("recall", "rank", "rerank"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"budget.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.recall + self.rank + self.rerank > 1.0 + 1e-9:
            raise ValueError("budget.recall + budget.rank + budget.rerank must be <= 1")


@dataclass
class StagePlacement:
    """Where each stage runs (``gateway.local_stages``): "remote", dialled at its ``*_addr`` (stage servers,
    replicas behind round_robin), or "local", in the gateway's own process (the co-located topology: two gRPC
    endpoints fewer per request and stage; replicate the gateway to scale the funnel)."""

    recall: str = "remote"
    rank: str = "remote"
    rerank: str = "remote"

    def validate(self) -> None:
        for name in ("recall", "rank", "rerank"):
            if getattr(self, name) not in ("remote", "local"):
                raise ValueError(f"stages.{name} must be remote or local, got {getattr(self, name)!r}")

    def local(self) -> list[str]:
        """The stages that run in the gateway's process, in funnel order."""
        return [name for name in ("recall", "rank", "rerank") if getattr(self, name) == "local"]


@dataclass
class LocalStages:
    """The configs of the stages run in the gateway's process (``stages.<stage>=local``), as the stage
    servers read them (e.g. ``local.rank.onnx_threads=1``). Their ``snapshot`` and ``feedback`` are the
    gateway's own: one process serves one snapshot root and shares one feedback store handle."""

    recall: RecallConfig = field(default_factory=RecallConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    # threads running the local stage calls (off the event loop, gateway.local_stages); the work holds the
    # GIL, so more threads add no throughput: scale with gateway replicas instead
    threads: int = 1
    # how often (ms) Python hands the GIL between the stage thread and the event loop (sys.setswitchinterval;
    # Python's default is 5): the loop needs it to take calls, answer health checks and fire timeouts on time.
    # Measured (co-located, 2 gateways, busy 2-core box, back to back): 1 ms against 5 ms gave goodput 96 vs 87/s
    # at 100 req/s and 164 vs 131/s at 200, CPU-ms/request 7.6 vs 9.2, Health p99 at 2x overload 27 vs 45 ms
    gil_switch_ms: float = 1.0

    def validate(self) -> None:
        if self.threads < 1:
            raise ValueError(f"local.threads must be >= 1, got {self.threads}")
        if not 0.1 <= self.gil_switch_ms <= 100.0:
            raise ValueError(f"local.gil_switch_ms must be in 0.1..100, got {self.gil_switch_ms}")


@dataclass
class GatewayConfig:
    """Everything the gateway reads at start-up."""

    snapshot: str = "snapshots"
    server: ServerOptions = field(default_factory=ServerOptions)
    # host:port, a list of replicas (ip:port,ip:port) or a dns:/// name; lists and names are dialled with
    # round_robin and health checking (gateway.stage_target)
    recall_addr: str = "127.0.0.1:50051"
    rank_addr: str = "127.0.0.1:50052"
    rerank_addr: str = "127.0.0.1:50053"
    stages: StagePlacement = field(default_factory=StagePlacement)   # remote (the *_addr above) or local
    local: LocalStages = field(default_factory=LocalStages)          # configs of the local stages
    # TLS to the stages (common.tls): CA that signed their certificates; cert + key: mutual TLS
    stage_tls_ca: str = ""
    stage_tls_cert: str = ""
    stage_tls_key: str = ""
    deadline_ms: int = 50            # default request deadline; the caller's gRPC deadline wins if tighter
    max_deadline_ms: int = 10000
    budget: Budget = field(default_factory=Budget)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)  # shedding (gateway.admission)
    quality: QualityConfig = field(default_factory=QualityConfig)  # fewer candidates under load (gateway.quality)
    # kept back from each stage call for the gateway's own work (and from the caller's gRPC deadline for the
    # trip back); measured: a timed-out stage call returns ~1 ms late (more on grpc.aio on a busy machine), and
    # with adaptive budgets the last stage may run to the edge: 2 ms let a caller's 200 ms deadline pass 1 in 3
    # times in tests/test_deadline.py on a shared 2-core box, 3 ms none in 6 runs
    reserve_ms: float = 3.0
    # candidates asked of recall and kept after rank (sent to rerank): at most what the snapshot was exported
    # with (its manifest's stage_counts; checked when a snapshot loads, common.snapshot.check_stage_counts).
    # Smaller is allowed: the same lists cut shorter, e.g. to shed rank work under load
    recall_n: int = 1000
    rank_n: int = 200                # candidates sent to rerank
    max_k: int = 100
    max_exclude: int = 1000
    max_user_id_len: int = 256
    filters: FilterLimits = field(default_factory=FilterLimits)   # request-time attribute filters
    experiments: Experiments = field(default_factory=Experiments)   # layered A/B (gateway.experiments)
    reload_poll_s: float = 2.0       # check snapshot CURRENT this often (common.reload); 0: only on SIGHUP
    # a loaded new version goes live once every stage worker the gateway talks to holds it (common.reload),
    # or after this long regardless (stages still without it then degrade requests)
    reload_activate_timeout_s: float = 60.0
    # the feedback store the gateway writes (Feedback RPC; feedback.store); the recall and rank servers read
    # the same path. path "" turns feedback off (Feedback answers FAILED_PRECONDITION)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)

    def stage_counts(self) -> dict[str, tuple[str, int]]:
        """The funnel's candidate counts this gateway asks for, by the manifest's ``stage_counts`` key:
        ``(setting, value)`` for ``common.snapshot.check_stage_counts``. The pre-rank cut only when rank runs in
        this process: a remote rank server's ``prerank_keep`` is its own setting."""
        counts = {"recall_n": ("gateway.recall_n", self.recall_n), "rank_n": ("gateway.rank_n", self.rank_n)}
        if self.stages.rank == "local":
            counts["prerank_keep"] = ("gateway.local.rank.prerank_keep", self.local.rank.prerank_keep)
        return counts

    def validate(self) -> None:
        self.server.validate()
        self.budget.validate()
        self.stages.validate()
        self.local.validate()
        for stage in self.stages.local():
            getattr(self.local, stage).validate()
        self.feedback.validate()
        self.admission.validate()
        self.quality.validate()
        self.experiments.validate()
        self.filters.validate()
        check_pair(self.stage_tls_cert, self.stage_tls_key, "stage_", ca=self.stage_tls_ca)
        for stage in ("recall", "rank", "rerank"):  # a malformed address list is an error naming the key
            stage_target(getattr(self, f"{stage}_addr"), f"{stage}_addr")
        if not 1 <= self.deadline_ms <= self.max_deadline_ms:
            raise ValueError(f"deadline_ms must be in 1..max_deadline_ms ({self.max_deadline_ms})")
        if not 1 <= self.max_k <= self.rank_n <= self.recall_n:
            raise ValueError("need 1 <= max_k <= rank_n <= recall_n")

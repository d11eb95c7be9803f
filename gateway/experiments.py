"""Layered A/B experiments, as large feeds run them: plain functions over the gateway's config.

Every user falls into one of ``buckets`` buckets per layer: ``blake2b(salt + ":" + user_id) mod buckets``.
Each layer has its own salt, so assignments in different layers are independent (orthogonal): an arm of
one layer sees every arm of another in proportion. A layer owns the parameters of one stage, and its
arms own disjoint bucket ranges ``[start, end)``; a user whose bucket no arm claims gets the baseline in
that layer. A global holdout, hashed with its own salt, gets the baseline in every layer and is named
``holdout`` in the reply, so the total effect of all experiments can be measured against it.

Overrides per stage:
  recall  ``quotas``  → ``RecallRequest.quotas``   (per-channel candidate counts)
  rank    ``fusion``  → ``RankRequest.fusion``     (fusion exponents per task)
  rerank  ``method`` / ``params`` → ``RerankRequest.method`` / ``.params`` (lambda, alpha, window, epsilon)

Config (``experiments`` in ``gateway.config.GatewayConfig``), e.g. in TOML::

    [experiments]
    buckets = 1000
    holdout = [0, 20]                 # 2 % of users see no experiment
    [[experiments.layers]]
    name = "rerank_div"
    salt = "rerank-2025-06"
    stage = "rerank"
    arms = [{name = "dpp", buckets = [0, 500], method = "DPP", params = {alpha = 2.0}}]
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from rank_server.fusion import check_fusion
from recall_server.channels import known_channels
from recall_server.config import RecallConfig, check_quotas
from rerank_server.config import RerankConfig
from rerank_server.rerank import ParamError, resolve_params

STAGES = ("recall", "rank", "rerank")
RERANK_METHODS = ("NONE", "MMR", "DPP", "DPP_WINDOW")
RERANK_PARAMS = ("lambda", "alpha", "window", "epsilon")
HOLDOUT = "holdout"


@dataclass
class Arm:
    """One arm of a layer: a bucket range and the overrides of the layer's stage."""

    name: str = ""
    buckets: list[int] = field(default_factory=lambda: [0, 0])   # [start, end)
    quotas: dict[str, int] = field(default_factory=dict)         # recall layers
    fusion: dict[str, float] = field(default_factory=dict)       # rank layers
    method: str = ""                                             # rerank layers: NONE, MMR, DPP, DPP_WINDOW
    params: dict[str, float] = field(default_factory=dict)       # rerank layers: lambda, alpha, window, epsilon


@dataclass
class Layer:
    """Orthogonal slice of traffic overriding one stage; ``salt`` must differ from every other layer's."""

    name: str = ""
    salt: str = ""
    stage: str = ""                   # recall, rank or rerank
    arms: list[Arm] = field(default_factory=list)


@dataclass
class Experiments:
    buckets: int = 1000
    holdout: list[int] = field(default_factory=lambda: [0, 0])   # [start, end) of the holdout's buckets
    holdout_salt: str = "holdout"
    layers: list[Layer] = field(default_factory=list)

    def validate(self) -> None:
        """Reject an inconsistent setup with a message naming the key."""
        if self.buckets < 1:
            raise ValueError(f"experiments.buckets must be >= 1, got {self.buckets}")
        _check_range(self.holdout, self.buckets, "experiments.holdout")
        salts = {self.holdout_salt: "experiments.holdout_salt"}
        names: set[str] = set()
        stages: dict[str, str] = {}
        for i, layer in enumerate(self.layers):
            key = f"experiments.layers[{i}]"
            if not layer.name or ":" in layer.name or layer.name in names:
                raise ValueError(f"{key}.name must be unique, non-empty and without ':', got {layer.name!r}")
            names.add(layer.name)
            if not layer.salt or layer.salt in salts:
                raise ValueError(f"{key}.salt must be non-empty and differ from {salts.get(layer.salt, 'others')}"
                                 " (layers with one salt are not orthogonal)")
            salts[layer.salt] = f"{key}.salt"
            if layer.stage not in STAGES:
                raise ValueError(f"{key}.stage must be one of {', '.join(STAGES)}, got {layer.stage!r}")
            if layer.stage in stages:
                raise ValueError(f"{key}.stage: layer {stages[layer.stage]!r} already overrides {layer.stage}")
            stages[layer.stage] = layer.name
            taken: list[tuple[int, int, str]] = []
            arm_names: set[str] = set()
            for j, arm in enumerate(layer.arms):
                akey = f"{key}.arms[{j}]"
                if not arm.name or ":" in arm.name or arm.name in arm_names or arm.name == HOLDOUT:
                    raise ValueError(f"{akey}.name must be unique in its layer, non-empty, without ':' and not "
                                     f"'{HOLDOUT}', got {arm.name!r}")
                arm_names.add(arm.name)
                lo, hi = _check_range(arm.buckets, self.buckets, f"{akey}.buckets")
                for olo, ohi, other in taken:
                    if lo < ohi and olo < hi:
                        raise ValueError(f"{akey}.buckets [{lo}, {hi}) overlaps arm {other!r} [{olo}, {ohi})")
                taken.append((lo, hi, arm.name))
                _check_overrides(arm, layer.stage, akey)


def _check_range(pair: list[int], buckets: int, key: str) -> tuple[int, int]:
    if len(pair) != 2 or not 0 <= pair[0] <= pair[1] <= buckets:
        raise ValueError(f"{key} must be [start, end) with 0 <= start <= end <= {buckets}, got {pair}")
    return pair[0], pair[1]


def _check_overrides(arm: Arm, stage: str, key: str) -> None:
    owned = {"recall": ("quotas",), "rank": ("fusion",), "rerank": ("method", "params")}[stage]
    for name in ("quotas", "fusion", "method", "params"):
        if name not in owned and getattr(arm, name):
            raise ValueError(f"{key}.{name}: a {stage} layer may only set {' and '.join(owned)}")
    # the stages' own request checks, so an arm the stages would reject refuses to start instead of
    # falling back on every request in it (stage limits at their defaults; rank task names: check_tasks)
    problem = check_quotas(arm.quotas, known_channels(), RecallConfig().max_quota) or check_fusion(arm.fusion, None)
    if problem:
        raise ValueError(f"{key}.{problem}")
    if arm.method and arm.method not in RERANK_METHODS:
        raise ValueError(f"{key}.method must be one of {', '.join(RERANK_METHODS)}, got {arm.method!r}")
    for name, value in arm.params.items():
        if name not in RERANK_PARAMS:
            raise ValueError(f"{key}.params: unknown parameter '{name}'; known: {', '.join(RERANK_PARAMS)}")
        if name == "window" and not float(value).is_integer():
            raise ValueError(f"{key}.params.window must be an integer, got {value}")
    if stage == "rerank":
        p = arm.params
        try:
            resolve_params(RerankConfig(), arm.method or None, p.get("lambda"), p.get("alpha"), p.get("window"),
                           p.get("epsilon"))
        except ParamError as exc:
            raise ValueError(f"{key}.{exc}") from None


def check_tasks(config: "Experiments", task_names: list[str]) -> None:
    """Every rank arm's fusion names a task of the snapshot's ranker (checked when a snapshot loads)."""
    for i, layer in enumerate(config.layers):
        for j, arm in enumerate(layer.arms):
            problem = check_fusion(arm.fusion, task_names)
            if problem:
                raise ValueError(f"experiments.layers[{i}].arms[{j}].{problem}")


@dataclass
class Assignment:
    """What one user runs under: the arm names for the reply and the stage overrides."""

    arms: list[str] = field(default_factory=list)                # "layer:arm", or ["holdout"]
    quotas: dict[str, int] = field(default_factory=dict)
    fusion: dict[str, float] = field(default_factory=dict)
    method: str = ""
    params: dict[str, float] = field(default_factory=dict)


def bucket(salt: str, user_id: str, buckets: int) -> int:
    """The user's bucket in a layer: stable across processes, machines and Python versions."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def assign(config: Experiments, user_id: str) -> Assignment:
    """The arms ``user_id`` falls into, one per layer at most; the baseline for the holdout."""
    out = Assignment()
    if not config.layers:
        return out
    lo, hi = config.holdout
    if lo < hi and lo <= bucket(config.holdout_salt, user_id, config.buckets) < hi:
        out.arms.append(HOLDOUT)
        return out
    for layer in config.layers:
        b = bucket(layer.salt, user_id, config.buckets)
        for arm in layer.arms:
            if arm.buckets[0] <= b < arm.buckets[1]:
                out.arms.append(f"{layer.name}:{arm.name}")
                out.quotas.update(arm.quotas)
                out.fusion.update(arm.fusion)
                out.method = arm.method or out.method
                out.params.update(arm.params)
                break
    return out

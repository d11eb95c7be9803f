"""Configuration of the rerank server process."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from common.server_options import ServerOptions

METHODS = ("NONE", "MMR", "DPP", "DPP_WINDOW")


@dataclass
class RulesConfig:
    """Business rules applied inside the greedy loop of every method (NONE, MMR, DPP, DPP_WINDOW).

    Item attributes (built once at start-up, ``rerank_server.items``): category = the item's first
    genre (lowest set index of its multi-hot ``item_bag``), type = the category, group = the title.
    When no candidate passes every rule, rules are relaxed for that position from the least to the
    most important: scatter < max_run < category_cap < promoted_slots < dedupe (see
    ``kernels.rules``); the reply lists the relaxed ones. Blocked items are never returned.
    A window / run / cap of 0 turns that rule off.
    """

    enabled: bool = True
    scatter_window: int = 4           # 打散: at most scatter_max items of a category in any window of this size
    scatter_max: int = 2
    max_run: int = 2                  # at most this many consecutive items of one type
    category_cap: int = 0             # at most this many items of one category in the whole list
    promoted_min_position: int = 2    # 1-based: no promoted item above this position
    promoted_window: int = 9          # at most promoted_max promoted items in any window of this size
    promoted_max: int = 1
    dedupe_by_title: bool = True      # one item per title (ML-100K has 22 titles under several ids)
    blocked_item_ids: list[str] = field(default_factory=list)  # external ids never returned

    def params(self):
        """The kernels' int64 rule vector (all rules off when disabled)."""
        from kernels.rules import rule_params

        if not self.enabled:
            return rule_params()
        return rule_params(self.scatter_window, self.scatter_max, self.max_run, self.category_cap,
                           self.promoted_min_position, self.promoted_window, self.promoted_max,
                           self.dedupe_by_title)

    def validate(self) -> None:
        try:
            self.params()
        except ValueError as exc:
            raise ValueError(f"rules.{exc}") from None


FITTED_KEYS = ("method", "mmr_lambda", "dpp_alpha", "window", "dpp_window")


@dataclass
class RerankConfig:
    """Everything the rerank server reads at start-up; per-request params override the defaults."""

    snapshot: str = "snapshots"
    server: ServerOptions = field(default_factory=ServerOptions)
    method: str = "MMR"
    mmr_lambda: float = 0.7      # weight of relevance against similarity to what is already chosen
    dpp_alpha: float = 3.0       # q_i = exp(alpha * relevance): larger favours relevance
    window: int = 0              # sliding window for MMR / DPP_WINDOW (0: whole list; DPP_WINDOW needs > 0)
    dpp_window: int = 10
    epsilon: float = 1e-6        # DPP stops when the marginal gain falls below this
    max_k: int = 200
    max_candidates: int = 5000
    rules: RulesConfig = field(default_factory=RulesConfig)
    reload_poll_s: float = 2.0   # check snapshot CURRENT this often (common.reload); 0: only on SIGHUP
    # method / mmr_lambda / dpp_alpha / window / dpp_window left at the defaults above take the snapshot's
    # fitted values (manifest rerank_params, chosen by export on the validation split); a value set in the
    # config file or by --set wins; false: never the fitted ones
    use_fitted: bool = True

    def for_snapshot(self, snapshot) -> "RerankConfig":
        """This config with the snapshot's fitted rerank values in every field still at its default (when
        ``use_fitted``)."""
        fitted = (snapshot.manifest.get("rerank_params") or {}) if self.use_fitted else {}
        defaults = RerankConfig()
        known = {k: v for k, v in fitted.items()
                 if k in FITTED_KEYS and getattr(self, k) == getattr(defaults, k)}
        if not known:
            return self
        out = dataclasses.replace(self, **known)
        out.validate_params()
        return out

    def validate(self) -> None:
        self.server.validate()
        self.rules.validate()
        self.validate_params()

    def validate_params(self) -> None:
        """The method and its defaults (also checked on a snapshot's fitted values)."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if self.dpp_alpha < 0:
            raise ValueError(f"dpp_alpha must be >= 0, got {self.dpp_alpha}")
        if self.window < 0 or self.dpp_window < 1:
            raise ValueError("window must be >= 0 and dpp_window >= 1")
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")

"""The quality factor (gateway.quality) and the validation curve behind its levels (export.evaluation.stage_counts)."""
from __future__ import annotations

import pytest

from export.evaluation.stage_counts import choose_counts, grid_points, quality_levels, work
from gateway.quality import Level, QualityConfig, QualityFactor, default_levels, levels_for


def test_levels_from_the_manifest_are_capped_and_ordered():
    manifest = {"quality_levels": [{"recall_n": 1000, "prerank_keep": 200, "rank_n": 200},
                                   {"recall_n": 500, "prerank_keep": 200, "rank_n": 200},
                                   {"recall_n": 250, "prerank_keep": 100, "rank_n": 300}]}
    levels = levels_for(manifest, recall_n=800, rank_n=150, max_level=3)
    assert levels == [Level(800, 200, 150), Level(500, 200, 150), Level(250, 100, 100)]
    assert levels_for(manifest, 1000, 200, max_level=1) == [Level(1000, 200, 200), Level(500, 200, 200)]


def test_default_levels_halve_the_exported_counts():
    manifest = {"stage_counts": {"recall_n": 1000, "prerank_keep": 200, "rank_n": 200}}
    assert levels_for(manifest, 1000, 200, 3) == [Level(1000, 200, 200), Level(500, 100, 100), Level(250, 50, 50),
                                                  Level(125, 25, 25)]
    assert default_levels({}, 600, 100, 1) == [Level(600, 0, 100), Level(300, 0, 50)]


def test_controller_steps_down_under_load_and_back_up_with_hysteresis():
    q = QualityFactor(QualityConfig(step_down_fraction=0.4, step_up_fraction=0.2, hold_s=1.0, max_level=3))
    deadline = 0.05
    assert q.update(0.0, None, deadline, 4) == 0           # no estimate yet
    assert q.update(0.0, 0.03, deadline, 4) == 1           # 60% of the deadline: one step
    assert q.update(0.5, 0.03, deadline, 4) == 1           # held
    assert q.update(1.0, 0.03, deadline, 4) == 2
    assert q.update(2.0, 0.03, deadline, 4) == 3
    assert q.update(3.0, 0.03, deadline, 4) == 3           # the deepest level
    assert q.update(4.0, 0.015, deadline, 4) == 3          # 30%: between the fractions, stays
    assert q.update(5.0, 0.005, deadline, 4) == 2          # recovered: one step back per hold
    assert q.update(5.1, 0.005, deadline, 4) == 2
    assert q.update(6.0, 0.005, deadline, 4) == 1
    assert q.update(7.0, 0.03, deadline, 2) == 1           # a snapshot with 2 levels caps the level
    assert q.update(8.0, 0.03, deadline, 1) == 0


def test_disabled_controller_stays_at_level_zero():
    q = QualityFactor(QualityConfig(enabled=False, hold_s=0.0))
    assert q.update(0.0, 1.0, 0.05, 4) == 0


@pytest.mark.parametrize("bad", [dict(step_up_fraction=0.5, step_down_fraction=0.4), dict(hold_s=-1),
                                 dict(max_level=-1)])
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        QualityConfig(**bad).validate()


def _curve(ndcg: dict) -> dict:
    points = [{**p, "work": work(p), "ndcg@10": ndcg.get(tuple(p.values()), 0.2), "recall@10": 0.1}
              for p in grid_points({"recall_n": [1000, 500, 250], "prerank_keep": [200, 100, 50],
                                    "rank_n": [200, 100, 50]}, 10)]
    return {"points": points, "reference": {k: points[0][k] for k in ("recall_n", "prerank_keep", "rank_n")}}


def test_grid_keeps_the_order_constraint_largest_first():
    points = grid_points({"recall_n": [100, 1000], "prerank_keep": [200, 50], "rank_n": [200, 50]}, 10)
    assert points[0] == {"recall_n": 1000, "prerank_keep": 200, "rank_n": 200}
    assert all(p["rank_n"] <= p["prerank_keep"] <= p["recall_n"] for p in points)
    assert {"recall_n": 100, "prerank_keep": 200, "rank_n": 50} not in points
    with pytest.raises(ValueError):
        grid_points({"recall_n": [5], "prerank_keep": [5], "rank_n": [5]}, 10)


def test_choose_counts_takes_the_cheapest_point_within_the_cost():
    # the reference scores 0.2; everything else 0.2 too except the points below recall_n 500 / keep 100
    ndcg = {(1000, 200, 200): 0.2000}
    for p in _curve({})["points"]:
        key = (p["recall_n"], p["prerank_keep"], p["rank_n"])
        ndcg.setdefault(key, 0.1990 if p["recall_n"] >= 500 and p["prerank_keep"] >= 100 else 0.1900)
    curve = _curve(ndcg)
    chosen = choose_counts(curve, max_cost=0.005)           # 0.1990 is within 0.5% of 0.2000
    assert (chosen["recall_n"], chosen["prerank_keep"], chosen["rank_n"]) == (500, 100, 50)
    strict = choose_counts(curve, max_cost=0.0)
    assert (strict["recall_n"], strict["prerank_keep"], strict["rank_n"]) == (1000, 200, 200)
    levels = quality_levels(curve, strict)
    # (500, 200, 200) scores 0.1990 like the cheaper (500, 100, 100): left out
    assert [(lv["recall_n"], lv["prerank_keep"], lv["rank_n"]) for lv in levels] == \
        [(1000, 200, 200), (500, 100, 100), (250, 50, 50)]
    assert [lv["level"] for lv in levels] == [0, 1, 2]
    assert levels[0]["ndcg_cost"] == 0.0 and levels[2]["ndcg_cost"] == pytest.approx(0.05)
    assert all(a["work"] > b["work"] for a, b in zip(levels, levels[1:]))


def test_the_deepest_level_skips_the_ranker_and_level_zero_never_does():
    curve = _curve({})
    smallest = curve["points"][-1]
    skip = {**smallest, "prerank_order": True, "ndcg@10": 0.25}   # even a better score is never level 0
    skip["work"] = work(skip)
    curve["points"].append(skip)
    assert skip["work"] < smallest["work"]
    chosen = choose_counts(curve, max_cost=0.0)
    assert not chosen.get("prerank_order")
    levels = quality_levels(curve, chosen)
    assert levels[-1]["prerank_order"] and not any(lv["prerank_order"] for lv in levels[:-1])
    manifest = {"quality_levels": levels}
    served = levels_for(manifest, 1000, 200, max_level=len(levels))
    assert served[-1].prerank_order and served[-1].recall_n == smallest["recall_n"]


def test_skip_rank_is_the_deepest_level_and_never_level_zero():
    curve = _curve({})
    smallest = curve["points"][-1]
    pre = {**smallest, "prerank_order": True, "ndcg@10": 0.19}
    skip = {**smallest, "skip_rank": True, "ndcg@10": 0.18}
    for p in (pre, skip):
        p["work"] = work(p)
    curve["points"] += [pre, skip]
    assert skip["work"] == 0.25 * smallest["rank_n"] < pre["work"] < smallest["work"]
    chosen = choose_counts(curve, max_cost=0.0)
    assert not chosen.get("skip_rank") and not chosen.get("prerank_order")
    levels = quality_levels(curve, chosen)
    assert levels[-1]["skip_rank"] and levels[-2]["prerank_order"] and not levels[-2]["skip_rank"]
    assert not any(lv["skip_rank"] for lv in levels[:-1])
    served = levels_for({"quality_levels": levels}, 1000, 200, max_level=len(levels))
    assert served[-1].skip_rank and not served[-1].prerank_order and served[-2].prerank_order
    assert not any(lv.skip_rank for lv in served[:-1])


def test_a_level_that_scores_no_better_than_a_deeper_one_is_left_out():
    ndcg = {(1000, 200, 200): 0.2000}
    for p in _curve({})["points"]:
        ndcg.setdefault((p["recall_n"], p["prerank_keep"], p["rank_n"]), 0.1950)
    curve = _curve(ndcg)
    smallest = curve["points"][-1]
    pre = {**smallest, "prerank_order": True, "ndcg@10": 0.17}
    skip = {**smallest, "skip_rank": True, "ndcg@10": 0.18}          # cheaper and better than pre: pre goes
    for p in (pre, skip):
        p["work"] = work(p)
    curve["points"] += [pre, skip]
    chosen = choose_counts(curve, max_cost=0.0)
    levels = quality_levels(curve, chosen)
    assert [lv["level"] for lv in levels] == list(range(len(levels)))
    assert levels[-1]["skip_rank"] and not any(lv["prerank_order"] for lv in levels)
    assert all(a["ndcg@10"] > b["ndcg@10"] and a["work"] > b["work"] for a, b in zip(levels[1:], levels[2:]))
    skip["ndcg@10"] = 0.3                                           # even the best score is never level 0 ...
    levels = quality_levels(curve, chosen)
    assert [(lv["level"], lv["skip_rank"]) for lv in levels] == [(0, False), (1, True)]   # ... but all else goes
    assert levels[1]["ndcg_cost"] == pytest.approx(1 - 0.3 / 0.2)

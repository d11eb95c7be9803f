"""The benchmark's --quick smoke run: the report's schema and sanity, never its speed."""
import json

from gateway.bench import compare, main


def test_quick_bench_report_is_consistent(snapshot_root, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--snapshot", str(snapshot_root), "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["snapshot_version"] and report["machine"]["cpu_count"] >= 1
    assert [r["offered_rate"] for r in report["rates"]] == [20.0, 50.0]
    for r in report["rates"]:
        assert r["sent"] == r["ok"] + r["error_count"]
        assert r["sent"] == int(r["offered_rate"] * r["duration_s"])
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
        assert {"recall", "rank", "rerank", "total"} <= set(r["stage_ms"])
    assert report["in_process_funnel"]["total"]["p50"] > 0
    assert 0.9 <= report["ann_vs_exact"]["hnswlib_recall_vs_exact"] <= 1.0
    assert compare(str(out), str(out)) == 0
    assert "p50 1.00" in capsys.readouterr().out

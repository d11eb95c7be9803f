"""The benchmark's --quick smoke run: the report's schema and sanity, never its speed."""
import json

from benches.latency import compare, main


def test_quick_bench_report_is_consistent(snapshot_root, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--snapshot", str(snapshot_root), "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["snapshot_version"] and report["machine"]["cpu_count"] >= 1
    assert [r["offered_rate"] for r in report["rates"]] == [20.0, 50.0]
    for r in report["rates"]:
        assert r["sent"] == r["ok"] + r["error_count"]
        assert r["ok"] == r["good"] + r["degraded_replies"] + r["late"]  # each reply classed once
        assert r["goodput"] == r["good"] / r["duration_s"] and r["cpu_ms_per_ok_request"] > 0
        assert r["sent"] == int(r["offered_rate"] * r["duration_s"])
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
        assert {"recall", "rank", "rerank", "total"} <= set(r["stage_ms"])
    assert report["in_process_funnel"]["total"]["p50"] > 0
    assert report["in_process_funnel"]["requests"] == 100
    assert {e["server"] for e in report["echo_floor"]} == {"aio", "sync"}
    assert all(0 < e["latency_ms"]["p50"] <= e["latency_ms"]["max"] for e in report["echo_floor"])
    assert [o["factor"] for o in report["overload"]] == [2.0, 3.0]
    for o in report["overload"]:
        assert o["overload"]["sent"] == o["overload"]["ok"] + o["overload"]["error_count"]
        assert o["health_check_ms"]["p50"] > 0 and o["recovery_phase"]["sent"] > 0
    assert "highest_rate_p99_le_25ms_0_degraded" in report["targets"]
    assert 0.9 <= report["ann_vs_exact"]["hnswlib_recall_vs_exact"] <= 1.0
    assert compare(str(out), str(out)) == 0
    assert "p50 1.00" in capsys.readouterr().out


def test_recall_grpc_bench_report(snapshot_root, tmp_path, capsys):
    """benches.recall_grpc against a real recall server: the report, not the speed."""
    from benches.recall_grpc import main as bench_grpc

    out = tmp_path / "recall.json"
    assert bench_grpc(["--snapshot", str(snapshot_root), "--n", "300", "--requests", "20", "--warmup", "2",
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    g, p = report["grpc_ms"], report["in_process_ms"]
    assert 0 < g["p50"] <= g["p90"] <= g["p99"] <= g["max"] and 0 < p["p50"] <= p["max"]
    assert report["mean_candidates"] == 300 and report["dataset"]["items"] > 0
    assert "recall over gRPC, 20 sequential requests, n=300" in capsys.readouterr().out


def test_recall_grpc_bench_refuses_bad_arguments(snapshot_root, capsys):
    from benches.recall_grpc import main as bench_grpc

    assert bench_grpc(["--snapshot", str(snapshot_root), "--n", "0"]) == 2
    assert bench_grpc(["--synthetic", "3"]) == 2
    assert bench_grpc(["--snapshot", str(snapshot_root), "--n", "6000", "--requests", "1", "--warmup", "0",
                       "--no-in-process"]) == 2
    err = capsys.readouterr().err
    assert "--n and --requests must be >= 1" in err and "at least 10 items" in err
    assert "INVALID_ARGUMENT: n must be in 1..5000" in err

"""The kernel benchmark harness (slimkit.bench): measurement helpers and a quick run."""
import json

import pytest
import torch

from slimkit.bench import kernels_command
from slimkit.bench.timing import bench_case, interleaved_times, peak_extra_bytes
from slimkit.errors import UserError


def test_peak_extra_bytes_sees_tensor_memory():
    def two_temporaries():
        a = torch.empty(1 << 20, dtype=torch.uint8).fill_(1)  # 1 MiB
        b = torch.empty(3 << 20, dtype=torch.uint8).fill_(2)  # 3 MiB, both alive: peak 4 MiB
        del a, b
        c = torch.empty(2 << 20, dtype=torch.uint8)  # after both are freed
        return c

    peak = peak_extra_bytes(two_temporaries)
    assert 4 << 20 <= peak < (4 << 20) + (64 << 10)
    keep = torch.empty(8 << 20, dtype=torch.uint8)
    assert peak_extra_bytes(lambda: keep.add_(1)) < 64 << 10  # in place: nothing extra
    peak_extra_bytes(lambda: None, before=lambda: keep.fill_(0))


def test_interleaved_times_and_rows():
    calls = []
    samples = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                warmup=1, repeats=4)
    assert len(samples["a"]) == len(samples["b"]) == 4
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # rounds rotate the order
    x = torch.randn(512, 512)
    rows = bench_case("op", "512x512", {"native": lambda: x.sum(), "eager": lambda: x.exp().sum(),
                                        "compile": None},
                      bytes_moved=x.numel() * 4, warmup=1, repeats=3, target_eager=0.001,
                      notes={"compile": "unavailable: test"})
    by_impl = {r["impl"]: r for r in rows}
    assert [r["impl"] for r in rows] == ["native", "eager", "compile"]
    assert by_impl["compile"]["median_ms"] is None and by_impl["compile"]["note"] == "unavailable: test"
    assert by_impl["eager"]["speedup_vs_eager"] == 1.0
    assert by_impl["native"]["target"] == ">=0.001x eager" and by_impl["native"]["target_met"] is True
    assert by_impl["eager"]["peak_extra_mb"] >= 1.0  # x.exp() allocates 1 MiB


def test_quick_run_json(capsys):
    result = kernels_command(["kd", "gmm_prior"], as_json=True, quick=True)
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == json.loads(json.dumps(result["rows"]))
    assert result["memcpy_gbps"] > 0 and result["quick"] is True
    rows = {(r["op"], r["impl"]): r for r in result["rows"]}
    assert set(rows) == {("kd_loss", "native"), ("kd_loss", "eager"), ("gmm_prior", "native"),
                         ("gmm_prior", "eager")}
    for op in ("kd_loss", "gmm_prior"):
        native, eager = rows[(op, "native")], rows[(op, "eager")]
        assert native["median_ms"] < eager["median_ms"], (native, eager)  # by >10x when idle
        assert native["peak_extra_mb"] < eager["peak_extra_mb"]
        assert native["gbps"] > 0 and 0 < native["bw_frac"]


def test_table_and_unknown_name(capsys):
    kernels_command(["kd"], as_json=False, quick=True)
    out = capsys.readouterr().out
    assert "kd_loss" in out and "median ms" in out and "memcpy" in out
    with pytest.raises(UserError, match="unknown kernel benchmark 'nope'"):
        kernels_command(["nope"], as_json=True, quick=True)

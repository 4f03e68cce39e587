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
    def run():
        calls = []
        samples = interleaved_times({k: (lambda k=k: calls.append(k)) for k in "abc"}, warmup=1, repeats=30)
        assert all(len(samples[k]) == 30 for k in "abc")
        return calls

    calls = run()
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    rounds = [calls[3 + 3 * i: 6 + 3 * i] for i in range(30)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # every round runs each once
    # shuffled: every callable follows every other one, so no side always runs after the same neighbour
    assert {(x, y) for r in rounds for x, y in zip(r, r[1:])} == {(x, y) for x in "abc" for y in "abc" if x != y}
    assert run() == calls  # a fixed seed: the same order every run
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
        # speed (native faster than eager, by >10x when idle) is a target of benchmarks/speed_targets.py
        assert native["median_ms"] > 0 and eager["median_ms"] > 0
        assert native["peak_extra_mb"] < eager["peak_extra_mb"]
        assert native["gbps"] > 0 and 0 < native["bw_frac"]


def test_table_and_unknown_name(capsys):
    kernels_command(["kd"], as_json=False, quick=True)
    out = capsys.readouterr().out
    assert "kd_loss" in out and "median ms" in out and "memcpy" in out
    with pytest.raises(UserError, match="unknown kernel benchmark 'nope'"):
        kernels_command(["nope"], as_json=True, quick=True)


def test_quick_linear_and_end_to_end_rows():
    result = kernels_command(["sparse_linear"], as_json=False, quick=True)
    rows = {(r["op"], r["impl"], r["batch"], r["sparsity"]): r for r in result["rows"]}
    assert {("sparse_linear", impl, 1, s) for impl in ("native sparse", "dense F.linear", "torch CSR (sparse mm)")
            for s in (0.5, 0.9)} <= set(rows)
    assert "dense F.linear path" in rows[("sparse_linear", "native sparse", 1, 0.5)]["note"]  # under the crossover
    e2e = [r for r in result["rows"] if r["op"] == "end to end"]
    assert [r["impl"] for r in e2e] == ["dense", "sparse path"]
    assert e2e[0]["speedup"] == 1.0 and e2e[1]["median_ms"] > 0
    assert e2e[1]["note"].startswith("3 of 3 layers past their sparsity crossover")
    assert "classifier.fc2, classifier.fc3 dense below their batch floor" in e2e[1]["note"]


@pytest.mark.parametrize("T, alpha", [(4.0, 0.9), (1.0, 0.0), (2.5, 1.0)])
def test_kd_baseline_is_the_loss_kd_loss_computes(T, alpha):
    """The kd benchmark's baseline (F.kl_div with log_target=True + cross-entropy, what a user
    writes) has kd_loss's value and student gradient, so timing it against kd_loss is fair."""
    from slimkit.bench.kd import kd_loss_standard
    from slimkit.ops.kd import kd_loss_reference

    gen = torch.Generator().manual_seed(7)
    s = (3 * torch.randn(16, 50, generator=gen, dtype=torch.float64)).requires_grad_()
    t = 3 * torch.randn(16, 50, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 50, (16,), generator=gen)
    y[::3] = -100  # ignored labels: both average the cross-entropy over the counted ones
    (g_std,) = torch.autograd.grad(loss_std := kd_loss_standard(s, t, y, T, alpha), s)
    (g_ref,) = torch.autograd.grad(loss_ref := kd_loss_reference(s, t, y, T, alpha), s)
    torch.testing.assert_close(loss_std, loss_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_std, g_ref, rtol=1e-10, atol=1e-12)

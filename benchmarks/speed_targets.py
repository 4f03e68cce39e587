"""Speed targets that unit tests do not assert (wall-clock time depends on the machine's load).

    python benchmarks/speed_targets.py          # exit code 1 if a target is missed

Run on a quiet machine. Each target was a timed assertion in tests/ before:
- Huffman-decoding a LeNet-300-100-sized stream (266,200 symbols) in under 1.5 s
  (0.1-0.2 s on an idle core);
- loading a small damaged .slim file in under 20 s (it is refused or loaded, never ground through);
- the native kd_loss and gmm_prior kernels faster than eager PyTorch (quick shapes; >10x when idle).
"""
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _median_seconds(fn, repeats=5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def huffman_decode_seconds() -> float:
    from slimkit import storage

    rng = np.random.default_rng(2)
    p = np.exp(-0.5 * ((np.arange(32) - 15.5) / 5) ** 2)
    symbols = rng.choice(32, size=266_200, p=p / p.sum())
    lengths = storage.huffman_code_lengths(np.bincount(symbols, minlength=32))
    data = storage.huffman_encode(symbols, lengths)
    return _median_seconds(lambda: storage.huffman_decode(data, lengths, symbols.size))


def damaged_file_load_seconds() -> float:
    """The slowest of loading a small model file with each of 64 single bytes flipped."""
    from slimkit import storage
    from slimkit.errors import UserError
    from slimkit.plugins import get_registry

    registry = get_registry()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.slim"
        storage.save_model(path, model, registry, info={"model": "mlp", "input_shape": [1, 8, 8], "num_classes": 10})
        original = path.read_bytes()
        rng = np.random.default_rng(0)
        worst = 0.0
        for at in rng.integers(0, len(original), 64):
            raw = bytearray(original)
            raw[at] ^= 0xFF
            path.write_bytes(bytes(raw))
            t0 = time.perf_counter()
            try:
                storage.load_model(path, registry)
            except UserError:
                pass
            worst = max(worst, time.perf_counter() - t0)
        return worst


def kernels_faster_than_eager() -> dict[str, float]:
    """Eager median / native median per op (quick shapes)."""
    from slimkit.bench import kernels_command

    result = kernels_command(["kd", "gmm_prior"], as_json=False, quick=True)
    rows = {(r["op"], r["impl"]): r for r in result["rows"]}
    return {op: rows[(op, "eager")]["median_ms"] / rows[(op, "native")]["median_ms"] for op in ("kd_loss", "gmm_prior")}


def main() -> int:
    checks = []
    seconds = huffman_decode_seconds()
    checks.append(("huffman decode, 266,200 symbols", f"{seconds:.3f} s", seconds < 1.5))
    seconds = damaged_file_load_seconds()
    checks.append(("slowest damaged-file load", f"{seconds:.3f} s", seconds < 20))
    for op, ratio in kernels_faster_than_eager().items():
        checks.append((f"{op} native vs eager", f"{ratio:.1f}x", ratio > 1))
    print(json.dumps([{"target": name, "measured": value, "met": met} for name, value, met in checks], indent=2))
    return 0 if all(met for *_, met in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

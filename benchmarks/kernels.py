"""Benchmark slimkit's native kernels against eager PyTorch and torch.compile.

    python benchmarks/kernels.py                 # everything, full shapes (several minutes)
    python benchmarks/kernels.py --quick         # small shapes, no torch.compile: a smoke test
    python benchmarks/kernels.py --op kd --json  # one benchmark, JSON on stdout

Same as ``slimkit bench kernels``; see slimkit/bench/__init__.py.
"""
import argparse

from slimkit.bench import kernels_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", action="append", dest="ops", metavar="NAME",
                        help="benchmark to run (kd, gmm, conv, or an op name); repeatable; default: all")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="small shapes, no torch.compile")
    args = parser.parse_args(argv)
    kernels_command(args.ops, as_json=args.json, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

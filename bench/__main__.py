"""`python -m bench [name ...]`: run the benchmarks (all by default) and record their figures."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("receiver", "hotpath", "dashboard", "bursts")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    for name in names:
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
            return 2
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            print(f"benchmark {name}: not written yet, skipped")
            continue
        print(f"== benchmark {name}")
        module.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

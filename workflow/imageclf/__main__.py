"""`python -m imageclf STAGE [args]`: run one stage of the workflow from a shell or a rule."""

from __future__ import annotations

import importlib
import sys

STAGES = ("demo", "index", "cache", "train", "select", "predict", "submission", "ablation", "plots", "bench",
          "bench_malloc", "synthetic")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m imageclf {{{','.join(STAGES)}}} [--help]", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(f"imageclf.{argv[0]}")
    module.main(argv[1:])


if __name__ == "__main__":
    main()

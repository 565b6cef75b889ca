"""How fast the Shapes world renders: examples (scene, caption, image) per second at several sizes.

    python benchmarks/bench_shapes_render.py [--n 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone

from minidiff.data.shapes_dataset import make_example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    args = parser.parse_args()
    for size in args.sizes:
        t0 = time.perf_counter()
        for i in range(args.n):
            make_example("train", i, size)
        seconds = time.perf_counter() - t0
        print(json.dumps({"benchmark": "shapes-render", "size": size, "n": args.n, "wall_s": round(seconds, 1),
                          "cores": os.cpu_count(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()

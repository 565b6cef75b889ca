"""Wall time of a notebook executed top to bottom, as a learner runs it (or with CI=true, as CI runs it).

    python benchmarks/bench_notebook.py notebooks/01_ddpm.ipynb
    CI=true python benchmarks/bench_notebook.py notebooks/01_ddpm.ipynb
    python benchmarks/bench_notebook.py notebooks/01_ddpm.ipynb --save notebooks/01_ddpm.ipynb   # refresh outputs

Executes a copy (the committed notebook is not modified) in the notebook's folder and prints the seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--save", help="write the executed notebook here (e.g. over the original, to commit its outputs)")
    args = parser.parse_args()
    path = Path(args.notebook)
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=1800, resources={"metadata": {"path": str(path.parent)}}).execute()
    if args.save:
        nbformat.write(nb, args.save)
    print(json.dumps({"benchmark": "notebook", "notebook": str(path), "CI": os.environ.get("CI", ""),
                      "wall_s": round(time.perf_counter() - t0, 1), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()

"""Chapter 1's 'Measured times' table: runs each command a learner runs, as they run it, and times it.

    python benchmarks/bench_chapter1_times.py [--json results.jsonl] [--skip-notebook]

Runs in a temporary folder (the repository's runs/ is untouched). Each row: the command, its wall time in
seconds, the machine's core count, the date. The digits run is the recipe's default, trained (`--no-eval`: the
row is training alone) and then evaluated by `minidiff eval` (594 samples); its metrics.json is printed last.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: str, cwd: Path, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, shell=True, cwd=cwd, check=True, env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--save-notebook", help="also write the executed notebook here")
    parser.add_argument("--work", help="folder for the runs (default: a new temporary folder)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="minidiff-times-"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    runs = work / "runs"
    commands = [
        f"{py} {ROOT}/instructors/solutions/01-ddpm.py",
        f"{py} -m pytest {ROOT}/tests/test_exercises.py -q -p no:cacheprovider -o addopts=''",
        f"minidiff train ddpm-2d dataset=two_moons --out {runs}/ddpm-2d",
        f"minidiff train ddpm-digits --no-eval --out {runs}/ddpm-digits",
        f"minidiff sample {runs}/ddpm-digits --sampler ddpm --steps 1000 -n 64 --out {work}/s1",
        f"minidiff sample {runs}/ddpm-digits --sampler ddim --steps 50 -n 64 --out {work}/s2",
        f"minidiff eval {runs}/ddpm-digits",
    ]
    if not args.skip_notebook:
        commands.append(f"{py} {ROOT}/benchmarks/bench_notebook.py {ROOT}/notebooks/01_ddpm.ipynb"
                        + (f" --save {Path(args.save_notebook).resolve()}" if args.save_notebook else ""))
    rows = []
    for command in commands:
        seconds = timed(command, work)
        row = {"benchmark": "chapter1-times", "command": command.replace(str(ROOT) + "/", "").replace(str(work), "TMP"),
               "wall_s": round(seconds, 1), "cores": os.cpu_count(),
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        rows.append(row)
    metrics = json.loads((runs / "ddpm-digits" / "metrics.json").read_text())
    rows.append({"benchmark": "chapter1-digits-metrics", **metrics})
    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()

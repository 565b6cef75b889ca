"""One timing harness for the speed benchmarks: two networks timed alternately in one process.

    timing = interleaved({"minidiff": step_ours, "diffusers": step_theirs}, repeats=10, warmup=2,
                         before=lambda name: models[name].zero_grad(set_to_none=True))
    timing.median_ms("minidiff"), timing.ratio("minidiff", "diffusers")        # ratio < 1: minidiff is faster

Why interleaved: on a shared machine the load changes from second to second (another job starts, the CPU's clock
drops as it warms). Timing all of A and then all of B would credit those changes to one side. Here round i runs
every side once, in the order A B on even rounds and B A on odd ones, so both see the same load and neither always
runs right after the other (whose cache contents and allocator state it would inherit). The first `warmup` rounds
are not recorded (one-time allocations, lazy initialisation); the median of the rest ignores a stray slow step.

`before(name)` and `after(name)` run around each step, untimed: freeing gradients, say, so that only one side's
are alive at a time. The benchmarks share the command-line options (`add_arguments`), the record of the machine
(`environment`) and the JSON-lines output (`append_json`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import torch


@dataclass
class Timing:
    """Seconds per timed step, for each side, in the order they ran."""
    seconds: dict[str, list[float]]

    def median_ms(self, name: str) -> float:
        return 1000 * statistics.median(self.seconds[name])

    def ratio(self, numerator: str, denominator: str) -> float:
        """median(numerator) / median(denominator): below 1 the numerator's side is faster."""
        return self.median_ms(numerator) / self.median_ms(denominator)

    def record(self, first: str, second: str) -> dict:
        """The fields every benchmark writes: both medians, their ratio, and every step's time, in ms."""
        return {f"{first}_ms": round(self.median_ms(first), 2), f"{second}_ms": round(self.median_ms(second), 2),
                "ratio": round(self.ratio(first, second), 3),
                **{f"{name}_ms_all": [round(1000 * s, 2) for s in self.seconds[name]] for name in (first, second)}}


def interleaved(steps: dict[str, Callable[[], object]], repeats: int, warmup: int,
                before: Callable[[str], object] | None = None,
                after: Callable[[str], object] | None = None) -> Timing:
    """Run every step `warmup + repeats` times, the sides alternating in order; time all but the warmup rounds."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}: time at least one step, after zero or more warmups")
    names = list(steps)
    seconds = {name: [] for name in names}
    for i in range(warmup + repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            if before is not None:
                before(name)
            start = time.perf_counter()
            steps[name]()
            elapsed = time.perf_counter() - start
            if after is not None:
                after(name)
            if i >= warmup:
                seconds[name].append(elapsed)
    return Timing(seconds)


def add_arguments(parser: argparse.ArgumentParser, repeats: int = 10, warmup: int = 2) -> None:
    """--threads, --repeats, --warmup and --json, the options every speed benchmark takes."""
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all CPU cores)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps per model first")
    parser.add_argument("--json", default=None, help="append one JSON line per configuration to this file")


def set_threads(threads: int | None) -> int:
    """Use `threads` CPU threads (all cores if None); returns the number."""
    threads = threads or os.cpu_count()
    torch.set_num_threads(threads)
    return threads


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What a timing depends on besides the code: library versions, the machine, the time it was taken."""
    import diffusers

    return dict(torch=torch.__version__, diffusers=diffusers.__version__, machine=platform.machine(), cpu=cpu_name(),
                cpu_count=os.cpu_count(), when=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def append_json(path: str | None, record: dict) -> None:
    """Append one JSON line to `path` (nothing if None)."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

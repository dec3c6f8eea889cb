"""The whole daemon, as `cbr-watcher run` starts it, with measurements from the inside.

    python bench/daemon_probe.py --tree DIR --config cfg.toml --report out.json \
        [--warmup S --window S] [--gc tuned|none|freeze|thresholds]

Run by `bench/scale_bench.py` (through `engine_bench.py --sizes`), once per source tree, so
the previous commit (a `git worktree`) and the working tree are measured the same way: the
tree's `watcher` package is imported first, the configuration is loaded from the TOML file
the driver wrote, and `run_daemon` runs unchanged. The probe adds only:

* `gc.callbacks`, timing every collection (the longest pause, full collections counted);
* with `--window`: after `--warmup` seconds (every task polled once), the window's re-poll
  lag (`engine.stats.lag_samples`), polls, CPU seconds and RSS samples; then it stops the
  engine, writes the report and exits. Without `--window` it runs until SIGTERM and only
  writes the start-up report (task count, seconds from process start to `started`).

`--gc` switches the working tree's `watcher.cli.gc_tuning` parts off, to measure each one.
`--show-only` turns batched refresh off (a tree without it is left alone), so every poll is
one ShowOpLog as in the previous commit: the per-poll costs compare like for like.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

PROCESS_START = time.monotonic()


def rss_kib() -> int:
    """VmRSS of this process in KiB."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    """User + system CPU of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Pauses:
    """Every collection's generation and length, through gc.callbacks."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def summary(self) -> dict[str, Any]:
        """Longest pause and counts, for the collections since the last `clear`."""
        full = [seconds for generation, seconds in self.pauses if generation == 2]
        return {
            "collections": len(self.pauses),
            "full_collections": len(full),
            "longest_pause_ms": round(max((s for _, s in self.pauses), default=0.0) * 1000, 2),
            "longest_full_ms": round(max(full, default=0.0) * 1000, 2),
            "total_pause_ms": round(sum(s for _, s in self.pauses) * 1000, 1),
        }


def quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values (0.0 for none)."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def switch_off(variant: str) -> None:
    """Disable parts of the tree's gc tuning (a tree without the module is left alone)."""
    try:
        import watcher.cli.gc_tuning as tuning
    except ImportError:
        return
    if variant in ("none", "thresholds"):
        tuning.freeze_long_lived = lambda: None
    if variant in ("none", "freeze"):
        tuning.apply_thresholds = lambda: None


def show_only() -> None:
    """Make the tree's Engine poll with one ShowOpLog per task (no ListOpLogs pages)."""
    import inspect

    import watcher.cli.daemon

    # The module whose build_engine constructs the Engine: watcher.cli.wiring, or the daemon in
    # older trees.
    builder = sys.modules.get("watcher.cli.wiring", watcher.cli.daemon)
    engine_class: Any = vars(builder)["Engine"]
    if "batch_refresh" not in inspect.signature(engine_class.__init__).parameters:
        return

    def make(*args: Any, **kwargs: Any) -> Any:
        return engine_class(*args, **kwargs, batch_refresh=False)

    vars(builder)["Engine"] = make


async def measure(handle: Any, pauses: Pauses, args: argparse.Namespace, base: int) -> None:
    """Wait out the warm-up, measure the window, write the report, stop the engine."""
    engine = handle.engine
    await asyncio.sleep(args.warmup)
    polls0, cpu0, t0 = engine.stats.polls_started, cpu_seconds(), time.monotonic()
    pauses.pauses.clear()
    samples: list[int] = []
    while time.monotonic() - t0 < args.window:
        await asyncio.sleep(1.0)
        samples.append(rss_kib())
    polls = engine.stats.polls_started - polls0
    elapsed = time.monotonic() - t0
    lags = sorted(list(engine.stats.lag_samples)[-polls:]) if polls else []
    report = {
        "watcher": sys.modules["watcher"].__file__,
        "tasks": len(engine.tasks),
        "polls": polls,
        "polls_per_second": round(polls / elapsed, 1),
        "cpu_fraction": round((cpu_seconds() - cpu0) / elapsed, 3),
        "cpu_ms_per_poll": round((cpu_seconds() - cpu0) / max(polls, 1) * 1000, 3),
        "lag_p50_ms": round(quantile(lags, 0.5) * 1000, 2),
        "lag_p99_ms": round(quantile(lags, 0.99) * 1000, 2),
        "lag_max_ms": round((lags[-1] if lags else 0.0) * 1000, 2),
        "rss_base_kib": base,
        "rss_window_first_kib": samples[0] if samples else 0,
        "rss_window_last_kib": samples[-1] if samples else 0,
        "rss_window_max_kib": max(samples, default=0),
        "gc_freeze_count": gc.get_freeze_count(),
        "gc_threshold": list(gc.get_threshold()),
        **pauses.summary(),
    }
    Path(args.report).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")  # noqa: ASYNC240
    engine.stop()


def main() -> int:
    """Import the tree, start its daemon with the probe attached."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--window", type=float, default=0.0)
    parser.add_argument("--gc", default="tuned", choices=["tuned", "none", "freeze", "thresholds"])
    parser.add_argument("--show-only", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from watcher.cli.daemon import run_daemon
    from watcher.config import load_settings
    from watcher.observe.logs import configure_logging

    switch_off(args.gc)
    if args.show_only:
        show_only()
    base = rss_kib()
    pauses = Pauses()
    settings = load_settings(config_file=args.config, environ={}, secrets_dirs=[])
    configure_logging(level=settings.log.level, fmt=settings.log.format)
    keep: list[asyncio.Task[None]] = []

    def started(handle: Any) -> None:
        startup = {
            "watcher": sys.modules["watcher"].__file__,
            "tasks": len(handle.engine.tasks),
            "started_after_s": round(time.monotonic() - PROCESS_START, 3),
            "rss_base_kib": base,
            "rss_started_kib": rss_kib(),
        }
        if not args.window:
            args.report.write_text(json.dumps(startup) + "\n", encoding="utf-8")
            return
        keep.append(asyncio.get_running_loop().create_task(measure(handle, pauses, args, base)))

    return asyncio.run(run_daemon(settings, started=started))


if __name__ == "__main__":
    sys.exit(main())

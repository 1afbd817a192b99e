"""Scale model of `lcdask run`: what each frame costs the driver, the scheduler and the workers.

`lcdask run` (its defaults, `lcdask.run.run` on a LocalCluster as `bench_pipeline.py` runs it)
goes over the first N lights of one simulated night, N = 50, 200, 1000 by default, of small
frames (512x512: the per-frame costs of the driver and the scheduler are per task and per
table row, not per pixel, and 1000 frames of 512x512 run in minutes on 2 cores; at 256x256 a
frame holds too few stars to plate-solve and to build an ensemble like a real night does).
Per stage (`lcdask.run.STAGE_TABLE`, each stage wrapped to take readings before and after) it
measures

- the tasks submitted and finished, per key prefix (`TaskCounter`, a scheduler plugin that
  counts the tasks of every ``update_graph`` and every transition to memory);
- the bytes through the scheduler (`CommBytes`: every TCP message the run's process reads or
  writes, split into the scheduler's own comms and the driver's comms to the scheduler; with
  distributed's default ``direct_to_workers=False`` every gathered result and every scattered
  table passes through the scheduler);
- the CPU of the run's process by thread (`ThreadCPU`): the main thread is the driver's serial
  work (the stages' own Python: tables, matching, light curves), the ``IO loop`` thread runs
  the scheduler *and* the client's comms (a LocalCluster, like dask-jobqueue's Slurm/PBS
  clusters, runs the scheduler in the driver's process), the ``Dask-Offload`` thread
  (de)serialises large messages;
- the workers' CPU (``psutil`` in each worker, before and after).

Per-frame worker CPU at full size comes from two runs of 2048x2048 frames (``--big 10 30``:
the difference of the two runs per stage, so that fixed costs such as the masters, the co-add and
the report drop out); so do the driver's main-thread CPU and the bytes through the scheduler per
frame of that size (they grow with the detections per frame: ~30 on 512x512, ~1000 on
2048x2048). The IO loop's CPU is fitted over every stage of every run as per second of wall
(heartbeats, the nannies' polls, periodic callbacks) + per task + per MB (`scheduler_costs`).
The model (`project`) is, per stage,

    seconds = fixed + N * max(worker_cpu_per_frame / W, driver_process_per_frame)

    driver_process_per_frame = (driver_main_per_frame * growth + tasks_per_frame * per_task
                                + MB_per_frame * per_MB) / (1 - loop share per second)

(the driver's main thread and the scheduler share one process and its GIL; ``growth`` is how
the main thread's cost per frame grows with N on the small frames, 200->1000 over 50->200), and
frames/s = N / sum of the stages' seconds, for 10,000 frames on 16, 64 and 256 workers. It
names the stage and limit that binds first: the fewest workers beyond which a stage's driver
process, not its workers, sets its pace.

Run it with the checkout's lcdask first on the path (``PYTHONPATH=.``); the machine's load
average is recorded with every run.

    python benchmarks/bench_scale.py [--frames 50 200 1000] [--size 512] [--big 10 30]
                                     [--workers 2] [--out DIR [--reuse]]

Writes ``benchmarks/results/scale.json`` and prints tables.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import platform
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import key_split

__all__ = [
    "CommBytes",
    "TaskCounter",
    "ThreadCPU",
    "instrumented_run",
    "project",
    "worker_cpu_s",
]

PLUGIN_NAME = "lcdask-bench-task-counter"


class TaskCounter(SchedulerPlugin):
    """Counts, per key prefix, the tasks submitted to the scheduler and those that finished.

    ``submitted`` counts the new tasks of every ``update_graph`` (what clients sent; a task
    already known, given again as another task's dependency, counts once); ``memory``
    the transitions to memory (tasks computed, with ``nbytes`` the sizes of their results);
    ``erred`` the transitions to error. The prefix is distributed's `key_split` of the key
    (``lcdask-detections-1f3a...`` -> ``lcdask-detections``).
    """

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.scheduler = None
        self.submitted: collections.Counter = collections.Counter()
        self.memory: collections.Counter = collections.Counter()
        self.nbytes: collections.Counter = collections.Counter()
        self.erred: collections.Counter = collections.Counter()
        self._known: set = set()  # keys submitted and not yet forgotten

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler

    def update_graph(self, scheduler, *, tasks=(), **kwargs) -> None:
        for key in tasks:
            if key not in self._known:
                self._known.add(key)
                self.submitted[key_split(key)] += 1

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "memory":
            prefix = key_split(key)
            self.memory[prefix] += 1
            task = self.scheduler.tasks.get(key) if self.scheduler is not None else None
            if task is not None and task.nbytes > 0:
                self.nbytes[prefix] += task.nbytes
        elif finish == "erred":
            self.erred[key_split(key)] += 1
        elif finish == "forgotten":
            self._known.discard(key)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """The counts so far (copies)."""
        return {
            "submitted": dict(self.submitted),
            "memory": dict(self.memory),
            "nbytes": dict(self.nbytes),
            "erred": dict(self.erred),
        }


def _plugin_snapshot(dask_scheduler=None) -> dict[str, dict[str, int]]:
    return dask_scheduler.plugins[PLUGIN_NAME].snapshot()


def _plugin_names(dask_scheduler=None) -> list[str]:
    return list(dask_scheduler.plugins)


def _loop_thread_id() -> int:
    return threading.get_native_id()


class CommBytes:
    """Bytes of every TCP message the run's process reads or writes, by side of the scheduler.

    In force inside ``with``: distributed's TCP comm's ``write`` (which returns the bytes it
    wrote) and the reads of its frames are wrapped. A comm whose local port is the scheduler's
    is one the scheduler accepted (from clients and workers); one whose peer is the scheduler's
    port is the driver's (the client, and the LocalCluster's nannies) to the scheduler; any
    other is one this process opened to a worker: the scheduler's (to gather results for the
    client) and the nannies'.

    Attributes
    ----------
    counts : collections.Counter
        ``scheduler_read``, ``scheduler_written``, ``driver_read``, ``driver_written``,
        ``outgoing_read``, ``outgoing_written`` (bytes).
    """

    def __init__(self, scheduler_address: str) -> None:
        self.port = int(scheduler_address.rsplit(":", 1)[1])
        self.counts: collections.Counter = collections.Counter()
        self._sides: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _side(self, stream) -> str:
        side = self._sides.get(stream)
        if side is None:
            try:
                local, peer = stream.socket.getsockname()[1], stream.socket.getpeername()[1]
            except (OSError, AttributeError):  # closed meanwhile
                return "outgoing"
            side = (
                "scheduler" if local == self.port else "driver" if peer == self.port else "outgoing"
            )
            self._sides[stream] = side
        return side

    def snapshot(self) -> dict[str, int]:
        """The bytes so far, and ``through_scheduler``: all the scheduler's, both ways."""
        counts = dict(self.counts)
        counts["through_scheduler"] = sum(
            counts.get(f"{side}_{way}", 0)
            for side in ("scheduler", "outgoing")
            for way in ("read", "written")
        )
        return counts

    @contextlib.contextmanager
    def counting(self) -> Iterator[CommBytes]:
        from distributed.comm import tcp

        write, read_bytes_rw = tcp.TCP.write, tcp.read_bytes_rw
        counter = self

        async def counted_write(comm, *args, **kwargs):
            n = await write(comm, *args, **kwargs)
            if comm.stream is not None:
                counter.counts[counter._side(comm.stream) + "_written"] += int(n or 0)
            return n

        async def counted_read_bytes_rw(stream, n):
            counter.counts[counter._side(stream) + "_read"] += int(n)
            return await read_bytes_rw(stream, n)

        tcp.TCP.write, tcp.read_bytes_rw = counted_write, counted_read_bytes_rw
        try:
            yield self
        finally:
            tcp.TCP.write, tcp.read_bytes_rw = write, read_bytes_rw


class ThreadCPU:
    """CPU seconds of this process's threads, as ``main``, ``loop`` (scheduler and client),
    ``offload`` and ``other``."""

    def __init__(self, loop_thread: int) -> None:
        self.loop_thread = loop_thread
        self.main_thread = threading.main_thread().native_id

    def snapshot(self) -> dict[str, float]:
        names = {t.native_id: t.name for t in threading.enumerate()}
        out = {"main": 0.0, "loop": 0.0, "offload": 0.0, "other": 0.0}
        for thread in psutil.Process().threads():
            if thread.id == self.main_thread:
                kind = "main"
            elif thread.id == self.loop_thread:
                kind = "loop"
            elif "Offload" in names.get(thread.id, ""):
                kind = "offload"
            else:
                kind = "other"
            out[kind] += thread.user_time + thread.system_time
        out["process"] = sum(psutil.Process().cpu_times()[:2])  # with threads gone since
        return out


def _own_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def worker_cpu_s(client) -> float:
    """The CPU seconds (user + system) of every worker process so far, summed."""
    return float(sum(client.run(_own_cpu_s).values()))


def _diff(after: dict, before: dict) -> dict:
    """``after - before`` key by key, recursively (counts missing before are 0)."""
    out = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = _diff(value, before.get(key, {}))
        else:
            out[key] = value - before.get(key, 0)
    return {k: v for k, v in out.items() if v != 0 or not isinstance(v, int)}


@dataclasses.dataclass
class _Probe:
    client: Any
    comm: CommBytes
    threads: ThreadCPU

    def reading(self) -> dict[str, Any]:
        return {
            "wall_s": time.perf_counter(),
            "driver_cpu_s": self.threads.snapshot(),
            "worker_cpu_s": worker_cpu_s(self.client),
            "bytes": self.comm.snapshot(),
            "tasks": self.client.run_on_scheduler(_plugin_snapshot),
        }


@contextlib.contextmanager
def _stages_measured(probe: _Probe, stages: dict[str, dict]) -> Iterator[None]:
    """`lcdask.run.STAGE_TABLE` with each stage's ``run`` between two probe readings."""
    import lcdask.run as run_module

    table = run_module.STAGE_TABLE

    def wrap(stage):
        def measured(ctx):
            before = probe.reading()
            try:
                return stage.run(ctx)
            finally:
                stages[stage.name] = _diff(probe.reading(), before)

        return dataclasses.replace(stage, run=measured)

    run_module.STAGE_TABLE = tuple(wrap(stage) for stage in table)
    try:
        yield
    finally:
        run_module.STAGE_TABLE = table


def instrumented_run(inputs, run_dir: Path, *, client, catalog=None, config=None) -> dict:
    """`lcdask.run.run` with per-stage readings of tasks, bytes and CPU.

    Parameters
    ----------
    inputs : list of Path
        The run's input files.
    run_dir : Path
        The run directory (emptied first: a run found there would be resumed).
    client : distributed.Client
        Of a LocalCluster (the scheduler in this process).
    catalog : Path, optional
        The reference catalog.
    config : lcdask.config.Config, optional

    Returns
    -------
    dict
        ``stages``: per stage ``wall_s``, ``driver_cpu_s`` (by thread), ``worker_cpu_s``,
        ``bytes`` and ``tasks`` (per prefix: submitted, memory, nbytes, erred); ``record``:
        run.json's stages.
    """
    from lcdask.run import run

    shutil.rmtree(run_dir, ignore_errors=True)
    if PLUGIN_NAME not in client.run_on_scheduler(_plugin_names):
        client.register_plugin(TaskCounter())
    probe = _Probe(
        client,
        CommBytes(client.scheduler.address),
        ThreadCPU(client.run_on_scheduler(_loop_thread_id)),
    )
    stages: dict[str, dict] = {}
    with probe.comm.counting(), _stages_measured(probe, stages):
        record = run(inputs, run_dir, catalog=catalog, client=client, config=config)
    return {"stages": stages, "record": record["stages"]}


# --------------------------------------------------------------------------------- the model


def _n_detections(run_dir: Path) -> int:
    import pandas as pd

    return len(pd.read_parquet(run_dir / "detections.parquet", columns=["frame"]))


def _per_stage_rows(measured: dict) -> dict[str, dict[str, float]]:
    """Per stage: wall, driver main/loop/process CPU, worker CPU, tasks, bytes (totals)."""
    rows = {}
    for name, stage in measured["stages"].items():
        cpu = stage["driver_cpu_s"]
        tasks = stage["tasks"]
        rows[name] = {
            "wall_s": stage["wall_s"],
            "driver_main_s": cpu["main"],
            "driver_loop_s": cpu["loop"] + cpu["offload"],
            "driver_process_s": cpu["process"],
            "worker_cpu_s": stage["worker_cpu_s"],
            "tasks": sum(tasks.get("submitted", {}).values()),
            "bytes_scheduler": stage["bytes"].get("through_scheduler", 0),
            "bytes_to_driver": stage["bytes"].get("driver_read", 0),
            "bytes_from_driver": stage["bytes"].get("driver_written", 0),
        }
    return rows


def _slopes(runs: dict, key: str, stage: str) -> tuple[float, float, float]:
    """(intercept, per frame between the two largest N, per frame between the two smallest N)."""
    ns = sorted(runs)
    values = [runs[n]["rows"][stage][key] for n in ns]
    hi = (values[-1] - values[-2]) / (ns[-1] - ns[-2])
    lo = (values[1] - values[0]) / (ns[1] - ns[0])
    return values[-1] - hi * ns[-1], hi, lo


def scheduler_costs(runs: list[dict]) -> dict[str, float]:
    """The IO loop's CPU as ``a * wall + b * tasks + c * bytes``, fitted over every stage of
    every run (non-negative least squares).

    The loop thread runs the scheduler, the client's comms and the LocalCluster's nannies; part
    of its work is per second (heartbeats, the nannies' memory polls, work stealing's and the
    system monitor's periodic callbacks), part per task (the scheduler's transitions, the graph
    submitted) and part per byte (results and arguments through the scheduler).

    Returns
    -------
    dict
        ``per_wall_s`` (a), ``per_task_s`` (b), ``per_mb_s`` (c, per 1e6 bytes), ``rms_s``.
    """
    from scipy.optimize import nnls

    rows = [r for run in runs for r in run["rows"].values()]
    design = np.array([[r["wall_s"], r["tasks"], r["bytes_scheduler"] / 1e6] for r in rows])
    loop = np.array([r["driver_loop_s"] for r in rows])
    coef, _ = nnls(design, loop)
    rms = float(np.sqrt(np.mean((design @ coef - loop) ** 2)))
    return {"per_wall_s": coef[0], "per_task_s": coef[1], "per_mb_s": coef[2], "rms_s": rms}


def project(
    small: dict[int, dict],
    big: dict[int, dict],
    *,
    n_frames: int = 10_000,
    workers: tuple[int, ...] = (16, 64, 256),
) -> dict[str, Any]:
    """Projected frames/s of ``n_frames`` 2048x2048 frames on each number of workers.

    Per stage and per frame of 2048x2048: the workers' CPU and the bytes through the scheduler
    are the differences of the two 2048x2048 runs (their fixed costs drop out); the driver's
    main-thread CPU is theirs too, times its growth with N on the small frames (the per-frame
    cost between the two largest N over that between the two smallest: a stage whose work per
    frame grows with the night shows it there); the tasks per frame come from the small frames
    (they do not depend on the frame's size); the scheduler's CPU per frame is
    `scheduler_costs`' per task and per byte. The driver's main thread and the IO loop share
    one process and its GIL: the driver process's bound is their sum, over the share of a core
    the loop's per-second work leaves. Then, per stage,

        seconds = fixed + N * max(worker_cpu / W, driver process)

    with ``fixed`` the stage's wall time at N = 0 on 2 workers (the 2048x2048 runs' intercept).

    Parameters
    ----------
    small : dict
        N -> measurement of the small-frame runs (three N or more).
    big : dict
        N -> measurement of the 2048x2048 runs (two N).

    Returns
    -------
    dict
        ``scheduler`` (`scheduler_costs`), ``per_stage`` (the model's inputs), ``projection``
        (per W: frames/s, each stage's seconds and binding limit), ``crossover`` (per stage,
        the workers beyond which the driver process binds) and ``first_limit``.
    """
    sched = scheduler_costs([*small.values(), *big.values()])
    free = max(1.0 - sched["per_wall_s"], 0.05)  # the loop's per-second work takes this share
    per_stage = {}
    for stage in small[max(small)]["rows"]:
        _, worker_pf, _ = _slopes(big, "worker_cpu_s", stage)
        fixed, _, _ = _slopes(big, "wall_s", stage)
        _, main_big, _ = _slopes(big, "driver_main_s", stage)
        _, main_hi, main_lo = _slopes(small, "driver_main_s", stage)
        growth = main_hi / main_lo if main_lo > 0 and main_hi > 0 else 1.0
        _, tasks_pf, _ = _slopes(small, "tasks", stage)
        _, bytes_pf, _ = _slopes(big, "bytes_scheduler", stage)
        main_pf = max(main_big, 0.0) * max(growth, 1.0)
        sched_pf = (
            sched["per_task_s"] * max(tasks_pf, 0) + sched["per_mb_s"] * max(bytes_pf, 0) / 1e6
        )
        per_stage[stage] = {
            "worker_cpu_per_frame_s": max(worker_pf, 0.0),
            "driver_main_per_frame_s": main_pf,
            "driver_main_per_frame_s_2048_n30": main_big,
            "driver_main_growth_with_n": growth,
            "scheduler_per_frame_s": sched_pf,
            "driver_process_per_frame_s": (main_pf + sched_pf) / free,
            "tasks_per_frame": tasks_pf,
            "scheduler_bytes_per_frame": bytes_pf,
            "fixed_s": max(fixed, 0.0),
        }
    projection = {}
    for w in workers:
        total, by_stage = 0.0, {}
        for stage, p in per_stage.items():
            limits = {
                "workers": p["worker_cpu_per_frame_s"] / w,
                "driver process": p["driver_process_per_frame_s"],
            }
            kind = max(limits, key=limits.get)
            binding = kind
            if kind == "driver process":
                main, loop = p["driver_main_per_frame_s"], p["scheduler_per_frame_s"]
                binding += ": driver main thread" if main >= loop else ": scheduler"
            seconds = p["fixed_s"] + n_frames * limits[kind]
            by_stage[stage] = {"seconds": seconds, "limit": binding}
            total += seconds
        projection[w] = {"frames_per_s": n_frames / total, "seconds": total, "stages": by_stage}
    crossover = {
        stage: p["worker_cpu_per_frame_s"] / p["driver_process_per_frame_s"]
        for stage, p in per_stage.items()
        if p["driver_process_per_frame_s"] > 0
    }
    stage = min(crossover, key=crossover.get)
    p = per_stage[stage]
    first = {
        "stage": stage,
        "workers": crossover[stage],
        "limit": "driver main thread"
        if p["driver_main_per_frame_s"] >= p["scheduler_per_frame_s"]
        else "scheduler",
    }
    return {
        "scheduler": sched,
        "per_stage": per_stage,
        "projection": projection,
        "crossover_workers": crossover,
        "first_limit": first,
        "frames": n_frames,
    }


# ------------------------------------------------------------------------------------ running


def _night(scratch: Path, n: int, size: int) -> Path:
    from lcdask.simulate import SimConfig, simulate_night

    night = scratch / f"night-{size}-{n}"
    config = SimConfig(n_frames=n, size=size, seed=5)
    cadence_s = config.exptime_s + config.readout_s
    if n * cadence_s > _NIGHT_S:  # the frames of a longer sequence would run into daylight
        config = dataclasses.replace(config, exptime_s=_NIGHT_S / n - config.readout_s)
    if not (night / "truth" / "frames.parquet").exists():
        simulate_night(night, config, n_workers=2)
    return night


_NIGHT_S = 6 * 3600.0
"""The longest simulated sequence (1000 frames: 11.6 s exposures, 10 s readouts)."""


def _inputs(night: Path, n: int) -> list[Path]:
    """The night's calibration frames and its first ``n`` lights."""
    raw = sorted((night / "raw").glob("*.fits"))
    lights = [p for p in raw if p.name.startswith("light_")]
    return [p for p in raw if not p.name.startswith("light_")] + lights[:n]


def measure(night: Path, n: int, run_dir: Path, *, workers: int) -> dict[str, Any]:
    """One instrumented run of the first ``n`` lights of ``night`` on a fresh LocalCluster."""
    from lcdask.cluster import dask_client

    with dask_client(n_workers=workers, dashboard=False) as client:
        client.run(lambda: None)
        measured = instrumented_run(
            _inputs(night, n), run_dir, client=client, catalog=night / "refcat.parquet"
        )
    measured["rows"] = _per_stage_rows(measured)
    measured["detections_per_frame"] = _n_detections(run_dir) / n
    measured["frames"] = n
    return measured


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in psutil.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--big", type=int, nargs=2, default=[10, 30], help="N of 2048^2 runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--reuse", action="store_true", help="take the measurements saved in --out by a run before"
    )
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "scale.json"
    )
    args = parser.parse_args()

    scratch = Path(args.out or tempfile.mkdtemp(prefix="bench-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"benchmark": "scale", "size": args.size, "workers": args.workers}
    small, big = {}, {}
    for runs, size, ns in ((small, args.size, args.frames), (big, 2048, args.big)):
        night = _night(scratch, max(ns), size)
        for n in sorted(ns):
            saved = scratch / f"measured-{size}-{n}.json"
            if args.reuse and saved.exists():
                runs[n] = json.loads(saved.read_text())
            else:
                load = _load()
                runs[n] = measure(night, n, scratch / f"run-{size}-{n}", workers=args.workers)
                runs[n]["load"] = load
                runs[n].pop("record", None)
                saved.write_text(json.dumps(runs[n], default=float) + "\n")
            _print_rows(f"{n} lights of {size}x{size} (load {runs[n]['load']})", runs[n])
    model = project(small, big)
    _print_model(model)
    results.update(
        {
            "small": {str(n): m for n, m in small.items()},
            "big": {str(n): m for n, m in big.items()},
            "model": model,
            "machine": platform.platform(),
        }
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    if args.out is None:
        shutil.rmtree(scratch, ignore_errors=True)


def _print_rows(title: str, measured: dict) -> None:
    n = measured["frames"]
    print(f"\n{title}: {measured['detections_per_frame']:.0f} detections/frame; per frame:")
    print(
        f"{'stage':12s} {'wall ms':>8s} {'main ms':>8s} {'loop ms':>8s} {'proc ms':>8s} "
        f"{'wkr ms':>8s} {'tasks':>6s} {'sched kB':>9s} {'->drv kB':>9s} {'drv-> kB':>9s}"
    )
    for stage, row in measured["rows"].items():
        print(
            f"{stage:12s} {1e3 * row['wall_s'] / n:8.1f} {1e3 * row['driver_main_s'] / n:8.1f} "
            f"{1e3 * row['driver_loop_s'] / n:8.1f} {1e3 * row['driver_process_s'] / n:8.1f} "
            f"{1e3 * row['worker_cpu_s'] / n:8.1f} {row['tasks'] / n:6.2f} "
            f"{row['bytes_scheduler'] / n / 1e3:9.1f} {row['bytes_to_driver'] / n / 1e3:9.1f} "
            f"{row['bytes_from_driver'] / n / 1e3:9.1f}"
        )
    for stage, data in measured["stages"].items():
        print(f"  {stage} tasks: {data['tasks'].get('submitted', {})}")


def _print_model(model: dict) -> None:
    sched = model["scheduler"]
    print(
        f"\nIO loop (scheduler, comms, nannies): {1e3 * sched['per_wall_s']:.1f} ms per s of wall, "
        f"{1e3 * sched['per_task_s']:.2f} ms per task, {1e3 * sched['per_mb_s']:.1f} ms per MB "
        f"(fit rms {sched['rms_s']:.2f} s)"
    )
    print("model inputs, per frame of 2048x2048 (ms):")
    print(
        f"{'stage':12s} {'workers':>8s} {'main':>7s} {'growth':>7s} {'sched':>7s} "
        f"{'process':>8s} {'tasks':>6s} {'kB':>7s} {'fixed s':>8s} {'W*':>6s}"
    )
    for stage, p in model["per_stage"].items():
        print(
            f"{stage:12s} {1e3 * p['worker_cpu_per_frame_s']:8.1f} "
            f"{1e3 * p['driver_main_per_frame_s']:7.1f} {p['driver_main_growth_with_n']:7.2f} "
            f"{1e3 * p['scheduler_per_frame_s']:7.1f} {1e3 * p['driver_process_per_frame_s']:8.1f} "
            f"{p['tasks_per_frame']:6.2f} {p['scheduler_bytes_per_frame'] / 1e3:7.0f} "
            f"{p['fixed_s']:8.1f} {model['crossover_workers'].get(stage, np.inf):6.0f}"
        )
    print(f"projected, {model['frames']} frames of 2048x2048:")
    for w, p in model["projection"].items():
        limits = ", ".join(
            f"{s} {v['seconds']:.0f} s ({v['limit']})" for s, v in p["stages"].items()
        )
        print(f"  {w:4d} workers: {p['frames_per_s']:6.2f} frames/s; {limits}")
    first = model["first_limit"]
    print(
        f"first limit: {first['limit']} in {first['stage']}, beyond {first['workers']:.0f} workers"
    )


if __name__ == "__main__":
    main()

"""Figure 9: mesa-layer forward+backward time against sequence length T, per implementation.

The timing code is the benchmark's own (benchmarks/bench_mesa.py: ``inputs``, ``make_<impl>``,
``time_it``); this module runs a sweep with it and draws the result, plus the rows of any recorded
benchmark run found in benchmarks/results/ (bench_mesa_cpu.json, bench_mesa_gpu.json), so a figure made
on a laptop also shows the numbers measured on a GPU machine.

It has the shape of every figure (``common.Experiment``) with no training jobs: ``jobs`` returns {} and
``analyse`` runs the sweep.  Sizes per mode (``SpeedConfig``):

quick: B=16, H=4, d=16, T in 16..256, reference and Numba (and CuPy where a GPU is present), 5 repeats.
full:  the paper's B=256, H=4, d=20, T in 25..400, 15 repeats (the reference is skipped past 60 s a call).
Timing is wall-clock on whatever machine runs it; the JSON records the machine and its load.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import Experiment, mode_line

NAME = "fig9_speed"

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_mesa.py"
RECORDED = ("bench_mesa_cpu.json", "bench_mesa_gpu.json")


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_mesa", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@dataclass(frozen=True)
class SpeedConfig:
    B: int = 256
    H: int = 4
    d: int = 20
    Ts: tuple = (25, 50, 100, 200, 400)
    repeats: int = 15
    max_seconds: float = 60.0      # an implementation is dropped past this many seconds a call


FULL = SpeedConfig()
QUICK = dataclasses.replace(FULL, B=16, H=4, d=16, Ts=(16, 32, 64, 128, 256), repeats=5)
SMOKE = dataclasses.replace(FULL, B=2, H=2, d=4, Ts=(4, 8), repeats=2)
MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def jobs(cfg: SpeedConfig, seed: int, backend: str) -> dict:
    """No training: the figure is a timing sweep."""
    return {}


def analyse(ctx, cfg: SpeedConfig, results) -> dict:
    bench = _bench_module()
    B, H, d, Ts, repeats = cfg.B, cfg.H, cfg.d, cfg.Ts, cfg.repeats
    impls = ["ref", "numba", "cupy"] if ctx.backend == "fast" else ["ref"]
    timings = {name: [] for name in impls}
    skipped = {}
    for T in Ts:
        a = bench.inputs(B, H, T, d, np.float32, seed=ctx.seed)
        for name in impls:
            if name in skipped:
                continue
            run, why = getattr(bench, f"make_{name}")(a, "store")
            if run is None:
                skipped[name] = why
                continue
            timings[name].append(bench.time_it(run, repeats, max_seconds=cfg.max_seconds)["median_ms"])
    timings = {k: v for k, v in timings.items() if k not in skipped}
    recorded = {}
    for fname in RECORDED:
        path = ROOT / "benchmarks" / "results" / fname
        if path.exists():
            rec = json.loads(path.read_text())
            rows = [r for r in rec.get("results", []) if str(r.get("shape", "")).startswith("sweep")]
            recorded[fname] = {
                "command": rec.get("command"), "date": rec.get("date"), "machine": rec.get("machine"),
                "T": [r["T"] for r in rows],
                "median_ms": {impl: [r["timings"].get(impl, {}).get("median_ms") for r in rows]
                              for impl in ("ref", "numba", "cupy", "jax", "torch")
                              if any("median_ms" in r["timings"].get(impl, {}) for r in rows)},
            }
    return {"timing": {"B": B, "H": H, "d": d, "dtype": "float32", "backward": "store", "repeats": repeats,
                       "load_average": list(os.getloadavg())},
            "T": list(Ts), "median_ms": timings, "skipped": skipped, "recorded": recorded}


STYLE = {"ref": dict(color="k", marker="o", label="reference (NumPy)"),
         "numba": dict(color="tab:blue", marker="s", label="mesa_fast Numba (CPU)"),
         "cupy": dict(color="tab:green", marker="^", label="mesa_fast CuPy (GPU)"),
         "jax": dict(color="tab:orange", marker="v", label="JAX lax.scan (peer)"),
         "torch": dict(color="tab:red", marker="D", label="PyTorch solve (peer)")}


def plot(data):
    import matplotlib.pyplot as plt
    sweep = data.get("timing") or data["config"]          # older JSON kept the sweep's shape under "config"
    panels = [("this run", data["T"], data["median_ms"], sweep)]
    for fname, rec in data.get("recorded", {}).items():
        if rec["T"]:
            panels.append((f"recorded: {fname}", rec["T"], rec["median_ms"], {"date": rec.get("date")}))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (title, Ts, ms, cfg) in zip(axes[0], panels):
        for impl, ys in ms.items():
            pts = [(t, y) for t, y in zip(Ts, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), **STYLE.get(impl, {"label": impl}))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("forward + backward time (ms, median)")
        shape = f"B={cfg['B']}, H={cfg['H']}, d={cfg['d']}, float32" if "B" in cfg else cfg.get("date", "")
        ax.set_title(f"{title}\n{shape}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Fig. 9: mesa-layer speed (Sherman-Morrison recursion [M2], backward [M3])\n{mode_line(data)}")
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(NAME, "Mesa-layer forward+backward time vs T for each backend (Fig. 9).", MODES, jobs,
                        analyse, plot)

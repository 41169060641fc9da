"""The harness every figure script shares: flags, backend choice, run records, atomic outputs, re-plotting.

A figure script defines ``compute(ctx) -> dict`` (trains / evaluates, returns the numbers behind the
figure) and ``plot(data, fig_path)`` (draws the PNG from those numbers alone), then calls
``run_figure("fig2_one_layer_gd", compute, plot, description)``.  Every script takes

    --quick            CPU-sized run (minutes), used by tests and ``make reproduce``
    --backend ref|fast default: fast where mesa_fast (Numba) is installed, else ref
    --out DIR          default figures/
    --seed N           default 0
    --replot           redraw DIR/<name>.png from DIR/<name>.json without recomputing
    --smoke            (hidden) seconds-long sizes, for the tests

and writes DIR/<name>.json (the numbers, the config, seeds, backend, the command, the date) and
DIR/<name>.png, each atomically.  Errors end with a one-line message and exit status 2.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends import fast_available, resolve_backend  # noqa: F401  (re-exported for scripts)
from ..runio import CLIError, ensure_writable_dir, read_json, save_figure, write_json


@dataclass
class Context:
    """What compute() receives: the parsed flags plus the resolved ops namespace and array module."""
    name: str
    quick: bool
    seed: int
    out: Path
    backend: str          # "ref" | "fast"
    ops: object           # mesa_ref.ops or mesa_fast.ops
    xp: object            # numpy (or cupy when the fast backend runs on a GPU)
    progress: bool
    args: argparse.Namespace

    def model(self, config):
        """A Transformer bound to this run's ops."""
        from ..model import Transformer
        return Transformer(config, ops=self.ops)

    def rng(self, *stream) -> np.random.Generator:
        """An independent generator for a named integer stream under this run's seed."""
        return np.random.default_rng([self.seed, *stream])


def figure_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"scripts/{name}.py", description=description)
    p.add_argument("--quick", action="store_true", help="CPU-sized run (minutes)")
    p.add_argument("--backend", choices=("ref", "fast"), default=None,
                   help="ops backend (default: fast where installed, else ref)")
    p.add_argument("--out", default="figures", help="output directory (default figures/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replot", action="store_true", help="redraw the PNG from the saved JSON, no recomputation")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)   # tests only: tiny sizes, seconds
    return p


def run_figure(name: str, compute, plot, description: str, argv=None, parser=None) -> int:
    """Parse flags, run compute (unless --replot), write JSON then PNG atomically; one-line errors."""
    parser = parser or figure_parser(name, description)
    args = parser.parse_args(argv)
    try:
        out = ensure_writable_dir(args.out)
        json_path, png_path = out / f"{name}.json", out / f"{name}.png"
        if args.replot:
            data = read_json(json_path)
        else:
            backend = args.backend or ("fast" if fast_available() else "ref")
            ops, xp = resolve_backend(backend)
            ctx = Context(name=name, quick=args.quick, seed=args.seed, out=out, backend=backend, ops=ops, xp=xp,
                          progress=not args.no_progress, args=args)
            t0 = time.perf_counter()
            data = compute(ctx)
            data = {"figure": name, **data, "seed": args.seed, "quick": bool(args.quick), "backend": backend,
                    "command": " ".join(shlex.quote(a) for a in ["python", f"scripts/{name}.py",
                                                                  *(sys.argv[1:] if argv is None else argv)]),
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "machine": f"{platform.machine()} {platform.system()} python {platform.python_version()}",
                    "seconds": round(time.perf_counter() - t0, 1)}
            write_json(json_path, data)
        import matplotlib
        matplotlib.use("Agg")
        fig = plot(data)
        save_figure(fig, png_path, dpi=130, bbox_inches="tight")
        import matplotlib.pyplot as plt
        plt.close(fig)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FloatingPointError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written for this figure", file=sys.stderr)
        return 130
    print(f"wrote {json_path} and {png_path}")
    return 0


def plot_per_step(ax, per_step: dict, spread: dict | None = None, *, styles: dict | None = None, t0: int = 1,
                  logy: bool = True, ylabel: str = "loss per time step (MSE / 2)") -> None:
    """Draw method -> per-time-step loss curves (and mean +- spread bands) on ``ax``."""
    for name, ys in per_step.items():
        ys = np.asarray(ys, dtype=float)
        t = np.arange(t0, t0 + len(ys))
        kw = dict((styles or {}).get(name, {}))
        line, = ax.plot(t, ys, label=kw.pop("label", name), **kw)
        if spread and name in spread:
            s = np.asarray(spread[name], dtype=float)
            ax.fill_between(t, np.maximum(ys - s, 1e-12 if logy else -np.inf), ys + s, color=line.get_color(),
                            alpha=0.2, linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("time step t (context length)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)

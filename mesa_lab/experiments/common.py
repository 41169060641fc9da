"""The harness every figure script shares: experiments as jobs, flags, backend choice, atomic outputs, re-plotting.

An experiment module has one shape (``Experiment``):

    MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}   one frozen config dataclass per mode
    jobs(cfg, seed, backend) -> {name: mesa_lab.jobs.Job}     the independent training runs
    analyse(ctx, cfg, results) -> dict                        the numbers behind the figure, from the
                                                              runs' results {name: JobResult}
    plot(data) -> matplotlib Figure                           drawn from those numbers alone

``run_experiment`` runs the jobs through ``mesa_lab.jobs.run_jobs`` (Dask; results in a content-addressed
store), then the analysis, then writes DIR/<name>.json and DIR/<name>.png atomically.  A quick or smoke
mode's deviations from the paper are the fields where its config differs from FULL (``deviations``).
Every script takes

    --quick            CPU-sized run (minutes), used by tests and ``make reproduce``
    --backend ref|fast default: fast where mesa_fast (Numba) is installed, else ref
    --out DIR          default figures/ (quick) or figures/full/ (full size)
    --seed N           default 0
    --replot           redraw DIR/<name>.png from DIR/<name>.json without recomputing
    --scheduler ADDR   an existing Dask scheduler (default: DASK_SCHEDULER_ADDRESS, else a LocalCluster)
    --workers N        LocalCluster size (default one per core; --smoke: 0); 0 runs the jobs in this process
    --store DIR        the job store (default DIR/jobs for full size, DIR/.cache/jobs otherwise)
    --no-train         fail, listing them, when job results are missing instead of training them
    --retrain          discard the stored results of this figure's jobs and train them again
    --training-seeds S [S ...]
                       the training seeds of the figure's spread over seeds (``seeds.py``; default 0 1 2 for the
                       seeded figures at full size, none in quick mode)
    --partial          no training: analyse the jobs already in the store, writing OUT/partial/<name>.json
                       with "complete": false and the missing jobs listed (for looking at runs in progress)
    --smoke            (hidden) seconds-long sizes, for the tests

Errors end with a one-line message and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import io
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mesa_ref.runio import CLIError, as_json, atomic_write_bytes, ensure_writable_dir, read_json, run_cli, write_json

from ..ref_or_fast import fast_available, resolve_backend  # noqa: F401  (re-exported for scripts)


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
        from mesa_ref.model import Transformer
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


def figure_bytes(fig, fmt: str = "png", **kw) -> bytes:
    """A matplotlib figure as file bytes, with no creation time or other run-dependent metadata in them: the same
    figure drawn twice gives the same bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, metadata={"Software": None} if fmt == "png" else None, **kw)
    return buf.getvalue()


def plot_per_step(ax, per_step: dict, spread: dict | None = None, *, styles: dict | None = None, t0: int = 1,
                  logy: bool = True, ylabel: str = "loss per time step (MSE / 2)", legend: dict | None = None) -> None:
    """Draw method -> per-time-step loss curves (and mean +- spread bands) on ``ax``.

    With ``logy`` the y-range is set by the curves (a factor 2 of margin), not by the bands: where the spread is
    larger than the mean, the band's lower edge (mean - spread <= 0) runs off the bottom of the panel instead of
    stretching the axis down to the floor it is cut at. ``legend``: options of the panel's legend (e.g. a place
    outside the axes)."""
    lo, hi = np.inf, 0.0
    for name, ys in per_step.items():
        ys = np.asarray(ys, dtype=float)
        t = np.arange(t0, t0 + len(ys))
        kw = dict((styles or {}).get(name, {}))
        line, = ax.plot(t, ys, label=kw.pop("label", name), **kw)
        pos = ys[np.isfinite(ys) & (ys > 0)]
        if pos.size:
            lo, hi = min(lo, pos.min()), max(hi, pos.max())
        if spread and name in spread:
            s = np.asarray(spread[name], dtype=float)
            ax.fill_between(t, np.maximum(ys - s, 1e-12 if logy else -np.inf), ys + s, color=line.get_color(),
                            alpha=0.2, linewidth=0)
    if logy:
        ax.set_yscale("log")
        if hi > 0:
            ax.set_ylim(lo / 2, hi * 2)
    label_axes(ax, "time step t (context length)", ylabel, **(legend or {}))


def seed_band(ax, data: dict, path: str, x=None, *, color=None, bin_width: int = 1) -> bool:
    """Draw the mean +- 1 std over training seeds of the curve at ``path`` of ``data["training_seeds"]`` (drawn
    only when the figure has several seeds): hatched with a dashed edge, so it reads apart from the filled bands
    over evaluation batches of one trained model.  ``x``: the curve's abscissa (default 1, 2, ...);
    ``bin_width``: average consecutive points as the figure's own line does.  Returns whether it drew."""
    ts = data.get("training_seeds") or {}
    std = (ts.get("std") or {}).get(path)
    if std is None:
        return False
    m, s = np.asarray(ts["mean"][path], dtype=float), np.asarray(std, dtype=float)
    if bin_width > 1:
        n = len(m) // bin_width * bin_width
        m, s = m[:n].reshape(-1, bin_width).mean(axis=1), s[:n].reshape(-1, bin_width).mean(axis=1)
    x = np.arange(1, len(m) + 1) if x is None else np.asarray(x)
    first = not getattr(ax, "_seed_band_drawn", False)
    ax.fill_between(x, m - s, m + s, facecolor="none", edgecolor=color or "0.3", hatch="///", linewidth=0.6,
                    linestyle="--", label=f"+-1 std over {len(ts['seeds'])} training seeds" if first else None)
    ax._seed_band_drawn = True
    return True


def seed_text(data: dict, path: str, fmt: str = ".3g") -> str:
    """" (mean M +- S over N training seeds)" for the scalar at ``path``, or "" without several seeds."""
    ts = data.get("training_seeds") or {}
    std = (ts.get("std") or {}).get(path)
    if std is None or isinstance(std, list):
        return ""
    return f" (mean {ts['mean'][path]:{fmt}} +- {std:{fmt}} over {len(ts['seeds'])} training seeds)"


_SIZE_FIELDS = (("steps", ("steps", "train_steps", "softmax_steps")), ("batch", ("batch", "train_batch")),
                ("T", ("T", "train_T")), ("n", ("n",)), ("B", ("B",)), ("H", ("H",)), ("d", ("d",)))


def mode_line(data: dict) -> str:
    """What made a figure, for its title: the mode (quick: CPU-sized; full size: the paper's settings, or our own
    where the paper gives none) and the sizes in its config (training steps, batch, sequence length...)."""
    cfg = data.get("config", {})
    values, mode = cfg.get("values", {}), cfg.get("mode", "quick" if data.get("quick") else "full")
    sizes = []
    for label, names in _SIZE_FIELDS:
        for name in names:
            if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
                by_depth = values.get(f"{name}_by_depth") or ()       # per-depth steps (fig3 --recipe authors)
                sizes.append(f"{label} " + (" / ".join(f"{v:,}" for _, v in by_depth) + " by depth" if by_depth
                                            else f"{values[name]:,}"))
                break
    what = {"quick": "quick run (CPU-sized)", "smoke": "smoke test (tiny sizes)", "full": "full size"}.get(mode, mode)
    if mode == "full" and cfg.get("deviations"):
        what += f" ({len(cfg['deviations'])} setting(s) differ from the paper: see the JSON)"
    return what + (": " + ", ".join(sizes) if sizes else "")


def label_axes(ax, xlabel: str, ylabel: str, title: str | None = None, *, title_size=None, **legend_kw) -> None:
    """The figures' finish of a panel: axis labels, the title (at ``title_size`` when given), a light grid and a
    small legend (``legend_kw``: its other options, e.g. ``loc``)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title, **({} if title_size is None else {"fontsize": title_size}))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, **legend_kw)


# ---------------------------------------------------------------------------------------------- experiments as jobs
@dataclass(frozen=True)
class Experiment:
    """One figure's computation: configs per mode, its jobs, the analysis of their results, the plot."""
    name: str
    description: str
    modes: dict                       # "full" | "quick" | "smoke" -> frozen config dataclass
    jobs: object                      # (cfg, seed, backend) -> {name: Job}
    analyse: object                   # (ctx, cfg, results {name: JobResult}) -> dict
    plot: object                      # (data) -> Figure
    add_arguments: object = None      # optional (parser) -> None: extra flags
    configure: object = None          # optional (cfg, args) -> cfg: apply those flags
    full_is_paper: bool = True        # False: FULL is our own choice (fig8), so deviations name it "full size"

    def config(self, mode: str, args=None):
        cfg = self.modes[mode]
        if self.configure is not None and args is not None:
            cfg = self.configure(cfg, args)
        return override(cfg, getattr(args, "set", None) or [])

    def main(self, argv=None) -> int:
        """The figure's command line (``run_experiment``); what its scripts/fig*.py runs."""
        return run_experiment(self, argv)


def deviations(cfg, full, reference: str = "paper") -> list[str]:
    """The fields where ``cfg`` differs from ``full``, as "field = value (paper: value)" lines."""
    out = []
    for f in dataclasses.fields(full):
        a, b = getattr(cfg, f.name), getattr(full, f.name)
        if a != b:
            out.append(f"{f.name} = {_fmt(a)} ({reference}: {_fmt(b)})")
    return out


def override(cfg, settings: list[str]):
    """``cfg`` with each "field=value" of ``settings`` replaced (the ``--set`` flag), the value parsed as the
    field's current type (int, float, bool, str, or a tuple literal); an unknown field or a value of another type
    is a CLIError.  What changed then shows in the figure JSON's config deviations, like a mode's."""
    import ast
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for item in settings:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise CLIError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(names))}")
        old = getattr(cfg, name)
        try:
            if isinstance(old, bool):
                if text.lower() not in ("true", "false"):
                    raise ValueError
                new = text.lower() == "true"
            elif isinstance(old, (int, float, str)):
                new = type(old)(text)
            else:
                new = ast.literal_eval(text)
                if type(new) is not type(old):
                    raise ValueError
        except (ValueError, SyntaxError):
            raise CLIError(f"--set {item!r}: {name} takes a {type(old).__name__}, e.g. {name}={_fmt(old)}") from None
        changes[name] = new
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _fmt(v):
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def experiment_parser(exp: Experiment) -> argparse.ArgumentParser:
    p = figure_parser(exp.name, exp.description)
    p.set_defaults(out=None)
    for a in p._actions:
        if a.dest == "out":
            a.help = "output directory (default figures/ for --quick, figures/full/ for the full size)"
    p.add_argument("--scheduler", default=None,
                   help="address of a running Dask scheduler (default: DASK_SCHEDULER_ADDRESS, else a local cluster)")
    p.add_argument("--workers", type=int, default=None,
                   help="local cluster size (default: one single-threaded worker per core); 0: no Dask, run here")
    p.add_argument("--store", default=None, help="job store directory (default OUT/jobs, or OUT/.cache/jobs "
                                                 "for --quick)")
    p.add_argument("--no-train", action="store_true", help="fail instead of training missing job results")
    p.add_argument("--retrain", action="store_true", help="train this figure's jobs again, ignoring stored results")
    p.add_argument("--training-seeds", type=int, nargs="+", default=None, metavar="S",
                   help="training seeds of the figure's spread over seeds (with --seed; default: 0 1 2 for a "
                        "figure of mesa_lab/experiments/seeds.py at full size, none otherwise)")
    p.add_argument("--partial", action="store_true",
                   help="analyse only the jobs whose results are stored, into OUT/partial/ (marked incomplete)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one field of the mode's config (repeatable); the change is listed in the JSON's "
                        "deviations, and --out must be given so the mode's own figure is not overwritten")
    if exp.add_arguments is not None:
        exp.add_arguments(p)
    return p


def mode_of(args) -> str:
    return "smoke" if getattr(args, "smoke", False) else ("quick" if args.quick else "full")


def default_out(mode: str) -> Path:
    return Path("figures") if mode != "full" else Path("figures") / "full"


def default_store(out: Path, mode: str) -> Path:
    return out / "jobs" if mode == "full" else out / ".cache" / "jobs"


def second_configuration(flag: str, value: str, cfg, full, alternative, args):
    """``alternative``, the full-size configuration that ``--<flag> <value>`` selects (mesa_lab/experiments/
    retests.py), once checked: it replaces the full size only (not --quick or --set), and it needs its own --out, so
    that the shipped figure of the paper's configuration is never overwritten."""
    if cfg != full:
        raise CLIError(f"--{flag} {value}: a full-size configuration; drop --quick and --set")
    if getattr(args, "out", None) is None:
        raise CLIError(f"--{flag} {value}: give --out DIR (e.g. figures/full/recipe_{value}) and --store "
                       "figures/full/jobs, so the shipped figure is not overwritten")
    return alternative


def figure_jobs(exp: Experiment, args, backend: str) -> dict:
    """{name: Job} of ``exp`` under the parsed flags, labelled "<figure>/<name>"."""
    cfg = exp.config(mode_of(args), args)
    jobs = exp.jobs(cfg, args.seed, backend)
    return {k: dataclasses.replace(j, label=f"{exp.name}/{k}") for k, j in jobs.items()}


def run_experiment(exp: Experiment, argv=None) -> int:
    """The figure's command line: check the flags, compute the figure's numbers (unless --replot), then write the
    JSON and PNG where they changed (``write_figure``)."""
    args = experiment_parser(exp).parse_args(argv)
    mode = mode_of(args)

    def body() -> int:
        _check_flags(args)
        base_out = ensure_writable_dir(args.out if args.out is not None else default_out(mode))
        out = ensure_writable_dir(base_out / "partial") if args.partial else base_out
        json_path, png_path = out / f"{exp.name}.json", out / f"{exp.name}.png"
        data = None if args.replot else compute_figure(exp, args, mode, base_out, out, argv)
        for line in write_figure(exp, data, json_path, png_path):
            print(line)
        return 0

    return run_cli(body, interrupted="interrupted; nothing was written for this figure (finished jobs stay in "
                                     "the store)")


def _check_flags(args) -> None:
    if args.workers is not None and args.workers < 0:
        raise CLIError(f"--workers: expected 0 or a positive integer, got {args.workers}")
    if args.partial and (args.retrain or args.replot):
        raise CLIError("--partial analyses the stored results only: it does not go with --retrain or --replot")
    if args.set and args.out is None:
        raise CLIError("--set changes the config: give --out DIR so the mode's own figure is not overwritten")


def compute_figure(exp: Experiment, args, mode: str, base_out: Path, out: Path, argv) -> dict:
    """Run the figure's jobs (training what is missing, unless --no-train or --partial) and its analysis; return
    the figure's JSON record (``figure_record``)."""
    from ..jobs import Store, run_jobs
    backend = args.backend or ("fast" if fast_available() else "ref")
    ops, xp = resolve_backend(backend)
    jobs = figure_jobs(exp, args, backend)
    store = Path(args.store) if args.store else default_store(base_out, mode)
    missing = []
    if args.partial:
        missing = [k for k, j in jobs.items() if not Store(store).finished(j)]
        jobs = {k: j for k, j in jobs.items() if k not in missing}
        if not jobs:
            raise CLIError(f"--partial: none of this figure's job results is in {store}")
    t0 = time.perf_counter()
    workers = args.workers
    if workers is None and mode == "smoke" and args.scheduler is None:
        workers = 0             # seconds-long test sizes: a cluster would cost more than the jobs
    by_key = run_jobs(list(jobs.values()), store, scheduler=args.scheduler, workers=workers,
                      train=not (args.no_train or args.partial), retrain=args.retrain, progress=not args.no_progress)
    results = {k: by_key[j.key] for k, j in jobs.items()}
    ctx = Context(name=exp.name, quick=mode != "full", seed=args.seed, out=out, backend=backend, ops=ops, xp=xp,
                  progress=not args.no_progress, args=args)
    cfg = exp.config(mode, args)
    data = exp.analyse(ctx, cfg, results)
    seeds = training_seeds(exp, args, mode, cfg)
    seed_results = {}
    if len(seeds) > 1:
        data["training_seeds"], seed_results = spread_over_seeds(exp, ctx, cfg, data, results, seeds, store,
                                                                 backend=backend, workers=workers)
    record = figure_record(exp, data, cfg=cfg, mode=mode, jobs=jobs, results=results, missing=missing, store=store,
                           args=args, backend=backend, argv=argv, seconds=time.perf_counter() - t0)
    if seed_results:
        from ..jobs import cost_summary
        record["cost"]["training_seeds_cpu_hours"] = cost_summary(seed_results.values())["cpu_hours"]
    return record


def training_seeds(exp: Experiment, args, mode: str, cfg) -> tuple:
    """The training seeds a figure's spread is taken over: --training-seeds (with --seed), else TRAINING_SEEDS for
    a seeded figure in its full-size configuration (``cfg``, the one the flags select, is the mode's own), else
    none (quick figures train one seed, to stay minutes long)."""
    from .seeds import SEEDED, TRAINING_SEEDS
    given = getattr(args, "training_seeds", None)
    if given is not None:
        if exp.name not in SEEDED:
            raise CLIError(f"--training-seeds: {exp.name} trains no model at several seeds "
                           f"(seeded figures: {', '.join(SEEDED)})")
        return tuple(sorted(set(given) | {args.seed}))
    if mode == "full" and exp.name in SEEDED and not args.partial and cfg == exp.modes["full"]:
        return tuple(sorted(set(TRAINING_SEEDS) | {args.seed}))
    return ()            # quick and smoke modes, and a changed configuration (--set, --recipe): one seed


def spread_over_seeds(exp: Experiment, ctx, cfg, data: dict, results: dict, seeds, store, *, backend: str,
                      workers) -> tuple[dict, dict]:
    """The analysis once per training seed, on the same evaluation data, with that seed's models in place of
    ``--seed``'s (``seeds.seed_spread``).  Seeds whose results are missing are trained unless --no-train, which
    leaves them out and lists them.  Returns (the ``training_seeds`` record, {label: JobResult} of the extra
    seeds' jobs)."""
    from ..jobs import Store, run_jobs
    from .seeds import SEEDED, seed_spread, seed_variant
    args = ctx.args
    store = Store(store)
    extra = {s: seed_variant(exp.name, exp.jobs(cfg, s, backend), s) for s in seeds if s != args.seed}
    if args.no_train:
        missing = [s for s, js in extra.items() if not all(store.finished(j) for j in js.values())]
        result_of = store.get
    else:
        missing = []
        by_key = run_jobs([j for js in extra.values() for j in js.values()], store.root, scheduler=args.scheduler,
                          workers=workers, retrain=args.retrain, progress=not args.no_progress)
        result_of = lambda j: by_key[j.key]        # noqa: E731  (run_jobs has read every result already)
    per_seed, got = {args.seed: data}, {}
    for s, js in extra.items():
        if s in missing:
            continue
        res = {n: result_of(j) for n, j in js.items()}
        got.update({j.label: res[n] for n, j in js.items()})
        per_seed[s] = exp.analyse(ctx, cfg, {**results, **res})
    rec = seed_spread(per_seed, SEEDED[exp.name].metrics)
    rec["missing_seeds"] = missing
    rec["jobs"] = {j.label: j.key for js in extra.values() for j in js.values()}
    names = sorted({n for js in extra.values() for n in js})
    rec["notes"] = (f"training seeds {', '.join(map(str, rec['seeds']))}: the models {', '.join(names)} "
                    "retrained with each seed (initialisation and training data), analysed on the same evaluation "
                    "data; per_seed[path][i] is the value at seeds[i], std is over training seeds (ddof 1). The "
                    "figure's other numbers are those of --seed.")
    return rec, got


def figure_record(exp: Experiment, data: dict, *, cfg, mode, jobs, results, missing, store, args, backend, argv,
                  seconds) -> dict:
    """The figure JSON: the analysis' numbers, then the config and its deviations from the paper, every job's key
    and record, what the jobs cost (ours, and the estimate for the authors' code), and how the file was made."""
    from ..jobs import cost_summary
    from ..cost import figure_jax_hours
    cost = cost_summary(results.values())
    jax_total, jax_per_job = figure_jax_hours({k: (j.key, j.record()) for k, j in jobs.items()})
    for k, j in jobs.items():
        cost["jobs"][j.key]["jax_hours_estimate"], cost["jobs"][j.key]["jax_basis"] = jax_per_job[k]
    full = exp.modes["full"]
    return {"figure": exp.name, **data, "complete": not missing, **({"missing_jobs": missing} if missing else {}),
            "config": {"mode": mode, "values": dataclasses.asdict(cfg),
                       "deviations": deviations(cfg, full, "paper" if exp.full_is_paper else "full size"),
                       "jobs": {k: {"key": j.key, "record": j.record()} for k, j in jobs.items()},
                       "store": _relative(store)},
            "cost": {"cpu_hours": cost["cpu_hours"], "jax_hours_estimate": jax_total,
                     "jobs": {k: cost["jobs"][j.key] for k, j in jobs.items()}},
            "seed": args.seed, "quick": mode != "full", "backend": backend,
            "command": " ".join(shlex.quote(a) for a in ["python", f"scripts/{exp.name}.py",
                                                          *(sys.argv[1:] if argv is None else argv)]),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.system()} python {platform.python_version()}",
            "seconds": round(seconds, 1)}


# ------------------------------------------------------------------------------------ writing only what changed
# A figure JSON already on disk is replaced only when a recomputation changes its numbers by more than REDRAW_RTOL
# (relative; absolute below REDRAW_ATOL), or changes anything else but the fields in VOLATILE (when and where it
# and its jobs were made, and how long that took). Re-evaluating the stored models moves the numbers by rounding:
# most by 1e-10 relative or less, but float32 evaluations whose sums are split over a varying number of threads
# by up to about 1e-5, and a difference of two such losses (fig4's loss_change) by 4e-5 (seen on this project's
# machines). REDRAW_RTOL sits above that and far below any claim the tests check (percent-level ratios) and the
# three significant digits docs/reproduction.md prints. Where the JSON is kept, the PNG is drawn from the kept
# numbers, so it too comes out byte for byte the same.
REDRAW_RTOL = 1e-4
REDRAW_ATOL = 1e-12
# Dotted paths into the JSON. "cost" holds what the training took, where and at which commit: a job retrained in a
# fresh checkout (the quick figures' store is not committed) changes those and nothing else.
VOLATILE = frozenset({"date", "seconds", "machine", "command", "config.store", "cost"})
# Keys that are wall-clock measurements wherever they stand (a job's learning curve records its seconds; fig8 derives
# losses at equal training time from them): a retrained job's timings differ on every run.
TIMING_KEYS = frozenset({"seconds", "train_seconds", "loss_at_time_budget"})


def largest_change(old, new, path: str = ""):
    """(relative change, where) of the numbers of ``new`` against ``old``, ignoring the ``VOLATILE`` fields (where,
    when, by which command and from which store the file was made, and how long it took) and ``TIMING_KEYS`` at any
    depth; inf where anything but a number differs (another key, length, string or type)."""
    if isinstance(old, dict) and isinstance(new, dict):
        def keys(d):
            return {k for k in d if (f"{path}.{k}" if path else str(k)) not in VOLATILE and k not in TIMING_KEYS}
        ko, kn = keys(old), keys(new)
        if ko != kn:
            return float("inf"), f"{path or 'top level'}: keys {sorted(ko ^ kn)}"
        return max((largest_change(old[k], new[k], f"{path}.{k}" if path else str(k)) for k in sorted(ko)),
                   default=(0.0, path), key=lambda c: c[0])
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return float("inf"), f"{path}: length {len(old)} -> {len(new)}"
        return max((largest_change(a, b, f"{path}[{i}]") for i, (a, b) in enumerate(zip(old, new))),
                   default=(0.0, path), key=lambda c: c[0])
    number = (int, float)
    if isinstance(old, number) and isinstance(new, number) and not isinstance(old, bool) \
            and not isinstance(new, bool):
        d = abs(float(new) - float(old))
        if d <= REDRAW_ATOL:
            return 0.0, path
        return d / max(abs(float(old)), abs(float(new))), path
    return (0.0, path) if old == new else (float("inf"), f"{path}: {old!r} -> {new!r}")


def write_figure(exp: Experiment, data: dict | None, json_path: Path, png_path: Path) -> list[str]:
    """Write the figure's JSON (``data``; None: --replot, read it) and its PNG, each only where it changed: the
    JSON when ``largest_change`` exceeds REDRAW_RTOL, the PNG when its bytes differ. Returns the lines to print,
    saying what was rewritten and by how much, or kept."""
    lines = []
    if data is None:
        data = read_json(json_path)
    else:
        data, old = as_json(data), _read_existing(json_path)
        change, where = largest_change(old, data) if old is not None else (float("inf"), "new file")
        if change > REDRAW_RTOL:
            write_json(json_path, data)
            lines.append(f"rewrote {json_path} ({where})" if change == float("inf") or old is None else
                         f"rewrote {json_path} (largest relative change {change:.2g}, at {where})")
        else:
            data = old
            lines.append(f"kept {json_path}: its numbers are within {REDRAW_RTOL:g} of the recomputed ones "
                         f"(largest relative change {change:.2g})")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = exp.plot(data)
    png = figure_bytes(fig, dpi=130, bbox_inches="tight")
    plt.close(fig)
    if png_path.exists() and png_path.read_bytes() == png:
        lines.append(f"kept {png_path}: unchanged")
    else:
        atomic_write_bytes(png_path, png)
        lines.append(f"rewrote {png_path}")
    return lines


def _read_existing(path: Path):
    """The JSON at ``path``, or None where there is none or it does not parse (then it is rewritten)."""
    try:
        return read_json(path)
    except CLIError:
        return None


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)

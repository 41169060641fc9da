"""Numerical stability of the mesa-layer reference, per backward strategy (docs/math.md [M2]-[M4]).

For each T, lam, gamma, dtype and backward strategy ("store", "checkpoint", "downdate") this runs
mesa_ref.ops.mesa.mesa_forward / mesa_backward on the same random inputs and reports the relative
error (mesa_ref.gradcheck.rel_error: max|a-b| / max|a|+|b|) of out and of every gradient against
the float64 "store" result, and of out against the explicit-solve oracle mesa_direct (float64).

Inputs (state of the choice): B=1, H=2, d=dv=8; q, k ~ N(0, 1/d) per entry (so |k| ~ 1 and
sum_t k k^T ~ (t/d) I), v ~ N(0, 1), dout ~ N(0, 1); lam and gamma are the same for both heads.
One seed for everything (default 0), the same inputs for every strategy and dtype. float32 runs get
the inputs rounded to float32, and their references (float64 "store" and mesa_direct) are computed in
float64 on exactly those rounded values: the table measures arithmetic error only (the rounding of
the inputs alone moves out and the gradients by ~1e-7 relative here).

    .venv/bin/python benchmarks/mesa_stability.py            # full table -> benchmarks/results/
    .venv/bin/python benchmarks/mesa_stability.py --T 256 --lam 1 --no-write

Nothing here is asserted; tests/ops/test_mesa_ref.py runs a tiny version and asserts only the exact
properties (checkpoint == store, float64 forward == oracle).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mesa_ref.gradcheck import rel_error  # noqa: E402
from mesa_ref.ops.mesa import BACKWARD_STRATEGIES, mesa_backward, mesa_direct, mesa_forward  # noqa: E402

DEFAULT_T = (64, 256, 1024, 4096)
DEFAULT_LAM = (1e-3, 1e-1, 1.0, 10.0)
DEFAULT_GAMMA = (None, 0.99)
GRAD_NAMES = ("dq", "dk", "dv", "dlam", "dgamma")


def _err(a, b):
    """rel_error, or None when a is not finite (reported as 'nan' in the table)."""
    if not np.all(np.isfinite(a)):
        return None
    return rel_error(a, b)


def make_inputs(T, lam, gamma, *, B=1, H=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, H, T, d)) / np.sqrt(d)
    k = rng.normal(size=(B, H, T, d)) / np.sqrt(d)
    v = rng.normal(size=(B, H, T, d))
    dout = rng.normal(size=(B, H, T, d))
    lam_ = np.full(H, float(lam))
    gam = None if gamma is None else np.full(H, float(gamma))
    return q, k, v, lam_, gam, dout


def run_stability(Ts=DEFAULT_T, lams=DEFAULT_LAM, gammas=DEFAULT_GAMMA, dtypes=("float32", "float64"),
                  strategies=BACKWARD_STRATEGIES, *, B=1, H=2, d=8, seed=0, direct_max_T=4096, verbose=True):
    """Return a list of row dicts: T, lam, gamma, dtype, strategy, out_vs_store, out_vs_direct,
    dq, dk, dv, dlam, dgamma (relative errors against the float64 store result; None = non-finite)."""
    rows = []
    for gamma in gammas:
        for T in Ts:
            for lam in lams:
                inputs = make_inputs(T, lam, gamma, B=B, H=H, d=d, seed=seed)
                for dtype in dtypes:
                    # the same inputs for every strategy, rounded to `dtype`; the references are computed
                    # in float64 on exactly these rounded values, so only arithmetic error is measured
                    q, k, v, lam_, gam, dout = (None if x is None else x.astype(dtype) for x in inputs)
                    up = (lambda x: None if x is None else x.astype(np.float64))  # noqa: E731
                    out_ref, cache_ref = mesa_forward(up(q), up(k), up(v), up(lam_), gamma=up(gam), backward="store")
                    grads_ref = mesa_backward(up(dout), cache_ref)
                    direct = mesa_direct(q, k, v, lam_, gam) if T <= direct_max_T else None
                    for strategy in strategies:
                        t0 = time.perf_counter()
                        with np.errstate(all="ignore"):
                            out, cache = mesa_forward(q, k, v, lam_, gamma=gam, backward=strategy)
                            grads = mesa_backward(dout, cache)
                        row = dict(T=T, lam=lam, gamma=gamma, dtype=dtype, strategy=strategy,
                                   out_vs_store=_err(out, out_ref),
                                   out_vs_direct=None if direct is None else _err(out, direct),
                                   direct_skipped=direct is None)
                        for name, g, gr in zip(GRAD_NAMES, grads, grads_ref):
                            row[name] = _err(g, gr)
                        if gamma is None:
                            row["dgamma"] = None
                        row["seconds"] = round(time.perf_counter() - t0, 3)
                        rows.append(row)
                        if verbose:
                            print(format_row(row), flush=True)
    return rows


def _fmt(x):
    return "nan" if x is None else ("0" if x == 0 else f"{x:.1e}")


HEADER = ("| gamma | T | lam | dtype | strategy | out vs f64 store | out vs direct | dq | dk | dv | dlam | dgamma |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r):
    g = "-" if r["gamma"] is None else f"{r['gamma']:g}"
    dg = "-" if r["gamma"] is None else _fmt(r["dgamma"])
    od = "-" if r.get("direct_skipped") else _fmt(r["out_vs_direct"])
    return (f"| {g} | {r['T']} | {r['lam']:g} | {r['dtype']} | {r['strategy']} | {_fmt(r['out_vs_store'])} | "
            f"{od} | {_fmt(r['dq'])} | {_fmt(r['dk'])} | {_fmt(r['dv'])} | {_fmt(r['dlam'])} | {dg} |")


def format_table(rows):
    return "\n".join([HEADER] + [format_row(r) for r in rows])


def git_commit():
    """The checkout's commit ("+dirty" with local changes; "unknown" outside git), recorded with the results."""
    from mesa_lab.provenance import code_version
    return code_version()


def machine():
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), python=platform.python_version(), numpy=np.__version__)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=list(DEFAULT_T))
    p.add_argument("--lam", type=float, nargs="+", default=list(DEFAULT_LAM))
    p.add_argument("--gamma", type=str, nargs="+", default=["none", "0.99"], help="'none' or values in (0, 1]")
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--direct-max-T", type=int, default=4096, help="skip mesa_direct above this T")
    p.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    gammas = tuple(None if g.lower() == "none" else float(g) for g in a.gamma)
    command = "python benchmarks/mesa_stability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    print(HEADER)
    rows = run_stability(a.T, a.lam, gammas, d=a.d, seed=a.seed, direct_max_T=a.direct_max_T)
    total = time.perf_counter() - t0
    print(f"total {total:.1f} s")
    if a.no_write:
        return 0
    a.out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), command=command.strip(),
                git_commit=git_commit(), machine=machine(), seconds=round(total, 1),
                setup=dict(B=1, H=2, d=a.d, dv=a.d, seed=a.seed,
                           inputs="q, k ~ N(0, 1/d); v, dout ~ N(0, 1); lam, gamma equal for both heads",
                           metric="rel_error = max|a-b| / max(|a|+|b|) against the float64 'store' result on the "
                                  "same (dtype-rounded) inputs (out also against mesa_direct, the float64 explicit "
                                  "solve); null = non-finite"))
    tmp = a.out_dir / "mesa_stability.json.tmp"
    tmp.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    tmp.replace(a.out_dir / "mesa_stability.json")
    md = [
        "# Mesa-layer reference: numerical stability per backward strategy",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']['platform']}, {meta['machine']['processor']}, "
        f"{meta['machine']['cpu_count']} cores, numpy {meta['machine']['numpy']}",
        f"- setup: B=1, H=2, d=dv={a.d}, seed {a.seed}; {meta['setup']['inputs']}.",
        f"- metric: {meta['setup']['metric']}. 'nan' = the result had non-finite entries.",
        f"- run time: {total:.0f} s",
        "",
        format_table(rows),
        "",
    ]
    tmp = a.out_dir / "mesa_stability.md.tmp"
    tmp.write_text("\n".join(md))
    tmp.replace(a.out_dir / "mesa_stability.md")
    print(f"wrote {a.out_dir / 'mesa_stability.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

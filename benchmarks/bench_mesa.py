"""Mesa-layer forward+backward timings: the NumPy reference, mesa_fast (Numba / CuPy), and the
optional peers JAX (the authors' lax.scan recursion) and PyTorch (cumsum + solve) when installed,
and the exact chunkwise form [M5] (``mesa_ref.ops.mesa_chunkwise``) on NumPy ("chunk") and on CuPy
("cupy_chunk"), with --chunk tokens per chunk.

    .venv/bin/python benchmarks/bench_mesa.py                       # paper, mid, lm, T sweep; float32
    .venv/bin/python benchmarks/bench_mesa.py --shapes paper,mid    # a subset
    .venv/bin/python benchmarks/bench_mesa.py --impls numba,cupy --shapes lm

Prints a table of median ms (forward + backward, one call each, inputs already in place) and the
ratio reference / implementation, and writes JSON (date, machine, command, every timing) and a
Markdown table to benchmarks/results/bench_mesa_{cpu,gpu}.{json,md} (gpu when CuPy is timed).
The reference is skipped at a shape where one forward+backward would take longer than
--ref-budget seconds (estimated from a one-batch-row run). Timing is never asserted anywhere.

Shapes (B, H, T, d) from docs/design.md: paper (256, 4, 50, 20), mid (64, 8, 256, 32),
lm (8, 16, 1024, 64); sweep: the paper's B, H, d with T in 25 .. 400. dv = d throughout.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "paper": (256, 4, 50, 20),
    "mid": (64, 8, 256, 32),
    "lm": (8, 16, 1024, 64),
}
SWEEP_T = (25, 50, 100, 200, 400)
IMPLS = ("ref", "numba", "cupy", "chunk", "cupy_chunk", "jax", "torch")
CHUNK = 64   # --chunk default


# ----------------------------------------------------------------------------------------------
# implementations: each make_<impl>(arrays, backward) -> a no-argument callable doing fwd + bwd
# (or None with a reason when unavailable)
# ----------------------------------------------------------------------------------------------

def make_ref(a, backward):
    from mesa_ref.ops import mesa_backward, mesa_forward

    def run():
        out, cache = mesa_forward(a["q"], a["k"], a["v"], a["lam"], backward=backward)
        return mesa_backward(a["g"], cache)
    return run, None


def make_numba(a, backward):
    import mesa_fast
    from mesa_fast import ops
    mesa_fast.set_backend("numba")

    def run():
        out, cache = ops.mesa_forward(a["q"], a["k"], a["v"], a["lam"], backward=backward)
        return ops.mesa_backward(a["g"], cache)
    return run, None


def make_cupy(a, backward):
    from mesa_fast.backend import cupy_available
    if not cupy_available():
        return None, "CuPy or a usable GPU missing"
    import cupy as cp

    from mesa_fast import ops
    d = {k: cp.asarray(v) for k, v in a.items()}

    def run():
        out, cache = ops.mesa_forward(d["q"], d["k"], d["v"], d["lam"], backward=backward)
        grads = ops.mesa_backward(d["g"], cache)
        cp.cuda.get_current_stream().synchronize()
        return grads
    return run, None


def make_jax(a, backward):
    try:
        import jax
        import jax.numpy as jnp
    except Exception as exc:  # not installed: an optional peer
        return None, f"JAX not installed ({type(exc).__name__})"

    def layer(q, k, v, lam):
        # the authors' formulation: lax.scan over t of the Sherman-Morrison update, per (b, h)
        B, H, T, d = q.shape
        R0 = jnp.broadcast_to(jnp.eye(d, dtype=q.dtype) / lam[:, None, None], (B, H, d, d))
        S0 = jnp.zeros((B, H, v.shape[3], d), q.dtype)

        def step(carry, x):
            R, S = carry
            qt, kt, vt = x
            c = jnp.einsum("bhij,bhj->bhi", R, kt)
            R = R - c[..., :, None] * c[..., None, :] / (1 + jnp.einsum("bhi,bhi->bh", kt, c))[..., None, None]
            S = S + vt[..., :, None] * kt[..., None, :]
            o = jnp.einsum("bhij,bhj->bhi", S, jnp.einsum("bhij,bhj->bhi", R, qt))
            return (R, S), o

        xs = tuple(jnp.moveaxis(x, 2, 0) for x in (q, k, v))
        _, o = jax.lax.scan(step, (R0, S0), xs)
        return jnp.moveaxis(o, 0, 2)

    def loss(q, k, v, lam, g):
        return jnp.sum(layer(q, k, v, lam) * g)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    d = {k: jnp.asarray(v) for k, v in a.items()}

    def run():
        return jax.block_until_ready(grad(d["q"], d["k"], d["v"], d["lam"], d["g"]))
    return run, None


def make_torch(a, backward):
    try:
        import torch
    except Exception as exc:
        return None, f"PyTorch not installed ({type(exc).__name__})"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t = {k: torch.as_tensor(v, device=dev) for k, v in a.items()}

    def run():
        q, k, v, lam = (t[n].clone().requires_grad_(True) for n in ("q", "k", "v", "lam"))
        d = q.shape[-1]
        kk = torch.cumsum(k[..., :, None] * k[..., None, :], dim=2)          # (B,H,T,d,d)
        A = kk + lam[None, :, None, None, None] * torch.eye(d, dtype=q.dtype, device=dev)
        x = torch.linalg.solve(A, q[..., None])[..., 0]                       # (B,H,T,d)
        sc = torch.tril(x @ k.transpose(-1, -2))                              # (B,H,T,T)
        out = sc @ v
        out.backward(t["g"])
        if dev == "cuda":
            torch.cuda.synchronize()
        return q.grad, k.grad, v.grad, lam.grad
    return run, None


def make_chunk(a, backward, xp=np):
    """[M5] chunkwise form on ``xp`` arrays (``backward`` does not apply: it keeps the chunk states)."""
    from mesa_ref.ops import mesa_chunkwise_backward, mesa_chunkwise_forward
    d = {k: xp.asarray(v) for k, v in a.items()}

    def run():
        out, cache = mesa_chunkwise_forward(d["q"], d["k"], d["v"], d["lam"], chunk=CHUNK)
        grads = mesa_chunkwise_backward(d["g"], cache)
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()
        return grads
    return run, None


def make_cupy_chunk(a, backward):
    from mesa_fast.backend import cupy_available
    if not cupy_available():
        return None, "CuPy or a usable GPU missing"
    import cupy as cp
    return make_chunk(a, backward, xp=cp)


MAKERS = {"ref": make_ref, "numba": make_numba, "cupy": make_cupy, "chunk": make_chunk,
          "cupy_chunk": make_cupy_chunk, "jax": make_jax, "torch": make_torch}


# ----------------------------------------------------------------------------------------------

def inputs(B, H, T, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "q": rng.standard_normal((B, H, T, d)).astype(dtype),
        "k": (rng.standard_normal((B, H, T, d)) / np.sqrt(d)).astype(dtype),
        "v": rng.standard_normal((B, H, T, d)).astype(dtype),
        "g": rng.standard_normal((B, H, T, d)).astype(dtype),
        "lam": np.ones(H, dtype=dtype),
    }


def time_it(run, repeats, warmup=2, max_seconds=60.0):
    """Median and min wall ms, and median process-CPU ms, over up to ``repeats`` calls."""
    for _ in range(warmup):
        run()
    walls, cpus = [], []
    start = time.perf_counter()
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        run()
        walls.append((time.perf_counter() - t0) * 1e3)
        cpus.append((time.process_time() - c0) * 1e3)
        if time.perf_counter() - start > max_seconds and len(walls) >= 3:
            break
    return {"median_ms": statistics.median(walls), "min_ms": min(walls),
            "cpu_median_ms": statistics.median(cpus), "n": len(walls)}


def estimate_ref_seconds(B, H, T, d, dtype, backward):
    """One forward+backward of the reference on a single batch row, scaled by B (an estimate)."""
    a = inputs(1, H, T, d, dtype)
    run, _ = make_ref(a, backward)
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) * B


def git_commit():
    """The checkout's commit ("+dirty" with local changes; "unknown" outside git), recorded with the results."""
    from mesa_lab.provenance import code_version
    return code_version()


def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import numba
        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    info["numpy"] = np.__version__
    from mesa_fast.backend import cupy_available
    if cupy_available():
        import cupy as cp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["cupy"] = cp.__version__
    return info


def render(payload):
    """(table, markdown text) for a results payload (as written to the JSON)."""
    results, info = payload["results"], payload["machine"]
    timed = [i for i in payload.get("impls", IMPLS)
             if any("median_ms" in r["timings"].get(i, {}) for r in results)]
    others = [i for i in timed if i != "ref"]
    header = ("| shape (B, H, T, d) | " + " | ".join(f"{i} ms" for i in timed) + " | "
              + " | ".join(f"ref / {i}" for i in others) + " | "
              + " | ".join(f"{i} CPU ms" for i in timed) + " |")
    lines = [header, "|" + "---|" * (1 + 2 * len(timed) + len(others))]
    for r in results:
        cells = []
        for i in timed:
            t = r["timings"].get(i, {})
            cells.append(f"{t['median_ms']:.2f}" if "median_ms" in t else "skipped")
        for i in others:
            sp = r["timings"].get(i, {}).get("speedup_vs_ref")
            cells.append(f"{sp:.1f}x" if sp else "-")
        for i in timed:
            t = r["timings"].get(i, {})
            cells.append(f"{t['cpu_median_ms']:.2f}" if "cpu_median_ms" in t else "-")
        lines.append(f"| {r['shape']} ({r['B']}, {r['H']}, {r['T']}, {r['d']}) | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    md = [f"# Mesa-layer forward+backward ({payload['dtype']}, backward={payload['backward']})", "",
          f"`{payload['command']}`, started {payload['date']}; {info.get('cpu', '?')}, "
          f"{info.get('cpu_count')} cores" + (f", GPU {info['gpu']}" if "gpu" in info else "")
          + f"; load average at start {info.get('loadavg_at_start')}.", "",
          "Median wall-clock ms of one forward plus one backward call (inputs in place, after warm-up); "
          "ratios are reference time / implementation time; CPU ms is the process CPU time of the "
          "same calls (all threads). Minima are in the JSON.", ""]
    load = info.get("loadavg_at_start")
    if load and info.get("cpu_count") and load[0] > 0.5 * info["cpu_count"]:
        md += [f"**Shared machine**: the 1-minute load average was {load[0]:.1f} on {info['cpu_count']} cores "
               "when this ran, so the wall-clock times include waiting for the CPU and are not the "
               "machine's speed; the CPU-time columns are the better measure of the work done.", ""]
    md += [table, ""]
    for i, why in payload.get("skipped_impls", {}).items():
        md.append(f"- {i}: not timed ({why})")
    return table, "\n".join(md) + "\n"


def main(argv=None):
    global CHUNK
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="paper,mid,lm,sweep",
                   help="comma list of paper, mid, lm, sweep (default: all)")
    p.add_argument("--impls", default="ref,numba,cupy,cupy_chunk,jax,torch", help=f"comma list of {IMPLS}")
    p.add_argument("--chunk", type=int, default=CHUNK, help=f"tokens per chunk for chunk / cupy_chunk (default {CHUNK})")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--backward", default="store", choices=("store", "checkpoint"))
    p.add_argument("--repeats", type=int, default=20, help="timed calls per cell (fewer past 60 s)")
    p.add_argument("--ref-budget", type=float, default=60.0,
                   help="skip the reference where one fwd+bwd is estimated to take longer (s)")
    p.add_argument("--out", default=None, help="output stem (default benchmarks/results/bench_mesa_{cpu,gpu})")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only re-write the Markdown table of an earlier run's JSON, and exit")
    args = p.parse_args(argv)
    if args.render:
        src = Path(args.render)
        payload = json.loads(src.read_text())
        payload.setdefault("impls", [i for i in IMPLS])
        src.with_suffix(".md").write_text(render(payload)[1])
        print(f"wrote {src.with_suffix('.md')}")
        return 0

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    for s in shapes:
        if s not in (*SHAPES, "sweep"):
            p.error(f"--shapes: unknown shape {s!r}")
    for i in impls:
        if i not in IMPLS:
            p.error(f"--impls: unknown implementation {i!r}")
    if args.chunk < 1:
        p.error("--chunk: expected a positive int")
    CHUNK = args.chunk
    dtype = np.dtype(args.dtype)

    cases = []
    for s in shapes:
        if s == "sweep":
            B, H, _, d = SHAPES["paper"]
            cases += [(f"sweep-T{T}", (B, H, T, d)) for T in SWEEP_T]
        else:
            cases.append((s, SHAPES[s]))

    info = machine_info()
    started = _dt.datetime.now().isoformat(timespec="seconds")
    print(f"# mesa-layer forward+backward, {args.dtype}, backward={args.backward}; median ms (min); "
          f"machine: {info.get('cpu', '?')}, {info.get('cpu_count')} cores, "
          f"load {info.get('loadavg_at_start')}", flush=True)
    results = []
    skipped = {}
    for name, (B, H, T, d) in cases:
        a = inputs(B, H, T, d, dtype)
        row = {"shape": name, "B": B, "H": H, "T": T, "d": d, "dv": d, "timings": {}}
        for impl in impls:
            if impl == "ref":
                est = estimate_ref_seconds(B, H, T, d, dtype, args.backward)
                if est > args.ref_budget:
                    row["timings"][impl] = {"skipped": f"estimated {est:.0f} s > --ref-budget"}
                    print(f"  {name:12s} {impl:6s} skipped (estimated {est:.0f} s per call)", flush=True)
                    continue
                reps = max(1, min(args.repeats, int(args.ref_budget / max(est, 1e-3))))
                run, why = make_ref(a, args.backward)
                r = time_it(run, reps, warmup=1, max_seconds=args.ref_budget)
            else:
                run, why = MAKERS[impl](a, args.backward)
                if run is None:
                    skipped[impl] = why
                    row["timings"][impl] = {"skipped": why}
                    continue
                r = time_it(run, args.repeats)
            row["timings"][impl] = r
            print(f"  {name:12s} {impl:6s} {r['median_ms']:9.2f} ms  (min {r['min_ms']:.2f}, "
                  f"cpu {r['cpu_median_ms']:.2f}, n={r['n']})", flush=True)
        ref_ms = row["timings"].get("ref", {}).get("median_ms")
        for impl, r in row["timings"].items():
            if "median_ms" in r and ref_ms:
                r["speedup_vs_ref"] = ref_ms / r["median_ms"]
        results.append(row)
    for impl, why in skipped.items():
        print(f"# {impl}: skipped ({why})")

    tag = "gpu" if any("median_ms" in r["timings"].get(i, {}) for r in results for i in ("cupy", "cupy_chunk")) else "cpu"
    stem = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"bench_mesa_{tag}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + (argv if argv is not None else sys.argv[1:]))
    payload = {"date": started, "finished": _dt.datetime.now().isoformat(timespec="seconds"),
               "command": command, "git_commit": git_commit(),
               "machine": info, "dtype": args.dtype, "backward": args.backward, "impls": impls,
               "chunk": CHUNK,
               "what": "mesa-layer forward + backward, one call each, median wall ms",
               "skipped_impls": skipped, "results": results}
    table, md = render(payload)
    print()
    print(table)
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(stem.with_suffix(".json"))
    tmp = stem.with_suffix(".md.tmp")
    tmp.write_text(md)
    tmp.replace(stem.with_suffix(".md"))
    print(f"\nwrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    from timing import training_paused
    with training_paused():
        sys.exit(main())

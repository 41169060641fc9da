"""What the fig8 language models cost: measured time per token and counted FLOPs per token, per model kind.

The criticism this answers: "the mesa-layer takes more FLOPs than attention and is not parallelisable".
At the size of fig8's full configuration (``mesa_lab.experiments.language.FULL``) the script

1. times, for each model kind (softmax, linear, mesa, hybrid) and each backend (``mesa_fast`` and the
   reference), one training step (``loss_and_grads`` + gradient clipping + the AdamW update, what
   ``mesa_ref.train`` does per batch) and one forward pass, on real windows of the default corpus, and
   divides by the tokens in the batch;
2. counts the attention part's forward and backward FLOPs per token and head for each form (softmax [L3],
   linear [L2] in its T x T and recurrent forms, the sequential mesa layer [M2]/[M3], the chunkwise form [M5]),
   plus the rest of the model for scale, with ``mesa_ref.flops`` (its docstring has the formulas);
3. times the mesa layer alone at the full configuration's shape (B, H, T, d) in its sequential form
   (``mesa_forward``/``mesa_backward``: Numba and reference) and in the exact chunkwise form [M5]
   (``mesa_chunkwise_forward``/``_backward``) for several chunk sizes C, checks that both give the same
   output, and times the mesa model's training step with ``ModelConfig(mesa_chunk=C)``.

Everything runs on one thread (Numba and the BLAS), as one job of a figure runs on a cluster worker, so the
training-step rows are what decides a fig8 job's length: ``full_job_hours`` is FULL.steps x the measured
step plus the periodic held-out evaluations.  Timing is never asserted anywhere; the JSON records the
machine, its load average before and after, the commit and the command.

    python benchmarks/bench_lm_cost.py            # writes benchmarks/results/bench_lm_cost_cpu.{json,md}
    python benchmarks/bench_lm_cost.py --quick    # a tiny shape, a few repeats, nothing written
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from timing import timed_calls, write_result  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------------------------------------- FLOP counts
from mesa_ref.flops import attention_flops, model_flops as count_flops  # noqa: E402  (formulas: mesa_ref/flops.py)


def model_flops(kind_layers, cfg, V: int, chunk: int | None = None) -> dict:
    """``mesa_ref.flops.model_flops`` at the size of the LM config ``cfg``."""
    return count_flops(kind_layers, width=cfg.width, heads=cfg.heads, key_size=cfg.key_size, T=cfg.T, mlp=cfg.mlp,
                 vocab=V, chunk=chunk)


# ---------------------------------------------------------------------------------------------- timing
def time_calls(run, repeats: int, warmup: int) -> dict:
    """Median wall and process-CPU milliseconds of ``run()`` over ``repeats`` calls after ``warmup`` calls."""
    walls, cpus = timed_calls(run, repeats, warmup)
    return {"wall_ms": 1e3 * statistics.median(walls), "cpu_ms": 1e3 * statistics.median(cpus),
            "min_wall_ms": 1e3 * min(walls), "n": repeats}


def step_runner(model, params, x, y, tcfg):
    """One training step as mesa_ref.train takes it (on copies: the timed steps do not drift the weights)."""
    from mesa_ref.optim import AdamW
    from mesa_ref.train import clip_gradients, learning_rate
    p = {k: v.copy() for k, v in params.items()}
    opt = AdamW(p, tcfg)

    def run():
        _, grads = model.loss_and_grads(p, x, y)
        grads, _ = clip_gradients(grads, tcfg)
        opt.update(p, grads, learning_rate(tcfg.warmup_steps, tcfg))
    return run


def bench_models(cfg, task, backends, repeats, ref_repeats, log) -> list:
    from mesa_lab.ref_or_fast import resolve_backend
    from mesa_lab.experiments.language import KINDS, model_config, train_config
    from mesa_ref.model import Transformer
    x, y = task.batch(np.random.default_rng(0), cfg.batch)
    tokens = cfg.batch * cfg.T
    tcfg = train_config(cfg, 0)
    V = task.vocab_size
    rows = []
    for kind in KINDS:
        mcfg = model_config(kind, cfg, V)
        for backend in backends:
            ops, _ = resolve_backend(backend)
            model = Transformer(mcfg, ops=ops)
            params = model.init(0)
            n = repeats if backend == "fast" else ref_repeats
            warm = 2 if backend == "fast" else 1
            step = time_calls(step_runner(model, params, x, y, tcfg), n, warm)
            fwd = time_calls(lambda: model.forward(params, x), n, warm)
            row = {"kind": kind, "layers": list(mcfg.layers), "backend": backend, "params": model.num_params(params),
                   "train_step": step, "forward": fwd,
                   "train_step_us_per_token": 1e3 * step["wall_ms"] / tokens,
                   "forward_us_per_token": 1e3 * fwd["wall_ms"] / tokens,
                   "flops_per_token": model_flops(mcfg.layers, cfg, V)}
            if backend == "fast":
                evals = cfg.steps // cfg.eval_every + 1
                row["full_job_hours"] = {
                    which: (cfg.steps * step[key] + evals * cfg.test_batches * fwd[key]) / 3.6e6
                    for which, key in (("wall", "wall_ms"), ("cpu", "cpu_ms"))}
            rows.append(row)
            log(f"{kind:8s} {backend:4s} step {step['wall_ms']:9.1f} ms (cpu {step['cpu_ms']:8.1f})  "
                f"forward {fwd['wall_ms']:8.1f} ms  = {row['train_step_us_per_token']:7.2f} / "
                f"{row['forward_us_per_token']:6.2f} us per token")
    return rows


def bench_mesa_layer(cfg, chunks, repeats, ref_repeats, log) -> dict:
    """The mesa layer alone at (B, H, T, d): sequential (Numba, reference) against chunkwise [M5]."""
    from mesa_fast import ops as fops
    from mesa_ref import ops as rops
    B, H, T, d = cfg.batch, cfg.heads, cfg.T, cfg.key_size
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, H, T, d)).astype(np.float32)
    k = (rng.standard_normal((B, H, T, d)) / np.sqrt(d)).astype(np.float32)
    v = rng.standard_normal((B, H, T, d)).astype(np.float32)
    g = rng.standard_normal((B, H, T, d)).astype(np.float32)
    lam = np.ones(H, np.float32)
    tokens = B * T
    ref_out, _ = rops.mesa_forward(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                   lam.astype(np.float64))

    def fb(fwd, bwd, **kw):
        def run():
            out, cache = fwd(q, k, v, lam, **kw)
            bwd(g, cache)
        return run

    rows = []
    for name, fwd, bwd, kw, n in (("sequential, Numba", fops.mesa_forward, fops.mesa_backward, {}, repeats),
                                  ("sequential, reference", rops.mesa_forward, rops.mesa_backward, {}, ref_repeats)):
        t = time_calls(fb(fwd, bwd, **kw), n, 1)
        out, _ = fwd(q, k, v, lam, **kw)
        rows.append({"form": name, "chunk": None, **t, "us_per_token": 1e3 * t["wall_ms"] / tokens,
                     "max_abs_diff_vs_float64": float(np.abs(out - ref_out).max()),
                     "flops_per_token_head": attention_flops("mesa_sequential", T, d)})
        log(f"mesa layer {name:24s} fwd+bwd {t['wall_ms']:8.1f} ms (cpu {t['cpu_ms']:8.1f})")
    for C in chunks:
        t = time_calls(fb(rops.mesa_chunkwise_forward, rops.mesa_chunkwise_backward, chunk=C), repeats, 1)
        out, _ = rops.mesa_chunkwise_forward(q, k, v, lam, chunk=C)
        rows.append({"form": f"chunkwise [M5], C = {C}", "chunk": C, **t, "us_per_token": 1e3 * t["wall_ms"] / tokens,
                     "max_abs_diff_vs_float64": float(np.abs(out - ref_out).max()),
                     "sequential_steps": -(-T // C), "flops_per_token_head": attention_flops("mesa_chunkwise", T, d, C)})
        log(f"mesa layer chunkwise C={C:<4d}            fwd+bwd {t['wall_ms']:8.1f} ms (cpu {t['cpu_ms']:8.1f})")
    return {"shape": {"B": B, "H": H, "T": T, "d": d, "dtype": "float32"}, "rows": rows}


def bench_chunk_models(cfg, task, chunks, repeats, log) -> list:
    """The mesa model's training step, sequential mesa layers against ModelConfig(mesa_chunk=C)."""
    from mesa_fast import ops as fops
    from mesa_lab.experiments.language import model_config, train_config
    from mesa_ref.model import Transformer
    x, y = task.batch(np.random.default_rng(0), cfg.batch)
    tokens = cfg.batch * cfg.T
    base = model_config("mesa", cfg, task.vocab_size)
    rows = []
    for C in (None, *chunks):
        model = Transformer(base.replace(mesa_chunk=C), ops=fops)
        params = model.init(0)
        t = time_calls(step_runner(model, params, x, y, train_config(cfg, 0)), repeats, 2)
        rows.append({"mesa_chunk": C, "train_step": t, "train_step_us_per_token": 1e3 * t["wall_ms"] / tokens,
                     "flops_per_token": model_flops(base.layers, cfg, task.vocab_size, C)})
        log(f"mesa model, mesa_chunk={str(C):5s} (fast backend) step {t['wall_ms']:8.1f} ms (cpu {t['cpu_ms']:8.1f})")
    return rows


# ---------------------------------------------------------------------------------------------- report
def machine() -> dict:
    from mesa_lab.jobs import _cpu_name
    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}
    try:
        import numba
        info["numba"] = numba.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def render(p: dict) -> str:
    cfg = p["config"]
    lines = ["# Cost of the fig8 language models (CPU, one thread)", "",
             f"- date: {p['date']}; commit {p['commit']}",
             f"- machine: {p['machine']['cpu']}, {p['machine']['cores']} cores; numpy {p['machine']['numpy']}, "
             f"numba {p['machine'].get('numba', '-')}; Numba threads 1, BLAS threads 1",
             f"- command: `{p['command']}`",
             f"- load average (1, 5, 15 min) before: {p['load_before']}, after: {p['load_after']}"
             + (" -- **other processes shared the CPU while this ran**: wall-clock times are inflated; the CPU-time "
                "columns are the steadier measure" if p["load_before"][0] > 0.5 * p["machine"]["cores"] else ""),
             f"- size: {'a tiny test shape (--quick)' if p['quick'] else 'fig8 FULL'} "
             f"(mesa_lab/experiments/language.py): width {cfg['width']}, {cfg['heads']} heads x key "
             f"size {cfg['key_size']}, {cfg['layers']} layers, MLP {cfg['mlp']}, T = {cfg['T']}, batch {cfg['batch']} "
             f"({cfg['batch'] * cfg['T']} tokens a step), vocabulary {p['vocab_size']}, float32", "",
             "## Time per token (median of the timed calls) and forward FLOPs per token", "",
             "```",
             f"{'kind':8s} {'backend':8s} {'params':>7s} {'step us/tok':>11s} {'step cpu ms':>11s} "
             f"{'fwd us/tok':>10s} {'attn FLOP/tok':>13s} {'rest FLOP/tok':>13s} {'full job h':>10s}"]
    for r in p["models"]:
        f = r["flops_per_token"]
        job = r.get("full_job_hours")
        lines.append(f"{r['kind']:8s} {r['backend']:8s} {r['params']:7d} {r['train_step_us_per_token']:11.2f} "
                     f"{r['train_step']['cpu_ms']:11.1f} {r['forward_us_per_token']:10.2f} {f['attention']:13.0f} "
                     f"{f['rest']:13.0f} " + (f"{job['wall']:10.2f}" if job else f"{'-':>10s}"))
    lines += ["```", "",
              f"`full job h`: {cfg['steps']} steps x the step's wall time + the held-out evaluations "
              f"(every {cfg['eval_every']} steps, {cfg['test_batches']} forward batches), fast backend, one thread. "
              "The FLOP columns count the linear and softmax layers in the T x T form the model runs; the "
              "linear layer's recurrent form would need 4 d^2 per head.", "",
              "## Attention FLOPs per token and head (d = %d, T = %d)" % (cfg["key_size"], cfg["T"]), "",
              "```", f"{'form':28s} {'forward':>9s} {'backward':>9s}"]
    for name, fl in p["attention_flops_per_token_head"].items():
        lines.append(f"{name:28s} {fl['forward']:9.0f} {fl['backward']:9.0f}")
    lay = p["mesa_layer"]
    s = lay["shape"]
    lines += ["```", "", f"## The mesa layer alone, forward + backward (B={s['B']}, H={s['H']}, T={s['T']}, d={s['d']}, "
              "float32)", "", "```",
              f"{'form':26s} {'wall ms':>9s} {'cpu ms':>9s} {'us/token':>9s} {'seq. steps':>10s} {'max |diff|':>10s}"]
    for r in lay["rows"]:
        lines.append(f"{r['form']:26s} {r['wall_ms']:9.1f} {r['cpu_ms']:9.1f} {r['us_per_token']:9.2f} "
                     f"{r.get('sequential_steps') or s['T']:10d} {r['max_abs_diff_vs_float64']:10.1e}")
    lines += ["```", "", "`max |diff|`: largest difference of the layer's output from the float64 sequential "
              "reference. `seq. steps`: how many steps must run one after another along the sequence.", "",
              "## The mesa model's training step, sequential against chunkwise mesa layers (fast backend)", "", "```",
              f"{'mesa_chunk':10s} {'step ms':>9s} {'cpu ms':>9s} {'us/token':>9s} {'attn FLOP/tok':>13s}"]
    for r in p["mesa_chunk_models"]:
        lines.append(f"{str(r['mesa_chunk']):10s} {r['train_step']['wall_ms']:9.1f} {r['train_step']['cpu_ms']:9.1f} "
                     f"{r['train_step_us_per_token']:9.2f} {r['flops_per_token']['attention']:13.0f}")
    lines += ["```", "", "Notes:", ""] + [f"- {n}" for n in p["notes"]]
    return "\n".join(lines) + "\n"


def notes(p: dict) -> list:
    """The conclusions, each computed from this run's numbers."""
    cfg = p["config"]
    d, T = cfg["key_size"], cfg["T"]
    fl = p["attention_flops_per_token_head"]
    soft, mesa = fl["softmax [L3]"]["forward"], fl["mesa [M2]/[M3], sequential"]["forward"]
    share = {r["kind"]: r["flops_per_token"]["attention_share"] for r in p["models"] if r["backend"] == "fast"}
    step = {(r["kind"], r["backend"]): r["train_step"]["cpu_ms"] for r in p["models"]}
    rows = p["mesa_layer"]["rows"]
    seq = next(r for r in rows if r["form"] == "sequential, Numba")
    best = min((r for r in rows if r["chunk"]), key=lambda r: r["cpu_ms"])
    out = [
        f"FLOPs: a mesa head's forward needs {mesa:.0f} FLOPs per token at d = {d} (10 d^2, whatever T), a softmax "
        f"head's {soft:.0f} at T = {T} (about 2 d (T+1)): the sequential mesa layer needs fewer FLOPs than softmax "
        f"attention once T exceeds about 5 d = {5 * d}. The attention part is "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in share.items()) + " of the model's forward FLOPs at this size.",
        f"Measured (process CPU time of a training step, one thread): mesa {step[('mesa', 'fast')]:.0f} ms against "
        f"softmax {step[('softmax', 'fast')]:.0f} ms and linear {step[('linear', 'fast')]:.0f} ms on the fast "
        f"backend; {step[('mesa', 'ref')]:.0f}, {step[('softmax', 'ref')]:.0f} and {step[('linear', 'ref')]:.0f} ms "
        "on the reference.",
        "Parallelism: the sequential form walks the T positions one after another inside each (batch, head); the "
        f"exact chunkwise form [M5] leaves T/C sequential steps, each made of matrix products (a C x C Cholesky "
        "factorisation and triangular solve among them), for 11 C d + C^2/3 more forward FLOPs per token and head. "
        f"On this CPU through NumPy its best chunk (C = {best['chunk']}) takes {best['cpu_ms'] / seq['cpu_ms']:.1f}x "
        "the Numba kernel's CPU time for the layer's forward + backward"
        + (" (batches of small products, with Python between them, are not what NumPy is fast at)"
           if best["cpu_ms"] > seq["cpu_ms"] else "")
        + ". Its products are what a GPU runs as batched cuBLAS / cuSOLVER calls, which is the form's purpose.",
        "The chunkwise op is the reference's NumPy code in both backends (mesa_fast has no chunkwise kernel), so the "
        "mesa_chunk rows are the fast backend with NumPy mesa layers.",
    ]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/bench_lm_cost.py", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny shape and few repeats; nothing written")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per fast row (default 10)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="timed calls per reference row (default 3)")
    ap.add_argument("--chunks", default="16,32,64,128", help="chunk sizes C of the [M5] rows (default 16,32,64,128)")
    ap.add_argument("--tag", default="", help="suffix of the result files (bench_lm_cost_cpu<_tag>.json)")
    args = ap.parse_args(argv)
    import numba
    from threadpoolctl import threadpool_limits

    import mesa_fast
    from mesa_lab.experiments.language import FULL, SMOKE, lm_task
    from mesa_lab.provenance import code_version
    numba.set_num_threads(1)
    mesa_fast.keep_freed_memory()          # the heap setting every job worker uses (mesa_lab.jobs.run_job)
    cfg = dataclasses.replace(SMOKE, T=32) if args.quick else FULL
    chunks = (8, 16) if args.quick else tuple(int(c) for c in args.chunks.split(","))
    repeats, ref_repeats = (2, 1) if args.quick else (args.repeats, args.ref_repeats)
    task = lm_task(cfg)
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    with threadpool_limits(limits=1):
        models = bench_models(cfg, task, ("fast", "ref"), repeats, ref_repeats, print)
        layer = bench_mesa_layer(cfg, chunks, repeats, ref_repeats, print)
        chunk_models = bench_chunk_models(cfg, task, chunks, max(3, repeats // 2), print)
    d, T = cfg.key_size, cfg.T
    forms = {"softmax [L3]": attention_flops("softmax", T, d),
             "linear [L2], T x T form": attention_flops("linear_quadratic", T, d),
             "linear [L2], recurrent": attention_flops("linear_recurrent", T, d),
             "mesa [M2]/[M3], sequential": attention_flops("mesa_sequential", T, d)}
    for C in chunks:
        forms[f"mesa [M5], chunk C = {C}"] = attention_flops("mesa_chunkwise", T, d, C)
    payload = {
        "benchmark": "bench_lm_cost", "quick": bool(args.quick), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": code_version(), "machine": machine(),
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/bench_lm_cost.py",
                                                      *(sys.argv[1:] if argv is None else argv)]),
        "threads": {"numba": 1, "blas": 1}, "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()], "seconds": round(time.perf_counter() - t0, 1),
        "config": dataclasses.asdict(cfg), "vocab_size": task.vocab_size,
        "models": models, "attention_flops_per_token_head": forms, "mesa_layer": layer,
        "mesa_chunk_models": chunk_models}
    payload["notes"] = notes(payload)
    text = render(payload)
    print(text)
    if not args.quick:
        stem = "bench_lm_cost_cpu" + (f"_{args.tag}" if args.tag else "")
        write_result(RESULTS, stem, payload, text, indent=1)
        print(f"wrote {RESULTS / stem}.json and .md")
    return 0


if __name__ == "__main__":
    from timing import training_paused
    with training_paused():
        sys.exit(main())

"""What a figure's training cost, and what the authors' JAX code would take for the same runs.

Our cost is measured: each job records the CPU seconds of its own process (``mesa_lab.jobs``).  The authors'
cost is an estimate: their jit-compiled training step, timed side by side with ours on a 2-core AMD EPYC
machine for four model families (``JAX_STEP_MS``), times the job's number of steps.  Models outside those
families get the step time of the nearest family scaled by the number of layers, and the estimate says so.
"""
from __future__ import annotations

#: the authors' JAX/Flax training step (forward, backward, clipping, AdamW; batch 256, T 50, float32), in ms: the
#: midpoints of the ranges measured side by side with mesa_fast on a 2-core AMD EPYC on 2026-12-02 with nothing
#: else running (benchmarks/results/bench_train_step_cpu_quiet3.json, bench_huge_pages_cpu_jax.json "4 KB", and
#: two unsaved runs listed in docs/performance.md). The first estimates (203.5 / 668.5 / 382 / 1114 ms) were taken
#: while other jobs shared the cores, which inflated JAX's wall time by 1.4-1.6x.
JAX_STEP_MS = {
    ("linear", 2): 146.9,     # 146.9 ms (one run): the default model, constructed tokens
    ("linear", 6): 394.7,     # 369.5-419.9 ms
    ("mesa", 1): 270.3,       # 270.3 ms (one run)
    ("softmax_mlp_ln", 6): 695.3,    # 683.1-707.5 ms: softmax + GELU MLP (x4) + pre-LayerNorm, width 40, key 20
}


def family(model: dict) -> str:
    """"linear", "mesa", "softmax" (attention only) or "softmax_mlp_ln", from a ModelConfig record."""
    kinds = set(model["layers"])
    if kinds == {"linear"}:
        return "linear"
    if kinds == {"mesa"}:
        return "mesa"
    if "mesa" in kinds:
        return "mesa"                 # hybrids: the mesa layers dominate
    return "softmax_mlp_ln" if (model.get("mlp") or model.get("layernorm")) else "softmax"


def jax_step_estimate(model: dict) -> tuple[float, str]:
    """(ms per step, how it was obtained) for a model record at batch 256 and T 50."""
    fam, L = family(model), len(model["layers"])
    if (fam, L) in JAX_STEP_MS:
        return JAX_STEP_MS[(fam, L)], "measured"
    base = {"linear": ("linear", 2), "mesa": ("mesa", 1), "softmax": ("softmax_mlp_ln", 6),
            "softmax_mlp_ln": ("softmax_mlp_ln", 6)}[fam]
    ms = JAX_STEP_MS[base] * L / base[1]
    width = model.get("width", 40)
    if fam.startswith("softmax") and width != 40:
        ms *= (width / 40) ** 2       # the dense products grow with width^2
    return ms, f"extrapolated from the measured {base[0]} {base[1]}-layer step by the number of layers" + (
        f" and (width / 40)^2" if fam.startswith("softmax") and width != 40 else "")


def jax_hours(record: dict) -> tuple[float, str]:
    """The authors' estimated hours for one job: their step time x the job's steps, scaled to its batch and T."""
    ms, basis = jax_step_estimate(record["model"])
    tr, task = record["train"], record["task"]
    scale = (tr["batch"] / 256) * (task.get("T", 50) / 50)
    return ms * scale * tr["steps"] / 3.6e6, basis + ("" if scale == 1 else ", scaled by batch x T")


def figure_jax_hours(jobs: dict) -> tuple[float, dict]:
    """(total, {name: (hours, basis)}) of the authors' estimate for a figure's jobs, given as {name: (key,
    record)}; the total counts a job that two names share once (as our CPU hours do)."""
    per_name = {name: jax_hours(record) for name, (_key, record) in jobs.items()}
    by_key = {key: per_name[name][0] for name, (key, _record) in jobs.items()}
    return sum(by_key.values()), per_name

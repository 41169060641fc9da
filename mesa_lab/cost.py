"""What a figure's training cost, and what the authors' JAX code would take for the same runs.

Our cost is measured: each job records the CPU seconds of its own process (``mesa_lab.jobs``).  The authors'
cost is an estimate: their jit-compiled training step, timed side by side with ours for four model families,
times the job's number of steps.  The step times are a benchmark result, ``benchmarks/results/jax_step_ms.json``
(what each number is, where and when it was measured, and the runs it comes from); ``jax_step_ms`` reads it.
Models outside those families get the step time of the nearest family scaled by the number of layers, and the
estimate says so.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JAX_STEP_FILE = ROOT / "benchmarks" / "results" / "jax_step_ms.json"

#: the measured (family, layers) the extrapolation starts from, per family
BASE = {"linear": ("linear", 2), "mesa": ("mesa", 1), "softmax": ("softmax_mlp_ln", 6),
        "softmax_mlp_ln": ("softmax_mlp_ln", 6)}


class StepTimesError(ValueError):
    """The file of the authors' step times is missing or not in the expected form."""


@lru_cache(maxsize=None)
def _load(path: str) -> dict:
    what = f"{path} (the authors' JAX step times that the cost estimate uses)"
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StepTimesError(f"{what}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StepTimesError(f"{what}: cannot be read as JSON ({e})") from None
    steps = d.get("steps") if isinstance(d, dict) else None
    if not isinstance(steps, list) or not steps:
        raise StepTimesError(f"{what}: no 'steps' list")
    out = {}
    for i, s in enumerate(steps):
        fam, layers, ms = (s.get("family"), s.get("layers"), s.get("ms")) if isinstance(s, dict) else (None,) * 3
        if not (isinstance(fam, str) and isinstance(layers, int) and not isinstance(layers, bool)
                and isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms) and ms > 0):
            raise StepTimesError(f"{what}: steps[{i}] needs a 'family' (text), 'layers' (an integer) and 'ms' "
                                 f"(a positive number), got {s!r}")
        if (fam, layers) in out:
            raise StepTimesError(f"{what}: ({fam!r}, {layers}) is listed twice")
        out[(fam, layers)] = float(ms)
    missing = sorted(set(BASE.values()) - set(out))
    if missing:
        raise StepTimesError(f"{what}: no step time for {missing}, which the estimate extrapolates from")
    return out


def jax_step_ms(path=None) -> dict:
    """{(family, layers): ms} of the authors' measured JAX step, from ``benchmarks/results/jax_step_ms.json``."""
    return dict(_load(str(path or JAX_STEP_FILE)))


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
    steps = jax_step_ms()
    if (fam, L) in steps:
        return steps[(fam, L)], "measured"
    base = BASE[fam]
    ms = steps[base] * L / base[1]
    width = model.get("width", 40)
    if fam.startswith("softmax") and width != 40:
        ms *= (width / 40) ** 2       # the dense products grow with width^2
    return ms, f"extrapolated from the measured {base[0]} {base[1]}-layer step by the number of layers" + (
        " and (width / 40)^2" if fam.startswith("softmax") and width != 40 else "")


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

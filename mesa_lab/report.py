"""The numbers of docs/reproduction.md, read from the full-size figure JSON (never typed by hand).

    python scripts/report_full.py            rewrite the generated block of docs/reproduction.md
    python scripts/report_full.py --check    exit 1 if that block is not what the JSON gives
    python scripts/report_full.py --print    print the block

Reads DIR/<figure>.json (finished figures) and, for figures not finished yet, DIR/partial/<figure>.json
(``--partial`` runs over the jobs stored so far), marking those rows "partial".  DIR defaults to figures/full.
The block sits between the two marker lines in docs/reproduction.md; everything else there is prose.

The authors' estimated hours are recomputed from each JSON's job records with mesa_lab/cost.py, so a
new measurement of their step reaches the report without rerunning an analysis; without --check or --print the
JSON's own cost block is brought up to date too (written atomically, only where it changed).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]        # the checkout: figures/, docs/, scripts/

from mesa_lab.experiments.retests import RETESTS
DOC = ROOT / "docs" / "reproduction.md"
BEGIN, END = "<!-- numbers: begin (scripts/report_full.py) -->", "<!-- numbers: end -->"
FIGURES = ("fig1_weights", "fig2_one_layer_gd", "fig3_depth", "fig4_probing", "fig5_copy_layer", "fig6_icl",
           "fig7_mesa_vs_attention", "fig8_language")


def load(fig_dir: Path, name: str):
    for path, status in ((fig_dir / f"{name}.json", "full"), (fig_dir / "partial" / f"{name}.json", "partial")):
        if path.exists():
            return json.loads(path.read_text()), status
    return None, "not run"


def f(x, digits=3):
    return "-" if x is None else f"{x:.{digits}g}"


def rows_for(name, d):
    """(quantity, value) rows of one figure's headline numbers."""
    if name == "fig1_weights":
        return [("GD similarity of the best head [P2]", f(d["gd_similarity_max"])),
                ("GD similarity per head", ", ".join(f(v, 2) for v in d["gd_similarity"]))]
    if name == "fig2_one_layer_gd":
        ps = d["per_step_loss"]
        return [("model / one tuned GD step, mean over t >= 10", f(d["model_vs_gd_ratio_t10"], 4)),
                ("model / least squares, t >= 10", f(d["model_vs_lsq_ratio_t10"], 4)),
                ("mean loss: model, GD, least squares", ", ".join(f(d["final_loss"][k], 4)
                                                                for k in ("model", "gd", "lsq") if k in ps)),
                ("GD similarity of the best head", f(d["gd_similarity_max"]))]
    if name == "fig3_depth":
        fl, r = d["final_loss"], d["ratio_to_lsq_t10"]
        models = sorted((k for k in fl if k.startswith("linear_L")), key=lambda k: int(k[8:]))
        out = [(f"mean loss, {k[8:]} layer(s) (least squares {f(fl['lsq'], 4)})", f(fl[k], 4)) for k in models]
        if models:
            deepest = models[-1]
            out.append((f"deepest ({deepest[8:]} layers) / least squares, t >= 10", f(r[deepest], 4)))
        return out
    if name == "fig7_mesa_vs_attention":
        out = []
        for t, td in d["tasks"].items():
            for k, v in sorted(td["ratio_to_lsq_t10"].items()):
                out.append((f"[{t}] {k} / least squares, t >= 10", f(v, 4)))
        for t, v in (d.get("mesa_vs_softmax_ratio_t10") or {}).items():
            out.append((f"[{t}] mesa / softmax, t >= 10", f(v, 4)))
        per_seed = (d.get("training_seeds") or {}).get("per_seed", {})
        a, b = (per_seed.get(f"tasks.T4.per_step_loss.{k}") for k in ("mesa_L2", "softmax_L2"))
        if a and b and len(a) > 1:
            T = len(a[0])
            mid = (10 + T + 1) // 2            # the t >= 10 window in halves: where in the sequence a lead lies
            for lo, hi in ((10, T), (10, mid - 1), (mid, T)):
                r = [float(np.mean(x[lo - 1:hi]) / np.mean(y[lo - 1:hi])) for x, y in zip(a, b)]
                span = "t >= 10" if (lo, hi) == (10, T) else f"t = {lo}-{hi}"
                out.append((f"[T4] mesa_L2 / softmax_L2, {span}, per training seed ({len(r)})",
                            f"{', '.join(f(v, 4) for v in r)} (mean {f(float(np.mean(r)), 4)} +- "
                            f"{f(float(np.std(r, ddof=1)), 2)})"))
        return out
    if name == "fig8_language":
        hl = d["heldout_loss"]
        out = [(f"held-out cross-entropy (nats/char), {k}", f(v, 4)) for k, v in hl.items()] + \
              [("unigram model's held-out cross-entropy", f(d["unigram_heldout_cross_entropy"], 4))]
        ec = d.get("equal_compute")
        if ec:
            out.append(("training MFLOPs per token (forward + backward): " + ", ".join(ec["flops"]),
                        ", ".join(f(v["train_per_token"] / 1e6, 3) for v in ec["flops"].values())))
            out.append(("training seconds (the jobs' own): " + ", ".join(ec["train_seconds"]),
                        ", ".join(f"{v:.0f}" for v in ec["train_seconds"].values())))
            for k in ec["flops"]:
                if k == "softmax":
                    continue
                own = ec["loss_at_flop_budget"][k][k]
                out.append((f"learning-curve loss at {k}'s FLOP budget: softmax / {k}",
                            f"{f(ec['loss_at_flop_budget']['softmax'][k], 4)} / {f(own, 4)}"))
                out.append((f"learning-curve loss at {k}'s time budget: softmax / {k}",
                            f"{f(ec['loss_at_time_budget']['softmax'][k], 4)} / {f(own, 4)}"))
        return out
    if name == "fig4_probing":
        out = []
        for model, targets in d["probe_error"].items():
            if "inverse_curvature" in targets:
                out.append((f"{model}: inverse-curvature probe error by layer (0 = input)",
                            ", ".join(f(v, 2) for v in targets["inverse_curvature"])))
            if "next" in targets:
                out.append((f"{model}: next-state probe error by layer", ", ".join(f(v, 2) for v in targets["next"])))
        for model, a in (d.get("probe_error_authors") or {}).items():
            out.append((f"{model}: inverse-curvature probe, the authors' definition, by layer, t >= 2",
                        ", ".join(f(v, 2) for v in a["inverse_curvature"])))
            if a.get("inverse_curvature_t10"):
                out.append((f"{model}: the same, t >= 10", ", ".join(f(v, 2) for v in a["inverse_curvature_t10"])))
        return out
    if name == "fig5_copy_layer":
        return [("first layer's attention weight on t-1", f(d["prev_token_attention"])),
                ("s_{t-1} probe error by layer (0 = input)", ", ".join(f(v, 2) for v in d["probe_previous_error"]))]
    if name == "fig6_icl":
        ev = d["error_vs_examples"]
        out = []
        single = ev.get("single", ev)
        for k, v in single.items():
            if isinstance(v, list) and v and isinstance(v[0], (int, float)):
                out.append((f"error at the last example, {k}", f(v[-1], 3)))
        return out
    return []


#: a gathered list this long or shorter is a row of values by entry (a probe's error by layer); a longer one is a
#: curve (loss by time step, error by number of examples), reported by its last value
SHORT_LIST = 8


def spread(mean, std, values) -> str:
    """"mean +- std (value at each seed)"."""
    return f"{f(mean, 4)} +- {f(std, 2)} ({', '.join(f(v, 4) for v in values)})"


def seed_rows(d):
    """(quantity, value) rows of a figure's spread over training seeds, for every number it gathers per seed:
    a scalar as mean +- std (the per-seed values in brackets); a short list (a probe's error by layer) as the mean
    over seeds of each entry, with the largest std; a curve by its last value, as a scalar. The whole curves are in
    the JSON."""
    ts = d.get("training_seeds") or {}
    out = []
    if len(ts.get("seeds", [])) < 2:
        if ts.get("missing_seeds"):
            out.append(("training seeds", f"only seed(s) {', '.join(map(str, ts.get('seeds', [])))} so far; "
                                          f"missing {', '.join(map(str, ts['missing_seeds']))}"))
        return out
    n = len(ts["seeds"])
    for path, vals in ts["per_seed"].items():          # the means and stds are seed_spread's, entry by entry
        if not vals:
            continue
        mean, std = ts["mean"][path], ts["std"][path]
        if not isinstance(vals[0], list):
            out.append((f"{path}, over {n} training seeds", spread(mean, std, vals)))
        elif len(vals[0]) <= SHORT_LIST:
            out.append((f"{path} by entry, mean over {n} training seeds",
                        f"{', '.join(f(v, 3) for v in mean)} (largest std {f(max(std), 2)})"))
        else:
            out.append((f"{path}, last value, over {n} training seeds",
                        spread(mean[-1], std[-1], [v[-1] for v in vals])))
    if ts.get("missing_seeds"):
        out.append(("training seeds missing", ", ".join(map(str, ts["missing_seeds"]))))
    return out


def jax_estimate(d):
    """(total hours over the figure's distinct jobs, {job name: (hours, basis)}) of the authors' estimate for a
    figure JSON, from its job records."""
    from mesa_lab.cost import figure_jax_hours
    return figure_jax_hours({k: (j["key"], j["record"]) for k, j in d.get("config", {}).get("jobs", {}).items()})


def refresh_costs(fig_dir: Path) -> list:
    """Rewrite the authors' estimate in each figure JSON's cost block where it differs; the paths rewritten."""
    from mesa_ref.runio import write_json
    changed = []
    for path in [fig_dir / f"{n}.json" for n in FIGURES] + [fig_dir / "partial" / f"{n}.json" for n in FIGURES]:
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        cost = d.get("cost")
        if not isinstance(cost, dict) or not d.get("config", {}).get("jobs"):
            continue
        total, per_job = jax_estimate(d)
        new = copy.deepcopy(cost)
        new["jax_hours_estimate"] = total
        for k, (h, basis) in per_job.items():
            if k in new.get("jobs", {}):
                new["jobs"][k]["jax_hours_estimate"], new["jobs"][k]["jax_basis"] = h, basis
        if new != cost:
            d["cost"] = new
            write_json(path, d)
            changed.append(path)
    return changed


def block(fig_dir: Path) -> str:
    lines = ["| figure | quantity | our full-size number | run |", "|---|---|---|---|"]
    cost = ["| figure | jobs | our CPU hours | more training seeds, CPU hours | 2-core machine hours | "
            "authors' JAX, estimated hours | run |", "|---|---|---|---|---|---|---|"]
    for name in FIGURES:
        d, status = load(fig_dir, name)
        if d is None:
            lines.append(f"| {name} | - | not run yet | - |")
            cost.append(f"| {name} | - | - | - | not run yet |")
            continue
        run = status if status == "full" else f"partial (missing: {', '.join(d.get('missing_jobs', []))})"
        for q, v in rows_for(name, d) + seed_rows(d):
            lines.append(f"| {name} | {q} | {v} | {status} |")
        c = d.get("cost", {})
        jobs = len({j["key"] for j in d.get("config", {}).get("jobs", {}).values()})
        jax = jax_estimate(d)[0] if d.get("config", {}).get("jobs") else c.get("jax_hours_estimate")
        seeds = c.get("training_seeds_cpu_hours")
        cost.append(f"| {name} | {jobs} | {f(c.get('cpu_hours'))} | {f(seeds)} | "
                    f"{f(None if c.get('cpu_hours') is None else (c['cpu_hours'] + (seeds or 0)) / 2)} | {f(jax)} | {run} |")
    for name, (flags, sub) in RETESTS.items():
        d, status = load(fig_dir / sub, name)
        if d is None:
            lines.append(f"| {name}, {' '.join(flags)} | - | not run yet | - |")
            continue
        for q, v in rows_for(name, d):
            lines.append(f"| {name}, {' '.join(flags)} | {q} | {v} | {status} |")
    return "\n".join([BEGIN, "", "Headline numbers:", "", *lines, "", "What the training cost (each job's own "
                      "process CPU time; a job shared by two figures counts in both; machine hours: the CPU hours of "
                      "the figure's jobs at every training seed on both cores of the 2-core machine, one job per "
                      "core):", "", *cost, "", END])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/report_full.py", description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=str(ROOT / "figures" / "full"))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true")
    g.add_argument("--print", action="store_true")
    args = p.parse_args(argv)
    new = block(Path(args.dir))
    if args.print:
        print(new)
        return 0
    if not DOC.exists():
        print(f"error: {DOC} is missing", file=sys.stderr)
        return 2
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        print(f"error: {DOC} has no generated block (the marker lines)", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    updated = head + new + tail
    if args.check:
        if updated != text:
            print(f"{DOC} is out of date: run python scripts/report_full.py", file=sys.stderr)
            return 1
        return 0
    for path in refresh_costs(Path(args.dir)):
        print(f"updated the authors' estimate in {path}")
    from mesa_ref.runio import atomic_write_bytes
    atomic_write_bytes(DOC, updated.encode())
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

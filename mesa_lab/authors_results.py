"""Numbers from the authors' published result files, for docs/reproduction.md.

    python scripts/authors_results.py CHECKOUT [--out docs/authors_results.json] [--source LABEL]

CHECKOUT is a local copy of the authors' repository at the commit that still holds its result files
(``experiment_results/**/*.pkl`` and the ``run_*.ipynb`` notebooks).  This script downloads nothing and
never writes into CHECKOUT.  It reads:

* the pickles, through ``SafeUnpickler``: only the few callables that rebuild NumPy arrays (and JAX arrays,
  which are rebuilt as NumPy arrays, so JAX is not needed) are allowed; any other global in a pickle stops the
  load with ``UnsafePickleError`` before anything of it is called.  Plain ``pickle.load`` is never used;
* the notebooks, as JSON: each quantity records the notebook and the index of the code cell that computes or
  loads it, and the model configurations the notebook printed when it ran (the ``model: ... layers: ...``
  lines of that cell's output).

It writes one JSON of numbers: per figure, each quantity with what it means, the configuration that
produced it, and where it came from.  Files the notebooks name but the checkout lacks are listed under
``missing`` (never guessed).  Curves are summarised the way our figure JSONs are (mean over t, mean over
t >= 10, ratios of such means), with the spread over the authors' evaluation seeds where the file keeps them.
"""
from __future__ import annotations

import argparse
import io
import json
import pickle
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]        # the checkout: figures/, docs/, scripts/
DEFAULT_OUT = ROOT / "docs" / "authors_results.json"
DEFAULT_SOURCE = "github:mtavit/transformers_mesa_optimization_paper@c8c1e37"


# ------------------------------------------------------------------------------------------- safe loading
class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the array-rebuilding allowlist."""


def _numpy_private(module: str, name: str):
    import importlib
    for mod in (f"numpy._core.{module}", f"numpy.core.{module}"):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module}.{name}")


_RECONSTRUCT = _numpy_private("multiarray", "_reconstruct")
_FROMBUFFER = _numpy_private("numeric", "_frombuffer")


def _rebuild_jax_array(fun, args, arr_state, aval_state=None):
    """Stands in for jax._src.array._reconstruct_array: the same NumPy value, without JAX.  ``fun`` must be
    NumPy's own array rebuild (it was itself resolved through the allowlist)."""
    if fun is not _RECONSTRUCT:
        raise UnsafePickleError("a JAX array in the pickle names a rebuild function other than NumPy's")
    value = fun(*args)
    value.__setstate__(arr_state)
    return value


ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("jax._src.array", "_reconstruct_array"): _rebuild_jax_array,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers (dict, list, tuple, str, numbers: no global needed) and arrays only."""

    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused global {module}.{name}: only NumPy/JAX array rebuilding is "
                                    "allowed") from None


def load_pickle(path) -> object:
    with open(path, "rb") as f:
        return SafeUnpickler(f).load()


def loads_pickle(data: bytes) -> object:
    return SafeUnpickler(io.BytesIO(data)).load()


# ------------------------------------------------------------------------------------------- notebooks
MODEL_LINE = re.compile(r"^model:\s+(\S+)\s+(.*)$")
PKL_LITERAL = re.compile(r"['\"](experiment_results/[^'\"]+\.pkl)['\"]")


class Notebook:
    def __init__(self, path: Path):
        self.name = path.name
        self.cells = json.loads(path.read_text(encoding="utf-8"))["cells"]

    def source(self, i) -> str:
        return "".join(self.cells[i].get("source", []))

    def output_text(self, i) -> str:
        out = []
        for o in self.cells[i].get("outputs", []):
            if "text" in o:
                out.append("".join(o["text"]))
            elif "text/plain" in o.get("data", {}):
                out.append("".join(o["data"]["text/plain"]))
        return "".join(out)

    def cell_with(self, needle: str):
        """Index of the first code cell whose source contains ``needle`` (None when none does)."""
        for i, c in enumerate(self.cells):
            if c.get("cell_type") == "code" and needle in self.source(i):
                return i
        return None

    def printed_models(self, i) -> list:
        """The model configurations cell i printed, as dicts (``model: NAME layers: 6 heads: 4 ...``)."""
        models = []
        for line in self.output_text(i).splitlines():
            m = MODEL_LINE.match(line.strip())
            if not m:
                continue
            fields = {"model": m.group(1)}
            toks = m.group(2).replace(":", " : ").split()
            j = 0
            while j + 2 < len(toks) and toks[j + 1] == ":":
                fields[toks[j]] = _value(toks[j + 2])
                j += 3
            models.append(fields)
        return models

    def pickle_paths(self) -> list:
        found = []
        for i in range(len(self.cells)):
            for p in PKL_LITERAL.findall(self.source(i)):
                if p not in found:
                    found.append(p)
        return found


def _value(s: str):
    if s in ("True", "False"):
        return s == "True"
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


# ------------------------------------------------------------------------------------------- summaries
def _r(x, digits=5):
    return None if x is None else float(f"{float(x):.{digits}g}")


def curve_summary(per_seed: np.ndarray, t_min: int = 10) -> dict:
    """per_seed: (seeds, T) per-time-step losses. Means over the seeds, then over t (t counts from 1)."""
    per_seed = np.asarray(per_seed, dtype=float)
    mean_t = per_seed.mean(axis=0)
    after = per_seed[:, t_min - 1:].mean(axis=1)
    return {"mean_over_t": _r(mean_t.mean()), f"mean_t_ge_{t_min}": _r(after.mean()),
            f"mean_t_ge_{t_min}_seed_std": _r(after.std()), "at_t1": _r(mean_t[0]), "at_t10": _r(mean_t[9]),
            "at_t_last": _r(mean_t[-1]), "seeds": int(per_seed.shape[0]), "T": int(per_seed.shape[1])}


def loss_curves(d: dict, names: list) -> tuple:
    """(L, curves): a result file's "losses" (curves, seeds, T) as an array, and ``curve_summary`` of each curve under
    its name in ``names`` (names past the curves the file holds are dropped)."""
    L = np.asarray(d["losses"], float)
    return L, {k: curve_summary(L[i]) for i, k in enumerate(names[:len(L)])}


def ratio_t10(a: np.ndarray, b: np.ndarray, t_min: int = 10) -> dict:
    """mean_{t >= t_min} a / mean_{t >= t_min} b over the seed-mean curves, and its spread over seeds."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    r = a.mean(0)[t_min - 1:].mean() / b.mean(0)[t_min - 1:].mean()
    per_seed = a[:, t_min - 1:].mean(1) / b[:, t_min - 1:].mean(1)
    return {"value": _r(r), "seed_std": _r(per_seed.std()), "seeds": int(a.shape[0])}


def probe_summary(per_seed: np.ndarray, t_from: int) -> list:
    """per_seed: (seeds, T, layers) probe errors. Mean over seeds and over t >= t_from (1-based), per layer."""
    arr = np.asarray(per_seed, dtype=float)
    return [_r(v, 4) for v in arr[:, t_from - 1:, :].mean(axis=(0, 1))]


# ------------------------------------------------------------------------------------------- extraction
# Two-task few-shot curves: the evaluator keeps (81 - 1 - 20) // 3 = 20 points of task 1 (81 tokens for task 1,
# a 20-token prompt), then the points of task 2.
TWO_TASK_SWITCH = 20


class Extractor:
    def __init__(self, checkout: Path):
        self.root = checkout
        self.notebooks = {p.name: Notebook(p) for p in sorted(checkout.glob("run_*.ipynb"))}
        self.used = set()

    def nb(self, name) -> Notebook | None:
        return self.notebooks.get(name)

    def load(self, rel: str):
        p = self.root / rel
        if not p.is_file():
            return None
        self.used.add(rel)
        return load_pickle(p)

    def where(self, rel, notebook, needle, config_needles=()):
        nb = self.nb(notebook)
        cell = nb.cell_with(needle) if nb else None
        cfg_cells = [nb.cell_with(n) for n in config_needles] if nb else []
        printed = []
        for c in cfg_cells:
            if c is not None:
                printed += [{"cell": c, **m} for m in nb.printed_models(c)]
        return {"pickle": rel, "notebook": notebook, "cell": cell,
                "config_cells": [c for c in cfg_cells if c is not None], "printed_model_configs": printed}

    # -- each figure: a list of quantities, or a "missing" record
    def fig2_fig3(self) -> dict:
        out = {}
        nb = "run_construction_experiments.ipynb"
        rel = "experiment_results/linear_seq_fully/seqperf_results_constr_single.pkl"
        d = self.load(rel)
        if d is not None:
            L = np.asarray(d["losses"], float)
            out["fig2"] = [{
                "quantity": "one-layer linear model against one GD step (eta 0.032), per-time-step loss",
                "meaning": "curves: sum over sequences and dims / (2B) per t, mean over evaluation seeds; "
                           "ratio = mean_{t>=10} model / mean_{t>=10} GD (as our model_vs_gd_ratio_t10)",
                "curves": {"model_L1": curve_summary(L[0]), "gd": curve_summary(L[1])},
                "model_vs_gd_ratio_t10": ratio_t10(L[0], L[1]),
                "config": "constructed tokens (0, s_t, s_t, s_{t-1}), n = 10, T = 50; 1 linear-attention layer, "
                          "2 heads, width 40, key size 20, activation clip 4; trained 5,000 steps (50 x 100) at "
                          "constant lr 1e-4, weight decay 0.1, batch 256, training seed 68; GD step eta 0.032 "
                          "(lam 0); evaluated on 5 evaluation seeds (1, 11, 111, 1111, 11111), 256 sequences each",
                "source": self.where(rel, nb, "seq_evaluator_single =", ["exp_config_constr_1 ="])}]
        rel = "experiment_results/linear_seq_fully/seqperf_results_constr_multi.pkl"
        d = self.load(rel)
        if d is not None:
            L, curves = loss_curves(d, ["linear_L1", "linear_L2", "linear_L4", "linear_L6", "lsq_poly20"])
            q = {"quantity": "linear models of depth 1, 2, 4, 6 and a least-squares solver, per-time-step loss",
                 "meaning": "curves as fig2; ratio_to_lsq_poly20_t10 = mean_{t>=10} model / mean_{t>=10} of the "
                            "fifth curve. The evaluator cell lists six models (the four depths, a one-layer mesa "
                            "model, a least-squares solver); the file holds five curves, and the notebook's plot "
                            "labels the fifth 'Proposition-2'. Its value at t = 1 and 2 equals a solver's (no "
                            "prediction from an empty context), so it is read here as the least-squares solver "
                            "with a 20-step polynomial inverse and lam 1e-3, not the exact least squares",
                 "curves": curves,
                 "config": "as fig2 for depth 1; depths 2, 4, 6 have 4 heads, width 40, key size 20, clip 4, "
                           "constant lr 1e-4, weight decay 0.1, training seed 68, trained 5,000 / 10,000 / 15,000 "
                           "steps (2 / 4 / 6 layers)",
                 "source": self.where(rel, nb, "seq_evaluator_multi =",
                                      ["exp_config_constr_1 =", "exp_config_constr_2 =", "exp_config_constr_4 =",
                                       "exp_config_constr_6 ="])}
            if len(L) >= 5:
                q["ratio_to_lsq_poly20_t10"] = {k: ratio_t10(L[i], L[4]) for i, k in enumerate(list(curves)[:4])}
            out["fig3"] = [q]
        rel = "experiment_results/linear_seq_fully/mesa_test_loss.pkl"
        d = self.load(rel)
        if d is not None:
            m, s = np.asarray(d["mean_loss_mesa"], float), np.asarray(d["std_loss_mesa"], float)
            out.setdefault("fig3", []).append({
                "quantity": "one-layer mesa model (constructed tokens): test loss during training",
                "meaning": "one value per 100 training steps, mean (and std) over 5 training seeds",
                "final_test_loss": _r(m[-1]), "final_std_over_training_seeds": _r(s[-1]),
                "points": int(len(m)), "first_test_loss": _r(m[0]),
                "config": "1 mesa layer, 4 heads, width 40, key size 20, clip 4, lr 4e-4 constant, weight decay "
                          "0.1, training seeds 1, 11, 111, 1111, 11111 (the loop is written for 150 x 100 steps; "
                          "the file holds the number of points given here)",
                "source": self.where(rel, nb, "mesa_losses")})
        return out

    def fig4(self) -> dict:
        out = {}
        nb = "run_construction_experiments.ipynb"
        rel = "experiment_results/linear_seq_fully/probing_results_constr.pkl"
        d = self.load(rel)
        meaning = ("probe error per layer (0 = input): in-sample least squares without bias on the 256 sequences "
                   "of each evaluation seed, error = summed squared error / (2 x kept sequences), raw units; "
                   "inverse-curvature target = s_t^T p(S^T S + 1e-3 I) with S the states before t and p a "
                   "6-step polynomial (Chebyshev-type) inverse; sequences whose target norm is 2 std above the "
                   "mean are dropped (inverse probe only). Averaged over the 5 evaluation seeds and over t")
        if d is not None:
            res = d["results"]
            out["linear"] = {
                "quantity": "probes of the 6-layer linear model (constructed tokens)",
                "meaning": meaning,
                "inverse_curvature_t_ge_2": probe_summary(res[2], 2),
                "inverse_curvature_t_ge_10": probe_summary(res[2], 10),
                "next_t_ge_2": probe_summary(res[1], 2), "next_t_ge_10": probe_summary(res[1], 10),
                "current_t_ge_2": probe_summary(res[0], 2),
                "layers": int(np.asarray(res[2]).shape[-1]),
                "config": "the fig3 6-layer linear model (4 heads, width 40, clip 4, 15,000 steps at lr 1e-4); "
                          "the notebook plots from t = 2 (it drops t = 1)",
                "source": self.where(rel, nb, "probing_dict = ProbeLayers", ["exp_config_constr_6 ="])}
        nb = "run_probing_experiments_full_fledged.ipynb"
        rel = "experiment_results/linear_seq_fully/probing_results_sm_7l.pkl"
        d = self.load(rel)
        if d is not None:
            res = d["results"]
            q = {"quantity": "probes of the softmax model on raw tokens (a first hybrid layer + 6 softmax layers)",
                 "meaning": meaning + ". Layer 1 is the hybrid first layer, layers 2-7 the softmax layers",
                 "inverse_curvature_t_ge_2": probe_summary(res[2], 2),
                 "inverse_curvature_t_ge_10": probe_summary(res[2], 10),
                 "next_t_ge_2": probe_summary(res[1], 2), "next_t_ge_10": probe_summary(res[1], 10),
                 "current_t_ge_2": probe_summary(res[0], 2),
                 "layers": int(np.asarray(res[2]).shape[-1]),
                 "config": "raw tokens s_t, n = 10; first layer softmax attention whose queries and keys see "
                           "the input with a positional encoding (pe_kq), then 6 softmax layers; 4 heads, width "
                           "40, key size 20, no MLP, no LayerNorm, no clip; trained 10,000 steps (100 x 100) at "
                           "peak lr 8e-4, warm-up 1000, cosine schedule planned for 30,000 steps, weight decay "
                           "0.05, batch 256, training seed 11111",
                 "source": self.where(rel, nb, "probe_dict_fully = ProbeLayers", ["exp_config_probing_fully ="])}
            if len(res) > 4 and len(res[4]):
                q["control_t_ge_2"] = probe_summary(res[4], 2)
                q["control_meaning"] = ("their control: predicts s_{t+1} from the inverse-curvature target itself "
                                        "(the same number at every layer)")
            out["softmax"] = q
        rel = "experiment_results/linear_seq_fully/seqperf_results_sm_probing.pkl"
        d = self.load(rel)
        if d is not None:
            L, curves = loss_curves(d, ["softmax_3layer", "softmax_7layer", "lsq_poly2", "lsq_poly6"])
            out["softmax_test_loss"] = {
                "quantity": "per-time-step loss of the probed softmax model (7 layers counting the hybrid one), a "
                            "3-layer one, and least squares with 2- and 6-step polynomial inverses",
                "meaning": "curves as fig2",
                "curves": curves,
                "config": "as the softmax probe; test sequences of 256 per evaluation seed",
                "source": self.where(rel, nb, "seq_loss_dict_fully = SequencePredictionEvaluator")}
        return out

    def fig6(self) -> dict:
        out = {}
        nb = "run_icl.ipynb"
        cfg = ("7-layer softmax model (hybrid first layer with positional encoding on queries and keys + 6 softmax "
               "layers, 4 heads, width 40, no MLP/LayerNorm) trained autoregressively on [T1] sequences of length "
               "224: 15,000 steps (150 x 100), batch 128, peak lr 8e-4, cosine over 30,000 steps, weight decay "
               "0.05, training seed 68. EOS token tuned 5,000 steps (batch 64, lr 1e-3); a 20-token prompt tuned "
               "5,000 steps (batch 128, lr 1e-3) on top of it. Few-shot tasks y = W x, x ~ U[-1, 1]^10, W "
               "orthogonal, noise 0.01; 5 evaluation seeds of 128 sequences")
        for kind, rel, needle in (("single", "experiment_results/icl/softmax_result_dict_single.pkl",
                                   "single_res = ICLEvaluator"),
                                  ("two_task", "experiment_results/icl/softmax_result_dict_multi.pkl",
                                   "multi_res = ICLEvaluator")):
            d = self.load(rel)
            if d is None:
                continue
            d = d.get("result_dict", d)
            curves = {k.replace("_preds_mean", ""): np.asarray(d[k], float) for k in d if k.endswith("_mean")}
            at = {}
            for k, v in curves.items():
                if kind == "single":
                    at[k] = {str(e): _r(v[e - 1], 4) for e in (1, 5, 10, 11, 15, 20, 30, 60) if e <= len(v)}
                else:  # the first TWO_TASK_SWITCH points are task 1, the rest task 2 (see the meaning)
                    s = TWO_TASK_SWITCH
                    at[k] = {f"task1_{e}": _r(v[e - 1], 4) for e in (1, 15, s) if e <= min(s, len(v))}
                    at[k].update({f"task2_{e}": _r(v[s + e - 1], 4) for e in (1, 15) if s + e <= len(v)})
            out[f"softmax_{kind}"] = {
                "quantity": f"few-shot error by example ({kind.replace('_', '-')} task), softmax model",
                "meaning": "error predicting y_i from x_i after i-1 examples (sum over dims / (2B)), mean over 5 "
                           "evaluation seeds (two-task: task1_i / task2_i count the examples of each task); keys base (no EOS), eos, prompt_eos (EOS + tuned prompt), lsq. Their "
                           "lsq regresses each next token on the current one over the whole token sequence (x and "
                           "y tokens alike), so it is not the x -> y least squares of our figure",
                "error_at_example": at, "examples_stored": {k: len(v) for k, v in curves.items()},
                "config": cfg, "source": self.where(rel, nb, needle, ["exp_config_sensitivity ="])}
        for kind, rel in (("single", "experiment_results/icl/mesa_result_dict_single.pkl"),
                          ("two_task", "experiment_results/icl/mesa_result_dict_multi.pkl")):
            d = self.load(rel)
            if d is None:
                continue
            d = d.get("result_dict", d)
            curves = {k.replace("_preds_mean", ""): np.asarray(d[k], float) for k in d if k.endswith("_mean")}
            out[f"mesa_{kind}"] = {
                "quantity": f"few-shot error by example ({kind.replace('_', '-')} task), hybrid mesa model",
                "meaning": "as the softmax rows; the notebook declares this file's path (and a mesa model "
                           "description) but no cell of it computes or plots it, so its configuration is "
                           "only the printed model description",
                "error_at_example": {k: {str(e): _r(v[e - 1], 4) for e in (1, 5, 10, 11, 15, 20, 30, 60)
                                         if e <= len(v)} for k, v in curves.items()},
                "config": "model description 'fully_obs_full_fledged_mesa', 1 mesa layer after the hybrid first "
                          "layer, 4 heads, width 40, T 224 (notebook cell defining models_full)",
                "source": self.where(rel, nb, "path_mesa_result_single")}
        return out

    def fig7(self) -> dict:
        out = {}
        nb = "run_model_comparisons.ipynb"
        rel = "experiment_results/linear_seq_partial/comparison_results.pkl"
        d = self.load(rel)
        if d is not None:
            L, curves = loss_curves(d, ["softmax_7layer", "mesa_hybrid", "lsq_observations", "lsq_history"])
            out["T3"] = {
                "quantity": "[T3] partially observed: softmax against hybrid mesa, width 80 (the last of the "
                            "width sweep)",
                "meaning": "curves as fig2; ratios mean_{t>=10} a / mean_{t>=10} b. lsq_observations regresses "
                           "on the raw observations; lsq_history on tokens that stack the last 16 observations "
                           "(width 80); both with a 6-step polynomial inverse and lam 10",
                "curves": curves,
                "ratios_t10": {"mesa/softmax": ratio_t10(L[1], L[0]),
                               "softmax/lsq_history": ratio_t10(L[0], L[3]),
                               "mesa/lsq_history": ratio_t10(L[1], L[3])} if len(L) >= 4 else {},
                "config": "hidden state 15, observations 5-dimensional (random projection), state and "
                          "observation noise 0.01; softmax: hybrid first layer (positional encoding on queries "
                          "and keys) + 6 softmax layers, 12 heads, width 80, key size 20, no MLP; mesa: the same "
                          "first layer + 1 mesa layer (12 heads, clip 1); peak lr 4e-4, cosine over 30,000 steps, "
                          "weight decay 0.05; softmax 20,000 steps, mesa 12,000 steps; training seed 42; "
                          "evaluated on 5 seeds of 512 sequences",
                "source": self.where(rel, nb, "seq_loss_dict_partobs = seq_evaluator.run()", ["sm_model_def =", "params_list_sm_partobs = []"])}
        rel = "experiment_results/nonlinear_seq_fully/comparison_results.pkl"
        d = self.load(rel)
        if d is not None:
            L, curves = loss_curves(d, ["softmax_7layer_mlp", "mesa_hybrid_mlp", "lsq_states", "lsq_features"])
            out["T4"] = {
                "quantity": "[T4] nonlinear dynamics: softmax against hybrid mesa, both with MLPs",
                "meaning": "curves as fig2; lsq_states: least squares on the raw states; lsq_features: on the "
                           "true MLP features; both 6-step polynomial inverse, lam 1e-3",
                "curves": curves,
                "ratios_t10": {"mesa/softmax": ratio_t10(L[1], L[0]), "softmax/lsq_states": ratio_t10(L[0], L[2]),
                               "mesa/lsq_states": ratio_t10(L[1], L[2])} if len(L) >= 3 else {},
                "config": "n = 10, s_1 ~ U[-0.25, 0.25]; softmax: hybrid first layer + 6 softmax layers, 4 heads, "
                          "width 60, key size 20, MLP hidden 300, query/key normalisation (schlagnorm), no "
                          "LayerNorm; mesa: hybrid first layer + 1 mesa layer, the same MLP, clip 15; 40,000 "
                          "steps (400 x 100) at peak lr 1e-3, cosine over 50,000 steps, weight decay 0.05, "
                          "training seed 1; evaluated on 5 seeds of 512 sequences",
                "source": self.where(rel, nb, "seq_loss_dict_nonlin = seq_evaluator.run()",
                                     ["exp_config_nonlin =", "(model_mesa_nonlin"])}
        return out

    def missing(self) -> list:
        rows = []
        for name, nb in self.notebooks.items():
            for p in nb.pickle_paths():
                if not (self.root / p).is_file():
                    rows.append({"pickle": p, "named_by": name, "cell": nb.cell_with(p)})
        return rows

    def unnamed(self) -> list:
        named = {p for nb in self.notebooks.values() for p in nb.pickle_paths()}
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob("experiment_results/**/*.pkl")
                      if str(p.relative_to(self.root)) not in named)


def extract(checkout: Path, source: str = DEFAULT_SOURCE) -> dict:
    ex = Extractor(checkout)
    figs = {}
    figs.update(ex.fig2_fig3())
    fig4 = ex.fig4()
    if fig4:
        figs["fig4"] = fig4
    for k, f in (("fig6", ex.fig6), ("fig7", ex.fig7)):
        v = f()
        if v:
            figs[k] = v
    return {
        "what": "numbers derived from the authors' published result files (their pickles and notebooks); no "
                "byte of those files is stored here. Written by scripts/authors_results.py.",
        "source": source,
        "notebooks": sorted(ex.notebooks),
        "figures": figs,
        "missing": ex.missing(),
        "present_but_named_by_no_notebook": ex.unnamed(),
        "pickles_read": sorted(ex.used),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/authors_results.py", description=__doc__.splitlines()[0])
    p.add_argument("checkout", help="local copy of the authors' repository (with experiment_results/)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--source", default=DEFAULT_SOURCE, help="label of the checkout written into the JSON")
    args = p.parse_args(argv)
    root = Path(args.checkout)
    if not (root / "experiment_results").is_dir():
        print(f"error: {root} is not a checkout with experiment_results/", file=sys.stderr)
        return 2
    try:
        data = extract(root, args.source)
    except UnsafePickleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out} ({sum(1 for _ in data['pickles_read'])} pickles read, {len(data['missing'])} missing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

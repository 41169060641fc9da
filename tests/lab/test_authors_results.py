"""scripts/authors_results.py: its unpickler rebuilds arrays and refuses everything else; its command line turns a
small checkout made here (no download) into the expected JSON, and fails in one line on a bad path."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mesa_lab.authors_results as ar

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "authors_results.py"


def _call_pickle(module: str, name: str, args: tuple) -> bytes:
    """Protocol-3 pickle bytes of the call module.name(*args), written opcode by opcode (the callable need not
    exist here: nothing imports it)."""
    inner = pickle.dumps(args, protocol=3)[2:-1]  # the tuple without the PROTO header and the STOP
    return b"\x80\x03c" + f"{module}\n{name}\n".encode() + inner + b"R."


def _jax_like(a: np.ndarray) -> bytes:
    """A pickle shaped like a JAX array's: jax._src.array._reconstruct_array(fun, args, state, aval_state)."""
    fun, args, state = a.__reduce__()
    return _call_pickle("jax._src.array", "_reconstruct_array", (fun, args, state, {"weak_type": False}))


def _dict_of(key: str, item_pickles: list) -> bytes:
    """Pickle bytes of {key: [items]}, where each item is given as a complete pickle."""
    body = b"".join(x[2:-1] for x in item_pickles)
    return b"\x80\x03}" + pickle.dumps(key, protocol=3)[2:-1] + b"](" + body + b"es."


def test_numpy_array_pickle_loads():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = ar.loads_pickle(pickle.dumps({"losses": [a, a * 2], "n": 3, "name": "x"}))
    np.testing.assert_array_equal(out["losses"][1], a * 2)
    assert out["n"] == 3 and out["name"] == "x"
    assert out["losses"][0].dtype == np.float32


def test_jax_array_pickle_loads_as_numpy_without_jax():
    a = np.linspace(0, 1, 6, dtype=np.float32)
    out = ar.loads_pickle(_dict_of("v", [_jax_like(a)]))["v"][0]
    out = {"v": out}
    assert isinstance(out["v"], np.ndarray)
    np.testing.assert_array_equal(out["v"], a)


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("subprocess", "call"),
                                         ("builtins", "getattr")])
def test_a_pickle_naming_any_other_global_is_refused(module, name, tmp_path):
    marker = tmp_path / "ran"
    data = _call_pickle(module, name, (f"touch {marker}",))
    with pytest.raises(ar.UnsafePickleError, match=f"{module}.{name}"):
        ar.loads_pickle(data)
    assert not marker.exists()


def test_a_jax_rebuild_with_a_foreign_function_is_refused():
    with pytest.raises(ar.UnsafePickleError):  # builtins.print is refused before the rebuild runs
        ar.loads_pickle(_call_pickle("jax._src.array", "_reconstruct_array", (print, ("x",), None, {})))
    with pytest.raises(ar.UnsafePickleError, match="other than NumPy"):  # an allowed global, in the wrong place
        ar.loads_pickle(_call_pickle("jax._src.array", "_reconstruct_array", (np.ndarray, ((0,),), None, {})))


def _cell(src, printed=""):
    c = {"cell_type": "code", "source": [src], "outputs": []}
    if printed:
        c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": [printed]}]
    return c


def _fake_checkout(root: Path):
    """A checkout with one notebook and one pickle of the construction experiments, and one named file absent."""
    res = root / "experiment_results" / "linear_seq_fully"
    res.mkdir(parents=True)
    t = np.arange(1, 51, dtype=np.float64)
    model = np.tile(1.0 / t, (5, 1))
    gd = np.tile(2.0 / t, (5, 1))
    (res / "seqperf_results_constr_single.pkl").write_bytes(_dict_of("losses", [_jax_like(model), _jax_like(gd)]))
    nb = {"cells": [
        {"cell_type": "markdown", "source": ["# fake"]},
        _cell("path_seqperf_single = 'experiment_results/linear_seq_fully/seqperf_results_constr_single.pkl'\n"
              "path_probing_results = 'experiment_results/linear_seq_fully/probing_results_constr.pkl'"),
        _cell("exp_config_constr_1 = 1", "model:  fully_obs_constructed_transformer  layers: 1  heads:  2  "
                                         "embed_dim:  40  clip:  True  clip_val:  4\n"),
        _cell("seq_evaluator_single = None"),
    ]}
    (root / "run_construction_experiments.ipynb").write_text(json.dumps(nb))


def test_command_line_on_a_fake_checkout_writes_the_expected_json(tmp_path):
    ck = tmp_path / "checkout"
    _fake_checkout(ck)
    out = tmp_path / "authors.json"
    r = subprocess.run([sys.executable, str(SCRIPT), str(ck), "--out", str(out), "--source", "fake@0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["source"] == "fake@0"
    q = d["figures"]["fig2"][0]
    t = np.arange(1, 51)
    assert q["curves"]["model_L1"]["mean_over_t"] == pytest.approx(np.mean(1.0 / t), rel=1e-4)
    assert q["curves"]["gd"]["mean_t_ge_10"] == pytest.approx(np.mean(2.0 / t[9:]), rel=1e-4)
    assert q["model_vs_gd_ratio_t10"]["value"] == pytest.approx(0.5)
    assert q["model_vs_gd_ratio_t10"]["seeds"] == 5
    src = q["source"]
    assert (src["notebook"], src["cell"], src["config_cells"]) == ("run_construction_experiments.ipynb", 3, [2])
    assert src["printed_model_configs"][0] == {"cell": 2, "model": "fully_obs_constructed_transformer",
                                               "layers": 1, "heads": 2, "embed_dim": 40, "clip": True,
                                               "clip_val": 4}
    assert d["missing"] == [{"pickle": "experiment_results/linear_seq_fully/probing_results_constr.pkl",
                             "named_by": "run_construction_experiments.ipynb", "cell": 1}]
    assert d["pickles_read"] == ["experiment_results/linear_seq_fully/seqperf_results_constr_single.pkl"]
    assert "fig4" not in d["figures"]


def test_command_line_refuses_an_unsafe_pickle_in_the_checkout(tmp_path):
    ck = tmp_path / "checkout"
    _fake_checkout(ck)
    marker = tmp_path / "ran"
    (ck / "experiment_results" / "linear_seq_fully" / "seqperf_results_constr_single.pkl").write_bytes(
        _call_pickle("os", "system", (f"touch {marker}",)))
    r = subprocess.run([sys.executable, str(SCRIPT), str(ck), "--out", str(tmp_path / "o.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "refused global os.system" in r.stderr
    assert not marker.exists() and not (tmp_path / "o.json").exists()


def test_a_bad_path_gives_one_error_line_and_a_nonzero_exit(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")
    assert not (tmp_path / "o.json").exists()


def test_the_committed_json_holds_numbers_and_no_file_of_theirs():
    d = json.loads((ROOT / "docs" / "authors_results.json").read_text())
    assert {"fig2", "fig3", "fig4", "fig6", "fig7"} <= set(d["figures"])
    assert {"linear", "softmax"} <= set(d["figures"]["fig4"])
    assert any(m["pickle"].endswith("linear_seq_partial/all_models.pkl") for m in d["missing"])
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [p for p in tracked if p.endswith((".pkl", ".ipynb")) or p.startswith(".peers/")]
    assert os.sep + ".peers" not in json.dumps(d)

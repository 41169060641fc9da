"""Training seeds (mesa_lab/experiments/seeds.py): which models are retrained, the jobs that does, and the spread
over seeds that a figure's JSON carries beside seed 0's numbers."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mesa_lab.experiments import experiment
from mesa_lab.experiments.seeds import SEEDED, TRAINING_SEEDS, pick, seed_jobs, seed_spread
from mesa_lab.jobs import Store

pytestmark = pytest.mark.slow        # trains and analyses smoke figures at two seeds

ROOT = Path(__file__).resolve().parents[2]


def test_pick_expands_wildcards_and_skips_absent_paths():
    data = {"a": {"m_L1": 1.0, "m_L2": [1.0, 2.0], "other": 3.0}, "b": 4.0}
    assert pick(data, "a.m_L*") == {"a.m_L1": 1.0, "a.m_L2": [1.0, 2.0]}
    assert pick(data, "a.*") == {"a.m_L1": 1.0, "a.m_L2": [1.0, 2.0], "a.other": 3.0}
    assert pick(data, "b") == {"b": 4.0}
    assert pick(data, "c.d") == {} and pick(data, "b.c") == {}


def test_spread_is_per_seed_mean_and_sample_std():
    per_seed = {2: {"x": 3.0, "c": [1.0, 5.0]}, 0: {"x": 1.0, "c": [1.0, 1.0]}, 1: {"x": 2.0, "c": [1.0, 3.0]}}
    rec = seed_spread(per_seed, ("x", "c", "absent"))
    assert rec["seeds"] == [0, 1, 2]
    assert rec["per_seed"]["x"] == [1.0, 2.0, 3.0]                       # in seed order, not insertion order
    assert rec["mean"]["x"] == pytest.approx(2.0) and rec["std"]["x"] == pytest.approx(1.0)   # ddof 1
    assert rec["mean"]["c"] == pytest.approx([1.0, 3.0]) and rec["std"]["c"] == pytest.approx([0.0, 2.0])
    assert "absent" not in rec["per_seed"]
    one = seed_spread({0: {"x": 1.0}}, ("x",))
    assert one["std"]["x"] is None                                         # no spread from one seed


def test_a_metric_missing_at_one_seed_is_left_out():
    rec = seed_spread({0: {"x": 1.0, "y": 1.0}, 1: {"x": 2.0}}, ("x", "y"))
    assert "x" in rec["per_seed"] and "y" not in rec["per_seed"]


def test_seed_zero_jobs_are_the_shipped_ones_and_other_seeds_differ_only_in_the_seed():
    jobs = seed_jobs(seeds=TRAINING_SEEDS)
    by_label = {j.label: j for j in jobs}
    for fig in SEEDED:
        exp = experiment(fig)
        shipped = exp.jobs(exp.config("full"), 0, "fast")
        for label, j in by_label.items():
            if not label.startswith(fig + "/"):
                continue
            name, seed = label[len(fig) + 1:].rsplit("/seed", 1)
            base = shipped[name]
            if seed == "0":
                assert j.key == base.key, label
            else:
                assert j.key != base.key, label
                assert j.train.seed == int(seed)
                rec, rec0 = j.record(), base.record()
                rec["train"].pop("seed"), rec0["train"].pop("seed")
                assert rec == rec0, label                                   # nothing else changes with the seed
    names = {label.rsplit("/seed", 1)[0] for label in by_label}
    assert "fig7_mesa_vs_attention/T4/mesa_L2" in names and "fig7_mesa_vs_attention/T1/mesa_L1" not in names
    assert {f"fig8_language/{k}" for k in ("softmax", "linear", "mesa", "hybrid")} <= names


def test_unknown_figure_is_refused():
    with pytest.raises(ValueError, match="not seeded"):
        seed_jobs(["fig9_speed"])


@pytest.fixture(scope="module")
def seeded_fig2(tmp_path_factory):
    from mesa_lab.experiments import one_layer
    out = tmp_path_factory.mktemp("seeds")
    rc = one_layer.EXPERIMENT_FIG2.main(["--smoke", "--backend", "ref", "--out", str(out), "--no-progress",
                                         "--training-seeds", "0", "1"])
    assert rc == 0
    return out, json.loads((out / "fig2_one_layer_gd.json").read_text())


def test_figure_json_carries_the_spread_beside_seed_zero(seeded_fig2):
    out, d = seeded_fig2
    ts = d["training_seeds"]
    assert ts["seeds"] == [0, 1] and ts["missing_seeds"] == []
    v0, v1 = ts["per_seed"]["final_loss.model"]
    assert v0 == pytest.approx(d["final_loss"]["model"], rel=1e-12)       # seed 0's value is the figure's own
    assert v1 != v0                                                         # another model
    assert ts["std"]["final_loss.model"] == pytest.approx(abs(v1 - v0) / np.sqrt(2))
    assert len(ts["mean"]["per_step_loss.model"]) == len(d["per_step_loss"]["model"])
    # the seed-1 job is in the store, trained with seed 1
    key = ts["jobs"]["fig2_one_layer_gd/model/seed1"]
    assert (out / ".cache" / "jobs" / f"{key}.npz").exists()
    assert d["config"]["jobs"]["model"]["record"]["train"]["seed"] == 0


def test_missing_seed_is_listed_with_no_train(seeded_fig2, tmp_path):
    out, _ = seeded_fig2
    from mesa_lab.experiments import one_layer
    rc = one_layer.EXPERIMENT_FIG2.main(["--smoke", "--backend", "ref", "--out", str(tmp_path), "--no-progress",
                                         "--store", str(out / ".cache" / "jobs"), "--no-train",
                                         "--training-seeds", "0", "1", "5"])
    assert rc == 0
    ts = json.loads((tmp_path / "fig2_one_layer_gd.json").read_text())["training_seeds"]
    assert ts["seeds"] == [0, 1] and ts["missing_seeds"] == [5]


def test_quick_figures_train_one_seed(seeded_fig2, tmp_path):
    out, _ = seeded_fig2
    from mesa_lab.experiments import one_layer
    rc = one_layer.EXPERIMENT_FIG2.main(["--smoke", "--backend", "ref", "--out", str(tmp_path), "--no-progress",
                                         "--store", str(out / ".cache" / "jobs"), "--no-train"])
    assert rc == 0
    assert "training_seeds" not in json.loads((tmp_path / "fig2_one_layer_gd.json").read_text())


def test_training_seeds_on_an_unseeded_figure_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fig1_weights.py"), "--smoke", "--backend", "ref",
                        "--out", str(tmp_path), "--training-seeds", "1", "--no-progress"], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--training-seeds" in r.stderr
    assert not (tmp_path / "fig1_weights.json").exists()


def test_train_seeds_lists_the_store(tmp_path):
    st = Store(tmp_path)
    j = seed_jobs(["fig2_one_layer_gd"], (0, 1))[0]
    st.prepare()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_seeds.py"), "--list", "--only",
                        "fig2_one_layer_gd", "--seeds", "0", "1", "--store", str(tmp_path)], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("missing") for line in lines)
    assert j.key in lines[0]


def test_with_a_store_each_figure_takes_its_longest_jobs_first(tmp_path):
    """Ordered by the CPU time seed 0's run of the same model recorded; unknown costs go last, in seed order."""
    st = Store(tmp_path)
    st.prepare()
    exp = experiment("fig3_depth")
    shipped = exp.jobs(exp.config("full"), 0, "fast")
    for name, cpu in (("linear_L1", 10.0), ("linear_L4", 300.0), ("linear_L6", 900.0)):   # linear_L2 not run
        st.put(shipped[name], {"w": np.zeros(1)}, {}, {"cpu_seconds": cpu})
    labels = [j.label for j in seed_jobs(["fig3_depth", "fig2_one_layer_gd"], (1, 2), store=st)]
    assert labels == ["fig3_depth/linear_L6/seed1", "fig3_depth/linear_L6/seed2", "fig3_depth/linear_L4/seed1",
                      "fig3_depth/linear_L4/seed2", "fig3_depth/linear_L1/seed1", "fig3_depth/linear_L1/seed2",
                      "fig3_depth/linear_L2/seed1", "fig3_depth/linear_L2/seed2",
                      "fig2_one_layer_gd/model/seed1", "fig2_one_layer_gd/model/seed2"]
    assert sorted(labels) == sorted(j.label for j in seed_jobs(["fig3_depth", "fig2_one_layer_gd"], (1, 2)))

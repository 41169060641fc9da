"""Smoke tests of scripts/fig6_icl.py and scripts/fig8_language.py in their hidden --smoke mode
(seconds): JSON keys, the PNG, --replot from the saved JSON, --text and its one-line errors."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow        # runs the figure scripts end to end

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    """The figure's entry point, as scripts/<name>.py runs it (through the registry of experiments)."""
    from mesa_lab.experiments import experiment
    from mesa_lab.experiments.common import run_experiment
    return SimpleNamespace(main=lambda argv=None: run_experiment(experiment(name), argv))


def _replot_ok(mod, out, name, extra=()):
    png, js = out / f"{name}.png", out / f"{name}.json"
    before = js.read_bytes()
    png.unlink()
    assert mod.main(["--replot", "--out", str(out), *extra]) == 0
    assert png.stat().st_size > 1000 and js.read_bytes() == before


def test_fig6_smoke(tmp_path):
    mod = _load("fig6_icl")
    assert mod.main(["--smoke", "--backend", "ref", "--out", str(tmp_path), "--no-progress", "--seed", "1"]) == 0
    data = json.loads((tmp_path / "fig6_icl.json").read_text())
    ev = data["error_vs_examples"]
    methods = ("no_eos", "eos", "eos_prompt", "lsq")
    N = data["config"]["values"]["N"]
    for m in methods:
        assert len(ev[m]) == N and all(math.isfinite(v) and v >= 0 for v in ev[m])
        assert len(ev["two_task"][m]) == N
    # the first example has no context: every method predicts from nothing, lsq predicts 0
    assert ev["lsq"][0] == pytest.approx(ev["two_task"]["lsq"][0], rel=0.5)
    for key in ("figure", "seed", "quick", "backend", "command", "tuned_eos", "tuned_prompt", "lsq_lam",
                "tuning_curves", "train_curve"):
        assert key in data
    assert data["seed"] == 1 and data["backend"] == "ref"
    assert len(data["tuned_eos"]) == data["config"]["values"]["n"]
    assert len(data["tuned_prompt"]) == data["config"]["values"]["prompt_len"]
    assert data["config"]["jobs"]["model"]["record"]["train"]["seed"] == 1      # the job seed is --seed
    assert data["train_final_test_loss"] == data["train_curve"]["test_loss"][-1]
    assert (tmp_path / "fig6_icl.png").stat().st_size > 1000
    _replot_ok(mod, tmp_path, "fig6_icl")


def test_set_flag_changes_one_field_and_lists_it(tmp_path, capsys):
    # --set tune_steps=5 tunes EOS and prompt for 5 steps instead of the mode's 3; the job (training) is the same
    mod = _load("fig6_icl")
    base = ["--smoke", "--backend", "ref", "--no-progress"]
    assert mod.main([*base, "--out", str(tmp_path / "a")]) == 0
    assert mod.main([*base, "--out", str(tmp_path / "b"), "--set", "tune_steps=5", "--set", "eos_lr=0.02"]) == 0
    a, b = (json.loads((tmp_path / d / "fig6_icl.json").read_text()) for d in "ab")
    assert a["config"]["values"]["tune_steps"] == 3 and b["config"]["values"]["tune_steps"] == 5
    assert b["config"]["values"]["eos_lr"] == 0.02
    assert len(b["tuning_curves"]["eos"]["step"]) > len(a["tuning_curves"]["eos"]["step"])
    assert "tune_steps = 5 (full size: 1000)" in b["config"]["deviations"]
    assert "tune_steps = 3 (full size: 1000)" in a["config"]["deviations"]
    assert a["config"]["jobs"]["model"]["key"] == b["config"]["jobs"]["model"]["key"]
    # bad uses: one line, exit 2, nothing written
    capsys.readouterr()
    for bad in (["--set", "nope=1"], ["--set", "tune_steps=1.5"], ["--set", "tune_steps"]):
        assert mod.main([*base, "--out", str(tmp_path / "c"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--set" in err
    assert mod.main([*base, "--set", "tune_steps=5"]) == 2                   # without --out
    assert "--out" in capsys.readouterr().err
    assert not (tmp_path / "c" / "fig6_icl.json").exists()


def test_fig6_full_job_is_fig3_two_layer_job():
    from mesa_lab.experiments import depth, icl
    for seed in (0, 2):
        job = icl.jobs(icl.FULL, seed, "fast")["model"]
        assert job.train.steps == 20000 and job.train.seed == seed and job.train.checkpoint_every == 500
        # the default model trained on [T1] at the paper's length: the same job as fig3's two-layer model
        assert job.key == depth.jobs(depth.FULL, seed, "fast")["linear_L2"].key
    assert icl.jobs(icl.QUICK, 0, "fast")["model"].train.steps == 600


def test_fig8_smoke_and_text_flag(tmp_path, capsys):
    import numpy as np

    from mesa_lab.experiments.language import token_losses
    from mesa_lab.jobs import Job, Store
    from mesa_ref.model import Transformer
    mod = _load("fig8_language")
    out = tmp_path / "default"
    assert mod.main(["--smoke", "--backend", "ref", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "fig8_language.json").read_text())
    kinds = ("softmax", "linear", "mesa", "hybrid")
    cfg = data["config"]["values"]
    T, steps = cfg["T"], cfg["steps"]
    assert data["config"]["mode"] == "smoke" and "steps = 4 (full size: 8000)" in data["config"]["deviations"]
    for k in kinds:
        assert math.isfinite(data["heldout_loss"][k])
        assert len(data["loss_per_position"][k]) == T
        assert data["heldout_loss"][k] == pytest.approx(sum(data["loss_per_position"][k]) / T)
        c = data["learning_curves"][k]
        assert c["step"] == list(range(0, steps + 1, cfg["eval_every"])) and len(c["loss"]) == len(c["step"])
    pc = data["param_count"]
    heads, layers = cfg["heads"], cfg["layers"]
    assert pc["linear"] == pc["softmax"]
    assert pc["mesa"] == pc["linear"] + heads * layers            # only lam per mesa head
    assert pc["hybrid"] == pc["linear"] + heads * (layers - 1)
    assert data["unigram_entropy"] > 0 and data["corpus"]["source"] == "pydoc_data.topics"
    # the four jobs: same task and training record (same batches), models differing in their layers only
    recs = {k: data["config"]["jobs"][k]["record"] for k in kinds}
    assert all(r["task"] == recs["mesa"]["task"] and r["train"] == recs["mesa"]["train"] for r in recs.values())
    assert recs["hybrid"]["model"]["layers"] == ["softmax"] + ["mesa"] * (layers - 1)
    assert recs["mesa"]["task"]["sha256"] == data["corpus"]["sha256"]
    # the learning curve is the trainer's held-out cross-entropy: recompute its last point from the stored
    # parameters on the job's test set (task.test_batch on the trainer's test stream)
    store = Store(out / ".cache" / "jobs")
    for k in ("mesa", "hybrid"):
        job = Job.from_record(recs[k])
        res = store.get(job)
        assert res is not None and res.metrics["test_loss"] == data["learning_curves"][k]["loss"]
        rng = np.random.default_rng([job.train.seed, 2])
        test = [job.task.test_batch(rng, job.train.batch) for _ in range(job.train.test_batches)]
        model = Transformer(job.model)
        ce = np.mean([token_losses(model, res.params, x, y).mean() for x, y in test])
        assert res.final_test_loss == pytest.approx(ce, rel=1e-5)
    _replot_ok(mod, out, "fig8_language")

    text = tmp_path / "tiny.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    out2 = tmp_path / "custom"
    assert mod.main(["--smoke", "--backend", "ref", "--out", str(out2), "--no-progress", "--text", str(text)]) == 0
    d2 = json.loads((out2 / "fig8_language.json").read_text())
    assert d2["corpus"]["source"] == str(text) and d2["corpus"]["vocab_size"] == len(set(text.read_text()))
    task2 = d2["config"]["jobs"]["mesa"]["record"]["task"]
    assert task2["source"] == str(text) and task2["sha256"] != recs["mesa"]["task"]["sha256"]
    assert d2["config"]["jobs"]["mesa"]["key"] != data["config"]["jobs"]["mesa"]["key"]
    assert f"text = {str(text)!r} (full size: None)" in d2["config"]["deviations"]
    capsys.readouterr()

    for bad, msg in ((tmp_path / "nope.txt", "no such file"), (None, "NUL"), ("short", "too short")):
        if bad is None:
            bad = tmp_path / "blob.bin"
            bad.write_bytes(b"\x7fELF\x00\x01\x02")
        elif bad == "short":
            bad = tmp_path / "short.txt"
            bad.write_text("abc", encoding="utf-8")
        assert mod.main(["--smoke", "--backend", "ref", "--out", str(tmp_path / "err"), "--text", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and msg in err and "\n" not in err
    assert not (tmp_path / "err" / "fig8_language.json").exists()


def test_fig8_full_jobs():
    """The full-size jobs: one per kind, on the default corpus with the held-out split, 8000 steps, one seed."""
    from mesa_lab.experiments import language
    jobs = language.jobs(language.FULL, 0, "fast")
    assert list(jobs) == ["softmax", "linear", "mesa", "hybrid"]
    keys = {j.key for j in jobs.values()}
    assert len(keys) == 4
    for j in jobs.values():
        assert j.task.source == "pydoc_data.topics" and j.task.T == 256 and j.task.split == "train"
        assert j.train.steps == 8000 and j.train.seed == 0 and j.model.input == "tokens"
        assert j.model.input_dim == j.model.output_dim == j.task.vocab_size
    assert {j.key for j in language.jobs(language.FULL, 1, "fast").values()}.isdisjoint(keys)

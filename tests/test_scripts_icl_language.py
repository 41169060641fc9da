"""Smoke tests of scripts/fig6_icl.py and scripts/fig8_language.py in their hidden --smoke mode
(seconds): JSON keys, the PNG, --replot from the saved JSON, --text and its one-line errors."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
    N = data["config"]["icl"]["N"]
    for m in methods:
        assert len(ev[m]) == N and all(math.isfinite(v) and v >= 0 for v in ev[m])
        assert len(ev["two_task"][m]) == N
    # the first example has no context: every method predicts from nothing, lsq predicts 0
    assert ev["lsq"][0] == pytest.approx(ev["two_task"]["lsq"][0], rel=0.5)
    for key in ("figure", "seed", "quick", "backend", "command", "tuned_eos", "tuned_prompt", "lsq_lam",
                "tuning_curves", "train_curve"):
        assert key in data
    assert data["seed"] == 1 and data["backend"] == "ref"
    assert len(data["tuned_eos"]) == data["config"]["icl"]["n"]
    assert (tmp_path / "fig6_icl.png").stat().st_size > 1000
    _replot_ok(mod, tmp_path, "fig6_icl")


def test_fig8_smoke_and_text_flag(tmp_path, capsys):
    mod = _load("fig8_language")
    out = tmp_path / "default"
    assert mod.main(["--smoke", "--backend", "ref", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "fig8_language.json").read_text())
    kinds = ("softmax", "linear", "mesa", "hybrid")
    T = data["config"]["lm"]["T"]
    for k in kinds:
        assert math.isfinite(data["heldout_loss"][k])
        assert len(data["loss_per_position"][k]) == T
        c = data["learning_curves"][k]
        assert len(c["step"]) == len(c["loss"]) >= 2 and c["step"][0] == 0
    pc = data["param_count"]
    heads, layers = data["config"]["lm"]["heads"], data["config"]["lm"]["layers"]
    assert pc["linear"] == pc["softmax"]
    assert pc["mesa"] == pc["linear"] + heads * layers            # only lam per mesa head
    assert pc["hybrid"] == pc["linear"] + heads * (layers - 1)
    assert data["unigram_entropy"] > 0 and data["corpus"]["source"] == "pydoc_data.topics"
    _replot_ok(mod, out, "fig8_language")

    text = tmp_path / "tiny.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    out2 = tmp_path / "custom"
    assert mod.main(["--smoke", "--backend", "ref", "--out", str(out2), "--no-progress", "--text", str(text)]) == 0
    d2 = json.loads((out2 / "fig8_language.json").read_text())
    assert d2["corpus"]["source"] == str(text) and d2["corpus"]["vocab_size"] == len(set(text.read_text()))
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

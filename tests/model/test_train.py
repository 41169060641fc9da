"""Training loop: schedule, optimiser, clipping, checkpoints, bit-for-bit resume, command-line errors."""
import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mesa_ref.config import ModelConfig
from mesa_ref.model import Transformer
from mesa_ref.runio import CLIError, load_checkpoint
from mesa_ref.tasks import LinearTask
from mesa_ref.train import AdamW, TrainConfig, clip_gradients, learning_rate, train

SMALL_MODEL = ModelConfig(layers=("linear",), heads=2, key_size=4, input_dim=3, width=12, output_dim=3)
SMALL_TASK = LinearTask(n=3, T=8)


def test_schedule_matches_warmup_cosine():
    c = TrainConfig()
    assert learning_rate(0, c) == 0.0
    assert math.isclose(learning_rate(500, c), 1.5e-4)
    assert math.isclose(learning_rate(1000, c), 3e-4)
    mid = 1000 + (20000 - 1000) // 2
    assert math.isclose(learning_rate(mid, c), 1e-5 + 0.5 * (3e-4 - 1e-5), rel_tol=1e-9)
    assert math.isclose(learning_rate(20000, c), 1e-5) and math.isclose(learning_rate(30000, c), 1e-5)


def test_adamw_first_step_closed_form():
    """After one step, Adam's bias-corrected update is sign(g) (for |g| >> eps), plus decoupled decay."""
    c = TrainConfig(weight_decay=0.1)
    p = {"w": np.array([1.0, -2.0, 0.5])}
    g = {"w": np.array([0.3, -4.0, 1e-3])}
    opt = AdamW(p, c)
    opt.update(p, g, lr=0.01)
    expected = np.array([1.0, -2.0, 0.5]) - 0.01 * (np.sign(g["w"]) * np.abs(g["w"]) / (np.abs(g["w"]) + 1e-8)
                                                    + 0.1 * np.array([1.0, -2.0, 0.5]))
    np.testing.assert_allclose(p["w"], expected, rtol=1e-10)


def test_adamw_lr_scale_per_parameter():
    """``lr_scale`` multiplies that parameter's whole step (Adam direction and decay) by its factor, over
    several steps, and leaves the other parameters as plain AdamW."""
    rng = np.random.default_rng(0)
    init = {"l0.wq": rng.normal(size=(3, 2)), "l0.lam_raw": rng.normal(size=2)}
    grads = [{k: rng.normal(size=v.shape) for k, v in init.items()} for _ in range(4)]

    def run(**kw):
        p = {k: v.copy() for k, v in init.items()}
        opt = AdamW(p, TrainConfig(weight_decay=0.1, **kw))
        for i, g in enumerate(grads):
            opt.update(p, g, lr=0.01 * (i + 1))
        return p

    plain, scaled = run(), run(lr_scale=(("lam_raw", 7.0),))
    np.testing.assert_array_equal(scaled["l0.wq"], plain["l0.wq"])
    # the scaled parameter, replayed by hand: each step is 7x the plain step (decay included)
    lam, m, v = init["l0.lam_raw"].copy(), 0.0, 0.0
    for i, g in enumerate(grads, start=1):
        gl = g["l0.lam_raw"]
        m = 0.9 * m + 0.1 * gl
        v = 0.999 * v + 0.001 * gl * gl
        lam = lam - 7.0 * 0.01 * i * ((m / (1 - 0.9 ** i)) / (np.sqrt(v / (1 - 0.999 ** i)) + 1e-8) + 0.1 * lam)
    np.testing.assert_allclose(scaled["l0.lam_raw"], lam, rtol=1e-12)
    assert not np.allclose(scaled["l0.lam_raw"], plain["l0.lam_raw"])


@pytest.mark.parametrize("kw", [dict(lr_scale=(("lam_raw", 0),)), dict(lr_scale=(("", 2.0),)),
                                dict(lr_scale=(("lam_raw",),)), dict(lr_scale=((3, 2.0),)),
                                dict(lr_scale=(("x", float("nan")),))])
def test_optimiser_options_are_checked(kw):
    with pytest.raises(ValueError):
        TrainConfig(**kw)


def test_gradient_clipping_modes():
    g = {"a": np.array([3.0, 4.0]), "b": np.array([0.0])}
    clipped, norm = clip_gradients(g, TrainConfig(grad_clip=1.0))
    assert norm == 5.0
    np.testing.assert_allclose(clipped["a"], [0.6, 0.8])
    clipped, _ = clip_gradients(g, TrainConfig(grad_clip=1.0, clip_mode="elementwise"))
    np.testing.assert_allclose(clipped["a"], [1.0, 1.0])
    small, _ = clip_gradients({"a": np.array([0.1])}, TrainConfig(grad_clip=1.0))
    np.testing.assert_allclose(small["a"], [0.1])


def test_training_reduces_loss_and_writes_run_dir(tmp_path):
    tc = TrainConfig(steps=60, batch=32, lr=1e-2, warmup_steps=5, eval_every=20, checkpoint_every=30,
                     test_batches=2, seed=0)
    res = train(Transformer(SMALL_MODEL.replace(init_std=0.05)), SMALL_TASK, tc, tmp_path, progress=False)
    m = res.metrics
    assert m["final_test_loss"] < 0.7 * m["initial_test_loss"]
    for f in ("config.json", "metrics.json", "metrics.csv", "checkpoint.npz"):
        assert (tmp_path / f).exists(), f
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["final_test_loss"] == m["final_test_loss"] and saved["step"] == [0, 20, 40, 60]
    assert not list(tmp_path.glob("*.tmp")), "temporary files must not be left behind"


def test_same_seed_same_numbers_and_resume_is_bit_for_bit(tmp_path):
    tc = dict(batch=16, lr=1e-2, warmup_steps=3, eval_every=5, checkpoint_every=5, test_batches=1, seed=7)
    model = Transformer(SMALL_MODEL.replace(init_std=0.05))
    full = train(model, SMALL_TASK, TrainConfig(steps=20, **tc), tmp_path / "a", progress=False)
    again = train(model, SMALL_TASK, TrainConfig(steps=20, **tc), None, progress=False)
    for k in full.params:
        np.testing.assert_array_equal(full.params[k], again.params[k])
    train(model, SMALL_TASK, TrainConfig(steps=10, **tc), tmp_path / "b", progress=False)
    resumed = train(model, SMALL_TASK, TrainConfig(steps=20, **tc), tmp_path / "b", progress=False, resume=True)
    for k in full.params:
        np.testing.assert_array_equal(full.params[k], resumed.params[k])
    assert full.metrics["test_loss"] == resumed.metrics["test_loss"]


def test_resume_refuses_other_config(tmp_path):
    tc = TrainConfig(steps=5, batch=8, eval_every=5, checkpoint_every=5, test_batches=1)
    train(Transformer(SMALL_MODEL), SMALL_TASK, tc, tmp_path, progress=False)
    with pytest.raises(CLIError, match="different configuration"):
        train(Transformer(SMALL_MODEL.replace(heads=3)), SMALL_TASK, tc, tmp_path, progress=False, resume=True)


def test_corrupt_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "checkpoint.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(CLIError, match="corrupt"):
        load_checkpoint(bad)


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "mesa_ref.train", "--no-progress", *args],
                          capture_output=True, text=True, **kw)


def test_cli_errors_are_one_line(tmp_path):
    r = _cli(["--steps", "0", "--out", str(tmp_path / "x")])
    assert r.returncode != 0 and r.stderr.strip().startswith("error: steps") and "Traceback" not in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = _cli(["--steps", "1", "--out", str(blocker / "sub")])
    assert r.returncode != 0 and "not writable" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.npz").write_bytes(b"garbage")
    r = _cli(["--steps", "1", "--out", str(tmp_path / "c"), "--resume"])
    assert r.returncode != 0 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    r = _cli(["--attention", "rnn"])
    assert r.returncode == 2


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    """SIGKILL a CLI run after its first checkpoint, resume it, compare with an uninterrupted run."""
    args = ["--steps", "40", "--batch", "16", "--layers", "1", "--heads", "2", "--checkpoint-every", "4",
            "--eval-every", "20", "--seed", "3"]
    ref = _cli(args + ["--out", str(tmp_path / "ref")], timeout=600)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "mesa_ref.train", "--no-progress", *args, "--out", str(run)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoint.npz").exists() and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    _, meta = load_checkpoint(run / "checkpoint.npz")
    assert meta["step"] < 40 or p.returncode == 0
    res = _cli(args + ["--out", str(run), "--resume"], timeout=600)
    assert res.returncode == 0, res.stderr
    a, _ = load_checkpoint(tmp_path / "ref" / "checkpoint.npz")
    b, _ = load_checkpoint(run / "checkpoint.npz")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _run_files(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if not p.name.startswith(".")}


def test_second_run_into_the_same_directory_is_refused_and_the_first_is_kept(tmp_path):
    run = tmp_path / "x"
    first = _cli(["--steps", "6", "--batch", "8", "--layers", "1", "--eval-every", "3", "--out", str(run)], timeout=300)
    assert first.returncode == 0, first.stderr
    before = _run_files(run)
    assert set(before) == {"config.json", "metrics.json", "metrics.csv", "checkpoint.npz"}
    r = _cli(["--steps", "2", "--batch", "8", "--layers", "1", "--out", str(run)], timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "already holds a run" in r.stderr and "--resume" in r.stderr and "--overwrite" in r.stderr
    assert _run_files(run) == before                       # byte for byte
    r = _cli(["--steps", "2", "--batch", "8", "--layers", "1", "--out", str(run), "--overwrite"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 2
    r = _cli(["--out", str(run), "--resume", "--overwrite"])
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_an_out_that_is_a_file_is_named_so(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    r = _cli(["--steps", "1", "--out", str(f)])
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr


def test_cli_schedule_follows_steps_unless_set(tmp_path):
    """The command line scales the paper's schedule (1,000 warm-up steps of 20,000) to --steps; the flags set
    it explicitly; TrainConfig's defaults (which the figures' job keys hash) stay the authors' fixed ones."""
    from mesa_ref.train import learning_rate, schedule_for
    assert (TrainConfig().warmup_steps, TrainConfig().decay_steps) == (1000, 20000)
    assert schedule_for(20000) == (1000, 20000) and schedule_for(300) == (15, 300)
    assert schedule_for(300, 0, 1000) == (0, 1000)
    c = TrainConfig(steps=300, warmup_steps=15, decay_steps=300)
    assert learning_rate(15, c) == pytest.approx(c.lr)                      # warm-up is over at 5% of the run
    assert learning_rate(299, c) < 1.01 * c.final_lr                         # and the cosine ends with the run
    r = _cli(["--steps", "40", "--batch", "8", "--layers", "1", "--eval-every", "20", "--out", str(tmp_path / "a")],
             timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "a" / "config.json").read_text())["train"]
    assert (rec["warmup_steps"], rec["decay_steps"]) == (2, 40)
    lrs = json.loads((tmp_path / "a" / "metrics.json").read_text())["lr"]   # at steps 0, 20, 40
    assert lrs[1] > 0.4 * rec["lr"] and lrs[2] < 1.1 * rec["final_lr"]      # fixed 1000/20000: 6e-6 and 1.2e-5
    r = _cli(["--steps", "4", "--batch", "8", "--layers", "1", "--warmup-steps", "0", "--decay-steps", "100",
              "--out", str(tmp_path / "b")], timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "b" / "config.json").read_text())["train"]
    assert (rec["warmup_steps"], rec["decay_steps"]) == (0, 100)
    r = _cli(["--decay-steps", "0", "--out", str(tmp_path / "c")])
    assert r.returncode == 2 and "--decay-steps" in r.stderr


def test_every_cli_option_has_help_and_shows_its_default():
    from mesa_ref.train import build_parser
    p = build_parser()
    options = [a for a in p._actions if a.dest != "help"]
    assert all(a.help for a in options), [a.dest for a in options if not a.help]
    text = " ".join(p.format_help().split())
    assert text.count("(default: ") == len(options)
    assert "(default: runs/train)" in text and "(default: 2500)" in text


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_output_files_follow_the_umask(tmp_path, umask):
    """Results, checkpoints and figures are written through a private temporary file; the finished file gets the
    mode a plain open() would give it (0644 under umask 022), so collaborators can read it."""
    import os
    import stat
    from mesa_ref.runio import atomic_write_bytes, save_checkpoint, write_json
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_checkpoint(tmp_path / "c.npz", {"w": np.zeros(3)}, {"step": 1})
        atomic_write_bytes(tmp_path / "sub" / "f.png", b"png")
    finally:
        os.umask(old)
    for f in ("a.json", "c.npz", "sub/f.png"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o666 & ~umask, f

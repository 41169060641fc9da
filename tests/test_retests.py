"""Second configurations (mesa_lab/experiments/retests.py): fig3 under the authors' own training recipe, as new
jobs beside the shipped ones."""
import subprocess
import sys
from pathlib import Path

from mesa_lab.experiments import depth
from mesa_lab.experiments.retests import RETESTS, retest_jobs
from mesa_ref.train import learning_rate

ROOT = Path(__file__).resolve().parents[1]


def test_authors_recipe_is_theirs_per_depth():
    jobs = depth.jobs(depth.AUTHORS, 0, "fast")
    steps = {k: j.train.steps for k, j in jobs.items()}
    assert steps == {"linear_L1": 5000, "linear_L2": 5000, "linear_L4": 10000, "linear_L6": 15000}
    assert [j.model.heads for j in jobs.values()] == [2, 4, 4, 4]
    for j in jobs.values():
        assert j.model.clip == 4.0 and j.train.weight_decay == 0.1 and j.train.clip_mode == "elementwise"
        assert {learning_rate(s, j.train) for s in (0, 1, j.train.steps // 2, j.train.steps - 1)} == {1e-4}
        assert j.train.eval_every <= j.train.steps


def test_authors_recipe_jobs_are_new_and_paper_jobs_unchanged():
    paper, authors = depth.jobs(depth.FULL, 0, "fast"), depth.jobs(depth.AUTHORS, 0, "fast")
    assert not {j.key for j in paper.values()} & {j.key for j in authors.values()}
    # the new config fields left the paper recipe's jobs as they were (the committed store test checks the keys)
    assert all(j.train.clip_mode == "global_norm" and j.train.steps == 20000 for j in paper.values())
    labels = [j.label for j in retest_jobs(root=ROOT / "figures" / "full")]
    assert labels == [f"fig3_depth/recipe_authors/linear_L{L}" for L in (1, 2, 4, 6)]
    assert set(RETESTS) == {"fig3_depth"}


def _run(*flags):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "fig3_depth.py"), *flags, "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_recipe_needs_its_own_out_and_full_size(tmp_path):
    r = _run("--recipe", "authors", "--no-train")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--out" in r.stderr
    r = _run("--recipe", "authors", "--quick", "--out", str(tmp_path))
    assert r.returncode == 2 and "full-size" in r.stderr
    assert not list(tmp_path.glob("*.json"))

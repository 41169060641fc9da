"""The README's promises: short, the two commands first, and a Python example that runs as written."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow        # runs the README's example, training included

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_is_short_and_starts_with_the_two_commands():
    assert len(README.splitlines()) <= 120
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    assert [ln.split()[:2] for ln in first_block.strip().splitlines()] == [["make", "reproduce"], ["make", "test"]]
    assert README.index("make reproduce") < README.index("```python")


def test_readme_python_example_runs():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    before, after = (float(x) for x in r.stdout.strip().splitlines()[-1].split("->"))
    assert after < 0.7 * before          # the trained model learned something


def test_readme_names_only_existing_paths():
    for path in set(re.findall(r"`((?:docs|scripts|benchmarks|figures|mesa_ref|mesa_fast)/[\w./-]*)`", README)):
        if "<" in path or path.endswith("/") and not (ROOT / path).exists():
            continue
        assert (ROOT / path).exists(), path

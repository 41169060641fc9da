"""mesa_ref: a readable NumPy reference for "Uncovering mesa-optimization algorithms in Transformers"
(von Oswald et al., arXiv 2309.05858): ops with hand-written backprop, the mesa-layer, the Transformer,
training, tasks, baselines and analyses.  Equation tags ([M2], [A1], ...) refer to docs/math.md.
"""
from . import ops  # noqa: F401

__version__ = "0.1.0"

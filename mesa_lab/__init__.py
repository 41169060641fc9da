"""mesa_lab: the experiments, run on either backend.

The reference (``mesa_ref``) holds the math and the fast backend (``mesa_fast``) the kernels; this package is
the lab on top of both: one module per paper figure (``experiments/``), the content-addressed job store and its
Dask runner (``jobs``), choosing the reference or the fast ops (``ref_or_fast``), what runs cost (``cost``) and where results came from
(``provenance``).  The figure scripts in ``scripts/`` are thin entry points into ``experiments``.  Arrows point
down only: mesa_lab -> mesa_fast -> mesa_ref, and ``mesa_ref`` imports neither of the other two.
"""

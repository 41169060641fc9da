"""What the fast kernels run on: the thread pool (``pool``), the C heap setting (``heap``), BLAS thread control
(``blas``, through threadpoolctl) and every tuning constant (``tuning``). Nothing here computes an op."""

"""Test helpers shipped with nnic (polars.testing style), reusable by third-party plugins.

- :mod:`nnic.testing.reference`: plain numpy implementations of every :mod:`nnic.kernels` function, the
  ground truth the kernels are tested against.
- :mod:`nnic.testing.strategies`: hypothesis strategies for kernel inputs (needs ``hypothesis``; imported
  only on demand).
"""

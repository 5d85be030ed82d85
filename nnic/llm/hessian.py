"""Second-order statistics of a layer's inputs, and the damped inverse Hessian that SparseGPT and GPTQ share.

For a layer ``y = x W^T`` the squared output error of a weight change ``dW`` is ``tr(dW H dW^T) / 2`` with
``H = 2 X^T X / n`` over the n calibration tokens, so ``H`` is all the optimal-brain-surgeon updates need.
"""

from __future__ import annotations

import torch

__all__ = ["Hessian", "damped_inverse_cholesky"]


class Hessian:
    """Running ``H = 2/n sum x x^T`` over the tokens seen (float32, on the inputs' device)."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.matrix: torch.Tensor | None = None
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """Add a batch of inputs ``x`` of shape ``[tokens, columns]``."""
        if x.shape[-1] != self.columns:
            raise ValueError(f"expected inputs with {self.columns} columns, got shape {tuple(x.shape)}")
        x = x.reshape(-1, self.columns).float()
        t = x.shape[0]
        if self.matrix is None:
            self.matrix = torch.zeros(self.columns, self.columns, device=x.device)
        self.matrix.mul_(self.tokens / (self.tokens + t))
        self.tokens += t
        x = x * (2.0 / self.tokens) ** 0.5
        self.matrix.addmm_(x.t(), x)

    def get(self) -> torch.Tensor:
        if self.matrix is None:
            raise RuntimeError("the Hessian has seen no inputs")
        return self.matrix


def damped_inverse_cholesky(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, and the mask of dead input columns.

    Columns whose input is always zero (``H_jj = 0``) get a unit diagonal, so the factorisation exists; their
    weights do not matter to the output and the callers set them to zero. If the damped matrix is still not
    positive definite (collinear inputs in float32), the damping grows tenfold, up to four times.
    """
    h = h.detach().float().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    diag_mean = float(torch.diagonal(h).mean())
    eye = torch.eye(h.shape[0], device=h.device)
    lam = damp
    for _ in range(5):
        chol, info = torch.linalg.cholesky_ex(h + (lam * diag_mean) * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper, dead
        lam = max(lam * 10, 1e-6)
    raise ValueError(f"the layer's input Hessian is not positive definite even with dampening {lam / 10:g}; "
                     f"use more calibration data or a larger 'damp'")

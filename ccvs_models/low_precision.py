"""Reduced-precision Linear layers for sampling (``CCVSTransformer.low_precision``,
``SamplerConfig.weights``; not in the paper). A cached token step reads every weight of T once, so
its time is the weights' bytes over the memory bandwidth (BENCHMARKS.md "synthesis").
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class LowPrecisionLinear(nn.Module):
    """Inference-only stand-in for an ``nn.Linear`` with reduced-precision weights (opt-in for
    sampling, ``CCVSTransformer.low_precision``). Inputs and outputs stay fp32; the product is
    computed with bf16 activations:

    - ``"bf16"``: y = (x_bf16 · W_bf16ᵀ) + b;
    - ``"int8"``: weight-only int8, one symmetric scale per output channel,
      W ≈ s ⊙ W_int8 with s = max|W_row| / 127; y = (x_bf16 · W_int8ᵀ) ⊙ s + b. For a few rows
      (the one-token steps) the fused int8 matrix-vector kernel reads the int8 weights (a quarter
      of fp32's bytes); for many rows (a prefill, the uncached sampler) W_int8 is converted to
      bf16 exactly and multiplied as a bf16 matrix product, then scaled.
    """

    FEW_ROWS = 16  # up to this many rows the int8 kernel; above it a bf16 GEMM

    def __init__(self, linear: nn.Linear, weights: Literal["bf16", "int8"]) -> None:
        super().__init__()
        if weights not in ("bf16", "int8"):
            raise ValueError(f"LowPrecisionLinear: weights must be 'bf16' or 'int8', got {weights!r}")
        self.weights = weights
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)
        if weights == "bf16":
            self.register_buffer("weight", w.to(torch.bfloat16))
            self.register_buffer("scale", None)
        else:
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
            self.register_buffer("weight", q)
            self.register_buffer("scale", scale.to(torch.bfloat16))
        self._int8_kernel = weights == "int8" and hasattr(torch.ops.aten, "_weight_int8pack_mm")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if self.scale is None:
            y = F.linear(x2, self.weight)
        elif self._int8_kernel and x2.shape[0] <= self.FEW_ROWS and x2.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scale)
        else:
            y = F.linear(x2, self.weight.to(torch.bfloat16)) * self.scale
        y = y.float()
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

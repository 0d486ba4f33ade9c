"""The scale searches' trial numerators, rounded in float32 as the C code computes them: one
definition for the torch search (``vectorized``) and its Triton twin (``triton_quant``)."""

from __future__ import annotations

import numpy as np

F = np.float32
# make_qkx2_quants trial numerators (rmin + rdelta*is + nmax), rounded as float32 like C
Q4K_TRIALS = [float(F(F(F(-1.0) + F(F(0.1) * F(s))) + F(15))) for s in range(21)]
# make_qx_quants trial numerators -(nmax + 0.1f*is), is = -9..9 without 0
Q6K_TRIALS = [float(-(F(32) + F(F(0.1) * F(s)))) for s in range(-9, 10) if s]

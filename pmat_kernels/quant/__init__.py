"""GGML quantization kernels: Q8_0, Q5_0 (fallback), Q4_K, Q6_K.

Three paths producing identical bytes: ``reference`` (a clear port of llama.cpp's reference
quantizers), ``vectorized`` (torch, CPU or GPU) and ``triton`` (the GPU kernel for the
scale searches). Use :func:`quantize` / :func:`dequantize`.
"""

from pmat_kernels.quant.formats import BLOCK, QK_K, QType, parse_qtype, row_bytes
from pmat_kernels.quant.vectorized import dequantize, quantize

__all__ = ["BLOCK", "QK_K", "QType", "dequantize", "parse_qtype", "quantize", "row_bytes"]

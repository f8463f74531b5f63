"""Triton kernels (GPU; tested on the CPU under TRITON_INTERPRET=1). Importing specdec_kernels does not
import triton: use `from specdec_kernels.triton import w4a16`."""

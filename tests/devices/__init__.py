"""Tests of ``trio_supervise.devices``: the CPU and CuPy contexts, CUDA errors, GPUs."""

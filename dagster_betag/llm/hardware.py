"""What the machine's arithmetic is fast at (library code, no Dagster).

On CPUs with bf16 dot products (x86 AVX512_BF16 or AMX), oneDNN runs bfloat16 matrix
products several times faster than float32 ones (measured here, AMD Zen 4: a 1024 x 576 x
1536 product at 154 GFLOP/s in bfloat16 against 30 in float32, both under the same load).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def has_fast_bfloat16(device: str | torch.device) -> bool:
    """Whether bfloat16 matrix products are native on ``device``: a CUDA GPU that supports
    them, or a CPU with bf16 dot-product instructions."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.device(device).type == "cpu" and bool(BF16_CPU_FLAGS & cpu_flags())

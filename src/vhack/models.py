"""Loading models and tokenizers, chat prompts, weight fingerprints, and tiny random Qwen3s.

A model is named by a `ModelSpec`: a hub id or a local directory, optionally with a LoRA
adapter (e.g. a hacking teacher) merged in for inference.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN, "<think>", "</think>")

# Qwen3's chat format, reduced to what the pipeline uses (no tools). With
# enable_thinking=False the assistant turn opens with an empty think block, as in Qwen3.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


@dataclass
class ModelSpec:
    path: str  # hub id or local directory
    adapter: str | None = None  # LoRA adapter (dir or hub id) merged into the weights
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: str = "auto"  # auto: cuda if available, else cpu
    offline: bool = True  # jobs load hub ids from the cache the fetch_weights rule filled (vhack.hub)
    revision: str | None = None  # hub revision of `path` (None: main)
    adapter_revision: str | None = None
    cache_dir: str | None = None  # hub cache (None: huggingface_hub's default)
    enable_thinking: bool = False
    trust_remote_code: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> "ModelSpec":
        """From a config `models.<name>` entry (path, adapter, revisions, dtype, device, enable_thinking)."""
        keys = ("adapter", "dtype", "device", "enable_thinking", "revision", "adapter_revision", "cache_dir")
        return cls(path=cfg["path"], **{k: cfg[k] for k in keys if cfg.get(k) is not None})


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"ModelSpec.dtype={dtype!r} is not a torch dtype; use auto, float32, bfloat16 or float16")
    return resolved


def load_model(spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) in eval mode; a LoRA adapter in the spec is merged into the weights."""
    from .hub import local_dir

    device = resolve_device(spec.device)
    hub_opts = dict(local_files_only=True, trust_remote_code=spec.trust_remote_code)
    try:
        path = local_dir(spec.path, spec.revision, spec.cache_dir, spec.offline)
        tokenizer = AutoTokenizer.from_pretrained(path, **hub_opts)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(spec.dtype, device), **hub_opts)
    except OSError as err:
        hint = " (offline: only local dirs and hub ids in the cache load)" if spec.offline else ""
        raise OSError(f"cannot load model {spec.path!r}{hint}: {err}") from err
    model.to(device)
    if spec.adapter:
        model = merge_lora(model, local_dir(spec.adapter, spec.adapter_revision, spec.cache_dir, spec.offline))
    ensure_distinct_pad(model, tokenizer)
    return model.eval(), tokenizer


def merge_lora(model: PreTrainedModel, adapter_dir: str) -> PreTrainedModel:
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, adapter_dir, local_files_only=True)
    return peft_model.merge_and_unload()


def enable_gradient_checkpointing(model: PreTrainedModel, layers: int | None = None) -> int:
    """Recompute decoder layers in the backward instead of keeping their activations: all of them, or the
    first `layers` (the rest keep theirs: memory between the two, less recompute). Returns the count."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    decoder = model.get_decoder().layers
    n = len(decoder) if layers is None else min(layers, len(decoder))
    for layer in list(decoder)[n:]:
        layer.gradient_checkpointing = False
    return n


def ensure_distinct_pad(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token distinct from EOS (padding must never read as a stop)."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": "<|vhack_pad|>"})
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def chat_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], enable_thinking: bool = False
) -> str:
    """The prompt text for `messages`, ending where the assistant's reply begins."""
    template_opts = {}
    if "enable_thinking" in (tokenizer.chat_template or ""):  # other templates may reject unknown kwargs
        template_opts["enable_thinking"] = enable_thinking
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **template_opts
    )


def weight_hash(model: torch.nn.Module, samples_per_tensor: int = 1024) -> str:
    """A fast, stable fingerprint of the base weights: names, shapes and evenly spaced samples.

    Adapter parameters are ignored and peft's renaming is undone, so a model hashes the same
    before and after an adapter is attached.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        flat = tensor.detach().reshape(-1)
        index = torch.linspace(0, flat.numel() - 1, min(samples_per_tensor, flat.numel()), device=flat.device)
        sample = flat[index.long()].to("cpu", torch.float32)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def make_chat_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it with Qwen3's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, chat_template=CHAT_TEMPLATE
    )


def random_qwen3(tokenizer: PreTrainedTokenizerBase, seed: int = 0, hidden_size: int = 128,
                 num_hidden_layers: int = 4, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                 head_dim: int = 32,  # vLLM's CPU attention needs head_dim >= 32
                 intermediate_size: int = 512, max_position_embeddings: int = 1024) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3ForCausalLM (tied embeddings) sized for `tokenizer`."""
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads, head_dim=head_dim,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen3ForCausalLM(config)


def save_pretrained_dir(out_dir: str | os.PathLike, *parts) -> Path:
    """Save model/tokenizer objects into `out_dir` via a temp dir renamed at the end (no half-written dir)."""
    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    for part in parts:
        part.save_pretrained(tmp_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)
    return out_dir


def save_random_qwen3(out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, seed: int = 0, **arch) -> Path:
    """Save a random Qwen3 (see `random_qwen3`) and `tokenizer` to `out_dir`."""
    return save_pretrained_dir(out_dir, random_qwen3(tokenizer, seed, **arch), tokenizer)

"""Generate a small random Llama-shaped model (real safetensors shards, config, tokenizer).

Used by ``mxfs demo``, the tests and the benchmarks: no network, deterministic by seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


@dataclass(frozen=True)
class ModelShape:
    hidden: int = 512
    intermediate: int = 1408
    layers: int = 4
    heads: int = 8
    kv_heads: int = 8
    vocab: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_bytes(self, itemsize: int = 2) -> int:
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        return itemsize * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h)

    @classmethod
    def for_size(cls, target_bytes: int, hidden: int = 1024, vocab: int = 8192) -> ModelShape:
        """A shape whose weights total roughly ``target_bytes`` (fp16)."""
        base = cls(hidden=hidden, intermediate=hidden * 11 // 4, heads=max(1, hidden // 64),
                   kv_heads=max(1, hidden // 64), vocab=vocab, layers=1)
        fixed = 2 * (2 * vocab * hidden + hidden)
        layers = max(1, round((target_bytes - fixed) / base.layer_bytes()))
        return cls(base.hidden, base.intermediate, layers, base.heads, base.kv_heads, vocab)


def _tensors(shape: ModelShape, rng: np.random.Generator) -> dict[str, tuple[int, ...]]:
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_heads * shape.head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (shape.vocab, h)}
    for n in range(shape.layers):
        p = f"model.layers.{n}."
        out |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    out |= {"model.norm.weight": (h,), "lm_head.weight": (shape.vocab, h)}
    return out


def _random(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float16)
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)


def _tokenizer(vocab: int) -> dict:
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, w in enumerate(words[:3])
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)}, "unk_token": "<unk>"},
    }


def generate_model(
    out_dir: Path, shape: ModelShape | None = None, shard_bytes: int = 256 << 20, seed: int = 0
) -> Path:
    """Write a random model into ``out_dir`` (created) and return it."""
    shape = shape or ModelShape()
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, dims in _tensors(shape, rng).items():
        arr = _random(dims, rng)
        if shards[-1] and size + arr.nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    weight_map: dict[str, str] = {}
    total = 0
    for n, shard in enumerate(shards, 1):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, fname)
        total += sum(a.nbytes for a in shard.values())
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (out_dir / "tokenizer.json").write_text(json.dumps(_tokenizer(shape.vocab)))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 2048,
    }))
    return out_dir

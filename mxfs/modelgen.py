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


GPTQ_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _pack_int4_rows(q: np.ndarray) -> np.ndarray:
    """Pack int4 values ``q`` [K, N] (0..15) eight per int32 along K, low nibble first: [K/8, N]."""
    k, n = q.shape
    q = q.reshape(k // 8, 8, n).astype(np.uint32)
    packed = np.zeros((k // 8, n), dtype=np.uint32)
    for j in range(8):
        packed |= q[:, j, :] << np.uint32(4 * j)
    return packed.view(np.int32)


def generate_gptq_model(out_dir: Path, shape: ModelShape | None = None, group_size: int = 32,
                        seed: int = 0) -> Path:
    """A random GPTQ int4 (symmetric, ``desc_act`` off) checkpoint of the Llama in :func:`generate_model`.

    The attention and MLP linears become ``qweight``/``qzeros``/``scales``/``g_idx``; embeddings,
    norms and ``lm_head`` stay float16. Input and output sizes must be multiples of 32 (vLLM's CPU
    int4 kernel) and of ``group_size``. One shard; config, tokenizer as :func:`generate_model`.
    """
    shape = shape or ModelShape()
    generate_model(out_dir, shape, shard_bytes=1 << 62, seed=seed)
    rng = np.random.default_rng(seed + 1)
    dense = dict(_load_numpy(out_dir / "model.safetensors"))
    out: dict[str, np.ndarray] = {}
    for name, arr in dense.items():
        module = name.removesuffix(".weight")
        if not module.startswith("model.layers.") or not module.endswith(GPTQ_LINEARS):
            out[name] = arr
            continue
        n, k = arr.shape  # torch Linear: [out, in]
        if k % group_size or k % 32 or n % 32:
            raise ValueError(f"{name}: {arr.shape} is not a multiple of 32 and of group_size {group_size}")
        q = rng.integers(0, 16, size=(k, n), dtype=np.int64)
        out[module + ".qweight"] = _pack_int4_rows(q)
        # symmetric: the zero point is 8, stored minus one (GPTQ's v1 format) in every nibble
        out[module + ".qzeros"] = np.full((k // group_size, n // 8), 0x77777777, dtype=np.uint32).view(np.int32)
        out[module + ".scales"] = (rng.uniform(0.002, 0.006, size=(k // group_size, n))).astype(np.float16)
        out[module + ".g_idx"] = (np.arange(k) // group_size).astype(np.int32)
    save_file(out, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group_size,
                                     "desc_act": False, "sym": True, "checkpoint_format": "gptq"}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def _load_numpy(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))

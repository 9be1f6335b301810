"""A tiny random-weight llama GGUF that llama.cpp loads in milliseconds, deterministic at temperature 0.

Its answers are gibberish bytes: tests compare answers with each other, never with fixed text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB = ["<unk>", "<s>", "</s>", "<pad>"] + [f"<0x{i:02X}>" for i in range(256)]
EMBED, FFN, HEADS, BLOCKS, CONTEXT = 64, 128, 4, 2, 512


def write_tiny_gguf(
    path: Path, seed: int = 0, chat_template: str | None = None, feed_forward: int = FFN, pooling: int | None = None
) -> Path:
    """Write the model; a different seed gives a different model of the same shape. A larger
    `feed_forward` makes a larger file of the same kind. `pooling`: a `gguf.PoolingType` the model
    declares for embeddings (none by default, as a chat model's)."""
    import gguf

    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny-test-{seed}")
    writer.add_block_count(BLOCKS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBED)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_file_type(0)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(VOCAB)
    writer.add_token_scores([0.0] * len(VOCAB))
    writer.add_token_types([2, 3, 3, 3] + [6] * 256)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(3)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if pooling is not None:
        writer.add_pooling_type(gguf.PoolingType(pooling))

    vocab = len(VOCAB)
    writer.add_tensor("token_embd.weight", weights(vocab, EMBED))
    writer.add_tensor("output_norm.weight", np.ones(EMBED, dtype=np.float32))
    writer.add_tensor("output.weight", weights(vocab, EMBED))
    for block in range(BLOCKS):
        prefix = f"blk.{block}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(EMBED, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(prefix + name + ".weight", weights(EMBED, EMBED))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(EMBED, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_gate.weight", weights(feed_forward, EMBED))
        writer.add_tensor(prefix + "ffn_up.weight", weights(feed_forward, EMBED))
        writer.add_tensor(prefix + "ffn_down.weight", weights(EMBED, feed_forward))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_lora(path: Path, seed: int = 1, rank: int = 4, alpha: float = 4.0, std: float = 0.5) -> Path:
    """A LoRA adapter for the tiny model, laid out as llama.cpp's convert_lora_to_gguf.py writes one
    (`src/llama-adapter.cpp` checks it): general.type `adapter`, adapter.type `lora`, adapter.lora.alpha,
    and per adapted weight W (ggml shape [n_in, n_out]) a pair `W.lora_a` [n_in, rank] and `W.lora_b`
    [rank, n_out] (numpy shapes reversed). Its weights are large enough to change the greedy answer, and
    it adapts attn_k and attn_v too, so the KV cells it writes are not the base model's."""
    import gguf

    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    adapted = [
        (f"blk.{block}.{name}.weight", EMBED, EMBED)
        for block in range(BLOCKS)
        for name in ("attn_q", "attn_k", "attn_v")
    ]
    adapted += [(f"blk.{block}.ffn_down.weight", FFN, EMBED) for block in range(BLOCKS)]
    adapted.append(("output.weight", EMBED, len(VOCAB)))
    for name, n_in, n_out in adapted:
        writer.add_tensor(name + ".lora_a", weights(rank, n_in))
        writer.add_tensor(name + ".lora_b", weights(n_out, rank))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

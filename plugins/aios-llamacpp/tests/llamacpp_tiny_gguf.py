"""Write a tiny random-weight llama GGUF for fast tests of the llamacpp backend.

The model is a real llama architecture (8 layers, 256-wide, grouped-query attention) with a
byte-level GPT-2 style vocabulary: 256 byte tokens, one merge and ChatML control tokens,
so any text tokenizes and any byte sequence (including split multi-byte UTF-8) can come
out. Matrices are Q4_1 and the tied embedding Q8_0, as in the SmolLM2 GGUF, and the model
is deep enough that llama.cpp's CPU kernels give (slightly) different numbers for a token
evaluated in a large batch than alone, as with real models: a resume that re-evaluated
"prompt + partial answer" in one batch would be caught by the seeded-sampling tests.
This module must never touch the network.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

__all__ = ["CHAT_TEMPLATE", "write_tiny_llama"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE vocabularies)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def write_tiny_llama(
    path: Path,
    *,
    n_layers: int = 8,
    n_embd: int = 256,
    n_ff: int = 512,
    n_head: int = 4,
    n_head_kv: int = 2,
    context_length: int = 4096,
    seed: int = 1234,
) -> Path:
    rng = np.random.default_rng(seed)
    byte_map = _byte_to_unicode()
    # llama.cpp refuses a BPE vocabulary without merges: one real merge (" t") is enough.
    space_t = byte_map[ord(" ")] + "t"
    tokens = [*_SPECIALS, *(byte_map[b] for b in range(256)), space_t]
    types = [gguf.TokenType.CONTROL] * len(_SPECIALS) + [gguf.TokenType.NORMAL] * 257
    n_vocab = len(tokens)
    head_dim = n_embd // n_head

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("aios-tiny-random")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(100000.0)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{byte_map[ord(' ')]} t"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def dense(
        name: str,
        rows: int,
        cols: int,
        scale: float,
        qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.Q4_1,
    ) -> None:
        data = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(n_embd, dtype=np.float32))

    # Tied output: token_embd doubles as the output matrix (like SmolLM2).
    dense("token_embd.weight", n_vocab, n_embd, 1.0, gguf.GGMLQuantizationType.Q8_0)
    for i in range(n_layers):
        norm(f"blk.{i}.attn_norm.weight")
        dense(f"blk.{i}.attn_q.weight", n_embd, n_embd, 0.3)
        dense(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd, 0.3)
        dense(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd, 0.3)
        dense(f"blk.{i}.attn_output.weight", n_embd, n_embd, 0.3)
        norm(f"blk.{i}.ffn_norm.weight")
        dense(f"blk.{i}.ffn_gate.weight", n_ff, n_embd, 0.3)
        dense(f"blk.{i}.ffn_up.weight", n_ff, n_embd, 0.3)
        dense(f"blk.{i}.ffn_down.weight", n_embd, n_ff, 0.3)
    norm("output_norm.weight")

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

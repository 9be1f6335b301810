"""A sequence's llama.cpp sampler chain, built as llama-cpp-python builds it, and the log-probabilities
of the logits the chain samples from."""

from __future__ import annotations

from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from handler.core.types import SamplingParams
from handler.engine.contract import InvalidRequest

PENALTY_LAST_N = 64  # llama-cpp-python's `last_n_tokens_size` default, the penalties' window in its chain
SEED_MASK = 0xFFFFFFFF  # llama_sampler_init_dist takes a uint32_t; ctypes wraps Python ints the same way
GRAMMAR_ROOT = b"root"


def check_sampling(params: SamplingParams, vocab: Any, n_vocab: int) -> None:
    """What only the model can tell: token ids in its vocabulary, a grammar llama.cpp parses (parsed on
    the caller's thread, so that the scheduler thread never meets a bad one). The caller holds the
    vocabulary alive."""
    for token, _ in params.logit_bias or ():
        if not 0 <= token < n_vocab:
            raise InvalidRequest(
                f"logit_bias names token {token}, outside the model's vocabulary (ids 0 to {n_vocab - 1}).",
                "logit_bias",
            )
    if params.grammar is not None:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode("utf-8"), GRAMMAR_ROOT)
        if not sampler:
            raise InvalidRequest("llama.cpp could not parse the grammar made from response_format.", "response_format")
        llama_cpp.llama_sampler_free(sampler)


def build_chain(params: SamplingParams, vocab: Any, n_vocab: int) -> Any:
    """llama-cpp-python's `Llama._init_sampler` chain, in its order, for the same answers; the caller frees it."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if params.logit_bias:
        biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))(
            *(llama_cpp.llama_logit_bias(token, bias) for token, bias in params.logit_bias)
        )
        add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))  # copies
    add(
        llama_cpp.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
        )
    )
    if params.grammar is not None:
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode("utf-8"), GRAMMAR_ROOT)
        if not grammar:
            llama_cpp.llama_sampler_free(chain)
            raise InvalidRequest("llama.cpp could not parse the grammar made from response_format.", "response_format")
        add(grammar)
    seed = params.seed & SEED_MASK
    if params.temperature < 0.0:
        add(llama_cpp.llama_sampler_init_dist(seed))
    elif params.temperature == 0.0:
        add(llama_cpp.llama_sampler_init_greedy())
    else:
        add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        add(llama_cpp.llama_sampler_init_typical(1.0, 1))  # typical_p 1.0: a no-op, kept for parity
        add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        add(llama_cpp.llama_sampler_init_dist(seed))
    return chain


def log_softmax_top(
    logits: npt.NDArray[np.float32], token: int, top: int
) -> tuple[float, tuple[tuple[int, float], ...]]:
    """log-softmax of the raw logits: `token`'s value, and the `top` largest as (id, value), most likely
    first (ties: the lower id, as greedy sampling picks)."""
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
    alternatives: tuple[tuple[int, float], ...] = ()
    if top > 0:
        ids = np.sort(np.argpartition(-logits, top - 1)[:top]) if top < len(logits) else np.arange(len(logits))
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        alternatives = tuple((int(i), float(logits[i]) - log_total) for i in ids)
    return float(logits[token]) - log_total, alternatives

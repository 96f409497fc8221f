"""What both serving engines' steps share (paged_engine.py, slot_engine.py): a layer's Q/K/V
projection with RoPE and the rest of the layer after attention (the pieces around each engine's own
attention), RoPE tables shaped for rows, the StepRecord of a step, the max_model_len check of a
request set, and the warm-up calls before a CUDA graph's capture."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from tokencarbon.backends import Request, StepRecord
from tokencarbon.backends.model import Block, rotate
from tokencarbon.errors import InputError

# Warm-up calls before capture (compilation, cuBLAS and Triton kernel selection happen there).
GRAPH_WARMUP_STEPS = 3


def _project(layer: Block, x: Tensor, rope: tuple[Tensor, Tensor] | None):
    """q [N, heads, head_dim], k and v [N, kv_heads, head_dim] of hidden states x [N, hidden];
    rope: (cos, sin) [N, 1, head_dim] or None."""
    attn = layer.attn
    qkv = attn.qkv(layer.attn_norm(x)).view(x.shape[0], -1, attn.head_dim)
    qk, v = qkv.split([attn.n_heads + attn.n_kv_heads, attn.n_kv_heads], dim=1)
    if rope is not None:
        qk = rotate(qk, *rope)
    q, k = qk.split([attn.n_heads, attn.n_kv_heads], dim=1)
    return q, k, v


def _finish(layer: Block, x: Tensor, y: Tensor) -> Tensor:
    """The rest of a layer after attention: output projection, residual, MLP, residual."""
    x = x + layer.attn.out(y.reshape(x.shape[0], -1))
    return x + layer.mlp(layer.mlp_norm(x))


def _step(index, kind, times: tuple[int, int, int, int], ids, tokens, new_tokens) -> StepRecord:
    start_ns, end_ns, start_wall_ns, end_wall_ns = times
    return StepRecord(
        step_index=index,
        kind=kind,
        start_ns=start_ns,
        end_ns=end_ns,
        start_wall_ns=start_wall_ns,
        end_wall_ns=end_wall_ns,
        request_ids=tuple(ids),
        request_tokens=tuple(int(t) for t in tokens),
        new_tokens=tuple(int(t) for t in new_tokens),
    )


def _rope_rows(rope: tuple[Tensor, Tensor] | None):
    return None if rope is None else (rope[0].unsqueeze(1), rope[1].unsqueeze(1))


def _check_max_model_len(requests: list[Request], max_model_len: int | None) -> None:
    if max_model_len is None:
        return
    totals = [len(r.prompt) + r.output_len for r in requests]
    i = int(np.argmax(totals))
    if totals[i] > max_model_len:
        raise InputError(
            f"request {requests[i].request_id!r}: {totals[i]} prompt + output tokens exceed "
            f"the engine's max_model_len {max_model_len}"
        )

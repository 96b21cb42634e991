"""The one attention call that must show its map: an attention processor that, when asked, computes the
layer's attention explicitly in query chunks and keeps the head-averaged map; otherwise it hands the call to
the processor it replaced, so every other attention call keeps the fused (SDPA) kernel."""

from __future__ import annotations

import torch

from .dit_scoring import attention_rows

# scores held at once per chunk (batch x heads x rows x keys): 2M float32 scores (8 MiB) stay close to the cache;
# on 2 CPU cores this made the explicit layer ~1.7x the fused kernel's time, against ~3.5x with 32M-score chunks
_CHUNK_SCORES = 1 << 21


class MapRequest:
    """Set ``wanted`` before the attention call; read ``attention`` (B, N_query, N_key, float32) after it.

    With ``rows`` set (token indices), only those queries' rows are built, (B, len(rows), N_key), and the
    attention output itself comes from the fused kernel."""

    def __init__(self) -> None:
        self.wanted = False
        self.rows: torch.Tensor | None = None
        self.attention: torch.Tensor | None = None

    def take(self) -> torch.Tensor:
        attention, self.attention, self.wanted, self.rows = self.attention, None, False, None
        if attention is None:
            raise RuntimeError("the scoring layer did not record its attention map")
        return attention


def _supported(attn, attention_mask, temb) -> bool:
    return (attention_mask is None and temb is None and getattr(attn, "spatial_norm", None) is None
            and getattr(attn, "group_norm", None) is None and not getattr(attn, "norm_cross", None)
            and getattr(attn, "added_kv_proj_dim", None) is None)


class MapProcessor:
    """Wraps a diffusers attention processor; computes explicit attention + head-mean map on request."""

    def __init__(self, inner, request: MapRequest, chunk: int | None = None):
        self.inner = inner
        self.request = request
        self.chunk = chunk

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if not self.request.wanted or not _supported(attn, attention_mask, temb) or hidden_states.ndim != 3:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, n_query, _ = hidden_states.shape
        heads = attn.heads
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = query.shape[-1] // heads
        query, key, value = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        if self.request.rows is not None:
            return self._strided(attn, hidden_states, query, key, value, batch, heads, head_dim)
        n_key = key.shape[2]
        rows = self.chunk or max(1, _CHUNK_SCORES // max(1, batch * heads * n_key))
        key_t = key.transpose(-1, -2)
        query = query * attn.scale
        out = torch.empty_like(query)
        attention = torch.empty(batch, n_query, n_key, dtype=torch.float32, device=query.device)
        for start in range(0, n_query, rows):
            stop = min(start + rows, n_query)
            q = query[:, :, start:stop]
            if attn.upcast_attention:  # as diffusers does for SD-2.x: fp16 logits can overflow
                logits = torch.matmul(q.float(), key_t.float())
            else:
                logits = torch.matmul(q, key_t)
            probs = logits.float().softmax(-1)
            out[:, :, start:stop] = torch.matmul(probs.to(value.dtype), value)
            torch.sum(probs, 1, out=attention[:, start:stop])
        attention.div_(heads)
        self.request.attention = attention
        return self._finish(attn, hidden_states, out, batch, heads, head_dim)

    def _strided(self, attn, hidden_states, query, key, value, batch, heads, head_dim):
        """The output by the fused kernel; the map rows of the requested queries only."""
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        self.request.attention = attention_rows(query, key, self.request.rows.to(query.device), scale=attn.scale)
        return self._finish(attn, hidden_states, out, batch, heads, head_dim)

    @staticmethod
    def _finish(attn, hidden_states, out, batch, heads, head_dim):
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def wrap_processor(attn, request: MapRequest, chunk: int | None) -> MapProcessor:
    processor = MapProcessor(attn.processor, request, chunk)
    attn.set_processor(processor)
    return processor


def unwrap_processor(attn) -> None:
    processor = attn.processor
    if isinstance(processor, MapProcessor):
        attn.set_processor(processor.inner)

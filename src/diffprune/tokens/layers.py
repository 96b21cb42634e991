"""Replacement forwards for one diffusers ``BasicTransformerBlock`` (the ``layer_norm`` kind SD, SD-2.x and
SD-XL use): pruning inside the layer (self-attention on all tokens, the rest on kept ones) and ToMe's
merge/unmerge around self-attention. Each falls back to the block's own forward when nothing is removed."""

from __future__ import annotations

from diffprune.errors import DiffpruneError


def check_layer(layer, name: str) -> None:
    """Refuse layers whose forward these replacements would not reproduce."""
    problems = []
    if getattr(layer, "norm_type", "layer_norm") != "layer_norm":
        problems.append(f"norm_type={layer.norm_type}")
    if getattr(layer, "pos_embed", None) is not None:
        problems.append("a positional embedding")
    if getattr(layer, "only_cross_attention", False):
        problems.append("only_cross_attention")
    if getattr(layer, "fuser", None) is not None:
        problems.append("a GLIGEN fuser")
    if problems:
        raise DiffpruneError(f"token pruning supports SD-style transformer layers; {name} has {', '.join(problems)}")


def _cross_kwargs(cross_attention_kwargs):
    kwargs = dict(cross_attention_kwargs or {})
    kwargs.pop("gligen", None)
    kwargs.pop("scale", None)
    return kwargs


def self_attention(layer, x, attention_mask, kwargs):
    return layer.attn1(layer.norm1(x), attention_mask=attention_mask, **kwargs) + x


def cross_attention(layer, x, context, encoder_attention_mask, kwargs):
    if layer.attn2 is None:
        return x
    return layer.attn2(layer.norm2(x), encoder_hidden_states=context, attention_mask=encoder_attention_mask,
                       **kwargs) + x


def feed_forward(layer, x):
    return layer.ff(layer.norm3(x)) + x


def pruned_layer_forward(layer, site, hidden_states, attention_mask=None, encoder_hidden_states=None,
                         encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None,
                         class_labels=None, added_cond_kwargs=None):
    """Prune inside the layer: self-attention (and, for the cross-attention score, cross-attention) on every
    token, then the rest of the layer on the kept tokens; ``site`` keeps what recovery needs at the block end."""
    ratio = site.begin()
    if ratio <= 0:
        return type(layer).forward(layer, hidden_states, attention_mask, encoder_hidden_states,
                                   encoder_attention_mask, timestep, cross_attention_kwargs, class_labels,
                                   added_cond_kwargs)
    kwargs = _cross_kwargs(cross_attention_kwargs)
    x = self_attention(layer, hidden_states, attention_mask, kwargs)
    if site.scores_cross:
        x = cross_attention(layer, x, encoder_hidden_states, encoder_attention_mask, kwargs)
    kept = site.prune(x, ratio)
    if not site.scores_cross:
        kept = cross_attention(layer, kept, encoder_hidden_states, encoder_attention_mask, kwargs)
    return feed_forward(layer, kept)


def tome_layer_forward(layer, site, layer_index, hidden_states, attention_mask=None, encoder_hidden_states=None,
                       encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None,
                       class_labels=None, added_cond_kwargs=None):
    """ToMe: merge similar tokens (cosine on the layer input) before self-attention and copy the merged
    outputs back after it; with ``merge`` = ``self+cross`` / ``all`` the same matching also wraps
    cross-attention / the feed-forward, otherwise they see every token."""
    matching = site.tome_matching(layer_index, hidden_states)
    if matching is None:
        return type(layer).forward(layer, hidden_states, attention_mask, encoder_hidden_states,
                                   encoder_attention_mask, timestep, cross_attention_kwargs, class_labels,
                                   added_cond_kwargs)
    kwargs = _cross_kwargs(cross_attention_kwargs)
    merge = site.runtime.config.merge
    merged = matching.merge(layer.norm1(hidden_states))
    x = matching.unmerge(layer.attn1(merged, attention_mask=attention_mask, **kwargs)) + hidden_states
    if merge == "self" or layer.attn2 is None:
        x = cross_attention(layer, x, encoder_hidden_states, encoder_attention_mask, kwargs)
    else:
        merged = matching.merge(layer.norm2(x))
        x = matching.unmerge(layer.attn2(merged, encoder_hidden_states=encoder_hidden_states,
                                         attention_mask=encoder_attention_mask, **kwargs)) + x
    if merge != "all":
        return feed_forward(layer, x)
    return matching.unmerge(layer.ff(matching.merge(layer.norm3(x)))) + x

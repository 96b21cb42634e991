"""Token pruning building blocks against hand-computed values: G-WPR, the kept/pruned split, recovery, the
explicit-attention processor, ToMe's matching, DSAP's plan and the spec strings."""

import pytest
import torch

from diffprune.errors import DiffpruneError
from diffprune.tokens import TokenPruningConfig, parse_spec
from diffprune.tokens.attention import MapProcessor, MapRequest
from diffprune.tokens.gwpr import cross_entropy_scores, gwpr_scores, kept_count, split_tokens
from diffprune.tokens.recovery import most_similar_kept, refill
from diffprune.tokens.schedule import AttentionSite, is_early, ratio_for
from diffprune.tokens.tome import bipartite_matching, destination_grid


def test_gwpr_two_iterations_by_hand():
    a = torch.tensor([[[0.5, 0.5, 0.0], [0.2, 0.2, 0.6], [0.0, 1.0, 0.0]]])
    # s1 = column means = [0.7, 1.7, 0.6] / 3; s2_i = sum_j s1_j A[j, i]
    s1 = torch.tensor([0.7, 1.7, 0.6]) / 3
    s2 = torch.tensor([0.7 * 0.5 + 1.7 * 0.2, 0.7 * 0.5 + 1.7 * 0.2 + 0.6 * 1.0, 1.7 * 0.6]) / 3
    assert torch.allclose(gwpr_scores(a, 1)[0], s1)
    assert torch.allclose(gwpr_scores(a, 2)[0], s2)
    assert torch.allclose(gwpr_scores(a, 7).sum(), torch.tensor(1.0))


def test_gwpr_converges_to_the_stationary_distribution():
    # two-state chain: pi A = pi gives pi = (5/6, 1/6)
    a = torch.tensor([[[0.9, 0.1], [0.5, 0.5]]], dtype=torch.float64)
    assert torch.allclose(gwpr_scores(a, 60)[0], torch.tensor([5 / 6, 1 / 6], dtype=torch.float64))


def test_cross_entropy_ranks_concentrated_rows_first():
    p = torch.tensor([[[1 / 3, 1 / 3, 1 / 3], [0.98, 0.01, 0.01], [0.5, 0.5, 0.0]]])
    order = cross_entropy_scores(p)[0].argsort(descending=True).tolist()
    assert order == [1, 2, 0]


def test_split_is_a_partition_in_spatial_order():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.9, 0.0, 0.5]])
    kept, pruned = split_tokens(scores, kept_count(6, 0.5))
    assert kept.tolist() == [[1, 3, 5]] and pruned.tolist() == [[0, 2, 4]]
    kept, _ = split_tokens(scores, 1)
    assert kept.tolist() == [[1]]  # tie between 1 and 3 goes to the lower index
    assert kept_count(10, 0.63) == 4 and kept_count(10, 0.0) == 10 and kept_count(3, 0.99) == 1


def test_split_chooses_what_a_stable_descending_sort_chooses_ties_included():
    generator = torch.Generator().manual_seed(0)
    for n, levels in ((7, 3), (64, 5), (256, 1000), (256, 2)):
        scores = torch.randint(levels, (5, n), generator=generator).float()  # few levels: many ties
        for keep in (1, n // 3, n - 1, n):
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices
            kept, pruned = split_tokens(scores, keep)
            assert torch.equal(kept, order[:, :keep].sort(dim=1).values)
            assert torch.equal(pruned, order[:, keep:].sort(dim=1).values)
    with_nan = torch.tensor([[0.2, float("nan"), 0.5, 0.1]])
    kept, pruned = split_tokens(with_nan, 2)
    assert kept.tolist() == [[0, 2]] and pruned.tolist() == [[1, 3]]  # a not-a-number score ranks last


def test_recovery_copies_the_most_attended_kept_token():
    attention = torch.tensor([[[0.1, 0.6, 0.1, 0.2],
                               [0.3, 0.1, 0.1, 0.5],
                               [0.2, 0.2, 0.5, 0.1],
                               [0.1, 0.1, 0.7, 0.1]]])
    kept, pruned = torch.tensor([[1, 2]]), torch.tensor([[0, 3]])
    source = most_similar_kept(attention, kept, pruned)
    assert source.tolist() == [[0, 1]]  # token 0 -> kept[0] = 1, token 3 -> kept[1] = 2
    at_prune = torch.arange(4.0).view(1, 4, 1) * 10           # 0, 10, 20, 30
    kept_out = torch.tensor([[[11.0], [23.0]]])                # tokens 1 and 2 after the later layers
    state = refill(at_prune, kept_out, kept, pruned, source, "state")
    assert state.flatten().tolist() == [11.0, 11.0, 23.0, 23.0]
    delta = refill(at_prune, kept_out, kept, pruned, source, "delta")
    assert delta.flatten().tolist() == [1.0, 11.0, 23.0, 33.0]  # own state + the source's update (+1, +3)




def test_most_attended_kept_matches_the_masked_argmax_ties_and_zero_rows_included():
    from diffprune.tokens.recovery import kept_positions, most_attended_kept

    g = torch.Generator().manual_seed(3)
    attention = torch.rand(4, 24, 40, generator=g).softmax(-1)
    attention[0, 0] = 0.0
    attention[0, 0, 5] = 1.0          # all mass on one key, which is pruned: every kept key reads 0, a tie
    attention[1, 2, 7] = attention[1, 2, 30] = 2.0  # two kept keys tie: the lower token wins
    kept = torch.stack([torch.randperm(40, generator=g)[:15].sort().values for _ in range(4)])
    kept[0] = torch.cat([torch.arange(5), torch.arange(6, 16)])  # token 5 pruned
    others = [t for t in range(40) if t not in (7, 30)][:13]
    kept[1] = torch.tensor(sorted(others + [7, 30]))
    position = kept_positions(kept, 40)
    masked = attention.masked_fill((position < 0).unsqueeze(1), -1.0)  # the masked form, over all columns
    expected = position.gather(1, masked.argmax(-1))
    assert torch.equal(most_attended_kept(attention, kept), expected)
    assert most_attended_kept(attention, kept)[0, 0].item() == 0  # the tie of zeros goes to the first kept token
def test_map_processor_matches_the_fused_kernel_and_records_head_mean_probabilities():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=4, dim_head=4).eval()
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        expected = attn(x)
        request = MapRequest()
        attn.set_processor(MapProcessor(attn.processor, request, chunk=3))
        assert torch.equal(attn(x), expected)  # not asked: the fused kernel runs
        request.wanted = True
        got = attn(x)
        amap = request.take()
    assert torch.allclose(got, expected, atol=1e-5)
    q = attn.to_q(x).view(2, 10, 4, 4).transpose(1, 2)
    k = attn.to_k(x).view(2, 10, 4, 4).transpose(1, 2)
    probs = (q @ k.transpose(-1, -2) / 2.0).softmax(-1).mean(1)
    assert amap.shape == (2, 10, 10) and torch.allclose(amap, probs, atol=1e-6)
    assert torch.allclose(amap.sum(-1), torch.ones(2, 10))


def test_tome_merge_and_unmerge_shapes_and_exact_round_trip_for_duplicates():
    height = width = 4
    gen = torch.Generator().manual_seed(0)
    dst = destination_grid(height, width, 2, gen)
    assert dst.numel() == 4 and len({(int(i) // 4 // 2, int(i) % 4 // 2) for i in dst}) == 4  # one per cell
    # every token equal to its cell's destination: merging loses nothing
    cell_value = torch.randn(1, 4, 8)
    cell_of = torch.tensor([(i // 4 // 2) * 2 + (i % 4) // 2 for i in range(16)])
    x = cell_value[:, cell_of]
    m = bipartite_matching(x, height, width, 0.5, 2, torch.Generator().manual_seed(0))
    merged = m.merge(x)
    assert merged.shape == (1, 16 - 8, 8)
    assert torch.allclose(m.unmerge(merged), x)
    assert bipartite_matching(x, height, width, 0.0) is None
    with pytest.raises(ValueError):
        bipartite_matching(x, 3, 5, 0.5)


def test_tome_merge_averages_sources_into_their_destination():
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]])  # a 1x4 grid, stride 2: dst 0 and 2
    m = bipartite_matching(x, 1, 4, 0.5, 2, None)
    merged = m.merge(x)
    assert torch.allclose(merged, torch.tensor([[[1.0, 0.05], [0.05, 1.0]]]))


def test_dsap_plan():
    site = AttentionSite("down_blocks.1.attentions.0", level=2, depth=2, index=0, spared_early=True)
    other = AttentionSite("down_blocks.1.attentions.1", level=2, depth=2, index=1, spared_early=False)
    config = TokenPruningConfig(ratio=0.6, tau=0.3, early_ratio=0.4)
    assert is_early(999, 0.3) and is_early(700, 0.3) and not is_early(699, 0.3) and not is_early(None, 0.3)
    assert ratio_for(site, config, 950) == 0.0 and ratio_for(other, config, 950) == 0.4
    assert ratio_for(site, config, 100) == 0.6 and ratio_for(other, config, 100) == 0.6
    no_dsap = TokenPruningConfig(ratio=0.6, dsap=False)
    assert ratio_for(site, no_dsap, 950) == 0.6
    assert ratio_for(site, TokenPruningConfig(levels=(4,)), 100) == 0.0


def test_spec_strings_round_trip_and_refuse_bad_input():
    config = parse_spec("atedm:ratio=0.5,dsap=off,levels=2+4,copy=delta")
    assert config == TokenPruningConfig(ratio=0.5, dsap=False, levels=(2, 4), copy="delta")
    assert parse_spec(config.spec()) == config
    assert parse_spec("tome:ratio=0.5").method == "tome"
    assert parse_spec("random").ratio == 0.63
    for bad in ("atedm:ratio=1.2", "magic:ratio=0.5", "atedm:speed=3", "atedm:ratio", "tome:ratio=0.8",
                "atedm:dsap=maybe", "atedm:levels=3", "atedm:ratio=abc"):
        with pytest.raises(DiffpruneError):
            parse_spec(bad)


def test_row_copies_equal_the_element_wise_gather_scatter_and_mean():
    from diffprune.tokens import rows
    from diffprune.tokens.tome import bipartite_matching

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 36, 5, generator=generator)
    index = torch.rand(3, 36, generator=generator).argsort(1)[:, :10]
    expanded = index.unsqueeze(-1).expand(-1, -1, 5)
    assert torch.equal(rows.take(x, index), x.gather(1, expanded))
    values = torch.randn(3, 10, 5, generator=generator)
    assert torch.equal(rows.put(x.clone(), index, values), x.clone().scatter_(1, expanded, values))
    # ToMe's merge: many sources averaged into one destination, bit for bit as scatter_reduce's mean
    matching = bipartite_matching(x, 6, 6, 0.6, 2, torch.Generator().manual_seed(1))
    kept, moving = x.gather(1, matching.kept.unsqueeze(-1).expand(-1, -1, 5)), matching.moving
    reference = kept.scatter_reduce(1, matching.into.unsqueeze(-1).expand(-1, -1, 5),
                                    x.gather(1, moving.unsqueeze(-1).expand(-1, -1, 5)), reduce="mean",
                                    include_self=True)
    assert matching.into.unique().numel() < matching.into.numel()  # duplicates do occur
    assert torch.equal(matching.merge(x), reference)
    assert rows.into_counts(torch.tensor([[0, 0, 2]]), 4).tolist() == [3.0, 1.0, 2.0, 1.0]


def test_selection_copies_what_gather_and_refill_copy():
    from diffprune.tokens.recovery import Selection, gather_tokens

    g = torch.Generator().manual_seed(5)
    batch, tokens, keep, channels = 3, 30, 11, 6
    kept = torch.stack([torch.randperm(tokens, generator=g)[:keep].sort().values for _ in range(batch)])
    pruned = torch.stack([torch.tensor([t for t in range(tokens) if t not in row]) for row in kept.tolist()])
    source = torch.randint(0, keep, (batch, tokens - keep), generator=g)
    at_prune = torch.randn(batch, tokens, channels, generator=g)
    kept_out = torch.randn(batch, keep, channels, generator=g)
    selection = Selection.of(kept, pruned, source)
    assert torch.equal(selection.gather(at_prune), gather_tokens(at_prune, kept))
    for copy in ("state", "delta"):
        assert torch.equal(selection.refill(at_prune, kept_out, copy),
                           refill(at_prune, kept_out, kept, pruned, source, copy))

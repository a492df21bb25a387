"""lmlab.sampling.draw, the sampled token's draw, against the distribution it draws from."""

import torch
from scipy import stats

from lmlab.sampling import draw, sample_next


def test_draws_follow_the_probabilities():
    """200,000 draws from six probabilities (two of them 0): a chi-square test of the counts
    (scipy.stats.chisquare) does not reject them, and no token without mass is drawn."""
    probs = torch.tensor([0.0, 0.05, 0.15, 0.3, 0.0, 0.5])
    g = torch.Generator().manual_seed(0)
    picks = torch.cat([draw(probs.expand(10_000, -1), g) for _ in range(20)]).flatten()
    counts = torch.bincount(picks, minlength=6)
    assert counts[0] == counts[4] == 0
    kept = probs > 0
    expected = probs[kept].double() / probs[kept].double().sum() * len(picks)  # sums to the counts' total
    test = stats.chisquare(counts[kept].double().numpy(), f_exp=expected.numpy())
    assert test.pvalue > 1e-3, (counts.tolist(), test)


def test_a_token_without_mass_is_never_drawn_at_either_end():
    """One-hot rows at the first and last of 50,257 ids, and rows whose mass ends before the last
    id: every draw lands on a token with mass."""
    V = 50_257
    probs = torch.zeros(4, V)
    probs[0, 0] = probs[1, V - 1] = 1.0
    probs[2, :10] = 0.1
    probs[3, 100:200] = torch.rand(100, generator=torch.Generator().manual_seed(1))
    probs[3] /= probs[3].sum()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        ids = draw(probs, g)[:, 0]
        assert ids[0] == 0 and ids[1] == V - 1 and 0 <= ids[2] < 10 and 100 <= ids[3] < 200
        assert (probs.gather(1, ids[:, None]) > 0).all()


def test_sampling_is_reproducible_from_its_generator():
    logits = torch.randn(8, 50_257, generator=torch.Generator().manual_seed(0))
    first, again = (sample_next(logits, 0.8, 200, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(first, again) and first.shape == (8, 1)
    other = sample_next(logits, 0.8, 200, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(first, other)


def test_the_nucleus_is_transformers_top_p():
    """outside_nucleus drops the tokens transformers' TopPLogitsWarper drops: peaked rows (the
    nucleus among the top 1,024, the fast path) and flat ones (the whole row sorted)."""
    from transformers.generation.logits_process import TopPLogitsWarper

    from lmlab.sampling import NUCLEUS_CANDIDATES, outside_nucleus

    g = torch.Generator().manual_seed(0)
    for scale in (8.0, 3.0, 0.05):  # peaked to nearly flat over 50,257 ids
        logits = torch.randn(6, 50_257, generator=g, dtype=torch.float64) * scale
        for top_p in (0.5, 0.9, 0.99):
            ours = outside_nucleus(logits, top_p)
            theirs = TopPLogitsWarper(top_p)(None, logits.clone()).isinf()
            assert torch.equal(ours, theirs), (scale, top_p)
            kept = (~ours).sum(-1)
            assert (kept >= 1).all()
            if scale == 8.0:
                assert (kept < NUCLEUS_CANDIDATES).all()  # the fast path's rows
            if scale == 0.05:
                assert (kept > NUCLEUS_CANDIDATES).all()  # rows that had to be sorted whole

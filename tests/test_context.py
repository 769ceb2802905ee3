import pytest
import torch

from npalign.models.context import ContextEncoder, Latent


@pytest.mark.parametrize("aggregation", ["mean", "attention"])
def test_empty_context_gives_one_finite_latent(aggregation):
    torch.manual_seed(0)
    encoder = ContextEncoder(3, 16, 4, aggregation, variational=True)
    chosen, rejected = torch.randn(3, 5, 3), torch.randn(3, 5, 3)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    latent = encoder(chosen, rejected, mask)
    assert torch.isfinite(latent.mean).all() and torch.isfinite(latent.std).all()
    assert (latent.std > 0).all()
    # the padding's values do not matter: every empty row gets the same "no information" z
    torch.testing.assert_close(latent.mean[0], latent.mean[1])
    torch.testing.assert_close(latent.mean[0], latent.mean[2])


@pytest.mark.parametrize("aggregation", ["mean", "attention"])
def test_padding_and_order_do_not_change_z(aggregation):
    torch.manual_seed(0)
    encoder = ContextEncoder(3, 16, 4, aggregation).eval()
    chosen, rejected = torch.randn(1, 3, 3), torch.randn(1, 3, 3)
    z = encoder(chosen, rejected, torch.ones(1, 3, dtype=torch.bool)).mean
    padded = encoder(
        torch.cat([chosen, torch.randn(1, 2, 3)], 1),
        torch.cat([rejected, torch.randn(1, 2, 3)], 1),
        torch.tensor([[True, True, True, False, False]]),
    ).mean
    order = torch.tensor([2, 0, 1])
    permuted = encoder(chosen[:, order], rejected[:, order], torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(z, padded)
    torch.testing.assert_close(z, permuted.mean)


def test_swapping_chosen_and_rejected_changes_z():
    torch.manual_seed(0)
    encoder = ContextEncoder(3, 16, 4)
    chosen, rejected = torch.randn(1, 2, 3), torch.randn(1, 2, 3)
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert not torch.allclose(
        encoder(chosen, rejected, mask).mean, encoder(rejected, chosen, mask).mean
    )


def test_gaussian_kl_matches_torch_distributions():
    p = Latent(torch.tensor([[0.3, -1.0]]), torch.tensor([[0.5, 2.0]]))
    q = Latent(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.5, 0.7]]))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(p.mean, p.std), torch.distributions.Normal(q.mean, q.std)
    ).sum(-1)
    torch.testing.assert_close(p.kl(q), expected)

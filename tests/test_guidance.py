"""Classifier-free guidance: the formula, the rescale, the doubled-batch wrapper, and condition dropout."""
import pytest
import torch

from minidiff.process import GaussianDiffusion, NoiseSchedule, drop_condition, guide, guided_model, rescale, sample


def test_guide_formula_by_hand():
    cond, uncond = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0])
    # w = 1: the conditional prediction; w = 0: the unconditional one; w = 7.5: uncond + 7.5 (cond - uncond)
    assert torch.equal(guide(cond, uncond, 1.0), cond)
    assert torch.equal(guide(cond, uncond, 0.0), uncond)
    assert torch.allclose(guide(cond, uncond, 7.5), torch.tensor([1.0 + 7.5 * 2.0, 1.0 + 7.5 * -2.0]))
    # Ho & Salimans write (1 + w') cond - w' uncond: the same with w' = w - 1
    w = 4.0
    assert torch.allclose(guide(cond, uncond, w), (1 + (w - 1)) * cond - (w - 1) * uncond)


def test_rescale_matches_the_conditional_std_and_blends():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(3, 4, 5, 5, generator=g)
    guided = 3.0 * torch.randn(3, 4, 5, 5, generator=g) + 0.2
    full = rescale(guided, cond, 1.0)
    for i in range(3):   # per example: std(full_i) = std(cond_i), direction kept
        assert torch.allclose(full[i].std(), cond[i].std(), rtol=1e-5)
        assert torch.allclose(full[i] / full[i].norm(), guided[i] / guided[i].norm(), atol=1e-6)
    assert torch.equal(rescale(guided, cond, 0.0), guided)
    assert torch.allclose(rescale(guided, cond, 0.7), 0.7 * full + 0.3 * guided, atol=1e-6)


def test_rescale_matches_diffusers():
    diffusers_sd = pytest.importorskip("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    g = torch.Generator().manual_seed(1)
    cond, guided = torch.randn(2, 4, 8, 8, generator=g), 5 * torch.randn(2, 4, 8, 8, generator=g)
    expected = diffusers_sd.rescale_noise_cfg(guided, cond, guidance_rescale=0.7)
    assert torch.allclose(rescale(guided, cond, 0.7), expected, atol=1e-6)


class Recorder(torch.nn.Module):
    """A stand-in network: output = x * mean(context) + t, so cond and uncond outputs differ; records its calls."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, context):
        self.batches.append(x.shape[0])
        return x * context.mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1).float() / 1000


def test_guided_model_runs_one_doubled_batch_and_applies_the_formula():
    net = Recorder()
    x, t = torch.randn(2, 1, 4, 4), torch.tensor([10, 10])
    context, null = torch.full((2, 3, 8), 2.0), torch.zeros(1, 3, 8)
    out = guided_model(net, context, null, guidance_scale=5.0)(x, t)
    assert net.batches == [4]
    expected = guide(net(x, t, context), net(x, t, null.expand(2, 3, 8)), 5.0)
    assert torch.allclose(out, expected)
    net.batches.clear()
    assert torch.allclose(guided_model(net, context, null, 1.0)(x, t), net(x, t, context))
    assert net.batches[0] == 2   # no unconditional pass when guidance is off


def test_guided_model_refuses_mismatched_contexts():
    with pytest.raises(ValueError, match="same tokenizer"):
        guided_model(Recorder(), torch.zeros(2, 3, 8), torch.zeros(1, 4, 8), 3.0)


def test_guided_model_drives_a_sampler():
    diffusion = GaussianDiffusion(NoiseSchedule.make("cosine", 100), prediction="eps")
    net = lambda x, t, c: torch.zeros_like(x) + c.mean()  # noqa: E731
    model = guided_model(net, torch.ones(3, 2, 4), torch.zeros(1, 2, 4), 2.0)
    out = sample(model, diffusion, (3, 1, 4, 4), sampler="ddim", steps=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 4, 4) and torch.isfinite(out).all()


def test_drop_condition_drops_at_the_asked_rate():
    context, null = torch.ones(10000, 2, 3), torch.zeros(1, 2, 3)
    dropped = drop_condition(context, null, 0.1, torch.Generator().manual_seed(0))
    rows = dropped.sum(dim=(1, 2)) == 0
    assert 0.08 < rows.float().mean() < 0.12
    assert torch.equal(dropped[~rows], context[~rows])   # kept rows are untouched
    assert torch.equal(drop_condition(context, null, 0.0), context)
    assert (drop_condition(context, null, 1.0) == 0).all()
    with pytest.raises(ValueError, match="probability"):
        drop_condition(context, null, 1.5)


def test_conditional_diffusion_loss_drops_contexts_and_trains_the_conditional_network():
    from minidiff.process import ConditionalDiffusion

    seen = []

    def net(x_t, t, context):
        seen.append(context.clone())
        return torch.zeros_like(x_t) + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    diffusion = GaussianDiffusion(NoiseSchedule.make("cosine", 100))
    objective = ConditionalDiffusion(diffusion, null_condition=torch.zeros(1, 2, 3), p_uncond=0.5)
    x0, context = torch.randn(64, 1, 4, 4), torch.ones(64, 2, 3)
    loss = objective.loss(net, (x0, context), torch.Generator().manual_seed(0))
    kept = seen[0].sum(dim=(1, 2)) != 0
    assert 10 < kept.sum() < 54                        # about half the captions were dropped
    # the loss is the diffusion loss of the network given exactly the contexts it saw
    again = diffusion.loss(lambda x_t, t: net(x_t, t, seen[0]), x0, _after_dropout(64, 0))
    assert torch.allclose(loss, again)


def _after_dropout(batch: int, seed: int) -> torch.Generator:
    """A generator in the state ConditionalDiffusion leaves it after drawing the dropout mask."""
    g = torch.Generator().manual_seed(seed)
    torch.rand(batch, generator=g)
    return g

"""The pair ghost clipper against per-pair autograd, in float64 (norms to 1e-10, clipped sums to 1e-12)."""
import copy
import functools

import pytest
import torch

import gan
from ghost_clipping import PairGhostClipper
from models import build_models

BCE = torch.nn.BCEWithLogitsLoss()
PAIR_LOSS = functools.partial(gan.d_pair_loss, reduction="sum")


def _clipped_sum(D, losses, C):
    """Each loss's gradient by plain autograd, clipped to C, summed; and the gradients' norms."""
    params = list(D.parameters())
    total, norms = None, []
    for loss in losses:
        g = torch.autograd.grad(loss, params)
        n = torch.sqrt(sum((x ** 2).sum() for x in g)).item()
        norms.append(n)
        f = min(1.0, C / (n + 1e-6))
        total = [x * f for x in g] if total is None else [t + x * f for t, x in zip(total, g)]
    return total, norms


def reference_clipped_sum(D, real, fake, C):
    """Independent reference: per-PAIR gradients by plain autograd, each clipped to C, summed."""
    return _clipped_sum(D, (BCE(D(real[i:i + 1]), torch.ones(1)) + BCE(D(fake[i:i + 1]), torch.zeros(1))
                            for i in range(len(real))), C)


def test_dcgan_discriminator_norms_and_clipped_sum():
    """The model the toolkit trains: both clipping paths (conv1 and conv4 materialised, conv2-3 ghost)."""
    torch.manual_seed(0)
    _, D = build_models(nz=8, ngf=8, ndf=8)
    D = D.double()
    real, fake = torch.rand(5, 1, 32, 32).double() * 2 - 1, torch.randn(5, 1, 32, 32).double()
    clipper = PairGhostClipper(D, max_grad_norm=0.05, loss_fn=PAIR_LOSS)
    loss, out = clipper.backward(D, real, fake)
    ref, norms = reference_clipped_sum(copy.deepcopy(D), real, fake, 0.05)
    assert min(norms) > 0.05 * 10  # every pair is clipped
    assert torch.allclose(clipper.last_norms, torch.tensor(norms, dtype=torch.float64), rtol=1e-10)
    assert all(torch.allclose(p.grad, r, atol=1e-12) for p, r in zip(D.parameters(), ref))
    assert out.shape == (10,) and loss.item() == pytest.approx(PAIR_LOSS(D(real), D(fake)).item(), rel=1e-12)
    # without clipping (a huge C) the sum is the plain gradient of the summed loss
    big = PairGhostClipper(D, max_grad_norm=1e9, loss_fn=PAIR_LOSS)
    big.backward(D, real, fake)
    plain = torch.autograd.grad(PAIR_LOSS(D(real), D(fake)), list(D.parameters()))
    assert all(torch.allclose(p.grad, g, atol=1e-12) for p, g in zip(D.parameters(), plain))


def test_ghost_norms_on_rgb_64px_with_bias():
    """Both paths (ghost norms over stride sub-grids, grouped-conv materialisation), several chunks, float64."""
    torch.manual_seed(0)
    nn = torch.nn  # 64 -> 32 -> 8 -> 4 -> 1; the third conv (kernel 3, stride 2: 4 sub-grid groups) is a ghost one
    D = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.GroupNorm(2, 8), nn.LeakyReLU(0.2), nn.Conv2d(8, 32, 4, 4),
                      nn.Conv2d(32, 128, 3, 2, 1), nn.GroupNorm(4, 128), nn.Conv2d(128, 1, 4), nn.Flatten(0)).double()
    real, fake = torch.randn(7, 3, 64, 64).double(), torch.randn(7, 3, 64, 64).double()
    clipper = PairGhostClipper(D, max_grad_norm=0.5, loss_fn=PAIR_LOSS, chunk_floats=1000)
    clipper.backward(D, real, fake)
    ref, norms = reference_clipped_sum(copy.deepcopy(D), real, fake, 0.5)
    assert torch.allclose(clipper.last_norms, torch.tensor(norms, dtype=torch.float64), rtol=1e-10)
    assert min(norms) > 0.5 and all(torch.allclose(p.grad, r, atol=1e-12) for p, r in zip(D.parameters(), ref))


def test_ghost_norms_on_odd_sizes_strides_and_kernels(monkeypatch):
    """Sub-grid edge cases, each through the ghost path: an input size that the stride does not divide, no
    padding, stride 3 with padding 2 (taps at negative sub-grid shifts), and a kernel smaller than its stride
    (sub-grids that no tap reads). Float64, against per-pair autograd."""
    torch.manual_seed(1)
    nn = torch.nn
    D = nn.Sequential(nn.Conv2d(2, 4, 3, 2, 0), nn.Conv2d(4, 6, 5, 3, 2), nn.GroupNorm(2, 6), nn.LeakyReLU(0.2),
                      nn.Conv2d(6, 8, 1, 2, bias=False), nn.Conv2d(8, 1, 2), nn.Flatten(0)).double()
    real, fake = torch.randn(4, 2, 23, 23).double(), torch.randn(4, 2, 23, 23).double()  # 23 -> 11 -> 4 -> 2 -> 1
    clipper = PairGhostClipper(D, max_grad_norm=0.5, loss_fn=PAIR_LOSS, chunk_floats=3000)
    ghost = []
    original = clipper._ghost_sq_norms
    monkeypatch.setattr(clipper, "_ghost_is_cheaper", lambda *costs: True)  # small layers would be materialised
    monkeypatch.setattr(clipper, "_ghost_sq_norms", lambda m, *a: ghost.append(m) or original(m, *a))
    clipper.backward(D, real, fake)
    assert ghost == [D[0], D[1], D[4], D[5]]
    ref, norms = reference_clipped_sum(copy.deepcopy(D), real, fake, 0.5)
    assert torch.allclose(clipper.last_norms, torch.tensor(norms, dtype=torch.float64), rtol=1e-10)
    assert min(norms) > 0.5 and all(torch.allclose(p.grad, r, atol=1e-12) for p, r in zip(D.parameters(), ref))


def test_per_layer_clipping_matches_reference_and_keeps_sensitivity_c():
    """--clipping per-layer: each block (a conv and the GroupNorm after it) of each pair's gradient clipped to
    C / sqrt(L) by an independent per-pair autograd reference; every pair's clipped gradient has norm <= C."""
    torch.manual_seed(0)
    _, D = build_models(ndf=8)
    D = D.double()
    real, fake = torch.rand(5, 1, 32, 32, dtype=torch.float64) * 2 - 1, torch.randn(5, 1, 32, 32, dtype=torch.float64)
    C = 0.05
    clipper = PairGhostClipper(D, max_grad_norm=C, loss_fn=PAIR_LOSS, clipping="per-layer")
    blocks = [[D.main[0]], [D.main[2], D.main[3]], [D.main[5], D.main[6]], [D.main[8]]]  # conv, (conv, GN) ...
    assert clipper.n_blocks == len(blocks) == 4
    ref = {}
    for i in range(5):
        out_r, out_f = D(real[i:i + 1]), D(fake[i:i + 1])
        loss = BCE(out_r, torch.ones(1)) + BCE(out_f, torch.zeros(1))
        pair = []
        for block in blocks:
            params = [p for m in block for p in m.parameters()]
            g = torch.autograd.grad(loss, params, retain_graph=True)
            norm = torch.sqrt(sum((x ** 2).sum() for x in g))
            assert norm > C / 2  # every block is clipped
            pair += [(p, x * min(1.0, C / 2 / (norm.item() + 1e-6))) for p, x in zip(params, g)]
        assert torch.sqrt(sum((x ** 2).sum() for _, x in pair)) <= C + 1e-9  # the sensitivity stays C
        for p, x in pair:
            ref[p] = ref.get(p, 0) + x
    clipper.backward(D, real, fake)
    assert all(torch.allclose(p.grad, ref[p], atol=1e-12) for p in D.parameters())
    # flat clipping of the same pairs gives a different sum (the test can tell the two apart)
    flat = PairGhostClipper(D, max_grad_norm=C, loss_fn=PAIR_LOSS)
    flat.backward(D, real, fake)
    assert not torch.allclose(D.main[5].weight.grad, ref[D.main[5].weight], atol=1e-6)


def test_ghost_rejects_unsupported_layers_and_inplace_outputs():
    nn = torch.nn
    with pytest.raises(ValueError, match="supports Conv2d .* not 1 .Linear."):
        PairGhostClipper(nn.Sequential(nn.Flatten(), nn.Linear(1024, 1)), 1.0, PAIR_LOSS)
    # an in-place activation would overwrite the conv output whose gradient the norms need
    D = nn.Sequential(nn.Conv2d(1, 4, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(4, 1, 16), nn.Flatten(0))
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(ValueError, match="modified in place"):
        PairGhostClipper(D, 1.0, PAIR_LOSS).backward(D, x, x)


def reference_person_clipped_sum(D, real, fake, unit_of, C):
    """Independent reference for user-level DP: each person's gradient is the plain-autograd gradient of the SUM
    of their pairs' losses, clipped to C as one unit, then summed over people."""
    rows = [torch.nonzero(unit_of == u).flatten() for u in range(int(unit_of.max()) + 1)]
    return _clipped_sum(D, (PAIR_LOSS(D(real[r]), D(fake[r])) for r in rows), C)


@pytest.mark.parametrize("model", ["dcgan", "rgb64"])
def test_person_level_norms_and_clipped_sum(model):
    """Units of 1, 2 and 4 pairs, not contiguous in the batch: the per-person norms (with the cross terms
    between a person's pairs) and the clipped sum equal the per-person autograd reference, through every path
    (materialised conv1/conv4, ghost conv2-3, GroupNorm; and several row-pair chunks)."""
    torch.manual_seed(2)
    nn = torch.nn
    if model == "dcgan":
        _, D = build_models(nz=8, ngf=8, ndf=8)
        shape = (1, 32, 32)
    else:
        D = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.GroupNorm(2, 8), nn.LeakyReLU(0.2), nn.Conv2d(8, 32, 4, 4),
                          nn.Conv2d(32, 128, 3, 2, 1), nn.GroupNorm(4, 128), nn.Conv2d(128, 1, 4), nn.Flatten(0))
        shape = (3, 64, 64)
    D = D.double()
    unit_of = torch.tensor([2, 0, 1, 2, 3, 2, 1, 2])  # person 0 and 3: one photo; 1: two; 2: four
    real, fake = torch.rand(8, *shape).double() * 2 - 1, torch.randn(8, *shape).double()
    C = 0.05
    clipper = PairGhostClipper(D, max_grad_norm=C, loss_fn=PAIR_LOSS, chunk_floats=2000)
    clipper.backward(D, real, fake, unit_of=unit_of)
    ref, norms = reference_person_clipped_sum(copy.deepcopy(D), real, fake, unit_of, C)
    assert min(norms) > C * 5  # every person is clipped
    assert torch.allclose(clipper.last_norms, torch.tensor(norms, dtype=torch.float64), rtol=1e-10)
    assert all(torch.allclose(p.grad, r, atol=1e-12) for p, r in zip(D.parameters(), ref))
    # a person's norm is not the sum of their pairs' clipped norms: per-pair clipping would give another sum
    pair = PairGhostClipper(D, max_grad_norm=C, loss_fn=PAIR_LOSS)
    pair.backward(D, real, fake)
    pair_grads = [p.grad.clone() for p in D.parameters()]
    assert not all(torch.allclose(g, r, atol=1e-6) for g, r in zip(pair_grads, ref))
    # one pair per person is the pair clipper exactly
    clipper.backward(D, real, fake, unit_of=torch.arange(8))
    assert all(torch.allclose(p.grad, g, atol=1e-12) for p, g in zip(D.parameters(), pair_grads))

import pytest
import torch
from opacus.validators import ModuleValidator

from models import build_models


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_range(size, channels):
    torch.manual_seed(0)
    G, D = build_models(nz=16, ngf=8, ndf=8, channels=channels, image_size=size)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (5,)


@pytest.mark.parametrize("size", [32, 64])
def test_groupnorm_only_and_opacus_valid(size):
    G, D = build_models(ngf=8, ndf=8, image_size=size)
    for m in (G, D):
        assert not any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())
        assert any(isinstance(x, torch.nn.GroupNorm) for x in m.modules())
        assert ModuleValidator.validate(m, strict=True) == []


def test_per_sample_independence():
    """With GroupNorm a sample's output does not depend on the rest of the batch (BatchNorm would fail this)."""
    torch.manual_seed(0)
    _, D = build_models(ndf=8)
    x = torch.randn(6, 1, 32, 32)
    assert torch.allclose(D(x)[:2], D(x[:2]), atol=1e-6)


def test_unsupported_size():
    with pytest.raises(ValueError, match="image_size"):
        build_models(image_size=48)


@pytest.mark.parametrize("cin,cout,k,stride,pad,hw,bias", [
    (16, 8, 4, 1, 0, 1, False),   # the generator's first layer (z as a 1 x 1 image)
    (8, 1, 4, 2, 1, 8, False),    # its last layer, gray
    (8, 3, 4, 2, 1, 16, True),    # RGB, with a bias
    (5, 4, 3, 2, 1, 7, False),    # an odd size (not used, the definition still holds)
])
def test_matmul_conv_transpose_equals_library(cin, cout, k, stride, pad, hw, bias):
    """MatmulConvTranspose2d is nn.ConvTranspose2d: the same output, input gradient and weight/bias gradients from
    the same parameters (the library's kernel is the reference)."""
    from models import MatmulConvTranspose2d

    torch.manual_seed(0)
    ref = torch.nn.ConvTranspose2d(cin, cout, k, stride, pad, bias=bias).double()
    ours = MatmulConvTranspose2d(cin, cout, k, stride, pad, bias=bias).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, cin, hw, hw, dtype=torch.float64, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    grads = torch.autograd.grad(y, [x, *ours.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_generator_state_dict_unchanged():
    """Checkpoints written before the matmul layers load unchanged: the same keys and shapes as the layers of the
    library."""
    from models import Generator

    G = Generator(nz=16, ngf=8)
    assert [type(m).__name__ for m in G.main if "Conv" in type(m).__name__] == [
        "MatmulConvTranspose2d", "ConvTranspose2d", "ConvTranspose2d", "MatmulConvTranspose2d"]
    assert all(isinstance(m, torch.nn.ConvTranspose2d) for m in G.main if "Conv" in type(m).__name__)
    assert {k: v.shape for k, v in G.state_dict().items()}["main.0.weight"] == (16, 32, 4, 4)

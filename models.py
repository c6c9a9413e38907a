"""DCGAN generator and discriminator with GroupNorm (no BatchNorm anywhere).

BatchNorm mixes statistics across the batch, so a sample's gradient depends on the other samples and
per-sample clipping (DP-SGD) is meaningless; GroupNorm normalises each sample on its own. Both models
pass ``opacus.validators.ModuleValidator.validate(strict=True)``.

Architecture (Radford et al., 2016) for ``image_size`` in {32, 64}: the generator maps z ~ N(0, I) of
shape (nz, 1, 1) through stride-2 transposed convolutions from 4x4 up to image_size; the discriminator
mirrors it with stride-2 convolutions and LeakyReLU(0.2) down to 4x4 and a final 4x4 convolution that
returns one *logit* per image (train with BCEWithLogitsLoss, which is numerically stabler than
Sigmoid + BCELoss). Weights are initialised N(0, 0.02), norm scales N(1, 0.02).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_SIZES = (32, 64)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(ch, 32), ch)


def _n_blocks(image_size: int) -> int:
    if image_size not in SUPPORTED_SIZES:
        raise ValueError(f"image_size must be one of {SUPPORTED_SIZES}, got {image_size}")
    return int(math.log2(image_size)) - 2  # 32 -> 3 upsamplings from 4x4, 64 -> 4


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d computed on the CPU as its definition: one matrix product of the weights with the input
    pixels, then ``F.fold`` adds each pixel's k x k patch into the output (col2im). oneDNN runs the generator's
    first layer (a 1 x 1 input) and last layer (1 or 3 output channels) far below its speed on the other layers
    (batch 64, one thread, forward + backward: 4.9 -> 1.3 ms and 5.7 -> 4.1 ms; a few percent of a training step,
    docs/performance.md). Same parameters and state dict as nn.ConvTranspose2d, outputs and gradients equal up to
    float rounding (tests/test_models.py); other devices use the library's kernel."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 4 or output_size is not None or self.groups != 1
                or self.dilation != (1, 1) or self.output_padding != (0, 0) or self.padding_mode != "zeros"):
            return super().forward(x, output_size)
        (b, c, h, w), (kh, kw), (sh, sw), (ph, pw) = x.shape, self.kernel_size, self.stride, self.padding
        cols = torch.matmul(self.weight.reshape(c, -1).t(), x.reshape(b, c, h * w))  # (b, out * kh * kw, h * w)
        out_hw = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
        if h == w == 1 and out_hw == (kh, kw):
            y = cols.reshape(b, self.out_channels, kh, kw)
        else:
            y = F.fold(cols, out_hw, (kh, kw), padding=(ph, pw), stride=(sh, sw))
        return y if self.bias is None else y + self.bias[:, None, None]


class Generator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 1, image_size: int = 32):
        super().__init__()
        n = _n_blocks(image_size)
        self.nz, self.image_size, self.channels = nz, image_size, channels
        ch = ngf * 2 ** (n - 1)
        # first and last layer: MatmulConvTranspose2d (the same layer, faster on a CPU); the others are oneDNN's best
        layers = [MatmulConvTranspose2d(nz, ch, 4, 1, 0, bias=False), _norm(ch), nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), _norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [MatmulConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self, ndf: int = 64, channels: int = 1, image_size: int = 32):
        super().__init__()
        n = _n_blocks(image_size)
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=False)]
        ch = ndf
        for _ in range(n - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), _norm(ch * 2), nn.LeakyReLU(0.2, inplace=False)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten(1).squeeze(1)  # (N,) logits


def freeze_first_convs(D: Discriminator, n: int) -> int:
    """Stop training D's first n convolutions and their norms (they keep their current weights: the random
    init, or --init-from's). Returns the number of parameters still trained."""
    convs = 0
    for m in D.main:
        if isinstance(m, nn.Conv2d):
            convs += 1
        if convs and convs <= n and any(True for _ in m.parameters(recurse=False)):
            m.requires_grad_(False)
    return sum(p.numel() for p in D.parameters() if p.requires_grad)


def init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.GroupNorm):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build_models(nz=100, ngf=64, ndf=64, channels=1, image_size=32):
    g = Generator(nz, ngf, channels, image_size)
    d = Discriminator(ndf, channels, image_size)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


def model_config(args) -> dict:
    """The architecture a checkpoint records (and --init-from must match)."""
    return {k: getattr(args, k) for k in ("nz", "ngf", "ndf", "channels", "image_size")}


def load_generator(path, device="cpu"):
    """The released generator of generator.pt or ckpt.pt (its EMA if it kept one), in eval mode; (G, config)."""
    from utils import UserError, safe_load

    blob = safe_load(path, map_location="cpu")
    if "G" not in blob or "config" not in blob:
        raise UserError(f"{path} is not a generator checkpoint of this toolkit (no 'G'/'config')")
    c = blob["config"]
    G = Generator(c["nz"], c["ngf"], c["channels"], c["image_size"])
    G.load_state_dict(blob.get("G_ema") or blob["G"])
    return G.to(device).eval(), c


def load_discriminator(path) -> Discriminator:
    """The trained discriminator of a run's ckpt.pt (what the white-box attack reads)."""
    from utils import UserError, safe_load

    blob = safe_load(path)
    if "D" not in blob or "config" not in blob:
        raise UserError(f"{path} is not a training checkpoint of this toolkit (no 'D'/'config')")
    c = blob["config"]
    D = Discriminator(c["ndf"], c["channels"], c["image_size"])
    D.load_state_dict(blob["D"])
    return D

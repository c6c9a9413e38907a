"""The GAN's pieces: the discriminator's pair loss, the G step, DiffAugment, the K schedule, the generator EMA,
seeded batches and sampling. The loop that puts them together is train_dcgan.train; how D is updated (non-private
or DP-SGD) is privacy.py's."""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn
from torch.nn import functional as F

import data as data_mod
from utils import average_grads, dist_world

D_STEP_LADDER = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)  # Bie et al.'s adaptive schedule
AUGMENTATIONS = ("translation", "cutout", "flip")


# ----------------------------------------------------------------------------- D's loss and step
def d_pair_loss(out_real: torch.Tensor, out_fake: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """D's loss on pairs of logits: BCE(D(x_i), 1) + BCE(D(G(z_i)), 0), averaged or summed over the pairs."""
    return (F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real), reduction=reduction)
            + F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake), reduction=reduction))


def d_stats(loss_mean: float, out_real: torch.Tensor, out_fake: torch.Tensor) -> tuple:
    """(D's loss, mean D(x), mean D(G(z))): what the log and the progress bar show of a D step."""
    return float(loss_mean), torch.sigmoid(out_real).mean().item(), torch.sigmoid(out_fake).mean().item()


def d_forward_backward(D, real, fake) -> tuple:
    """D's pair loss with ONE backward pass; returns d_stats. Under Opacus' hooks the two forward passes share the
    backward, so pair i's gradient (real_i + fake_i) is ONE per-sample gradient, clipped as a unit."""
    out_r, out_f = D(real), D(fake)
    loss = d_pair_loss(out_r, out_f)
    with warnings.catch_warnings():  # Opacus' hooks on D's first layer see no input gradient: expected
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    return d_stats(loss.item(), out_r, out_f)


@contextlib.contextmanager
def frozen(module: nn.Module, set_hooks=None):
    """D frozen for the generator step: no parameter gradients (and, with ``set_hooks``, no Opacus per-sample
    work)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    if set_hooks is not None:
        set_hooks(module, False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        if set_hooks is not None:
            set_hooks(module, True)


# ----------------------------------------------------------------------------- the G step
def augment(x: torch.Tensor, ops: str) -> torch.Tensor:
    """DiffAugment (Zhao et al., NeurIPS 2020), differentiable, each image drawn independently, as the authors'
    rand_translation / rand_cutout: translation shifts by up to 1/8 of the side (4 px at 32 px) in each direction,
    filling with zeros (mid-grey in [-1, 1]); cutout sets a square of half the side, centred anywhere in the image
    (cut off at the border), to zero; flip mirrors left-right with probability 1/2. Applied to every image D sees,
    real and fake, in the D and the G step, so G is not pushed to draw shifted, cut or mirrored images."""
    if not ops:
        return x
    ops = ops.split(",")
    n, _, h, w = x.shape
    if "translation" in ops:
        s = int(h * 0.125 + 0.5)
        ty, tx = (torch.randint(-s, s + 1, (n, 1, 1), device=x.device) for _ in range(2))
        rows = torch.arange(h, device=x.device).view(1, h, 1) + s + ty
        cols = torch.arange(w, device=x.device).view(1, 1, w) + s + tx
        x = F.pad(x, (s, s, s, s))[torch.arange(n, device=x.device).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)
    if "cutout" in ops:
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
        cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
        r = torch.arange(h, device=x.device).view(1, h, 1) - (cy - ch // 2)  # position inside the square
        c = torch.arange(w, device=x.device).view(1, 1, w) - (cx - cw // 2)
        cut = (r >= 0) & (r < ch) & (c >= 0) & (c < cw)  # (n, h, w)
        x = x * (~cut).unsqueeze(1).to(x.dtype)
    if "flip" in ops:
        x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
    return x.contiguous()


class MemorizationRejection:
    """Memorization rejection (Bai, Hsieh, Kan & Lin 2022, MRGAN): each G step drops the generated samples whose
    nearest training image lies within ``tau`` from G's adversarial loss, so G is not pulled towards copies. The
    distance is 1 − |Pearson correlation| of the grayscale pixels (the near-duplicate measure of data.py: 0 for a
    copy, up to 1); MRGAN uses 1 − |cos| of Inception features, which costs a 299 px Inception pass per sample and
    G step, far too slow on a CPU. It reads the training set at every G step: a non-private defence."""

    def __init__(self, train_u8: torch.Tensor, tau: float):
        self.ref, self.tau = self.embed(train_u8), float(tau)
        self.last_rate, self.steps, self.rejected = 0.0, 0, 0.0

    @staticmethod
    def embed(x: torch.Tensor) -> torch.Tensor:
        """uint8 or [-1, 1] images -> centred unit grayscale pixel rows (their dot product is r)."""
        return data_mod.pixel_rows(x)

    def distances(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Each image's distance to its nearest training image."""
        q = self.embed(x).to(self.ref.device)
        best = torch.cat([(q @ self.ref[j:j + chunk].T).abs().max(1, keepdim=True).values
                          for j in range(0, len(self.ref), chunk)], 1).max(1).values
        return (1 - best).clamp_min(0)

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        """Which samples stay in G's loss (nearest training image farther than tau); counts the rejection rate."""
        with torch.no_grad():
            keep = self.distances(x) > self.tau
        self.last_rate = 1 - keep.float().mean().item()
        self.steps, self.rejected = self.steps + 1, self.rejected + self.last_rate
        return keep


def g_step(G, D, optG, privacy, batch: int, nz: int, device, mode_seeking: float = 0.0, augment_ops: str = "",
           reject: MemorizationRejection | None = None):
    """One generator step against the frozen D; returns (G's adversarial loss, D's accuracy on these fresh fakes).
    With ``mode_seeking`` > 0, G's loss also gets the mode-seeking term of Mao et al. (2019) over the two halves of
    the batch: penalising samples that stay alike when their noise differs counters mode collapse. D sees the
    fakes through ``augment_ops``. Reads no real data, unless ``reject`` (memorization rejection) drops the samples
    nearest the training images from the adversarial loss."""
    with privacy.frozen(D):
        z = torch.randn(batch, nz, device=device)
        x = G(z)
        out = D(augment(x, augment_ops))
        if reject is None:
            loss = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        else:  # the mean over the kept samples, as MRGAN; none kept: no adversarial gradient this step
            kept = out[reject.keep(x.detach())]
            loss = F.binary_cross_entropy_with_logits(kept, torch.ones_like(kept)) if len(kept) else out.sum() * 0
        total = loss
        if mode_seeking and batch >= 2:
            h = batch // 2
            lz = (x[:h] - x[h:2 * h]).abs().mean() / (z[:h] - z[h:2 * h]).abs().mean()
            total = loss + mode_seeking / (lz + 1e-5)
        optG.zero_grad(set_to_none=True)
        total.backward()
        if dist_world()[1] > 1:
            average_grads(G)
        optG.step()
    return loss.item(), (out.detach() < 0).float().mean().item()


class DStepSchedule:
    """How many D steps precede each G step: a fixed K, or the adaptive schedule of Bie et al. (TMLR 2023).

    Adaptive: after every G step, D's accuracy on that step's fresh fakes (fakes only: no real data is read)
    enters an EMA (0.99). When the EMA is <= the threshold and at least ``grace`` G steps were taken at the
    current K, K moves up the ladder 1, 2, 5, 10, 20, 50, ... (D is losing: give it more steps)."""

    def __init__(self, k: int = 1, adaptive: float | None = None, grace: int = 50, beta: float = 0.99):
        if adaptive is not None:
            k = max(r for r in D_STEP_LADDER if r <= k)  # start on the ladder
        self.k, self.adaptive, self.grace, self.beta = k, adaptive, grace, beta
        self.acc_ema, self.since_g, self.g_since_change = None, 0, 0

    def d_step_done(self) -> bool:
        """Count a D step; True when a G step is due."""
        self.since_g += 1
        return self.since_g >= self.k

    def g_step_done(self, acc_fake: float) -> None:
        self.since_g = 0
        self.acc_ema = acc_fake if self.acc_ema is None else self.beta * self.acc_ema + (1 - self.beta) * acc_fake
        self.g_since_change += 1
        if (self.adaptive is not None and self.g_since_change >= self.grace and self.acc_ema <= self.adaptive
                and self.k < D_STEP_LADDER[-1]):
            self.k = D_STEP_LADDER[D_STEP_LADDER.index(self.k) + 1]
            self.g_since_change = 0

    def state_dict(self) -> dict:
        return {"k": self.k, "acc_ema": self.acc_ema, "since_g": self.since_g, "g_since_change": self.g_since_change}

    def load_state_dict(self, st: dict) -> None:
        self.k, self.acc_ema, self.since_g, self.g_since_change = (st["k"], st["acc_ema"], st["since_g"],
                                                                   st["g_since_change"])


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, t: int, warmup: float = 10) -> None:
    """theta_ema <- b theta_ema + (1 - b) theta, with b = min(decay, (1 + t) / (warmup + t)) after t earlier updates.

    The warm-up keeps early, random weights from dominating a short run's average: until the decay's own window
    1 / (1 - decay) is reached, the EMA averages about the last (t + warmup) / (warmup - 1) G steps, i.e. t / 9
    for warmup 10 (TensorFlow's convention), the last half for warmup 3; warmup 2 is the uniform (Polyak)
    average of all steps."""
    b = min(decay, (1 + t) / (warmup + t))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - b)
    for e, p in zip(ema.buffers(), model.buffers()):
        e.copy_(p)


# ----------------------------------------------------------------------------- batches and samples
def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Batch order of epoch e depends on (seed, e) only, so a resumed run sees the same batches."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def shuffled_batches(gen: torch.Generator, n: int, steps: int):
    """A seeded permutation of n indices cut into ``steps`` batches of (almost) equal size."""
    yield from torch.randperm(n, generator=gen).tensor_split(steps)


@torch.no_grad()
def generate(G, n: int, nz: int, device, seed: int = 12345, batch_size: int = 500) -> torch.Tensor:
    """n generated images as uint8 (N, C, H, W), from a dedicated seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        z = torch.randn(min(batch_size, n - i), nz, generator=gen).to(device)
        out.append(data_mod.to_uint8(G(z)).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)

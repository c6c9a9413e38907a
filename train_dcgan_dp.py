"""Train the DCGAN with DP-SGD (Opacus) on the discriminator, to a target (epsilon, delta).

Privacy semantics (what the reported epsilon covers):
  * Only the discriminator D reads real data, so only D is trained with DP-SGD. The generator G is
    updated through D's (already privatised) weights and fresh noise: that is post-processing, so G and
    everything sampled from it inherit D's (epsilon, delta) guarantee.
  * The per-sample gradient unit is ONE real example together with its paired fake: D's loss for pair i
    is BCE(D(x_i), 1) + BCE(D(G(z_i)), 0), and the gradient of that sum is clipped to --max-grad-norm C as
    a unit. (Two backward passes, as in the Opacus DCGAN example, clip real and fake separately: a real
    example then moves the sum by up to 2C.) The default --grad-sample-mode ghost computes the per-pair
    norms without per-sample gradients (PairGhostClipper); the Opacus modes get the same unit from two
    forwards and one backward pass. Noise, its scale and the accounting are Opacus' in every mode.
  * Batches are Poisson-sampled (rate q = 1 / steps-per-epoch) and the fake batch size follows the real
    one, so adding or removing a real example adds or removes exactly one unit. Empty batches still make
    a noisy step, and the accountant counts every step.
  * Every generator step uses a fixed batch of --g-batch-size fakes (never the private batch size) with D
    frozen: D's parameters need no gradient and Opacus' per-sample hooks are off, so no per-sample work
    is wasted and nothing private leaks through G's step. G steps, the adaptive K schedule (D's accuracy on
    fresh fakes), --mode-seeking and the generator EMA read no real data: post-processing; the accountant counts
    D steps.
  * --augment transforms each real image on its own, with randomness independent of the data, before D sees
    it: pair i's clipped gradient still depends on real example i alone, so the sensitivity (C) and the
    accounting are unchanged.
  * --freeze-d layers receive neither gradient nor noise. --init-from starts from other weights: epsilon then
    covers this run's (private) training set given those weights, and is meaningful only if the source was
    not trained on the private data (a source trained on this run's own data is refused).
  * The accountant's history lives in the checkpoint: --resume continues the same ledger and refuses a
    run whose total steps would spend more than the target epsilon.

Everything else (data, loop, artefacts) is train_dcgan.py's; this file adds privacy only.
"""
from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import train_dcgan
from utils import UserError, broadcast_params, run_cli

# Opacus' RDP analysis warns when the best order is the largest one tried: the bound is then only looser
# (conservative), never optimistic, so the warning carries no risk for the reported epsilon.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")

GRAD_SAMPLE_MODES = ("ghost", "hooks", "functorch", "ew")  # each checked against an autograd reference in tests


class PairGhostClipper:
    """Per-PAIR clipped gradient sum for D without per-sample gradients (``--grad-sample-mode ghost``).

    One forward pass over [real; fake] records each layer's input a; one backward pass gives the gradient g
    of the summed loss w.r.t. each layer's output (autograd skips the weight gradients). Pair i's gradient
    is real_i's plus fake_i's, so per layer:

    * Conv2d: pair i's weight gradient is Σ_t g_t a_tᵀ over the output positions t of BOTH images (a_t: the
      input patch under the kernel at t), and its squared norm is Σ_{t,s} <a_t,a_s><g_t,g_s> ("ghost norm",
      Li et al. 2022), in blocks real-real + 2 real-fake + fake-fake. The patch Gram <a_t,a_s> is never
      formed: with stride S the input splits into S x S sub-grids z_r = x[ry::S, rx::S], and tap (ky, kx) at
      output position t reads sub-grid pixel t + d for one shift d per tap (zero padding falls outside the
      sub-grid), so Σ_{t,s} <a_t,a_s> h_ts = Σ_r <K_r, H_r> with the pixel Gram K_r[u,v] = <z_r[u], z_r[v]>
      (over channels) and H_r[u,v] = Σ_d h_{u-d, v-d} over r's taps. Sub-grids with the same shift pattern
      share one H, read at their own offset. That is about (k/S)² times less work than unfolding patches, and
      the only copy of the input is one permutation into its sub-grids. Where it is cheaper still (few
      output positions: D's first and last layer) the per-pair gradients are materialised by a grouped
      convolution with one group per pair.
    * GroupNorm: per-pair gradients (one value per channel) are materialised.

    The clipped sum Σ_i min(1, C / ‖g_i‖) g_i is then ONE weight gradient per layer with the output gradient
    scaled per pair ("book-keeping", Bu et al. 2023), so there is no second backward pass. Opacus' own ghost
    mode clips every row of a forward pass separately and cannot express the pair; noise, its scale and the
    accounting stay Opacus' (DPOptimizerFastGradientClipping). Tests check it against per-pair autograd.

    ``clipping="per-layer"`` clips each pair's gradient block by block instead: a block is a convolution with the
    norm layers that follow it, and each of the L blocks is clipped to C / √L on its own (McMahan et al. 2018).
    Pair i's clipped gradient then has norm ≤ √(L · C² / L) = C, so the sensitivity, Opacus' noise σC and the
    accounting are those of flat clipping.
    """

    def __init__(self, module: nn.Module, max_grad_norm: float, chunk_floats: int = 2 ** 22, clipping: str = "flat"):
        self.max_grad_norm, self.chunk_floats = max_grad_norm, chunk_floats
        self.layers, self.blocks, conv = [], [], None  # blocks[j]: the clipping block of layers[j]
        for name, m in module.named_modules():
            if isinstance(m, nn.Conv2d):
                conv = name  # a block is a convolution (trained or frozen) and the norms after it
            if not any(p.requires_grad for p in m.parameters(recurse=False)):
                continue
            if not (isinstance(m, nn.GroupNorm) or (type(m) is nn.Conv2d and m.groups == 1 and m.dilation == (1, 1)
                                                    and m.padding_mode == "zeros" and not isinstance(m.padding, str))):
                raise UserError(f"--grad-sample-mode ghost supports Conv2d (groups=1, dilation=1, zero padding) and "
                                f"GroupNorm layers, not {name} ({type(m).__name__}); use --grad-sample-mode hooks")
            self.layers.append(m)
            self.blocks.append(0 if clipping == "flat" else conv if conv is not None else name)
        ids = {b: i for i, b in enumerate(dict.fromkeys(self.blocks))}
        self.blocks = [ids[b] for b in self.blocks]
        self.n_blocks = len(ids)
        self.last_norms = None  # per-pair gradient norms of the last call (before clipping)

    @staticmethod
    def _conv_weight_grad(m, a, g, groups=1):
        shape = (g.shape[1], a.shape[1] // groups) + tuple(m.kernel_size)
        return torch.nn.grad.conv2d_weight(a, shape, g, m.stride, m.padding, m.dilation, groups)

    @staticmethod
    def _residues(m, shape):
        """The input's stride sub-grids that some kernel tap reads, as [(index ry·S + rx, row shifts, column
        shifts)], and the sub-grid size (hr, wr).

        Sub-grid (ry, rx) holds the input pixels x[ry + S·i, rx + S·j]. Tap ky reads input row S·t + ky - p at
        output row t, i.e. sub-grid row i = t + d with d = (ky - ry - p) / S for the taps ky ≡ ry + p (mod S);
        the same for columns. Rows and columns outside the input are the zero padding and are left out.
        """
        (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
        hr, wr = -(-shape[2] // sh), -(-shape[3] // sw)
        out = []
        for ry in range(sh):
            dy = [(ky - ry - ph) // sh for ky in range(kh) if (ky - ry - ph) % sh == 0]
            for rx in range(sw):
                dx = [(kx - rx - pw) // sw for kx in range(kw) if (kx - rx - pw) % sw == 0]
                if dy and dx:
                    out.append((ry * sw + rx, tuple(dy), tuple(dx)))
        return out, hr, wr

    @staticmethod
    def _ghost_is_cheaper(materialise_cost, ghost_cost):
        """Multiply-adds per pair: the ghost norms win where they are under 2/3 of materialising (measured)."""
        return 3 * ghost_cost < materialise_cost

    def _conv_sq_norms(self, m, a, g, n):
        """Squared per-pair gradient norms of a Conv2d, the per-pair weight gradients if they were materialised
        (else None) and the per-pair bias gradients (None without a bias)."""
        o, c, kh, kw = m.weight.shape
        oh, ow = g.shape[2:]
        T = oh * ow
        residues, hr, wr = self._residues(m, a.shape)
        if not self._ghost_is_cheaper(2 * T * c * kh * kw * o, len(residues) * c * (hr * wr) ** 2 + T * T * o):
            if T == 1:  # one window: a linear layer on the patch
                patch = F.pad(a, (m.padding[1],) * 2 + (m.padding[0],) * 2)[:, :, :kh, :kw]
                gs = torch.bmm(g.reshape(2 * n, o, 1), patch.reshape(2 * n, 1, -1))
                gs = (gs[:n] + gs[n:]).reshape(n, -1)
            else:  # a grouped convolution: batch 0 = real, 1 = fake; one group per pair
                gs = self._conv_weight_grad(m, a.reshape(2, n * c, *a.shape[2:]), g.reshape(2, n * o, oh, ow), n)
                gs = gs.reshape(n, -1)
            sq = torch.linalg.vector_norm(gs, dim=1).square()
        else:
            gs, sq = None, self._ghost_sq_norms(m, a, g, n, residues, hr, wr)
        gb = None
        if m.bias is not None:
            gb = g.sum((2, 3))
            gb = gb[:n] + gb[n:]
            sq = sq + gb.square().sum(1)
        return sq, gs, gb

    def _ghost_sq_norms(self, m, a, g, n, residues, hr, wr):
        """Σ_{t,s} <a_t,a_s><g_t,g_s> per pair from the stride sub-grids (class docstring), in pair chunks."""
        (sh, sw), (oh, ow) = m.stride, g.shape[2:]
        if a.shape[2] != hr * sh or a.shape[3] != wr * sw:  # zero rows/columns up to a multiple of the stride
            a = F.pad(a, (0, wr * sw - a.shape[3], 0, hr * sh - a.shape[2]))
        idx = [i for i, _, _ in residues]
        z = a.view(2 * n, -1, hr, sh, wr, sw).permute(0, 3, 5, 1, 2, 4).reshape(2 * n, sh * sw, -1, hr * wr)
        if len(idx) < sh * sw:  # residues that no tap reads (kernel smaller than the stride)
            z = z[:, idx]
        # H[u, v] = Σ_d gg[u - d, v - d] over a residue's shifts d, held on a grid offset by -min(d) >= 0, so that
        # residues with the same shift pattern share one H and read it at their own offset
        patterns = {}  # (shift pattern relative to its minimum) -> [(residue position in z, grid offset)]
        for pos, (_, dy, dx) in enumerate(residues):
            key = (tuple(d - min(dy) for d in dy), tuple(d - min(dx) for d in dx))
            patterns.setdefault(key, []).append((pos, -min(dy), -min(dx)))
        placed = [(y, x) for members in patterns.values() for _, y, x in members]  # the grid covers every window
        hz = max([oh + max(qy) for qy, _ in patterns] + [hr + y for y, _ in placed])
        wz = max([ow + max(qx) for _, qx in patterns] + [wr + x for _, x in placed])
        gm, sq, r = g.flatten(2), g.new_zeros(n), len(residues)
        step = max(1, self.chunk_floats // (r * (hr * wr) ** 2 + len(patterns) * (hz * wz) ** 2))
        for i in range(0, n, step):
            j = min(n, i + step)
            for u, v, f in ((i, i, 1.0), (n + i, n + i, 1.0), (i, n + i, 2.0)):  # real-real, fake-fake, real-fake
                gg = torch.bmm(gm[u:u + j - i].mT, gm[v:v + j - i]).view(j - i, oh, ow, oh, ow)
                k = torch.matmul(z[u:u + j - i].mT, z[v:v + j - i]).view(j - i, r, hr, wr, hr, wr)  # pixel Grams
                for (qy, qx), members in patterns.items():
                    h = gg.new_zeros(j - i, hz, wz, hz, wz)
                    for y in qy:
                        for x in qx:
                            h[:, y:y + oh, x:x + ow, y:y + oh, x:x + ow] += gg
                    for pos, y, x in members:
                        sq[i:j] += f * (k[:, pos] * h[:, y:y + hr, x:x + wr, y:y + hr, x:x + wr]).sum((1, 2, 3, 4))
        return sq

    def forward_backward(self, D, real, fake):
        """One forward pass over [real; fake] and one backward pass to the layer outputs: (summed loss, logits,
        each layer's input, the loss gradient w.r.t. each layer's output)."""
        n = len(real)
        acts, outs, versions = [], [], []

        def record(m, inputs, output):
            acts.append(inputs[0].detach())
            outs.append(output)
            versions.append(output._version)

        handles = [m.register_forward_hook(record) for m in self.layers]
        try:
            logits = D(torch.cat([real, fake]))
        finally:
            for h in handles:
                h.remove()
        if len(outs) != len(self.layers) or any(o._version != v for o, v in zip(outs, versions)):
            raise UserError("--grad-sample-mode ghost needs each layer to run once per forward and its output not to "
                            "be modified in place (use inplace=False activations), or use --grad-sample-mode hooks")
        out_r, out_f = logits[:n], logits[n:]
        loss = (F.binary_cross_entropy_with_logits(out_r, torch.ones_like(out_r), reduction="sum")
                + F.binary_cross_entropy_with_logits(out_f, torch.zeros_like(out_f), reduction="sum"))
        return loss, logits, acts, torch.autograd.grad(loss, outs)  # per-sample loss gradients, per layer output

    def step(self, D, real, fake):
        """Set p.grad of D's parameters to the per-pair clipped gradient sum; return (loss, D(x), D(G(z)))."""
        n = len(real)
        loss, logits, acts, grads = self.forward_backward(D, real, fake)
        sq = torch.zeros(self.n_blocks, n, device=real.device, dtype=logits.dtype)  # per block and pair
        per_pair = {}
        for m, a, g, b in zip(self.layers, acts, grads, self.blocks):
            if isinstance(m, nn.Conv2d):
                sq_m, gw, gb = self._conv_sq_norms(m, a, g, n)
                per_pair[m] = gw, gb
            else:
                gw = (F.group_norm(a, m.num_groups, eps=m.eps) * g).flatten(2).sum(2)
                gb = g.flatten(2).sum(2)
                per_pair[m] = gw = gw[:n] + gw[n:], gb[:n] + gb[n:]
                sq_m = gw[0].square().sum(1) + gw[1].square().sum(1)
            sq[b] += sq_m
        sq = sq.clamp_min(0)
        self.last_norms = sq.sum(0).sqrt()
        bound = self.max_grad_norm / self.n_blocks ** 0.5  # C, or C / √L per block
        scales = (bound / (sq.sqrt() + 1e-6)).clamp(max=1.0)  # Opacus' clip factor, per block and pair
        for m, a, g, b in zip(self.layers, acts, grads, self.blocks):
            scale, (gw, gb) = scales[b], per_pair[m]  # per-pair weight and bias gradients (None: not formed)
            if gb is not None:
                m.bias.grad = scale @ gb
            if gw is not None:  # materialised (GroupNorm, small convolutions): weight the per-pair gradients
                m.weight.grad = (scale @ gw).view_as(m.weight)
            else:  # g is autograd.grad's result, used no more: scale it in place
                m.weight.grad = self._conv_weight_grad(m, a, g.mul_(torch.cat([scale, scale]).view(-1, 1, 1, 1)))
        return (loss.item() / n, torch.sigmoid(logits[:n]).mean().item(), torch.sigmoid(logits[n:]).mean().item())


def _accountant_epsilon(acc, delta: float, sigma: float) -> float:
    """ε of an Opacus accountant; a setting it cannot evaluate is a one-line error, not a deep traceback (PRV
    tries to allocate terabytes for a tiny noise multiplier such as 0.001)."""
    try:
        return float(acc.get_epsilon(delta=delta))
    except (MemoryError, ValueError, OverflowError, RuntimeError) as e:
        raise UserError(f"the {acc.mechanism()} accountant cannot evaluate σ = {sigma:g} ({type(e).__name__}); ε would "
                        "be enormous: use a larger --noise-multiplier, or --accountant rdp") from None


class DPPrivacy:
    """The privacy half of the training loop: wraps D with Opacus and keeps the epsilon ledger. Same interface
    as train_dcgan.NonPrivate."""

    private = True
    locked_args = ("epsilon", "noise_multiplier", "delta", "max_grad_norm", "clipping", "accountant", "poisson",
                   "grad_sample_mode", "secure_rng")

    def __init__(self, args):
        self.args = args
        self.last_eps = 0.0
        self.engine = None
        self.clipper = None  # PairGhostClipper in --grad-sample-mode ghost
        self._eps_cache = (None, 0.0)  # (accountant history, ε)

    # ------------------------------------------------------------------ setup
    def check_args(self, args):
        if (args.epsilon is None) == (args.noise_multiplier is None):
            raise UserError("give exactly one of --epsilon (target) or --noise-multiplier")
        if args.epsilon is not None and not args.epsilon > 0:
            raise UserError(f"--epsilon must be > 0, got {args.epsilon}")
        if args.noise_multiplier is not None and not args.noise_multiplier > 0:
            raise UserError(f"--noise-multiplier must be > 0, got {args.noise_multiplier}")
        if not 0 < args.delta < 1:
            raise UserError(f"--delta must be in (0, 1), got {args.delta}")
        if not args.max_grad_norm > 0:
            raise UserError(f"--max-grad-norm must be > 0, got {args.max_grad_norm}")
        if args.max_physical_batch_size is not None and args.max_physical_batch_size <= 0:
            raise UserError("--max-physical-batch-size must be positive")
        if args.clipping != "flat" and args.grad_sample_mode != "ghost":
            raise UserError(f"--clipping {args.clipping} needs --grad-sample-mode ghost (the Opacus modes clip flat); "
                            "drop --grad-sample-mode or use --clipping flat")

    def make_private(self, D, optD, *, n_train, batch_size, steps_per_epoch, total_steps, state=None):
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.validators import ModuleValidator
        from torch.utils.data import DataLoader, TensorDataset

        a = self.args
        errors = ModuleValidator.validate(D, strict=False)
        if errors:
            raise UserError(f"discriminator is not DP-compatible: {errors[0]}")
        self.n_train, self.batch_size = n_train, batch_size
        self.sample_rate = 1.0 / steps_per_epoch  # Opacus' q for a loader of steps_per_epoch batches
        self.total_steps = total_steps
        if a.delta >= 1.0 / n_train:
            warnings.warn(f"--delta {a.delta:g} >= 1/N = {1 / n_train:.2g}: such a delta allows leaking a whole "
                          "example; use delta << 1/N", stacklevel=2)
        if state is not None:
            self.noise_multiplier = state["noise_multiplier"]
        elif a.noise_multiplier is not None:
            self.noise_multiplier = a.noise_multiplier
        else:
            try:
                self.noise_multiplier = get_noise_multiplier(
                    target_epsilon=a.epsilon, target_delta=a.delta, sample_rate=self.sample_rate,
                    steps=total_steps, accountant=a.accountant, epsilon_tolerance=0.01)
            except ValueError:
                raise UserError(f"epsilon = {a.epsilon} is unreachable with {total_steps} steps at sample rate "
                                f"{self.sample_rate:.4g} (noise multiplier would exceed 1e6); raise --epsilon, "
                                "lower --epochs or --batch-size") from None
        loader = DataLoader(TensorDataset(torch.arange(n_train)), batch_size=batch_size)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
            try:
                self.engine = PrivacyEngine(accountant=a.accountant, secure_mode=a.secure_rng)
            except ImportError:
                raise UserError("--secure-rng needs the torchcsprng package (pip install torchcsprng; it must "
                                "match your torch version), or drop --secure-rng") from None
            if a.grad_sample_mode == "ghost":
                optD = self._ghost_optimizer(D, optD)
            else:
                D, optD, _ = self.engine.make_private(
                    module=D, optimizer=optD, data_loader=loader, noise_multiplier=self.noise_multiplier,
                    max_grad_norm=a.max_grad_norm, poisson_sampling=a.poisson, grad_sample_mode=a.grad_sample_mode)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        assert abs(optD.expected_batch_size * world - int(n_train * self.sample_rate)) < 1  # per-rank share
        if state is not None:
            self.engine.accountant.load_state_dict(state["accountant"])
            self.last_eps = self.epsilon()
        projected = self.epsilon_after(total_steps)  # also checks that the accountant can evaluate this setting
        if a.epsilon is not None:
            if projected > a.epsilon + 0.01:
                raise UserError(f"refusing to train: {total_steps} steps in total would spend ε = {projected:.3f} "
                                f"> target ε = {a.epsilon} (σ = {self.noise_multiplier:.4f} was fixed for the original "
                                "run); keep --epochs/--max-steps as they were or start a new run")
        return D, optD

    def _ghost_optimizer(self, D, optD):
        """What PrivacyEngine.make_private does for the optimizer, with our per-pair clipper instead of hooks."""
        from opacus.optimizers import get_optimizer_class

        a = self.args
        self.clipper = PairGhostClipper(D, a.max_grad_norm, clipping=a.clipping)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        cls = get_optimizer_class(clipping="flat", distributed=world > 1, grad_sample_mode="ghost")
        optD = cls(optD, noise_multiplier=self.noise_multiplier, max_grad_norm=a.max_grad_norm,
                   expected_batch_size=int(self.n_train * self.sample_rate) / world, loss_reduction="mean",
                   generator=self.engine.secure_rng if a.secure_rng else None, secure_mode=a.secure_rng)
        optD.attach_step_hook(self.engine.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        return optD

    # ------------------------------------------------------------------ loop hooks
    def distribute(self, D):
        """Under torchrun: the optimizer (ghost) or Opacus' DPDDP (hooks modes) all-reduces the clipped sums."""
        if self.args.grad_sample_mode == "ghost":
            broadcast_params(D)
            return D
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

        return DPDDP(D)

    def unwrap(self, D):
        if self.clipper is not None:
            return D
        m = D._module
        return getattr(m, "module", m)  # under torchrun: GradSampleModule(DPDDP(D))

    def disable_hooks(self, D):
        if self.clipper is None:
            D.disable_hooks()

    def enable_hooks(self, D):
        if self.clipper is None:
            D.enable_hooks()

    def frozen(self, D):
        return train_dcgan.frozen(D, self)

    def batches(self, gen, n, steps):
        """Poisson sampling: every example joins each of the epoch's ``steps`` batches with probability q."""
        if not self.args.poisson:
            yield from train_dcgan.shuffled_batches(gen, n, steps)
            return
        if self.engine.secure_rng is not None:
            gen = self.engine.secure_rng  # cryptographically secure sampling; not reproducible
        for _ in range(steps):
            yield torch.nonzero(torch.rand(n, generator=gen) < self.sample_rate).flatten()

    def empty_batch(self, D):
        """A step with no real example: zero per-sample gradients, noise is still added."""
        for p in D.parameters():
            if not p.requires_grad:
                continue
            if self.clipper is not None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0,) + tuple(p.shape), device=p.device, dtype=p.dtype)

    def d_step(self, D, optD, real, fake, bce):
        """One DP-SGD step over physical chunks of at most --max-physical-batch-size pairs: per-pair clipped
        gradients are summed over the chunks and the noise is added once. An empty batch still takes a noisy
        step (and is counted by the accountant)."""
        optD.zero_grad(set_to_none=True)
        b = len(real)
        if not b:
            self.empty_batch(D)
            optD.step()
            return (float("nan"),) * 3
        chunk = self.args.max_physical_batch_size or b
        sums = torch.zeros(3)
        for i in range(0, b, chunk):
            if self.clipper is not None:
                loss, d_x, d_gz = self.clipper.step(D, real[i:i + chunk], fake[i:i + chunk])
            else:
                loss, d_x, d_gz = train_dcgan.d_forward_backward(D, real[i:i + chunk], fake[i:i + chunk], bce)
            n = len(real[i:i + chunk])
            sums += torch.tensor([loss * n, d_x * n, d_gz * n])
            last = i + chunk >= b
            optD.signal_skip_step(do_skip=not last)  # accumulate clipped sums; noise once, at the end
            optD.step()
            if not last:
                optD.zero_grad(set_to_none=True)
        return tuple((sums / b).tolist())

    # ------------------------------------------------------------------ ledger
    REFRESH_STEPS = 20

    def epsilon(self, refresh: bool = True) -> float:
        """ε spent so far, exact with ``refresh``. One PRV evaluation takes 0.2-1 s on a CPU (longer for large σ),
        as long as dozens of small D steps, so the loop asks with ``refresh=False``: the last value, evaluated anew
        once REFRESH_STEPS D steps have been taken since (values in log.jsonl and the bar lag by fewer than
        REFRESH_STEPS steps; the final step and results.json are exact). Memoised on the ledger."""
        history, cached = self.engine.accountant.history, self._eps_cache[0]
        if (not refresh and cached is not None
                and sum(s for _, _, s in history) - sum(s for _, _, s in cached) < self.REFRESH_STEPS):
            return self.last_eps
        key = tuple(map(tuple, history))
        if cached != key:
            self._eps_cache = key, _accountant_epsilon(self.engine.accountant, self.args.delta, self.noise_multiplier)
        self.last_eps = self._eps_cache[1]
        return self.last_eps

    def epsilon_after(self, steps: int, accountant: str | None = None) -> float:
        from opacus.accountants import create_accountant

        acc = create_accountant(accountant or self.args.accountant)
        acc.history = [(self.noise_multiplier, self.sample_rate, steps)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _accountant_epsilon(acc, self.args.delta, self.noise_multiplier)

    def state_dict(self):
        return {"accountant": dict(self.engine.accountant.state_dict()), "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate}

    def describe(self):
        a = self.args
        return {"target_epsilon": a.epsilon, "delta": a.delta, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": a.max_grad_norm, "clipping": a.clipping, "sample_rate": self.sample_rate,
                "expected_batch_size": self.n_train * self.sample_rate, "accountant": a.accountant,
                "poisson_sampling": a.poisson, "grad_sample_mode": a.grad_sample_mode, "secure_rng": a.secure_rng,
                "max_physical_batch_size": a.max_physical_batch_size, "planned_steps": self.total_steps}

    def summary(self):
        a = self.args
        target = f"target ε = {a.epsilon}" if a.epsilon is not None else "no target ε"
        return (f"DP-SGD on D: {target}, δ = {a.delta:g}, σ = {self.noise_multiplier:.4f}, C = {a.max_grad_norm} "
                f"({a.clipping}{f', {self.clipper.n_blocks} blocks' if a.clipping != 'flat' else ''}), "
                f"q = {self.sample_rate:.5f} ({'Poisson' if a.poisson else 'shuffled, NOT Poisson'}), "
                f"{self.total_steps} steps -> ε = {self.epsilon_after(self.total_steps):.3f} ({a.accountant})")

    def results(self):
        steps = sum(s for _, _, s in self.engine.accountant.history)
        out = {"epsilon": self.epsilon(), "delta": self.args.delta, "noise_multiplier": self.noise_multiplier,
               "sample_rate": self.sample_rate, "dp_steps": steps, "accountant": self.args.accountant,
               "max_grad_norm": self.args.max_grad_norm, "target_epsilon": self.args.epsilon,
               "poisson_sampling": self.args.poisson}
        for acc in ("rdp", "prv"):  # the same ledger under both accountants, for transparency
            out[f"epsilon_{acc}"] = self.epsilon_after(steps, acc) if steps else 0.0
        return out


# The DP recipe, chosen by measurement (README: the levers study on the CelebA subset, and the digits quickstart);
# train_dcgan.py has the non-private defaults. Photo data (CelebA, image folders):
DP_DEFAULTS = {"lr": 1e-3, "batch_size": 256, "epochs": 30, "ndf": 16, "freeze_d": 0, "d_steps": 1,
               "adaptive_d_steps": None, "adaptive_grace": 20, "g_batch_size": 128, "ema_decay": 0.999,
               "ema_warmup": 3.0, "mode_seeking": 1.0, "augment": "translation,flip", "g_lr_scale": 2.0}
# The bundled digits have 1,437 training images, a third of the CelebA subset's: D gets a quarter of the
# parameters (noise grows with their number, the signal with N), twice the passes and the shorter EMA window.
# No augmentation: digits are not mirror-symmetric, and translation blurred the quickstart's digits into blobs.
# G's lr stays D's: doubling it (the CelebA lever) made the quick preset's N = 700 digits model worse (FID
# 261.9 vs 242.6, README levers).
DIGITS_DEFAULTS = {"ndf": 8, "epochs": 60, "ema_warmup": 10.0, "augment": "none", "g_lr_scale": 1.0}
BY_DATA = tuple(DIGITS_DEFAULTS)  # defaults that depend on --data


def dp_defaults(data: str) -> dict:
    """train_dcgan_dp.py's recipe for --data ``data``."""
    return {**DP_DEFAULTS, **(DIGITS_DEFAULTS if data == "digits" else {})}


def build_parser():
    p = train_dcgan.build_parser(prog="train_dcgan_dp.py", description=__doc__.split("\n")[0], defaults=DP_DEFAULTS)
    for a in p._actions:
        if a.dest in BY_DATA:
            a.help += f" (default: {DP_DEFAULTS[a.dest]}; with --data digits {DIGITS_DEFAULTS[a.dest]})"
            a.default = argparse.SUPPRESS
    g = p.add_argument_group("differential privacy")
    g.add_argument("--epsilon", type=float, default=None,
                   help="target ε after all steps (σ is calibrated to it); default 8 unless --noise-multiplier")
    g.add_argument("--noise-multiplier", type=float, default=None, help="fixed σ instead of a target ε")
    g.add_argument("--delta", type=float, default=1e-6, help="δ (keep it well below 1/N)")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="per-example clip bound C")
    g.add_argument("--clipping", choices=["flat", "per-layer"], default="flat",
                   help="clip each pair's whole gradient to C (flat), or each block (a convolution and its norm "
                        "layers) to C/√L (per-layer, ghost mode only); the same sensitivity C and ε either way")
    g.add_argument("--accountant", choices=["prv", "rdp"], default="prv", help="Opacus privacy accountant")
    g.add_argument("--no-poisson", dest="poisson", action="store_false",
                   help="shuffled fixed-size batches instead of Poisson sampling (the ε is then not a proof)")
    g.add_argument("--secure-rng", action="store_true", help="Opacus secure mode (needs torchcsprng)")
    g.add_argument("--grad-sample-mode", choices=GRAD_SAMPLE_MODES, default="ghost",
                   help="how per-pair gradient norms are computed: ghost (ours, fastest, no per-sample gradients) "
                        "or an Opacus per-sample-gradient mode")
    g.add_argument("--max-physical-batch-size", type=int, default=None,
                   help="split each logical batch into chunks of this size (same result, less memory)")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    recipe = dp_defaults(args.data)
    for k in BY_DATA:  # not given on the command line (their parser default is SUPPRESS)
        if not hasattr(args, k):
            setattr(args, k, recipe[k])
    if args.epsilon is None and args.noise_multiplier is None:
        args.epsilon = 8.0
    return args


def main(argv=None):
    def run(a):
        args = parse_args(a)
        return train_dcgan.train(args, privacy=DPPrivacy(args))

    return run_cli(run, argv)


if __name__ == "__main__":
    main()

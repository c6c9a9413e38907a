"""Per-PAIR clipped gradient sums without per-sample gradients: ghost clipping for a loss over pairs of rows.

DP-SGD on a GAN discriminator clips per *pair* (real image i and the fake paired with it): the unit whose
gradient is bounded is g_i = ∇ [ℓ(D(x_i)) + ℓ'(D(x̃_i))]. Opacus' own ghost mode clips every row of a forward
pass on its own and cannot express the pair; its hook modes materialise per-sample gradients (2.4-11x a
non-private step). :class:`PairGhostClipper` computes ‖g_i‖ exactly and forms Σ_i min(1, C/‖g_i‖) g_i with one
forward pass over [first; second] and one backward pass to the layer outputs.

The formula. For a convolution with input a (patches a_t under the kernel at output position t) and output
gradient g, pair i's weight gradient is G_i = Σ_t g_t a_tᵀ over the output positions of BOTH of its images, so

    ‖G_i‖² = Σ_{t,s} ⟨a_t, a_s⟩ ⟨g_t, g_s⟩        ("ghost norm", Li et al. 2022)

split into the blocks first-first + 2·first-second + second-second. The patch Gram ⟨a_t, a_s⟩ is never formed:
with stride S the input splits into S×S sub-grids z_r = x[ry::S, rx::S], and tap (ky, kx) at output t reads
sub-grid pixel t + d for one shift d per tap (zero padding falls outside the sub-grid), so

    Σ_{t,s} ⟨a_t, a_s⟩ h_ts = Σ_r ⟨K_r, H_r⟩,   K_r[u, v] = ⟨z_r[u], z_r[v]⟩ (over channels),
                                               H_r[u, v] = Σ_d h_{u-d, v-d} over r's taps,

about (k/S)² less work than unfolding patches. Sub-grids with the same shift pattern share one H, read at their
own offset. Where it is cheaper (few output positions: a DCGAN discriminator's first and last layer) the per-pair
gradients are materialised by a grouped convolution with one group per pair. GroupNorm's per-pair gradients
(one value per channel) are always materialised.

The clipped sum is then ONE weight gradient per layer, computed with each pair's output gradients scaled by its
clip factor ("book-keeping", Bu et al. 2023): no second backward pass. :meth:`PairGhostClipper.backward` leaves
that un-normalised sum in ``p.grad``, which is what Opacus' fast-gradient-clipping optimizers expect
(:func:`dp_optimizer` builds one): they add N(0, σ²C²) noise and divide by the expected batch size, and any Opacus
accountant hook counts their steps. ``clipping="per-layer"`` clips each block (a convolution and the norm
layers after it) to C/√L instead, so a pair's clipped gradient still has norm ≤ C (McMahan et al. 2018).

User-level DP (``unit_of``): a unit is every pair of one person, its gradient g_u = Σ_{i∈u} g_i, so
‖g_u‖² = Σ_{r,r'} ⟨G_r, G_r'⟩ over every two rows (images) r, r' of the unit: the same Gram products for each pair
of rows of a unit (cross terms weighted 2), and materialised gradients summed per unit. A pair is the unit of 2
rows, whose three row pairs are the blocks above. The cost grows with the square of a unit's rows
(train_dcgan_dp.py --max-photos-per-unit caps it).

Supported layers: Conv2d (groups 1, dilation 1, zero padding) and GroupNorm; anything else with trainable
parameters is a ValueError. Tests compare norms and clipped sums with per-pair autograd in float64
(tests/test_ghost_clipping.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Units:
    """Which rows of the forward batch [first; second] form one clipping unit. Pairs (``unit_of`` None): row i and
    row n + i, one unit per pair. Groups: ``unit_of[i]`` in 0..U-1 is the unit of pair i (e.g. its person), so a
    unit is every pair of that group, and its gradient is the sum of their pair gradients."""

    def __init__(self, n: int, unit_of: torch.Tensor | None = None, device=None):
        self.pairs = unit_of is None
        self.n = n
        self.rows = torch.arange(n, device=device).repeat(2) if self.pairs else unit_of.to(device).repeat(2)
        self.count = n if self.pairs else (int(unit_of.max()) + 1 if n else 0)

    def rows_to_units(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row values (2n, ...) summed per unit: (U, ...)."""
        if self.pairs:
            return x[:self.n] + x[self.n:]
        return x.new_zeros((self.count,) + x.shape[1:]).index_add_(0, self.rows, x)

    def row_pairs(self, step: int):
        """Chunks (rows u, rows v, weight, unit) covering every unordered pair of rows {u, v} within a unit once,
        u = v included (weight 1; 2 for u != v): Σ over them of weight·<G_u, G_v> is the unit's squared norm.
        Pairs: first-first, second-second and first-second, as slices (no copies)."""
        n = self.n
        if self.pairs:
            for i in range(0, n, step):
                j = min(n, i + step)
                dest = torch.arange(i, j, device=self.rows.device)
                for u0, v0, f in ((0, 0, 1.0), (n, n, 1.0), (0, n, 2.0)):
                    yield slice(u0 + i, u0 + j), slice(v0 + i, v0 + j), f, dest
            return
        order = torch.argsort(self.rows, stable=True)
        counts = torch.bincount(self.rows, minlength=self.count).tolist()
        us, vs, ws, ds, start = [], [], [], [], 0
        for unit, c in enumerate(counts):
            if c:
                iu, iv = torch.triu_indices(c, c)
                us.append(order[start + iu])
                vs.append(order[start + iv])
                ws.append(torch.where(iu == iv, 1.0, 2.0))
                ds.append(torch.full((len(iu),), unit))
            start += c
        u, v, w, d = (torch.cat(x) for x in (us, vs, ws, ds))
        dev = self.rows.device
        for i in range(0, len(u), step):
            yield u[i:i + step].to(dev), v[i:i + step].to(dev), w[i:i + step].to(dev).view(-1), d[i:i + step].to(dev)


class PairGhostClipper:
    """Per-pair clipped gradient sum of ``module`` for a loss over pairs (row i of ``first`` with row i of
    ``second``).

    ``loss_fn(out_first, out_second)`` must return the SUM over pairs of per-pair losses, pair i's term depending
    on the i-th outputs only (e.g. the GAN discriminator loss, gan.d_pair_loss with reduction "sum")."""

    def __init__(self, module: nn.Module, max_grad_norm: float, loss_fn, chunk_floats: int = 2 ** 22,
                 clipping: str = "flat"):
        if clipping not in ("flat", "per-layer"):
            raise ValueError(f"clipping must be 'flat' or 'per-layer', got {clipping!r}")
        self.max_grad_norm, self.loss_fn, self.chunk_floats = max_grad_norm, loss_fn, chunk_floats
        self.layers, self.blocks, conv = [], [], None  # blocks[j]: the clipping block of layers[j]
        for name, m in module.named_modules():
            if isinstance(m, nn.Conv2d):
                conv = name  # a block is a convolution (trained or frozen) and the norms after it
            if not any(p.requires_grad for p in m.parameters(recurse=False)):
                continue
            if not (isinstance(m, nn.GroupNorm) or (type(m) is nn.Conv2d and m.groups == 1 and m.dilation == (1, 1)
                                                    and m.padding_mode == "zeros" and not isinstance(m.padding, str))):
                raise ValueError(f"ghost clipping supports Conv2d (groups=1, dilation=1, zero padding) and "
                                 f"GroupNorm layers, not {name} ({type(m).__name__})")
            self.layers.append(m)
            self.blocks.append(0 if clipping == "flat" else conv if conv is not None else name)
        ids = {b: i for i, b in enumerate(dict.fromkeys(self.blocks))}
        self.blocks = [ids[b] for b in self.blocks]
        self.n_blocks = len(ids)
        self.last_norms = None  # per-pair gradient norms of the last call (before clipping)

    # ------------------------------------------------------------------ convolutions
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

    def _conv_sq_norms(self, m, a, g, units):
        """Squared per-unit gradient norms of a Conv2d, the per-unit weight gradients if they were materialised
        (else None) and the per-unit bias gradients (None without a bias)."""
        o, c, kh, kw = m.weight.shape
        oh, ow = g.shape[2:]
        T = oh * ow
        residues, hr, wr = self._residues(m, a.shape)
        if not self._ghost_is_cheaper(2 * T * c * kh * kw * o, len(residues) * c * (hr * wr) ** 2 + T * T * o):
            if T == 1:  # one window: a linear layer on the patch
                patch = F.pad(a, (m.padding[1],) * 2 + (m.padding[0],) * 2)[:, :, :kh, :kw]
                gs = units.rows_to_units(torch.bmm(g.reshape(len(a), o, 1), patch.reshape(len(a), 1, -1)))
            elif units.pairs:  # a grouped convolution: batch 0 = first, 1 = second; one group per pair
                n = units.count
                gs = self._conv_weight_grad(m, a.reshape(2, n * c, *a.shape[2:]), g.reshape(2, n * o, oh, ow), n)
            else:  # one group per row, summed per unit
                r = len(a)
                gs = units.rows_to_units(self._conv_weight_grad(m, a.reshape(1, r * c, *a.shape[2:]),
                                                                g.reshape(1, r * o, oh, ow), r).reshape(r, -1))
            gs = gs.reshape(units.count, -1)
            sq = torch.linalg.vector_norm(gs, dim=1).square()
        else:
            gs, sq = None, self._ghost_sq_norms(m, a, g, units, residues, hr, wr)
        gb = None
        if m.bias is not None:
            gb = units.rows_to_units(g.sum((2, 3)))
            sq = sq + gb.square().sum(1)
        return sq, gs, gb

    def _ghost_sq_norms(self, m, a, g, units, residues, hr, wr):
        """Σ_{t,s} <a_t,a_s><g_t,g_s> per unit, over every pair of rows of a unit (module docstring), from the
        stride sub-grids, in chunks of row pairs."""
        (sh, sw), (oh, ow) = m.stride, g.shape[2:]
        if a.shape[2] != hr * sh or a.shape[3] != wr * sw:  # zero rows/columns up to a multiple of the stride
            a = F.pad(a, (0, wr * sw - a.shape[3], 0, hr * sh - a.shape[2]))
        idx = [i for i, _, _ in residues]
        z = a.view(len(a), -1, hr, sh, wr, sw).permute(0, 3, 5, 1, 2, 4).reshape(len(a), sh * sw, -1, hr * wr)
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
        gm, sq, r = g.flatten(2), g.new_zeros(units.count), len(residues)
        step = max(1, self.chunk_floats // (r * (hr * wr) ** 2 + len(patterns) * (hz * wz) ** 2))
        for u, v, f, dest in units.row_pairs(step):  # rows u[i] and v[i] of unit dest[i], weight f
            b = len(dest)
            gg = torch.bmm(gm[u].mT, gm[v]).view(b, oh, ow, oh, ow)
            k = torch.matmul(z[u].mT, z[v]).view(b, r, hr, wr, hr, wr)  # pixel Grams
            for (qy, qx), members in patterns.items():
                h = gg.new_zeros(b, hz, wz, hz, wz)
                for y in qy:
                    for x in qx:
                        h[:, y:y + oh, x:x + ow, y:y + oh, x:x + ow] += gg
                for pos, y, x in members:
                    term = (k[:, pos] * h[:, y:y + hr, x:x + wr, y:y + hr, x:x + wr]).sum((1, 2, 3, 4))
                    sq.index_add_(0, dest, f * term)
        return sq

    # ------------------------------------------------------------------ the clipped sum
    def forward_backward(self, module, first, second):
        """One forward pass over [first; second] and one backward pass to the layer outputs: (summed loss,
        outputs, each layer's input, the loss gradient w.r.t. each layer's output)."""
        n = len(first)
        acts, outs, versions = [], [], []

        def record(m, inputs, output):
            acts.append(inputs[0].detach())
            outs.append(output)
            versions.append(output._version)

        handles = [m.register_forward_hook(record) for m in self.layers]
        try:
            out = module(torch.cat([first, second]))
        finally:
            for h in handles:
                h.remove()
        if len(outs) != len(self.layers) or any(o._version != v for o, v in zip(outs, versions)):
            raise ValueError("ghost clipping needs each layer to run once per forward and its output not to be "
                             "modified in place (use inplace=False activations)")
        loss = self.loss_fn(out[:n], out[n:])
        return loss, out, acts, torch.autograd.grad(loss, outs)  # per-sample loss gradients, per layer output

    def backward(self, module, first, second, unit_of: torch.Tensor | None = None):
        """Set ``p.grad`` of the module's trained parameters to Σ_u min(1, C/‖g_u‖) g_u over the units (flat), or
        the same per block with C/√L (per-layer); return (summed loss, outputs over [first; second]). A unit is a
        pair (``unit_of`` None), or with ``unit_of`` (pair i -> unit in 0..U-1) the sum of its pairs' gradients,
        e.g. every photo of one person (user-level DP): its squared norm has the cross terms between its pairs."""
        n = len(first)
        units = Units(n, unit_of, first.device)
        loss, out, acts, grads = self.forward_backward(module, first, second)
        sq = torch.zeros(self.n_blocks, units.count, device=first.device, dtype=out.dtype)  # per block and unit
        per_unit = {}
        for m, a, g, b in zip(self.layers, acts, grads, self.blocks):
            if isinstance(m, nn.Conv2d):
                sq_m, gw, gb = self._conv_sq_norms(m, a, g, units)
                per_unit[m] = gw, gb
            else:
                gw = units.rows_to_units((F.group_norm(a, m.num_groups, eps=m.eps) * g).flatten(2).sum(2))
                gb = units.rows_to_units(g.flatten(2).sum(2))
                per_unit[m] = gw, gb
                sq_m = gw.square().sum(1) + gb.square().sum(1)
            sq[b] += sq_m
        sq = sq.clamp_min(0)
        self.last_norms = sq.sum(0).sqrt()
        bound = self.max_grad_norm / self.n_blocks ** 0.5  # C, or C / √L per block
        scales = (bound / (sq.sqrt() + 1e-6)).clamp(max=1.0)  # Opacus' clip factor, per block and unit
        for m, a, g, b in zip(self.layers, acts, grads, self.blocks):
            scale, (gw, gb) = scales[b], per_unit[m]  # per-unit weight and bias gradients (None: not formed)
            if gb is not None:
                m.bias.grad = scale @ gb
            if gw is not None:  # materialised (GroupNorm, small convolutions): weight the per-unit gradients
                m.weight.grad = (scale @ gw).view_as(m.weight)
            else:  # g is autograd.grad's result, used no more: scale each row by its unit's factor, in place
                m.weight.grad = self._conv_weight_grad(m, a, g.mul_(scale[units.rows].view(-1, 1, 1, 1)))
        return loss.detach(), out.detach()


def dp_optimizer(optimizer, *, noise_multiplier: float, max_grad_norm: float, expected_batch_size: float,
                 distributed: bool = False, generator=None, secure_mode: bool = False):
    """Wrap ``optimizer`` in Opacus' fast-gradient-clipping DPOptimizer (flat; distributed: the clipped sums are
    all-reduced and only rank 0 adds noise), which takes p.grad as the clipped sum that
    :meth:`PairGhostClipper.backward` leaves there: step() adds N(0, σ²C²) noise and divides by the expected
    batch size (loss_reduction "mean"). Attach an accountant with ``opt.attach_step_hook``."""
    from opacus.optimizers import get_optimizer_class

    cls = get_optimizer_class(clipping="flat", distributed=distributed, grad_sample_mode="ghost")
    return cls(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
               expected_batch_size=expected_batch_size, loss_reduction="mean", generator=generator,
               secure_mode=secure_mode)

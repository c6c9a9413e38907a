"""How the discriminator is updated: :class:`NonPrivate`, or :class:`DPSGD` (Opacus) with its privacy ledger.

Both have the interface the training loop uses (``make_private``, ``batches``, ``d_step``, ``frozen``, the ledger
methods), so train_dcgan.train has no privacy branches. DP-SGD computes its per-pair clipped sums with one of two
backends: :class:`GhostBackend` (``--grad-sample-mode ghost``, the default: ghost_clipping.PairGhostClipper, no
per-sample gradients) or :class:`OpacusBackend` (``hooks``, ``functorch``, ``ew``: Opacus materialises per-sample
gradients). Noise, its scale and the accounting are Opacus' in every mode.

What the reported ε covers (docs/privacy.md):
  * Only D reads real data, so only D is trained with DP-SGD; G learns through D's privatised weights
    (post-processing), so G and its samples inherit D's (ε, δ).
  * The unit is ONE real example with its paired fake: pair i's gradient, of BCE(D(x_i), 1) + BCE(D(G(z_i)), 0),
    is clipped to C as a whole. (Two backward passes, as in Opacus' DCGAN example, would clip real and fake
    separately: one real example could then move the sum by 2C.)
  * Poisson sampling with rate q = 1 / steps-per-epoch; the fake batch follows the real one; an empty batch still
    takes a noisy step and is counted. G steps, the K schedule, the EMA and the mode-seeking term read no real
    data: the accountant counts D steps.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Protocol

import torch

import gan
from utils import UserError, average_grads, broadcast_params, dist_world

# Opacus' RDP analysis warns when the best order is the largest one tried: the bound is then only looser
# (conservative), never optimistic, so the warning carries no risk for the reported epsilon.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")

GRAD_SAMPLE_MODES = ("ghost", "hooks", "functorch", "ew")  # each checked against an autograd reference in tests


class DUpdate(Protocol):
    """What train_dcgan.train asks of a privacy strategy: NonPrivate and DPSGD implement it."""

    private: bool

    def check_args(self, args) -> None: ...
    def make_private(self, D, optD, *, n_train, batch_size, steps_per_epoch, total_steps, state=None,
                     people=None) -> tuple: ...
    def distribute(self, D): ...  # under torchrun
    def unwrap(self, D): ...  # the plain discriminator (for checkpoints)
    def batches(self, gen, n: int, steps: int): ...  # an epoch's batches of indices into the training set
    def units(self, idx): ...  # the privacy unit of each row of a batch (None: each row its own)
    def d_step(self, D, optD, real, fake, units=None) -> tuple: ...  # (D loss, mean D(x), mean D(G(z)))
    def frozen(self, D): ...  # a context in which G steps through D without touching D's gradients
    def epsilon(self, step=None, final=False): ...  # the log's ε (None: non-private)
    def state_dict(self): ...  # the ledger in the checkpoint
    def describe(self): ...  # config.json's privacy settings
    def summary(self) -> str: ...
    def results(self) -> dict: ...
    def write_artefacts(self, out, D) -> None: ...  # files of the strategy's own (gradient canaries)


class NonPrivate:
    """The non-private D update."""

    private = False

    def __init__(self, args=None):
        self.args = args

    def check_args(self, args):
        pass

    def make_private(self, D, optD, **_):
        return D, optD

    def distribute(self, D):
        return D  # gradients are averaged over ranks in d_step

    def unwrap(self, D):
        return D

    def batches(self, gen, n, steps):
        return gan.shuffled_batches(gen, n, steps)

    def units(self, idx):
        return None

    def d_step(self, D, optD, real, fake, units=None):
        optD.zero_grad(set_to_none=True)
        stats = gan.d_forward_backward(D, real, fake) if len(real) else (float("nan"),) * 3
        if dist_world()[1] > 1:
            average_grads(D)  # an empty shard contributes zero gradients
        optD.step()
        return stats

    def frozen(self, D):
        return gan.frozen(D)

    def epsilon(self, step=None, final=False):
        return None

    def state_dict(self):
        return None

    def describe(self):
        return None

    def summary(self):
        return ""

    def results(self):
        return {}

    def write_artefacts(self, out, D):
        pass


# ----------------------------------------------------------------------------- DP-SGD backends
class GhostBackend:
    """Per-pair norms and the clipped sum by ghost clipping; Opacus' fast-gradient-clipping optimizer adds noise."""

    def __init__(self, args):
        self.args, self.clipper = args, None

    def wrap(self, D, optD, *, noise_multiplier, n_train, batch_size, sample_rate, engine):
        from ghost_clipping import PairGhostClipper, dp_optimizer

        a = self.args
        try:
            self.clipper = PairGhostClipper(D, a.max_grad_norm, functools.partial(gan.d_pair_loss, reduction="sum"),
                                            clipping=a.clipping)
        except ValueError as e:
            raise UserError(f"--grad-sample-mode ghost: {e}; use --grad-sample-mode hooks") from None
        world = dist_world()[1]
        optD = dp_optimizer(optD, noise_multiplier=noise_multiplier,  # the noise's std is σ x its max_grad_norm:
                            max_grad_norm=a.max_grad_norm * PLANTED_NOISE_FACTOR,  # the clipper clips to C itself
                            expected_batch_size=int(n_train * sample_rate) / world, distributed=world > 1,
                            generator=engine.secure_rng if a.secure_rng else None, secure_mode=a.secure_rng)
        return D, optD

    def distribute(self, D):
        broadcast_params(D)  # the optimizer all-reduces the clipped sums; noise on rank 0 only
        return D

    def unwrap(self, D):
        return D

    def set_hooks(self, D, on):
        pass

    def empty_batch(self, D):
        for p in D.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)

    def backward(self, D, real, fake, units=None):
        try:
            loss, out = self.clipper.backward(D, real, fake, units)
        except ValueError as e:
            raise UserError(f"--grad-sample-mode ghost: {e}, or use --grad-sample-mode hooks") from None
        n = len(real)
        return gan.d_stats(loss.item() / n, out[:n], out[n:])


class OpacusBackend:
    """Opacus' GradSampleModule materialises per-sample gradients (two forwards, one backward: the pair is one
    per-sample gradient) and its DPOptimizer clips and adds noise."""

    def __init__(self, args):
        self.args = args

    def wrap(self, D, optD, *, noise_multiplier, n_train, batch_size, sample_rate, engine):
        from torch.utils.data import DataLoader, TensorDataset

        a = self.args  # Opacus derives q = 1 / len(loader) = 1 / steps per epoch from the loader
        loader = DataLoader(TensorDataset(torch.arange(n_train)), batch_size=batch_size)
        D, optD, _ = engine.make_private(module=D, optimizer=optD, data_loader=loader,
                                         noise_multiplier=noise_multiplier, max_grad_norm=a.max_grad_norm,
                                         poisson_sampling=a.poisson, grad_sample_mode=a.grad_sample_mode)
        return D, optD

    def distribute(self, D):
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

        return DPDDP(D)

    def unwrap(self, D):
        m = D._module
        return getattr(m, "module", m)  # under torchrun: GradSampleModule(DPDDP(D))

    def set_hooks(self, D, on):
        D.enable_hooks() if on else D.disable_hooks()

    def empty_batch(self, D):
        for p in D.parameters():
            if p.requires_grad:
                p.grad_sample = torch.zeros((0,) + tuple(p.shape), device=p.device, dtype=p.dtype)

    def backward(self, D, real, fake, units=None):
        assert units is None, "the Opacus modes clip per pair (check_args refuses --privacy-unit identity)"
        return gan.d_forward_backward(D, real, fake)


# The PRV accountant evaluates ε on a grid whose size grows without bound as σ shrinks (Gopi et al.'s safe domain
# [-L, L] at mesh eps_error / sqrt(steps log(12 / δ_err) / 2)): 317 million points for σ = 0.05, q = 0.5, 168
# steps, which the kernel's OOM killer ends. Measured (opacus 1.6, numpy FFT, AMD EPYC Zen 3, 2026-12-07): 67-180
# bytes per point at peak, so PRV_MAX_POINTS keeps an evaluation under about 0.7 GB; every DP setting of the
# studies needs at most 1.8 million (ε = 64 at q = 0.5 over 960 steps). Beyond L = 500, exp(t) in Opacus' PRV
# nears float64's range (it overflows at 709 and returns ε = inf at σ = 0.15, q = 0.5, 168 steps).
PRV_MAX_POINTS = 4_000_000
PRV_MAX_DOMAIN = 500.0


class AccountingTooLarge(Exception):
    """The accountant cannot evaluate this ledger in bounded memory; the message says why."""


def _bounded_prv():
    """Opacus' PRV accountant that refuses, once it has chosen its grid and before it allocates it, a grid of more
    than PRV_MAX_POINTS points or beyond PRV_MAX_DOMAIN (AccountingTooLarge)."""
    from opacus.accountants import PRVAccountant

    class BoundedPRV(PRVAccountant):
        def _get_domain(self, *args, **kwargs):
            domain = super()._get_domain(*args, **kwargs)
            if domain.size > PRV_MAX_POINTS or domain.t_max > PRV_MAX_DOMAIN:
                raise AccountingTooLarge(
                    f"grid would need {domain.size:,} points over [{domain.t_min:,.0f}, {domain.t_max:,.0f}] (at most "
                    f"{PRV_MAX_POINTS:,} within {PRV_MAX_DOMAIN:g}: about {domain.size * 180 / 2 ** 30:,.1f} GB)")
            return domain

    return BoundedPRV()


@functools.lru_cache(maxsize=256)
def epsilon_of(accountant: str, history: tuple, delta: float) -> float:
    """ε of an Opacus ledger, ``history`` = ((σ, q, steps), ...), under ``accountant`` at δ; inf where some σ is 0
    (clipping without noise). Raises AccountingTooLarge, before allocating anything, where PRV's grid would not fit
    in memory. Memoised: one PRV evaluation takes 0.2-1.2 s on a CPU (longer for large q)."""
    if not sum(s for _, _, s in history):
        return 0.0
    if any(sigma == 0 for sigma, _, s in history if s):
        return math.inf
    from opacus.accountants import create_accountant

    acc = _bounded_prv() if accountant == "prv" else create_accountant(accountant)
    acc.history = [tuple(h) for h in history]
    return _accountant_epsilon(acc, delta)


def _accountant_epsilon(acc, delta: float) -> float:
    """The one place an accountant is evaluated (tests count the calls)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def noise_for_epsilon(target: float, delta: float, sample_rate: float, steps: int, accountant: str,
                      tolerance: float = 0.01) -> float:
    """σ that spends ``target`` after ``steps`` steps at ``sample_rate``: Opacus' get_noise_multiplier search step
    for step (double σ from 10 until ε <= target, then bisect on [0, σ]), so its σ is Opacus' to the last digit,
    with one difference: a σ whose ε the accountant cannot evaluate in bounded memory (PRV at a small σ, which the
    bisection visits on the way to a large target) counts as spending more than the target, instead of
    allocating until the machine runs out of memory. Raises ValueError past σ = 1e6, as Opacus does."""
    def eps(sigma):
        try:
            return epsilon_of(accountant, ((sigma, sample_rate, steps),), delta)
        except AccountingTooLarge:
            return math.inf

    eps_high, sigma_low, sigma_high = math.inf, 0.0, 10.0
    while eps_high > target:
        sigma_high = 2 * sigma_high
        eps_high = eps(sigma_high)
        if sigma_high > 1e6:
            raise ValueError("The privacy budget is too low.")
    while target - eps_high > tolerance and sigma_high - sigma_low > 1e-12 * sigma_high:  # (the second: the
        sigma = (sigma_low + sigma_high) / 2  # target lies beyond what PRV can evaluate; σ_high spends less)
        e = eps(sigma)
        if e < target:
            sigma_high, eps_high = sigma, e
        else:
            sigma_low = sigma
    return sigma_high


# ----------------------------------------------------------------------------- white-box DP audit
# Tests only: < 1 makes the optimizer add this fraction of the noise while the accountant counts all of it (a
# planted bug the gradient-canary audit must catch). Never changed outside tests.
PLANTED_NOISE_FACTOR = 1.0


class GradientCanaries:
    """The white-box DP audit's gradient canaries (Nasr et al. 2023; Steinke, Nasr & Jagielski 2023): ``m`` units
    of the training set that are gradients, each with its own seeded coin. A heads canary is in the dataset: it is
    Poisson-sampled with the real units, by the same draw (DPSGD.batches), and when sampled its gradient enters
    the clipped sum before the noise as a sampled unit's does: C e_j, Dirac canaries of norm C, each on a
    coordinate of its own in a block of m coordinates that the optimizer noises and updates with D's parameters
    and that D's loss never touches. So a canary's coordinate sees exactly C per sampled step plus the run's
    noise: the audit measures the mechanism itself (Poisson sampling, the clipped sum, the noise, the
    accounting) free of D's own gradients, whose projections on directions in D's parameters would drown a
    canary in a network this small. The auditor's scores: every noisy update's value on each coordinate, summed
    over the steps (the every-iterate threat model, the one DP-SGD's guarantee covers), and the block's final
    value (what the final model shows). The block is no part of D; its values and scores are in the checkpoint."""

    def __init__(self, m: int, clip: float, seed: int, state: dict | None = None):
        self.m, self.clip = m, clip
        self.coins = torch.rand(m, generator=torch.Generator().manual_seed(seed)) < 0.5
        self.block = torch.nn.Parameter(state["block"].clone() if state else torch.zeros(m))
        self.iterate_scores = state["iterate_scores"].clone() if state else torch.zeros(m, dtype=torch.float64)
        self.sampled = torch.zeros(m, dtype=torch.bool)  # the heads canaries of the current batch

    def draw(self, uniform: torch.Tensor, q: float) -> None:
        """The canaries' part of a Poisson draw (``uniform``: their m uniform numbers)."""
        self.sampled = self.coins & (uniform < q)

    def inject(self, last: bool = True) -> None:
        """The block's clipped sum: C at each sampled heads canary, zeros elsewhere, added with the last chunk of a
        step (zeros with the others: the optimizer sums a step's chunks)."""
        self.block.grad = self.sampled.to(self.block.dtype) * (self.clip if last else 0.0)

    def observe(self) -> None:
        """The released noisy update on the block (the optimizer's step hook)."""
        self.iterate_scores += self.block.grad.detach().double()

    def state_dict(self) -> dict:
        return {"block": self.block.detach().clone(), "iterate_scores": self.iterate_scores}


# ----------------------------------------------------------------------------- DP-SGD
class DPSGD:
    """DP-SGD on D: a backend for the clipped sums, Opacus' optimizer for the noise, and the ε ledger."""

    private = True
    LIVE_EVALUATIONS = 10  # how often per run the log's ε is evaluated anew (exact at the end)

    def __init__(self, args):
        self.args = args
        self.engine, self.canaries = None, None
        self.unit = getattr(args, "dp_unit", None) or args.privacy_unit  # what is sampled, clipped and accounted
        self.backend = GhostBackend(args) if args.grad_sample_mode == "ghost" else OpacusBackend(args)

    @property
    def clipper(self):
        return getattr(self.backend, "clipper", None)

    # ------------------------------------------------------------------ setup
    def check_args(self, args):
        if (args.epsilon is None) == (args.noise_multiplier is None):
            raise UserError("give exactly one of --epsilon (target) or --noise-multiplier")
        if args.epsilon is not None and not args.epsilon > 0:
            raise UserError(f"--epsilon must be > 0, got {args.epsilon}")
        if args.noise_multiplier is not None and not args.noise_multiplier >= 0:
            raise UserError(f"--noise-multiplier must be >= 0 (0: clipping only, no privacy), got "
                            f"{args.noise_multiplier}")
        if not 0 < args.delta < 1:
            raise UserError(f"--delta must be in (0, 1), got {args.delta}")
        if not args.max_grad_norm > 0:
            raise UserError(f"--max-grad-norm must be > 0, got {args.max_grad_norm}")
        if args.max_physical_batch_size is not None and args.max_physical_batch_size <= 0:
            raise UserError("--max-physical-batch-size must be positive")
        if getattr(args, "memorization_rejection", None) is not None or getattr(args, "mr_quantile", None) is not None:
            raise UserError("memorization rejection reads the training set at every G step, so G's steps would not be "
                            "post-processing and ε would not hold; use it with train_dcgan.py")
        if self.unit == "identity" and args.privacy_unit != "identity":
            raise UserError("--dp-unit identity needs the data drawn by person: add --privacy-unit identity")
        m = args.max_photos_per_unit
        if m is not None and (m < 1 or self.unit != "identity"):
            raise UserError(f"--max-photos-per-unit takes a positive count and needs person-level DP (--privacy-unit "
                            f"identity), got {m}")
        if self.unit == "identity" and (args.grad_sample_mode != "ghost" or args.max_physical_batch_size
                                                 or not args.poisson):
            raise UserError("--privacy-unit identity clips each person's summed gradient in ghost mode only: drop "
                            "--grad-sample-mode, --max-physical-batch-size and --no-poisson")
        if args.audit_gradient_canaries < 0:
            raise UserError(f"--audit-gradient-canaries must be >= 0 (0: none), got {args.audit_gradient_canaries}")
        if args.audit_gradient_canaries and (args.grad_sample_mode != "ghost" or not args.poisson
                                             or dist_world()[1] > 1):
            raise UserError("--audit-gradient-canaries needs Poisson sampling and --grad-sample-mode ghost in one "
                            "process (the canaries join the Poisson draw and the clipped sum the ghost clipper leaves)")
        if args.clipping != "flat" and args.grad_sample_mode != "ghost":
            raise UserError(f"--clipping {args.clipping} needs --grad-sample-mode ghost (the Opacus modes clip flat); "
                            "drop --grad-sample-mode or use --clipping flat")

    def make_private(self, D, optD, *, n_train, batch_size, steps_per_epoch, total_steps, state=None,
                     people=None):
        """Calibrate σ (or take it from ``state``, the checkpoint's ledger), wrap D and its optimizer, attach the
        accountant; refuses a run whose total steps would spend more than the target ε. ``n_train`` counts the
        planned images; ``people`` = (planned people, each training row's person as 0..U-1): with person-level DP
        people are Poisson-sampled and clipped, and the accountant's q is per person."""
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        a = self.args
        errors = ModuleValidator.validate(D, strict=False)
        if errors:
            raise UserError(f"discriminator is not DP-compatible: {errors[0]}")
        self.unit_of = None
        if self.unit == "identity":
            if people is None:
                raise UserError("person-level DP needs the training rows' people (train_dcgan.train passes them)")
            n_train, self.unit_of = people
        self.n_train, self.sample_rate, self.total_steps = n_train, 1.0 / steps_per_epoch, total_steps
        if n_train * self.sample_rate < 1:  # Opacus' noise scale divides by the expected units per step
            raise UserError(f"person-level DP: {n_train} people over {steps_per_epoch} D steps per epoch is fewer than "
                            f"one person per step on average; raise --batch-size ({batch_size}) to at least "
                            f"{batch_size * steps_per_epoch // n_train + 1}, or draw more people")
        if self.unit_of is not None and dist_world()[1] > 1:
            raise UserError("--privacy-unit identity under torchrun would split a person's photos over ranks (each "
                            "clipped on its own); train it in one process")
        if a.delta >= 1.0 / n_train:
            warnings.warn(f"--delta {a.delta:g} >= 1/N = {1 / n_train:.2g}: such a delta allows leaking a whole "
                          "example; use delta << 1/N", stacklevel=2)
        if state is not None:
            self.noise_multiplier = state["noise_multiplier"]
        elif a.noise_multiplier is not None:
            self.noise_multiplier = a.noise_multiplier
        else:
            try:
                self.noise_multiplier = noise_for_epsilon(a.epsilon, a.delta, self.sample_rate, total_steps,
                                                          a.accountant)
            except ValueError:
                raise UserError(f"epsilon = {a.epsilon} is unreachable with {total_steps} steps at sample rate "
                                f"{self.sample_rate:.4g} (noise multiplier would exceed 1e6); raise --epsilon, "
                                "lower --epochs or --batch-size") from None
        # the log's ε is evaluated anew every refresh_every D steps, fixed when the run starts (so a resumed run
        # logs what an uninterrupted one does)
        self.refresh_every = (state or {}).get("refresh_every") or max(20, -(-total_steps // self.LIVE_EVALUATIONS))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
            try:
                self.engine = PrivacyEngine(accountant=a.accountant, secure_mode=a.secure_rng)
            except ImportError:
                raise UserError("--secure-rng needs the torchcsprng package (pip install torchcsprng; it must "
                                "match your torch version), or drop --secure-rng") from None
            if a.audit_gradient_canaries:  # their block is noised and updated with D's parameters (ghost mode only)
                self.canaries = GradientCanaries(a.audit_gradient_canaries, a.max_grad_norm, a.seed + 7727,
                                                 (state or {}).get("canaries"))
                optD.add_param_group({"params": [self.canaries.block]})
            D, optD = self.backend.wrap(D, optD, noise_multiplier=self.noise_multiplier, n_train=n_train,
                                        batch_size=batch_size, sample_rate=self.sample_rate, engine=self.engine)
        if a.grad_sample_mode == "ghost":
            account = self.engine.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate)
            observe = self.canaries.observe if self.canaries is not None else lambda: None
            optD.attach_step_hook(lambda opt: (account(opt), observe()))
        assert abs(optD.expected_batch_size * dist_world()[1] - int(n_train * self.sample_rate)) < 1  # per-rank share
        if state is not None:
            self.engine.accountant.load_state_dict(state["accountant"])
        try:  # the run's accountant at its last step: every later evaluation of it is no larger
            projected = self.epsilon_at(total_steps)
        except AccountingTooLarge as e:
            raise UserError(f"the {a.accountant} accountant cannot evaluate σ = {self.noise_multiplier:g} over "
                            f"{total_steps} steps: {e}; ε would be enormous: use a larger --noise-multiplier, or "
                            "--accountant rdp") from None
        if a.epsilon is not None and projected > a.epsilon + 0.01:
            raise UserError(f"refusing to train: {total_steps} steps in total would spend ε = {projected:.3f} "
                            f"> target ε = {a.epsilon} (σ = {self.noise_multiplier:.4f} was fixed for the original "
                            "run); keep --epochs/--max-steps as they were or start a new run")
        return D, optD

    # ------------------------------------------------------------------ loop hooks
    def distribute(self, D):
        """Under torchrun: the optimizer (ghost) or Opacus' DPDDP (hooks modes) all-reduces the clipped sums."""
        return self.backend.distribute(D)

    def unwrap(self, D):
        return self.backend.unwrap(D)

    def frozen(self, D):
        return gan.frozen(D, self.backend.set_hooks)

    def batches(self, gen, n, steps):
        """Poisson sampling: every example joins each of the epoch's ``steps`` batches with probability q."""
        if not self.args.poisson:
            yield from gan.shuffled_batches(gen, n, steps)
            return
        if self.engine.secure_rng is not None:
            gen = self.engine.secure_rng  # cryptographically secure sampling; not reproducible
        c = self.canaries.m if self.canaries is not None else 0  # gradient canaries are units of the draw too
        if self.unit_of is None:
            for _ in range(steps):
                draw = torch.rand(n + c, generator=gen)
                if c:
                    self.canaries.draw(draw[n:], self.sample_rate)
                yield torch.nonzero(draw[:n] < self.sample_rate).flatten()
            return
        unit_of, m = self.unit_of, self.args.max_photos_per_unit  # people: each joins with probability q
        people = int(unit_of.max()) + 1 if len(unit_of) else 0
        for _ in range(steps):
            draw = torch.rand(people + c, generator=gen)
            if c:
                self.canaries.draw(draw[people:], self.sample_rate)
            rows = torch.nonzero((draw[:people] < self.sample_rate)[unit_of])
            rows = rows.flatten()
            if m is not None and len(rows):  # at most m photos per person: a random subset, drawn anew each step
                key = unit_of[rows].double() + torch.rand(len(rows), generator=gen, dtype=torch.float64)
                rows = rows[torch.argsort(key)]
                u = unit_of[rows]
                first = torch.searchsorted(u, u)  # where each row's person starts in the sorted batch
                rows = rows[torch.arange(len(rows)) - first < m].sort().values
            yield rows

    def units(self, idx):
        """Each row's person as 0..U-1 within the batch (None at image level: each pair is its own unit)."""
        if self.unit_of is None:
            return None
        return torch.unique(self.unit_of[idx.cpu()], return_inverse=True)[1]

    def empty_batch(self, D):
        """A step with no real example: zero per-sample gradients, noise is still added."""
        self.backend.empty_batch(D)

    def d_step(self, D, optD, real, fake, units=None):
        """One DP-SGD step over physical chunks of at most --max-physical-batch-size pairs: per-pair (or with
        ``units``, per-person) clipped gradients are summed over the chunks and the noise is added once. An empty
        batch still takes a noisy step (and is counted by the accountant)."""
        optD.zero_grad(set_to_none=True)
        b = len(real)
        if not b:
            self.empty_batch(D)
            self._inject_canaries(last=True)
            optD.step()
            return (float("nan"),) * 3
        chunk = self.args.max_physical_batch_size or b
        sums = torch.zeros(3)
        for i in range(0, b, chunk):
            # with units (people) there is one chunk: check_args refuses --max-physical-batch-size
            stats = self.backend.backward(D, real[i:i + chunk], fake[i:i + chunk], units)
            sums += torch.tensor(stats) * len(real[i:i + chunk])
            last = i + chunk >= b
            optD.signal_skip_step(do_skip=not last)  # accumulate clipped sums; noise once, at the end
            self._inject_canaries(last)
            optD.step()
            if not last:
                optD.zero_grad(set_to_none=True)
        return tuple((sums / b).tolist())

    def _inject_canaries(self, last: bool) -> None:
        if self.canaries is not None:
            self.canaries.inject(last)

    def write_artefacts(self, out, D) -> None:
        """gradient_canaries.npz: the canaries' coins and both threat models' scores (audit.py reads it)."""
        if self.canaries is not None:
            from utils import atomic_savez

            c = self.canaries
            atomic_savez(out / "gradient_canaries.npz", coins=c.coins.numpy(), iterate=c.iterate_scores.numpy(),
                         final=-c.block.detach().double().numpy())  # the optimizer descends: members go down

    # ------------------------------------------------------------------ ledger
    def steps_taken(self) -> int:
        return sum(s for _, _, s in self.engine.accountant.history)

    def epsilon_at(self, steps: int, accountant: str | None = None) -> float:
        """ε after ``steps`` D steps of this run's (σ, q) under ``accountant`` (default: the run's)."""
        return epsilon_of(accountant or self.args.accountant, ((self.noise_multiplier, self.sample_rate, int(steps)),),
                          self.args.delta)

    def epsilon(self, step=None, final=False):
        """The ε the log and the progress bar show after ``step`` D steps (default: the steps taken): exact at
        multiples of ``refresh_every`` and at the final step, else the exact ε of the last multiple (it lags by
        fewer than refresh_every steps). A function of the step, so a resumed run logs the same values."""
        if self.noise_multiplier == 0:
            return None  # clipping only: ε = ∞, nothing to log
        step = self.steps_taken() if step is None else step
        return self.epsilon_at(step if final else step - step % self.refresh_every)

    def state_dict(self):
        return {"accountant": dict(self.engine.accountant.state_dict()), "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "refresh_every": self.refresh_every,
                **({"canaries": self.canaries.state_dict()} if self.canaries is not None else {})}

    def describe(self):
        a = self.args
        return {"target_epsilon": a.epsilon, "delta": a.delta, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": a.max_grad_norm, "clipping": a.clipping, "sample_rate": self.sample_rate,
                "expected_batch_size": self.n_train * self.sample_rate, "accountant": a.accountant,
                "poisson_sampling": a.poisson, "grad_sample_mode": a.grad_sample_mode, "secure_rng": a.secure_rng,
                "max_physical_batch_size": a.max_physical_batch_size, "planned_steps": self.total_steps,
                "privacy_unit": self.unit, "units_planned": self.n_train,
                "max_photos_per_unit": a.max_photos_per_unit}

    def summary(self):
        a = self.args
        target = f"target ε = {a.epsilon}" if a.epsilon is not None else "no target ε"
        blocks = f", {self.clipper.n_blocks} blocks" if a.clipping != "flat" else ""
        cap = "" if a.max_photos_per_unit is None else f", at most {a.max_photos_per_unit} per step"
        unit = "" if self.unit == "image" else f", unit: one PERSON (all photos{cap})"
        eps = ("ε = ∞ (σ = 0: clipping only, no privacy)" if self.noise_multiplier == 0 else
               f"ε = {self.epsilon_at(self.total_steps):.3f} ({a.accountant})")
        return (f"DP-SGD on D{unit}: {target}, δ = {a.delta:g}, σ = {self.noise_multiplier:.4f}, C = {a.max_grad_norm} "
                f"({a.clipping}{blocks}), q = {self.sample_rate:.5f} "
                f"({'Poisson' if a.poisson else 'shuffled, NOT Poisson'}), {self.total_steps} steps -> {eps}")

    def results(self):
        steps = self.steps_taken()
        ledger = tuple(tuple(h) for h in self.engine.accountant.history)  # what was spent, step by step
        out = {"delta": self.args.delta, "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
               "dp_steps": steps, "accountant": self.args.accountant, "max_grad_norm": self.args.max_grad_norm,
               "target_epsilon": self.args.epsilon, "poisson_sampling": self.args.poisson,
               "privacy_unit": self.unit}
        if self.canaries is not None:
            out["gradient_canaries"] = {"m": self.canaries.m, "heads": int(self.canaries.coins.sum()),
                                        "norm": self.canaries.clip, "file": "gradient_canaries.npz"}
        # the run's ε, and the same ledger under both accountants for transparency: each evaluation is bounded in
        # memory (a grid too large for PRV is skipped, never allocated), so a finished run always gets its results
        for key, acc in (("epsilon", self.args.accountant), ("epsilon_rdp", "rdp"), ("epsilon_prv", "prv")):
            try:
                eps = epsilon_of(acc, ledger, self.args.delta)
            except AccountingTooLarge as e:
                out[key], out[f"{key}_note"] = None, f"not evaluated: the {acc} accountant's {e}"
                continue
            out[key] = eps if math.isfinite(eps) else None
            if not math.isfinite(eps):
                out[f"{key}_note"] = "ε = ∞: σ = 0, clipping only, no privacy" if self.noise_multiplier == 0 else \
                    f"the {acc} accountant returned ε = {eps}"
        return out

"""Train the DCGAN with DP-SGD (Opacus) on the discriminator, to a target (epsilon, delta).

Privacy semantics (what the reported epsilon covers):
  * Only the discriminator D reads real data, so only D is trained with DP-SGD. The generator G is
    updated through D's (already privatised) weights and fresh noise: that is post-processing, so G and
    everything sampled from it inherit D's (epsilon, delta) guarantee.
  * The per-sample gradient unit is ONE real example together with its paired fake: D's loss for pair i
    is BCE(D(x_i), 1) + BCE(D(G(z_i)), 0), computed with one backward pass so Opacus sums both parts into
    one per-sample gradient, clipped to --max-grad-norm C as a unit. (Two backward passes, as in the
    Opacus DCGAN example, clip real and fake separately: a real example then moves the sum by up to 2C.)
  * Batches are Poisson-sampled (rate q = 1 / steps-per-epoch) and the fake batch size follows the real
    one, so adding or removing a real example adds or removes exactly one unit. Empty batches still make
    a noisy step, and the accountant counts every step.
  * The generator step uses a fixed batch of --batch-size fakes (never the private batch size) with D
    frozen: D's parameters need no gradient and Opacus' per-sample hooks are off, so no per-sample work
    is wasted and nothing private leaks through G's step.
  * The accountant's history lives in the checkpoint: --resume continues the same ledger and refuses a
    run whose total steps would spend more than the target epsilon.

Everything else (data, loop, artefacts) is train_dcgan.py's; this file adds privacy only.
"""
from __future__ import annotations

import warnings

import torch

import train_dcgan
from utils import UserError, run_cli

# Opacus' RDP analysis warns when the best order is the largest one tried: the bound is then only looser
# (conservative), never optimistic, so the warning carries no risk for the reported epsilon.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")

GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")  # each checked against an autograd reference in tests


class DPPrivacy:
    """The privacy half of the training loop: wraps D with Opacus and keeps the epsilon ledger."""

    locked_args = ("epsilon", "noise_multiplier", "delta", "max_grad_norm", "accountant", "poisson",
                   "grad_sample_mode", "secure_rng")

    def __init__(self, args):
        self.args = args
        self.last_eps = 0.0
        self.engine = None

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
            D, optD, _ = self.engine.make_private(
                module=D, optimizer=optD, data_loader=loader, noise_multiplier=self.noise_multiplier,
                max_grad_norm=a.max_grad_norm, poisson_sampling=a.poisson, grad_sample_mode=a.grad_sample_mode)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        assert abs(optD.expected_batch_size * world - int(n_train * self.sample_rate)) < 1  # per-rank share
        if state is not None:
            self.engine.accountant.load_state_dict(state["accountant"])
            self.last_eps = self.epsilon()
        if a.epsilon is not None:
            projected = self.epsilon_after(total_steps)
            if projected > a.epsilon + 0.01:
                raise UserError(f"refusing to train: {total_steps} steps in total would spend ε = {projected:.3f} "
                                f"> target ε = {a.epsilon} (σ = {self.noise_multiplier:.4f} was fixed for the original "
                                "run); keep --epochs/--max-steps as they were or start a new run")
        return D, optD

    # ------------------------------------------------------------------ loop hooks
    def unwrap(self, D):
        m = D._module
        return getattr(m, "module", m)  # under torchrun: GradSampleModule(DPDDP(D))

    def disable_hooks(self, D):
        D.disable_hooks()

    def enable_hooks(self, D):
        D.enable_hooks()

    def poisson_batches(self, gen, n, steps):
        if not self.args.poisson:
            yield from train_dcgan.shuffled_batches(gen, n, self.batch_size)
            return
        if self.engine.secure_rng is not None:
            gen = self.engine.secure_rng  # cryptographically secure sampling; not reproducible
        for _ in range(steps):
            yield torch.nonzero(torch.rand(n, generator=gen) < self.sample_rate).flatten()

    def empty_batch(self, D):
        """A step with no real example: zero per-sample gradients, noise is still added."""
        for p in D.parameters():
            if p.requires_grad:
                p.grad_sample = torch.zeros((0,) + tuple(p.shape), device=p.device, dtype=p.dtype)

    def d_step(self, D, optD, real, fake, bce):
        """D step over physical chunks of at most --max-physical-batch-size pairs (one logical step)."""
        chunk = self.args.max_physical_batch_size or len(real)
        optD.zero_grad(set_to_none=True)
        sums, b = torch.zeros(3), len(real)
        for i in range(0, b, chunk):
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
    def epsilon(self) -> float:
        return float(self.engine.accountant.get_epsilon(delta=self.args.delta))

    def epsilon_after(self, steps: int, accountant: str | None = None) -> float:
        from opacus.accountants import create_accountant

        acc = create_accountant(accountant or self.args.accountant)
        acc.history = [(self.noise_multiplier, self.sample_rate, steps)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(acc.get_epsilon(delta=self.args.delta))

    def state_dict(self):
        return {"accountant": dict(self.engine.accountant.state_dict()), "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate}

    def describe(self):
        a = self.args
        return {"target_epsilon": a.epsilon, "delta": a.delta, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": a.max_grad_norm, "sample_rate": self.sample_rate,
                "expected_batch_size": self.n_train * self.sample_rate, "accountant": a.accountant,
                "poisson_sampling": a.poisson, "grad_sample_mode": a.grad_sample_mode, "secure_rng": a.secure_rng,
                "max_physical_batch_size": a.max_physical_batch_size, "planned_steps": self.total_steps}

    def summary(self):
        a = self.args
        target = f"target ε = {a.epsilon}" if a.epsilon is not None else "no target ε"
        return (f"DP-SGD on D: {target}, δ = {a.delta:g}, σ = {self.noise_multiplier:.4f}, C = {a.max_grad_norm}, "
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


def build_parser():
    p = train_dcgan.build_parser(prog="train_dcgan_dp.py", description=__doc__.split("\n")[0], default_lr=5e-5)
    g = p.add_argument_group("differential privacy")
    g.add_argument("--epsilon", type=float, default=None,
                   help="target ε after all steps (σ is calibrated to it); default 8 unless --noise-multiplier")
    g.add_argument("--noise-multiplier", type=float, default=None, help="fixed σ instead of a target ε")
    g.add_argument("--delta", type=float, default=1e-6, help="δ (keep it well below 1/N)")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="per-example clip bound C")
    g.add_argument("--accountant", choices=["prv", "rdp"], default="prv", help="Opacus privacy accountant")
    g.add_argument("--no-poisson", dest="poisson", action="store_false",
                   help="shuffled fixed-size batches instead of Poisson sampling (the ε is then not a proof)")
    g.add_argument("--secure-rng", action="store_true", help="Opacus secure mode (needs torchcsprng)")
    g.add_argument("--grad-sample-mode", choices=GRAD_SAMPLE_MODES, default="hooks",
                   help="how Opacus computes per-sample gradients")
    g.add_argument("--max-physical-batch-size", type=int, default=None,
                   help="split each logical batch into chunks of this size (same result, less memory)")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
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

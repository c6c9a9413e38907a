"""Train the DCGAN with DP-SGD (Opacus) on the discriminator, to a target (ε, δ).

  python train_dcgan_dp.py --epsilon 8                                 # the bundled digits
  python train_dcgan_dp.py --data celeba --data-root ROOT --epsilon 8  # CelebA

The loop, data and artefacts are train_dcgan.py's; this script adds the privacy strategy (privacy.DPSGD: per-pair
clipping, by ghost clipping by default, Opacus' noise and accountant) and its own default recipe. What ε covers
(docs/privacy.md): only D reads real data, so only D is trained with DP-SGD and G inherits D's (ε, δ) by
post-processing; the unit is one real example with its paired fake; Poisson sampling; the accountant counts D
steps; --resume continues the same ledger and refuses to train past the target ε.
"""
from __future__ import annotations

import argparse

import privacy
import train_dcgan
from config import freeze
from privacy import DPSGD
from utils import run_cli


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
    for action in p._actions:
        if action.dest in BY_DATA:
            action.help += f" (default: {DP_DEFAULTS[action.dest]}; with --data digits {DIGITS_DEFAULTS[action.dest]})"
            action.default = argparse.SUPPRESS
    g = p.add_argument_group("differential privacy")
    g.add_argument("--epsilon", type=float, default=None,
                   help="target ε after all steps (σ is calibrated to it) (default: 8, unless --noise-multiplier)")
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
    g.add_argument("--grad-sample-mode", choices=privacy.GRAD_SAMPLE_MODES, default="ghost",
                   help="how per-pair gradient norms are computed: ghost (ours, fastest, no per-sample gradients) "
                        "or an Opacus per-sample-gradient mode")
    g.add_argument("--dp-unit", choices=["image", "identity"], default=None,
                   help="what DP-SGD samples, clips and accounts for (default: --privacy-unit): --dp-unit image with "
                        "--privacy-unit identity is image-level DP on data drawn by person, whose people the identity "
                        "audit tests (a person is then covered only by group privacy)")
    g.add_argument("--max-photos-per-unit", type=int, default=None, metavar="M",
                   help="with --privacy-unit identity: each sampled person contributes at most M photos per step (a "
                        "random subset, drawn anew each step; default: all); the guarantee is per person either way")
    g.add_argument("--audit-gradient-canaries", type=int, default=0, metavar="M",
                   help="the white-box DP audit: M gradient canaries (random directions in D's parameters of norm C, "
                        "each with a seeded coin) Poisson-sampled into the clipped sum like any unit; their scores "
                        "go to gradient_canaries.npz and audit.py bounds ε from them (docs/audit.md)")
    g.add_argument("--max-physical-batch-size", type=int, default=None,
                   help="split each logical batch into chunks of this size (same result, less memory)")
    return p


def parse_config(argv=None):
    """train_dcgan_dp.py's command line as the run's frozen configuration: the recipe's data-dependent defaults
    filled in, ε = 8 unless a σ is given, the DP unit resolved, every argument checked."""
    ns = build_parser().parse_args(argv)
    fields = {**dp_defaults(ns.data), **vars(ns)}  # the data-dependent defaults were left out by the parser
    if fields["epsilon"] is None and fields["noise_multiplier"] is None:
        fields["epsilon"] = 8.0
    fields["dp_unit"] = fields["dp_unit"] or fields["privacy_unit"]
    cfg = train_dcgan.check_args(freeze(fields))
    DPSGD(cfg).check_args(cfg)
    return cfg


def train(cfg) -> dict:
    """Train the run ``cfg`` (parse_config's) with DP-SGD."""
    return train_dcgan.train(cfg, privacy=DPSGD(cfg))


def main(argv=None):
    return run_cli(lambda a: train(parse_config(a)), argv)


if __name__ == "__main__":
    main()

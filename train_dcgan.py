"""Train a DCGAN (GroupNorm) on CelebA, an image folder, or the embedded digits set.

This file holds the ONE training loop of the toolkit. A training step is a discriminator (D) step; after
every K of them (``--d-steps``, or the adaptive schedule ``--adaptive-d-steps``) comes one generator (G)
step. How D is updated is a strategy object: :class:`NonPrivate` here, ``train_dcgan_dp.DPPrivacy``
(DP-SGD with Opacus) in train_dcgan_dp.py, with the same interface, so the loop has no privacy branches.

Run artefacts in ``--out`` (default outputs/<run-name>/):
  config.json        all arguments, library versions, the device, data sizes (and the privacy settings)
  ckpt.pt            atomic checkpoint (G, its EMA, D, optimizers, D/G step counts, schedule, RNG, privacy ledger)
  log.jsonl          one JSON record per D step (losses, D(x), D(G(z)), K, epsilon for DP) + per-epoch records
  loss_curve.png     losses (and epsilon, K) against D steps
  grids/epoch_NNN.png  64 samples of the released generator (the EMA, if any) from a fixed noise batch (at
                       most ~100 epochs: every ceil(epochs / 100)-th and the last)
  generator.pt       the released generator (EMA weights with --ema-decay) + the config to rebuild it
  samples.npz        --num-samples generated uint8 images (N, C, H, W), for evaluate_mifid.py
  results.json       steps, time, images/s, final losses (+ epsilon, delta, sigma, ... for DP)
  canaries.json      with --canaries: which held-out images were inserted and how often (read by audit.py)
  coins.json         with --coin-subset / --audit-canaries: the audit candidates and their coins (audit.py)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

import data as data_mod
from models import build_models, freeze_first_convs
from utils import (Threads, UserError, all_gather, atomic_torch_save, average_grads, broadcast_params,
                   init_distributed, keep_freed_memory, read_json, run_cli, safe_load, sha256_file, state_hash,
                   versions, write_json)

# Arguments that must not change when a run is resumed (everything that shapes the trajectory).
RESUME_LOCKED = ("data", "data_root", "image_size", "channels", "nz", "ngf", "ndf", "batch_size", "lr",
                 "beta1", "seed", "split_seed", "random_split", "dedup_threshold", "exclude_from", "canaries",
                 "canary_repeats", "canary_split", "canary_seed", "train_size", "coin_subset", "audit_canaries",
                 "subset_seed", "d_steps", "g_steps", "g_batch_size", "freeze_d", "adaptive_d_steps", "adaptive_grace",
                 "ema_decay", "ema_warmup", "init_from", "mode_seeking", "augment", "g_lr_scale", "skip_subset")
# The value a locked argument had before it existed: checkpoints written earlier resume only if it still holds.
LOCKED_BEFORE = {"dedup_threshold": None, "exclude_from": None, "train_size": None, "coin_subset": False,
                 "audit_canaries": 0, "subset_seed": 0, "d_steps": 1, "g_steps": 1, "g_batch_size": None, "freeze_d": 0,
                 "adaptive_d_steps": None,
                 "adaptive_grace": 50, "ema_decay": 0.0, "ema_warmup": 10.0, "init_from": None, "mode_seeking": 0.0,
                 "augment": "", "clipping": "flat", "g_lr_scale": 1.0, "skip_subset": 0}
D_STEP_LADDER = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)  # Bie et al.'s adaptive schedule


# Epoch-end checkpoints at least this many D steps apart: at small N an epoch is a couple of steps, and saving G, D,
# the EMA and both optimizers after each of them was a large share of the run. An interrupted run loses less.
CKPT_MIN_STEPS = 50


def build_parser(prog="train_dcgan.py", description=None, defaults=None) -> argparse.ArgumentParser:
    """The shared parser; ``defaults`` overrides per script (train_dcgan_dp.py has its own recipe)."""
    d = {"epochs": 60, "batch_size": 64, "lr": 5e-4, "ngf": 32, "ndf": 32, "d_steps": 1, "g_steps": 1,
         "g_batch_size": None, "freeze_d": 0, "adaptive_d_steps": None, "adaptive_grace": 50, "ema_decay": 0.999,
         "ema_warmup": 10.0, "mode_seeking": 0.0, "augment": "", "g_lr_scale": 1.0, **(defaults or {})}
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", help="celeba | folder:PATH | digits (offline, bundled)")
    g.add_argument("--data-root", default=os.environ.get("CELEBA_ROOT"),
                   help="CelebA root (holds img_align_celeba/, list_eval_partition.txt); default $CELEBA_ROOT")
    g.add_argument("--image-size", type=int, default=32, choices=[32, 64])
    g.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale, 3 = RGB")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the 80/10/10 split when no partition file")
    g.add_argument("--random-split", action="store_true", help="CelebA: ignore list_eval_partition.txt and split "
                   "images at random (seeded 80/10/10); needed for membership audits (see audit.py)")
    g.add_argument("--dedup-threshold", type=float, default=data_mod.DEDUP_THRESHOLD,
                   help="photo sources: images whose 32px grayscale pixels correlate at >= this are one "
                        "near-duplicate group, never separated by a split, subset or coin (0 disables)")
    g.add_argument("--exclude-from", default=None, metavar="ROOT",
                   help="drop images whose file name also appears under ROOT (e.g. public pretraining data "
                        "disjoint by name from a private set)")
    g.add_argument("--train-size", type=int, default=None, metavar="N",
                   help="train on N images of the train split (a seeded subset, one per near-duplicate group)")
    g.add_argument("--coin-subset", action="store_true",
                   help="with --train-size N: draw 2N candidates and include each with probability 1/2 (a seeded "
                        "coin, recorded in coins.json); every candidate is a trial of audit.py's one-run bound")
    g.add_argument("--skip-subset", type=int, default=0, metavar="M",
                   help="train on the train split minus the first M images of the --subset-seed order, the ones "
                        "--train-size draws (M = N; with --coin-subset M = 2N, and then those of every smaller N): "
                        "public data disjoint from those runs, when a source has no separate public set")
    g.add_argument("--subset-seed", type=int, default=0,
                   help="seed of --train-size, --coin-subset, --skip-subset, --audit-canaries")
    g.add_argument("--cache-dir", default=data_mod.DEFAULT_CACHE_DIR, help="decoded-image cache ('' disables)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--epochs", type=int, default=d["epochs"], help="passes over the data as seen by D")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many D steps in total")
    g.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="(expected) real images per D step; also the G step's batch of fakes")
    g.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate of D (and of G: see --g-lr-scale)")
    g.add_argument("--g-lr-scale", type=float, default=d["g_lr_scale"], metavar="S",
                   help="G's Adam learning rate is S x --lr (two time-scale update rule, Heusel et al. 2017)")
    g.add_argument("--beta1", type=float, default=0.5, help="Adam beta1")
    g.add_argument("--nz", type=int, default=100, help="latent size")
    g.add_argument("--ngf", type=int, default=d["ngf"], help="generator width")
    g.add_argument("--ndf", type=int, default=d["ndf"], help="discriminator width")
    g.add_argument("--d-steps", type=int, default=d["d_steps"], metavar="K",
                   help="D steps (each on its own batch) per G step; the first K of --adaptive-d-steps")
    g.add_argument("--adaptive-d-steps", type=float, default=d["adaptive_d_steps"], metavar="ACC",
                   help="raise K along 1, 2, 5, 10, 20, 50, ... whenever D's accuracy on fresh fakes (EMA 0.99, "
                        "no real data) is <= ACC after --adaptive-grace G steps at the current K (Bie et al. "
                        "2023); 0: off")
    g.add_argument("--adaptive-grace", type=int, default=d["adaptive_grace"], help="G steps between two changes of K")
    g.add_argument("--g-steps", type=int, default=d["g_steps"], metavar="M",
                   help="G steps each time G's turn comes (each on fresh noise; no real data, so no privacy cost)")
    g.add_argument("--g-batch-size", type=int, default=d["g_batch_size"],
                   help="fakes per G step (default: --batch-size)")
    g.add_argument("--freeze-d", type=int, default=d["freeze_d"], metavar="F",
                   help="do not train D's first F convolutions (and their norms): they keep their random init (or "
                        "--init-from's weights); fewer trained parameters means less DP noise")
    g.add_argument("--ema-decay", type=float, default=d["ema_decay"],
                   help="exponential moving average of G's weights (0: off); the EMA is the released generator")
    g.add_argument("--ema-warmup", type=float, default=d["ema_warmup"], metavar="W",
                   help="EMA warm-up: b = min(decay, (1 + t) / (W + t)) at G step t; W = 3 averages about the last "
                        "half of the steps so far, W = 10 the last ninth")
    g.add_argument("--mode-seeking", type=float, default=d["mode_seeking"], metavar="LAMBDA",
                   help="G-side diversity term (Mao et al., CVPR 2019): adds LAMBDA / (mean|G(z1) - G(z2)| / "
                        "mean|z1 - z2| + 1e-5) over the two halves of each G batch to G's loss (0: off); reads no real "
                        "data, so it costs no privacy")
    g.add_argument("--augment", default=d["augment"], metavar="OPS",
                   help="differentiable augmentation (DiffAugment, Zhao et al., NeurIPS 2020) of every image D sees, "
                        "real and fake, in the D and the G step: comma-separated of " + ", ".join(AUGMENTATIONS)
                        + " (none: off); flip only where the data is mirror-symmetric (faces, not digits)")
    g.add_argument("--init-from", default=None, metavar="RUN",
                   help="start G and D from another run's weights (not its optimizers or privacy ledger), e.g. a "
                        "non-private pretraining on public data")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("canaries (memorization audit, see audit.py)")
    g.add_argument("--canaries", type=int, default=0, metavar="K",
                   help="insert K held-out images per repeat count into the training set")
    g.add_argument("--canary-repeats", type=_int_list, default=[1], metavar="R[,R...]",
                   help="how often each canary is repeated in training, e.g. 1,4,16 (K canaries for each)")
    g.add_argument("--canary-split", default="val", choices=["val", "test"],
                   help="held-out split the canaries, audit canaries (and exposure references) come from")
    g.add_argument("--canary-seed", type=int, default=0)
    g.add_argument("--audit-canaries", type=int, default=0, metavar="M",
                   help="M candidates of --canary-split, each included once with probability 1/2 (seeded coins "
                        "in coins.json): trials of audit.py's one-run epsilon bound")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    g.add_argument("--threads", default="auto",
                   help="CPU threads: N, or auto = the cores other processes leave idle (re-measured)")
    g.add_argument("--out", default=None, help="run folder (default outputs/<run-name>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--ckpt-every", type=int, default=0,
                   help="checkpoint every N D steps (0: at epoch ends at least %d D steps apart, and at the end)"
                        % CKPT_MIN_STEPS)
    g.add_argument("--num-samples", type=int, default=10000, help="images written to samples.npz at the end")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p


def _int_list(text: str) -> list:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def default_out(args, private: bool) -> Path:
    name = args.data.replace("folder:", "folder-").replace("/", "_").strip("_")
    return Path("outputs") / f"dcgan{'-dp' if private else ''}-{name}-{args.image_size}px-{args.channels}ch"


def check_args(args) -> None:
    if args.data != "celeba":  # the root is CelebA's ($CELEBA_ROOT by default): not part of other sources' runs
        args.data_root = None
    for k in ("epochs", "batch_size", "nz", "ngf", "ndf", "d_steps", "g_steps", "adaptive_grace"):
        if getattr(args, k) <= 0:
            raise UserError(f"--{k.replace('_', '-')} must be positive, got {getattr(args, k)}")
    if args.lr <= 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    if not args.g_lr_scale > 0:
        raise UserError(f"--g-lr-scale must be positive (G's lr is it times --lr), got {args.g_lr_scale}")
    if not 0 <= args.beta1 < 1:
        raise UserError(f"--beta1 must be in [0, 1), got {args.beta1}")
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1) (0 disables), got {args.ema_decay}")
    ops = [o.strip() for o in str(args.augment).split(",") if o.strip() and o.strip() != "none"]
    if any(o not in AUGMENTATIONS for o in ops):
        raise UserError(f"--augment takes a comma-separated list of {', '.join(AUGMENTATIONS)}, got {args.augment!r}")
    args.augment = ",".join(o for o in AUGMENTATIONS if o in ops)  # canonical order, for resume and stamps
    if not args.mode_seeking >= 0:
        raise UserError(f"--mode-seeking must be >= 0 (0: off), got {args.mode_seeking}")
    if not args.ema_warmup >= 2:
        raise UserError(f"--ema-warmup must be >= 2 (2 = the uniform average of all G steps), got {args.ema_warmup}")
    if args.adaptive_d_steps is not None and not 0 <= args.adaptive_d_steps < 1:
        raise UserError(f"--adaptive-d-steps is an accuracy threshold in (0, 1) (0: off), got {args.adaptive_d_steps}")
    if args.adaptive_d_steps == 0:
        args.adaptive_d_steps = None
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max-steps must be positive, got {args.max_steps}")
    if args.num_samples < 0:
        raise UserError("--num-samples must be >= 0")
    if args.canaries < 0 or args.audit_canaries < 0:
        raise UserError("--canaries and --audit-canaries must be >= 0")
    if args.train_size is not None and args.train_size <= 0:
        raise UserError(f"--train-size must be positive, got {args.train_size}")
    n_convs = int(math.log2(args.image_size)) - 1
    if not 0 <= args.freeze_d < n_convs:
        raise UserError(f"--freeze-d must be in [0, {n_convs - 1}] (D has {n_convs} convolutions and the last is "
                        f"always trained), got {args.freeze_d}")
    if args.g_batch_size is not None and args.g_batch_size <= 0:
        raise UserError(f"--g-batch-size must be positive, got {args.g_batch_size}")
    if args.coin_subset and args.train_size is None:
        raise UserError("--coin-subset needs --train-size N (it draws 2N candidates)")


# ----------------------------------------------------------------------------- training data
def _seeded_perm(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).permutation(n))


def coin_flips(n: int, seed: int) -> torch.Tensor:
    """n independent fair coins (True = included), from a dedicated seeded generator."""
    return torch.from_numpy(np.random.default_rng([seed, 0xC01]).random(n) < 0.5)


def canary_plan(imgs, k: int, repeats, split: str, seed: int) -> dict:
    """Pick k canaries per repeat count from a held-out split (seeded). Indices refer to ``imgs.images``;
    the split's other images are the exposure references (audit.py)."""
    pool = imgs.splits.get(split, torch.zeros(0, dtype=torch.long))
    need = k * len(repeats)
    if need > len(pool) - 2:
        raise UserError(f"--canaries {k} x {len(repeats)} repeat counts needs {need} images, but the {split} "
                        f"split has {len(pool)} (and must keep at least 2 as references); use fewer canaries")
    chosen = pool[_seeded_perm(len(pool), seed)[:need]]
    return {"split": split, "seed": seed, "indices": chosen.tolist(), "names": [imgs.names[i] for i in chosen],
            "repeats": [r for r in repeats for _ in range(k)], "split_key": imgs.split_key(split)}


class TrainingData:
    """The training set of a run: the train split (or a subset of it), plus canaries and coin-flipped candidates.

    ``n`` is the realised size. ``n_planned`` is the size fixed BEFORE any coin is flipped (the fixed part plus
    half the candidates); D's batch schedule (steps per epoch, Poisson rate q, DP-SGD's normalisation) uses it,
    so the mechanism does not depend on the coins, as the one-run audit requires."""

    def __init__(self, args, progress=True):
        self.imgs = imgs = data_mod.load_images(
            args.data, args.data_root, args.image_size, args.channels, args.cache_dir or None, args.split_seed,
            progress=progress, random_split=args.random_split, dedup=args.dedup_threshold,
            exclude_from=args.exclude_from)
        train = imgs.splits["train"]
        if len(train) == 0:
            raise UserError(f"the train split of {imgs.source} is empty")
        self.coins = None
        n_candidates = 0
        if args.skip_subset:
            pool = imgs.representatives(train)
            if args.train_size is not None or not 0 < args.skip_subset <= len(pool) - 2:
                raise UserError(f"--skip-subset takes 0 < M <= {len(pool) - 2} (the train split of {imgs.source} has "
                                f"{len(pool)} images, one per near-duplicate group) and no --train-size; got "
                                f"{args.skip_subset}{' with --train-size' if args.train_size is not None else ''}")
            train = pool[_seeded_perm(len(pool), args.subset_seed)[args.skip_subset:]].sort().values
        if args.train_size is not None:
            pool = imgs.representatives(train)
            need = args.train_size * (2 if args.coin_subset else 1)
            if need > len(pool):
                raise UserError(f"--train-size {args.train_size}{' with --coin-subset' if args.coin_subset else ''} "
                                f"needs {need} images, but the train split of {imgs.source} has {len(pool)} "
                                "(one per near-duplicate group); lower --train-size")
            train = pool[_seeded_perm(len(pool), args.subset_seed)[:need]].sort().values
            if args.coin_subset:
                self.coins = self._coins(train, "subset", args)
                n_candidates, train = len(train), train[torch.tensor(self.coins["included"])]
        self.train_idx = train
        extra = []
        self.canaries = None
        if args.canaries:
            self.canaries = canary_plan(imgs, args.canaries, args.canary_repeats, args.canary_split, args.canary_seed)
            reps = torch.tensor(self.canaries["repeats"])
            extra.append(torch.tensor(self.canaries["indices"]).repeat_interleave(reps))
        if args.audit_canaries:
            if self.coins is not None:
                raise UserError("use --coin-subset or --audit-canaries, not both (each is a set of audit coins)")
            taken = torch.tensor(self.canaries["indices"] if self.canaries else [], dtype=torch.long)
            pool = imgs.representatives(imgs.splits.get(args.canary_split, torch.zeros(0, dtype=torch.long)))
            pool = pool[~torch.isin(pool, taken)]
            if args.audit_canaries > len(pool) - 2:
                raise UserError(f"--audit-canaries {args.audit_canaries} needs that many images of the "
                                f"{args.canary_split} "
                                f"split besides the canaries, and it has {len(pool)} (keep 2 as references)")
            cand = pool[_seeded_perm(len(pool), args.subset_seed + 1)[:args.audit_canaries]].sort().values
            self.coins = self._coins(cand, "audit-canaries", args)
            n_candidates = len(cand)
            extra.append(cand[torch.tensor(self.coins["included"])])
        self.index = torch.cat([train] + extra) if extra else train  # indices into imgs.images, with repeats
        self.n = len(self.index)
        self.n_planned = self.n - (int(sum(self.coins["included"])) if self.coins else 0) + n_candidates / 2

    def special(self) -> torch.Tensor:
        """Indices of held-out images that were inserted or coin-flipped: never 'never-trained' references."""
        return torch.tensor((self.canaries["indices"] if self.canaries else []) +
                            (self.coins["indices"] if self.coins else []), dtype=torch.long)

    def _coins(self, cand: torch.Tensor, kind: str, args) -> dict:
        heads = coin_flips(len(cand), args.subset_seed)
        return {"kind": kind, "seed": args.subset_seed, "indices": cand.tolist(),
                "names": [self.imgs.names[i] for i in cand], "included": heads.tolist(),
                "split": "train" if kind == "subset" else args.canary_split, "data_key": self.imgs.key}

    def describe(self) -> dict:
        d = {"n_train": self.n, "n_planned": self.n_planned, "dedup": self.imgs.dedup,
             "n_val": len(self.imgs.splits.get("val", [])), "n_test": len(self.imgs.splits.get("test", []))}
        if self.coins:
            d["coins"] = {"kind": self.coins["kind"], "candidates": len(self.coins["indices"]),
                          "included": int(sum(self.coins["included"]))}
        return d


def run_training_data(run, data_root=None, cache_dir=None) -> TrainingData:
    """A finished run's TrainingData, rebuilt from its config.json exactly as the run saw it."""
    run = Path(run)
    if not (run / "config.json").is_file():
        raise UserError(f"{run} is not a run folder (no config.json); pass the --out folder of a training run")
    a = argparse.Namespace(**{**LOCKED_BEFORE, **read_json(run / "config.json")["args"]})
    a.data_root = data_root or a.data_root
    a.cache_dir = cache_dir if cache_dir is not None else a.cache_dir
    td = TrainingData(a, progress=False)
    for name, built in (("canaries.json", td.canaries), ("coins.json", td.coins)):
        saved = read_json(run / name) if (run / name).is_file() else None
        if (saved is None) != (built is None) or (saved and any(saved.get(k) != built.get(k)
                                                                for k in ("indices", "repeats", "included"))):
            raise UserError(f"{run / name} does not match the data as it loads now (files or split changed?); "
                            "the run's images cannot be located")
    td.args = a
    return td


def load_training_data(args, progress=True):
    """(ImageSet, uint8 training tensor, canary plan or None), the training tensor as train() sees it."""
    td = TrainingData(args, progress)
    return td.imgs, td.imgs.images[td.index], td.canaries


# ----------------------------------------------------------------------------- batches and the D / G steps
def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Batch order of epoch e depends on (seed, e) only, so a resumed run sees the same batches."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def shuffled_batches(gen: torch.Generator, n: int, steps: int):
    """A seeded permutation of n indices cut into ``steps`` batches of (almost) equal size."""
    yield from torch.randperm(n, generator=gen).tensor_split(steps)


@contextlib.contextmanager
def frozen(module: nn.Module, privacy=None):
    """Freeze D for the generator step: no parameter gradients, no Opacus per-sample work."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    if privacy is not None:
        privacy.disable_hooks(module)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        if privacy is not None:
            privacy.enable_hooks(module)


def d_forward_backward(D, real, fake, bce):
    """D's loss on real and fake, with ONE backward pass.

    Under Opacus the two forward passes share one backward, so pair i's gradient (real_i + fake_i) is summed
    into ONE per-sample gradient and clipped as a unit: one real example moves D's update by at most C.
    """
    out_r, out_f = D(real), D(fake)
    loss = bce(out_r, torch.ones_like(out_r)) + bce(out_f, torch.zeros_like(out_f))
    with warnings.catch_warnings():  # Opacus' hooks on D's first layer see no input gradient: expected
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    return loss.item(), torch.sigmoid(out_r).mean().item(), torch.sigmoid(out_f).mean().item()


class NonPrivate:
    """The non-private D update, with the interface of ``train_dcgan_dp.DPPrivacy``."""

    private = False
    locked_args = ()

    def __init__(self, args):
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
        return shuffled_batches(gen, n, steps)

    def d_step(self, D, optD, real, fake, bce):
        optD.zero_grad(set_to_none=True)
        stats = d_forward_backward(D, real, fake, bce) if len(real) else (math.nan,) * 3
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            average_grads(D)  # an empty shard contributes zero gradients
        optD.step()
        return stats

    def frozen(self, D):
        return frozen(D)

    def epsilon(self, refresh=False):
        return None

    def state_dict(self):
        return None

    def describe(self):
        return None

    def summary(self):
        return ""

    def results(self):
        return {}


AUGMENTATIONS = ("translation", "cutout", "flip")


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


def g_step(G, D, optG, privacy, batch: int, nz: int, device, bce, mode_seeking: float = 0.0, augment_ops: str = ""):
    """One generator step against the frozen D; returns (G's adversarial loss, D's accuracy on these fresh fakes).
    With ``mode_seeking`` > 0, G's loss also gets the mode-seeking term of Mao et al. (2019) over the two halves of
    the batch: penalising samples that stay alike when their noise differs counters mode collapse. D sees the
    fakes through ``augment_ops`` (see augment)."""
    with privacy.frozen(D):
        z = torch.randn(batch, nz, device=device)
        x = G(z)
        out = D(augment(x, augment_ops))
        loss = bce(out, torch.ones_like(out))
        total = loss
        if mode_seeking and batch >= 2:
            h = batch // 2
            lz = (x[:h] - x[h:2 * h]).abs().mean() / (z[:h] - z[h:2 * h]).abs().mean()
            total = loss + mode_seeking / (lz + 1e-5)
        optG.zero_grad(set_to_none=True)
        total.backward()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
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


def init_from(G, D, args, model_cfg: dict) -> dict:
    """Load G's and D's weights from another run (--init-from); what was loaded, for config.json.

    G starts from the source's released generator (its EMA when it kept one; the raw G of a GAN oscillates
    around it and samples worse), D from the source's D."""
    src = Path(args.init_from)
    path = src / "ckpt.pt" if src.is_dir() else src
    blob = safe_load(path)
    if not {"G", "D", "config", "args"} <= set(blob):
        raise UserError(f"--init-from {src}: not a training checkpoint of this toolkit (need G, D, config)")
    diffs = [f"--{k} {blob['config'].get(k)} there, {v} here" for k, v in model_cfg.items()
             if blob["config"].get(k) != v]
    if diffs:
        raise UserError(f"--init-from {src}: different architecture ({'; '.join(diffs)}); use the same "
                        "--nz/--ngf/--ndf/--image-size/--channels")
    ema = blob.get("G_ema")
    G.load_state_dict(ema or blob["G"])  # the source's released generator (its EMA, if it had one)
    D.load_state_dict(blob["D"])
    a = blob["args"]
    here = _root(args.data, args.data_root)
    same = args.data == "digits" == a.get("data") or _same_path(_root(a.get("data"), a.get("data_root")), here)
    disjoint = bool(a.get("exclude_from")) and _same_path(a.get("exclude_from"), here)
    # --skip-subset M there, --train-size N here with the same pool and order: the source never saw this run's
    # draw (N, or 2N coin candidates, <= M); canaries and audit canaries (held-out images) on neither side
    draw = (args.train_size or 0) * (2 if args.coin_subset else 1)
    by_subset = (same and args.train_size is not None and 0 < draw <= (a.get("skip_subset") or 0)
                 and all(a.get(k, LOCKED_BEFORE.get(k)) == getattr(args, k)
                         for k in ("split_seed", "subset_seed", "random_split", "dedup_threshold"))
                 and not (a.get("canaries") or a.get("audit_canaries") or args.audit_canaries))
    return {"run": str(src), "ckpt_sha256": sha256_file(path), "data": a.get("data"), "data_root": a.get("data_root"),
            "exclude_from": a.get("exclude_from"), "skip_subset": a.get("skip_subset", 0), "steps": blob.get("step"),
            "generator": "EMA" if ema else "raw",
            "private": blob.get("privacy") is not None,
            "same_data_as_this_run": same, "disjoint_by_file_name": disjoint, "disjoint_by_subset": by_subset}


def _disjointness(warm: dict) -> str:
    if warm.get("disjoint_by_subset"):
        return f"disjoint from this run's draw: --skip-subset {warm['skip_subset']} there"
    return "disjoint by file name" if warm.get("disjoint_by_file_name") else "overlap not checked"


def _root(data, data_root):
    """The folder of an image source (None for the bundled digits)."""
    return data_root if data == "celeba" else str(data or "").partition("folder:")[2] or None


def resolved(path) -> str:
    """The file or folder a path names: ~ expanded, relative to the current directory, symlinks followed."""
    return str(Path(path).expanduser().resolve())


def _same_path(a, b) -> bool:
    return bool(a) and bool(b) and resolved(a) == resolved(b)


# ----------------------------------------------------------------------------- artefacts
def plot_losses(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r.get("kind") == "step"]
    if not recs:
        return
    steps = [r["step"] for r in recs]
    g = [r for r in recs if "loss_g" in r]
    extra = "epsilon" in recs[-1] or len({r.get("k") for r in recs}) > 1
    fig, axes = plt.subplots(2 if extra else 1, 1, figsize=(7, 6 if extra else 4), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, [r["loss_d"] for r in recs], lw=0.8, label="D loss")
    ax.plot([r["step"] for r in g], [r["loss_g"] for r in g], lw=0.8, label="G loss")
    ax.set_ylabel("BCE loss")
    ax.legend(loc="upper left")
    ax.set_title(png.parent.name)
    if extra:
        ax = axes[1, 0]
        if "epsilon" in recs[-1]:
            ax.plot(steps, [r.get("epsilon", float("nan")) for r in recs], color="k", lw=1, label="ε spent")
            ax.set_ylabel("ε")
            ax.legend(loc="upper left")
        ax2 = ax.twinx()
        ax2.step(steps, [r.get("k", 1) for r in recs], color="C2", lw=1, where="post", label="K (D steps per G step)")
        ax2.set_ylabel("K")
        ax2.legend(loc="lower right")
    axes[-1, 0].set_xlabel("D step")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def save_grid(G, z, path: Path) -> None:
    from torchvision.utils import save_image

    with torch.no_grad():
        x = G(z).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x, path, nrow=8, normalize=True, value_range=(-1, 1))


@torch.no_grad()
def generate(G, n: int, nz: int, device, seed: int = 12345, batch_size: int = 500) -> torch.Tensor:
    """n generated images as uint8 (N, C, H, W), from a dedicated seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        z = torch.randn(min(batch_size, n - i), nz, generator=gen).to(device)
        out.append(data_mod.to_uint8(G(z)).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)


def load_generator(path, device="cpu"):
    """Rebuild the released generator from generator.pt or ckpt.pt (its EMA if it has one). Returns (G, config)."""
    from models import Generator

    blob = safe_load(path, map_location="cpu")
    if "G" not in blob or "config" not in blob:
        raise UserError(f"{path} is not a generator checkpoint of this toolkit (no 'G'/'config')")
    c = blob["config"]
    G = Generator(c["nz"], c["ngf"], c["channels"], c["image_size"])
    G.load_state_dict(blob.get("G_ema") or blob["G"])
    return G.to(device).eval(), c


def _rng_state(device):
    st = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        st["mps"] = torch.mps.get_rng_state()
    return st


def _set_rng_state(st, device):
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)
    if device.type == "mps" and "mps" in st:
        torch.mps.set_rng_state(st["mps"])


PATH_ARGS = ("data_root", "exclude_from", "init_from")  # compared as the folders they name, not as spelled


def resolved_paths(args: dict) -> dict:
    """args with PATH_ARGS resolved: a relative and an absolute spelling of one folder compare equal (a relative
    path that a run recorded is taken from the current directory, where reproduce.py and resume run)."""
    return {k: resolved(v) if k in PATH_ARGS and v else v for k, v in args.items()}


def as_recorded(recorded: dict, keys) -> dict:
    """A run's recorded args as check_args would leave them today: flags among ``keys`` that are newer than the
    run take the behaviour it had (LOCKED_BEFORE), and a non-CelebA run's data root is None."""
    out = {**{k: v for k, v in LOCKED_BEFORE.items() if k in keys}, **recorded}
    out["data_root"] = out.get("data_root") if out.get("data") == "celeba" else None
    return out


def _open_run(args, privacy):
    """(run folder, checkpoint or None); refuses to overwrite a run or resume it with other settings."""
    out = Path(args.out) if args.out else default_out(args, privacy.private)
    ckpt_path = out / "ckpt.pt"
    if ckpt_path.exists() and not args.resume:
        raise UserError(f"{out} already holds a run (ckpt.pt); pass --resume to continue it or choose another --out")
    if args.resume and not ckpt_path.exists():
        raise UserError(f"--resume: no checkpoint at {ckpt_path}")
    ckpt = safe_load(ckpt_path) if args.resume else None
    if ckpt is not None:
        locked = RESUME_LOCKED + privacy.locked_args
        was = as_recorded(ckpt["args"], locked)
        was = resolved_paths({k: was.get(k) for k in locked})
        now = resolved_paths({k: getattr(args, k, None) for k in locked})
        changed = [f"--{k.replace('_', '-')} {was[k]!r} -> {now[k]!r}" for k in was if was[k] != now[k]]
        if changed:
            raise UserError(f"cannot resume {out} with different settings: {'; '.join(changed)}")
    return out, ckpt


# ----------------------------------------------------------------------------- the loop
def train(args, privacy=None) -> dict:
    """Train G and D. ``privacy`` (train_dcgan_dp.DPPrivacy) makes every D step DP-SGD; None = non-private."""
    privacy = privacy or NonPrivate(args)
    check_args(args)
    privacy.check_args(args)
    out, ckpt = _open_run(args, privacy)
    rank, world, device = init_distributed(args.device)  # torchrun: one process per CPU group / GPU
    main_rank = rank == 0
    threads = Threads(args.threads)
    keep_freed_memory()
    if ckpt is not None and ckpt.get("world_size", 1) != world:
        raise UserError(f"{out} was trained with {ckpt.get('world_size', 1)} process(es); resume it with as many")
    torch.manual_seed(args.seed)
    td = TrainingData(args, progress=not args.no_progress and main_rank)
    imgs, n = td.imgs, td.n
    train_u8 = imgs.images[td.index].to(device)
    steps_per_epoch = math.ceil(td.n_planned / args.batch_size)  # fixed before any audit coin is flipped
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)

    G, D = build_models(args.nz, args.ngf, args.ndf, args.channels, args.image_size)
    model_cfg = {"nz": args.nz, "ngf": args.ngf, "ndf": args.ndf, "channels": args.channels,
                 "image_size": args.image_size}
    warm = None
    if args.init_from and ckpt is None:
        warm = init_from(G, D, args, model_cfg)
        if warm["same_data_as_this_run"] and not warm["disjoint_by_subset"] and privacy.private:
            raise UserError(f"--init-from {args.init_from} was trained on this run's data: ε would not cover that "
                            "pretraining; pretrain on public data (--exclude-from the private root, or "
                            "--skip-subset M of the same source with M >= this run's --train-size draw)")
    elif args.init_from and (out / "config.json").is_file():  # resumed: the weights come from the checkpoint
        warm = read_json(out / "config.json").get("init_from")
    d_trained = freeze_first_convs(D, args.freeze_d)
    G, D = G.to(device), D.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if args.ema_decay else None
    optG = torch.optim.Adam(G.parameters(), lr=args.lr * args.g_lr_scale, betas=(args.beta1, 0.999))
    optD = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=args.lr, betas=(args.beta1, 0.999))
    sched = DStepSchedule(args.d_steps, args.adaptive_d_steps, args.adaptive_grace)
    if ckpt is not None:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        if G_ema is not None:
            G_ema.load_state_dict(ckpt["G_ema"])
        if ckpt.get("schedule"):
            sched.load_state_dict(ckpt["schedule"])
    if world > 1:  # every rank starts from rank 0's weights; each draws its own latent noise
        broadcast_params(*[m for m in (G, D, G_ema) if m is not None])
        torch.manual_seed(args.seed + 7919 * rank)
        D = privacy.distribute(D)  # DP: noise on rank 0 only, clipped sums all-reduced -> one DP step
    g_batch = math.ceil((args.g_batch_size or args.batch_size) / world)  # G's fixed batch, split over ranks
    D, optD = privacy.make_private(D, optD, n_train=td.n_planned, batch_size=args.batch_size,
                                   steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                   state=ckpt["privacy"] if ckpt else None)
    if ckpt is not None:
        optG.load_state_dict(ckpt["optG"])
        optD.load_state_dict(ckpt["optD"])
    step = ckpt["step"] if ckpt else 0
    g_steps = ckpt.get("g_steps", step) if ckpt else 0
    raw_D = privacy.unwrap(D)
    released = G_ema if G_ema is not None else G

    def log_main(*a):
        if main_rank:
            print(*a)

    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
    config = {"args": vars(args), "device": str(device), "versions": versions(), "data": imgs.source,
              **td.describe(), "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
              "private": privacy.private, "world_size": world, "init_from": warm}
    if privacy.private:
        config["privacy"] = privacy.describe()
    if td.canaries is not None:
        config["canaries"] = {"count": len(td.canaries["indices"]), "copies": sum(td.canaries["repeats"]),
                              "split": td.canaries["split"]}
    if main_rank:
        if td.canaries is not None:
            write_json(out / "canaries.json", td.canaries)
        if td.coins is not None:
            write_json(out / "coins.json", td.coins)
        write_json(out / "config.json", config)
    k_desc = (f"K adaptive from {sched.k} (D's accuracy on fakes <= {args.adaptive_d_steps})"
              if args.adaptive_d_steps is not None else f"K = {args.d_steps}")
    g_lr = f" (G {args.lr * args.g_lr_scale:g})" if args.g_lr_scale != 1 else ""
    log_main(f"{'DP-SGD' if privacy.private else 'non-private'} DCGAN | data {imgs.source}: {n} train images "
             f"({args.image_size}px, {args.channels}ch) | device {device}"
             f"{f' x {world} processes' if world > 1 else ''}, threads {threads.describe()} | batch {args.batch_size} "
             f"| lr {args.lr}{g_lr} | ngf {args.ngf} ndf {args.ndf} ({d_trained:,} D parameters trained) "
             f"| {total_steps} D steps ({steps_per_epoch}/epoch), {args.g_steps} G step(s) of {g_batch * world} fakes "
             f"per K D steps, {k_desc} | G EMA {args.ema_decay or 'off'}"
             + (f" | mode-seeking {args.mode_seeking:g}" if args.mode_seeking else "")
             + (f" | augment {args.augment}" if args.augment else "") + f" | out {out}")
    if imgs.dedup.get("groups_merged"):
        log_main(f"near-duplicates: {imgs.dedup['groups_merged']} groups of {imgs.dedup['images_in_merged_groups']} "
                 f"images (correlation >= {imgs.dedup['threshold']}) kept together")
    if warm is not None:
        log_main(f"initialised G and D from {warm['run']} (data {warm['data']} {warm['data_root'] or ''}; "
                 f"{_disjointness(warm)})")
    if td.canaries is not None:
        log_main(f"canaries: {len(td.canaries['indices'])} {td.canaries['split']} images inserted, repeats "
                 f"{args.canary_repeats} x {args.canaries} each ({sum(td.canaries['repeats'])} extra training images)")
    if td.coins is not None:
        c = td.describe()["coins"]
        log_main(f"audit coins ({c['kind']}): {c['included']} of {c['candidates']} candidates included (coins.json)")
    if privacy.private:
        log_main(privacy.summary())

    log_path = out / "log.jsonl"
    if main_rank and ckpt is not None and log_path.exists():  # drop records written after the checkpoint
        keep = [line for line in log_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        log_path.write_text("".join(line + "\n" for line in keep))
    elif main_rank and ckpt is None and log_path.exists():
        log_path.unlink()
    grid_every = math.ceil(args.epochs / 100)  # at most ~100 grids and loss plots (small N: many short epochs)
    fixed_z = torch.randn(64, args.nz, generator=torch.Generator().manual_seed(args.seed + 7)).to(device)
    bce = nn.BCEWithLogitsLoss()
    ckpt_path = out / "ckpt.pt"

    def checkpoint(epoch, step_in_epoch):
        rng = all_gather(_rng_state(device))  # every rank's RNG (collective: all ranks call checkpoint)
        if main_rank:
            atomic_torch_save({"G": G.state_dict(), "G_ema": G_ema.state_dict() if G_ema is not None else None,
                               "D": raw_D.state_dict(), "optG": optG.state_dict(), "optD": optD.state_dict(),
                               "step": step, "g_steps": g_steps, "schedule": sched.state_dict(), "epoch": epoch,
                               "step_in_epoch": step_in_epoch, "rng": rng[0], "rng_ranks": rng, "world_size": world,
                               "args": vars(args), "config": model_cfg, "privacy": privacy.state_dict(),
                               "wall_s": wall_before + time.time() - t0}, ckpt_path)

    if ckpt is not None:
        _set_rng_state(ckpt.get("rng_ranks", [ckpt["rng"]])[rank], device)
        eps = privacy.epsilon()
        log_main(f"resumed from {ckpt_path} at D step {step} (G step {g_steps})" +
                 (f", ε = {eps:.3f}" if eps is not None else ""))
    start_epoch = ckpt["epoch"] if ckpt else 0
    start_k = ckpt["step_in_epoch"] if ckpt else 0
    if start_k >= steps_per_epoch:
        start_epoch, start_k = start_epoch + 1, 0

    t0, real_seen, rec, loss_g, ckpt_step = time.time(), 0, {}, math.nan, step
    wall_before = ckpt.get("wall_s", 0.0) if ckpt else 0.0  # training time of earlier invocations
    log = open(log_path if main_rank else os.devnull, "a")
    try:
        for epoch in range(start_epoch, args.epochs):
            if step >= total_steps:
                break
            batches = privacy.batches(epoch_generator(args.seed, epoch), n, steps_per_epoch)
            bar = tqdm(total=min(steps_per_epoch, total_steps - step + start_k), initial=start_k,
                       desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress or not main_rank, leave=False)
            done_k = start_k  # batches of this epoch applied so far
            for k, idx in enumerate(batches):
                if k < start_k:
                    continue  # resumed mid-epoch: these batches were already used
                if step >= total_steps:
                    break
                threads.refresh()
                idx = idx[rank::world]  # this rank's share of the (global) batch
                real = data_mod.to_float(train_u8[idx.to(device)])
                with torch.no_grad():
                    fake = G(torch.randn(len(idx), args.nz, device=device))
                real, fake = augment(real, args.augment), augment(fake, args.augment)  # each image on its own
                loss_d, d_x, d_gz = privacy.d_step(D, optD, real, fake, bce)  # the only read of real data
                step, done_k, real_seen = step + 1, k + 1, real_seen + len(idx)
                rec = {"kind": "step", "step": step, "epoch": epoch + 1, "batch": len(idx), "loss_d": loss_d,
                       "d_x": d_x, "d_g_z": d_gz, "k": sched.k}
                if sched.d_step_done():
                    for _ in range(args.g_steps):
                        loss_g, acc = g_step(G, D, optG, privacy, g_batch, args.nz, device, bce, args.mode_seeking,
                                             args.augment)
                        if G_ema is not None:
                            ema_update(G_ema, G, args.ema_decay, g_steps, args.ema_warmup)
                        g_steps += 1
                    if world > 1:  # every rank must take the same schedule decision
                        acc = sum(all_gather(acc)) / world
                    sched.g_step_done(acc)  # D's accuracy on the fresh fakes of the last G step
                    rec.update(g_step=g_steps, loss_g=loss_g, acc_fake=acc, acc_fake_ema=sched.acc_ema)
                eps = privacy.epsilon(refresh=step == total_steps)  # else re-evaluated every few steps
                if eps is not None:
                    rec["epsilon"] = eps
                log.write(json.dumps(rec) + "\n")
                post = {"D": f"{loss_d:.3f}", "G": f"{loss_g:.3f}", "D(x)": f"{d_x:.2f}", "K": sched.k,
                        "G steps": g_steps}
                if eps is not None:
                    post["ε"] = f"{eps:.2f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
                if args.ckpt_every and step % args.ckpt_every == 0:
                    log.flush()
                    checkpoint(epoch, done_k)
                    ckpt_step = step
            bar.close()
            start_k = 0
            epoch_done = done_k >= steps_per_epoch
            erec = {"kind": "epoch", "step": step, "g_step": g_steps, "epoch": epoch + 1, "k": sched.k,
                    "loss_d": rec.get("loss_d"), "loss_g": loss_g}
            eps = privacy.epsilon(refresh=False)
            if eps is not None:
                erec["epsilon"] = eps
            log.write(json.dumps(erec) + "\n")
            log.flush()
            if step - ckpt_step >= CKPT_MIN_STEPS or epoch + 1 == args.epochs or step >= total_steps:
                checkpoint(epoch + 1 if epoch_done else epoch, 0 if epoch_done else done_k)
                ckpt_step = step
            if main_rank and ((epoch + 1) % grid_every == 0 or epoch + 1 == args.epochs or step >= total_steps):
                save_grid(released, fixed_z, out / "grids" / f"epoch_{epoch + 1:03d}.png")
                plot_losses(log_path, out / "loss_curve.png")
            log_main(f"epoch {epoch + 1}: D step {step}, G step {g_steps} (K {sched.k}), "
                     f"D {rec.get('loss_d', math.nan):.3f}, G {loss_g:.3f}"
                     + (f", ε = {eps:.3f}" if eps is not None else ""))
    finally:  # on Ctrl-C the last checkpoint (a consistent state) stays; --resume continues from it
        log.close()

    elapsed = time.time() - t0
    real_seen = sum(all_gather(real_seen))  # real images over all ranks
    results = {"run": str(out), "private": privacy.private, "steps": step, "g_steps": g_steps, "k_final": sched.k,
               "epochs": args.epochs, "n_train": n, "batch_size": args.batch_size, "ema_decay": args.ema_decay,
               "wall_s": round(wall_before + elapsed, 2),
               "images_per_s": round(real_seen / elapsed, 1) if elapsed > 0 and real_seen else None,
               "final_loss_d": rec.get("loss_d"), "final_loss_g": loss_g, "device": str(device), "world_size": world,
               "threads": threads.describe()}
    results.update(privacy.results())
    if world > 1:  # the ranks must hold the same models: each DP step is one synchronized update
        hashes = all_gather(state_hash(*[m for m in (G, raw_D, G_ema) if m is not None]))
        results["ranks_identical"] = len(set(hashes)) == 1
        if not results["ranks_identical"]:
            warnings.warn(f"ranks ended with different weights ({hashes}); the run is inconsistent", stacklevel=2)
    if main_rank:
        if not real_seen and (out / "results.json").is_file():  # --resume of a finished run: leave its artefacts alone
            print(f"done: nothing left to train (D step {step}/{total_steps}); artefacts in {out}")
            results = read_json(out / "results.json")
        else:
            write_artefacts(args, out, results, released, model_cfg, log_path)
            print(f"done: {step} D steps, {g_steps} G steps in {elapsed:.1f}s ({results['images_per_s']} real "
                  f"images/s); artefacts in {out}")
    if world > 1:  # every rank stays in the group until rank 0's artefacts are written, then all leave it
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return results


def write_artefacts(args, out: Path, results: dict, released: nn.Module, model_cfg: dict, log_path: Path) -> None:
    """The end of a run (rank 0): the released generator, samples, the loss curve and results.json."""
    atomic_torch_save({"G": released.state_dict(), "config": model_cfg, "args": vars(args),
                       "ema": bool(args.ema_decay)}, out / "generator.pt")
    if args.num_samples:
        device = next(released.parameters()).device
        data_mod.save_npz(out / "samples.npz", generate(released.eval(), args.num_samples, args.nz, device,
                                                        seed=args.seed + 1))
    plot_losses(log_path, out / "loss_curve.png")
    write_json(out / "results.json", results)


def main(argv=None):
    return run_cli(lambda a: train(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    main()

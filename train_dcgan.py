"""Train a DCGAN (GroupNorm) on CelebA, an image folder, or the embedded digits set.

  python train_dcgan.py                                     # non-private, the bundled digits, 32px gray
  python train_dcgan.py --data celeba --data-root ROOT      # CelebA (img_align_celeba/ + list_eval_partition.txt)

This file holds the ONE training loop of the toolkit (train), read top to bottom like nanoGPT's: set-up, then per
batch a discriminator (D) step and, after every K of them, the generator (G) steps, then logging and checkpoints.
How D is updated is a strategy object: privacy.NonPrivate here, privacy.DPSGD in train_dcgan_dp.py, with the same
interface, so the loop has no privacy branches. The GAN's pieces are in gan.py, the run's bookkeeping (folder,
resume, checkpoint, log, artefacts) in runs.py, the training set (subsets, coins, canaries) in training_set.py.
Artefacts: see runs.py (config.json, ckpt.pt, log.jsonl, grids/, generator.pt, samples.npz, results.json).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import time
from dataclasses import dataclass

import torch

import data as data_mod
import gan
import runs
from config import Config, freeze
from models import build_models, freeze_first_convs, model_config
from privacy import NonPrivate
from training_set import TrainingData
from utils import Parser, UserError, all_gather, broadcast_params, read_json, run_cli, seeded_perm, versions


def build_parser(prog="train_dcgan.py", description=None, defaults=None) -> argparse.ArgumentParser:
    """The shared parser; ``defaults`` overrides per script (train_dcgan_dp.py has its own recipe)."""
    d = {"epochs": 60, "batch_size": 64, "lr": 5e-4, "ngf": 32, "ndf": 32, "d_steps": 1, "g_steps": 1,
         "g_batch_size": None, "freeze_d": 0, "adaptive_d_steps": None, "adaptive_grace": 50, "ema_decay": 0.999,
         "ema_warmup": 10.0, "mode_seeking": 0.0, "augment": "", "g_lr_scale": 1.0, **(defaults or {})}
    p = Parser(prog=prog, description=description or __doc__.split("\n\n")[0])
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", help="celeba | folder:PATH | digits (offline, bundled)")
    g.add_argument("--data-root", default=os.environ.get("CELEBA_ROOT"),
                   help="CelebA root (holds img_align_celeba/, list_eval_partition.txt); default $CELEBA_ROOT")
    g.add_argument("--image-size", type=int, default=32, choices=[32, 64], help="image side in pixels")
    g.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale, 3 = RGB")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the 80/10/10 split when no partition file")
    g.add_argument("--random-split", action="store_true", help="CelebA: ignore list_eval_partition.txt and split "
                   "images at random (seeded 80/10/10); needed for membership audits (see audit.py)")
    g.add_argument("--dedup-threshold", type=float, default=data_mod.DEDUP_THRESHOLD,
                   help="photo sources: images whose 32px grayscale pixels correlate at >= this are one "
                        "near-duplicate group, never separated by a split, subset or coin (0 disables)")
    g.add_argument("--exclude-from", default=None, metavar="ROOT",
                   help="drop images whose file name also appears under ROOT and, where both have identity labels, "
                        "every image of a person who appears there (public data disjoint from a private set)")
    g.add_argument("--identity-file", default=None, metavar="PATH",
                   help="the person shown by each image: a two-column '<file> <identity>' text file (default for "
                        "CelebA: identity_CelebA.txt beside list_eval_partition.txt; without one every image is its "
                        "own person)")
    g.add_argument("--split-unit", default="image", choices=["image", "identity"],
                   help="what a seeded split (--random-split, or no partition file) keeps whole besides near-duplicate "
                        "groups: single images, or all images of a person")
    g.add_argument("--privacy-unit", default="image", choices=["image", "identity"],
                   help="what --train-size, --coin-subset and --audit-canaries draw, and (train_dcgan_dp.py) what "
                        "DP-SGD samples, clips and accounts for: one image, or one person with all their photos")
    g.add_argument("--attack-photos", type=int, default=0, metavar="K",
                   help="with --privacy-unit identity and audit coins: hold back K photos of every candidate person "
                        "from training, the attacker's photos of audit.py's identity membership audit")
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
    g.add_argument("--cache-dir", default=data_mod.DEFAULT_CACHE_DIR,
                   help="decoded-image cache ('' disables; default $DCGAN_CACHE_DIR or outputs/cache)")
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
                   help="fakes per G step" + ("" if d["g_batch_size"] else " (default: --batch-size)"))
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
                        "real and fake, in the D and the G step: comma-separated of " + ", ".join(gan.AUGMENTATIONS)
                        + " (none: off); flip only where the data is mirror-symmetric (faces, not digits)")
    g.add_argument("--init-from", default=None, metavar="RUN",
                   help="start G and D from another run's weights (not its optimizers or privacy ledger), e.g. a "
                        "non-private pretraining on public data")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights, batch order, noise and samples")
    g = p.add_argument_group("memorization rejection (a non-private defence: it reads the training set every G step)")
    g.add_argument("--memorization-rejection", type=float, default=None, metavar="TAU",
                   help="drop from G's loss every sample whose nearest training image is within TAU, in 1 - |Pearson r| "
                        "of the grayscale pixels (Bai et al. 2022, MRGAN); the rejection rate is logged per step")
    g.add_argument("--mr-quantile", type=float, default=None, metavar="Q",
                   help="instead of TAU: the Q-quantile of the held-out val images' distances to their nearest training "
                        "image (config.json records those quantiles)")
    g = p.add_argument_group("canaries (memorization audit, see audit.py)")
    g.add_argument("--canaries", type=int, default=0, metavar="K",
                   help="insert K held-out images per repeat count into the training set")
    g.add_argument("--canary-repeats", type=_int_list, default=[1], metavar="R[,R...]",
                   help="how often each canary is repeated in training, e.g. 1,4,16 (K canaries for each)")
    g.add_argument("--canary-split", default="val", choices=["val", "test"],
                   help="held-out split the canaries, audit canaries (and exposure references) come from")
    g.add_argument("--canary-seed", type=int, default=0, help="seed of the choice of canaries")
    g.add_argument("--audit-canaries", type=int, default=0, metavar="M",
                   help="M candidates of --canary-split, each included once with probability 1/2 (seeded coins "
                        "in coins.json): trials of audit.py's one-run epsilon bound")
    g = p.add_argument_group("unlearning (unlearn.py sets these; see docs/unlearning.md)")
    g.add_argument("--forget", default=None, metavar="SPEC",
                   help="train without these images (and their near-duplicates): heads (the audit coins that came "
                        "up heads) or a text file of image file names and person:ID lines; the batch schedule stays "
                        "the one planned with them")
    g.add_argument("--forget-as-fake", action="store_true",
                   help="D also learns the forgotten images as fakes: a batch of them (drawn with replacement) "
                        "joins every D step's fakes (negative gradient, Sun et al. 2023); non-private runs")
    g.add_argument("--forget-until-heldout", action="store_true",
                   help="stop once D's mean logit of the forgotten images is at or below that of never-seen val "
                        "images (the held-out level, not below it); checked every --forget-check-every D steps")
    g.add_argument("--forget-check-every", type=int, default=10, metavar="N", help="D steps between two checks")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    g.add_argument("--threads", default="auto",
                   help="CPU threads: N, or auto = the cores other processes leave idle (re-measured)")
    g.add_argument("--out", default=None, help="run folder (default outputs/<run-name>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--ckpt-every", type=int, default=0, metavar="N",
                   help="also checkpoint every N D steps (always: at epoch ends at least %d D steps apart, and at the "
                        "end)" % runs.CKPT_MIN_STEPS)
    g.add_argument("--snapshot-every", type=int, default=0, metavar="N",
                   help="keep the models (G, its EMA, D) every N D steps in RUN/snapshots/ (audit.py --over-training "
                        "audits them: memorization and FID over training; 0: none)")
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


def check_args(args) -> Config:
    """The run's frozen configuration: ``args`` (the parsed arguments, never changed) validated and normalised."""
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
    if any(o not in gan.AUGMENTATIONS for o in ops):
        raise UserError(f"--augment takes a comma-separated list of {', '.join(gan.AUGMENTATIONS)}, "
                        f"got {args.augment!r}")
    if not args.mode_seeking >= 0:
        raise UserError(f"--mode-seeking must be >= 0 (0: off), got {args.mode_seeking}")
    if not args.ema_warmup >= 2:
        raise UserError(f"--ema-warmup must be >= 2 (2 = the uniform average of all G steps), got {args.ema_warmup}")
    if args.adaptive_d_steps is not None and not 0 <= args.adaptive_d_steps < 1:
        raise UserError(f"--adaptive-d-steps is an accuracy threshold in (0, 1) (0: off), got {args.adaptive_d_steps}")
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max-steps must be positive, got {args.max_steps}")
    if args.num_samples < 0:
        raise UserError("--num-samples must be >= 0")
    if args.snapshot_every < 0:
        raise UserError(f"--snapshot-every must be >= 0 (0: no snapshots), got {args.snapshot_every}")
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
    if args.attack_photos < 0:
        raise UserError(f"--attack-photos must be >= 0, got {args.attack_photos}")
    if args.attack_photos and not (args.privacy_unit == "identity" and (args.coin_subset or args.audit_canaries)):
        raise UserError("--attack-photos holds back photos of coin-flipped people: it needs --privacy-unit identity "
                        "and --coin-subset (or --audit-canaries)")
    if args.coin_subset and args.train_size is None:
        raise UserError("--coin-subset needs --train-size N (it draws 2N candidates)")
    if args.memorization_rejection is not None and args.mr_quantile is not None:
        raise UserError("give --memorization-rejection TAU or --mr-quantile Q, not both")
    if args.memorization_rejection is not None and not 0 < args.memorization_rejection < 1:
        raise UserError(f"--memorization-rejection is a distance in (0, 1), got {args.memorization_rejection}")
    if args.mr_quantile is not None and not 0 < args.mr_quantile < 1:
        raise UserError(f"--mr-quantile must be in (0, 1), got {args.mr_quantile}")
    if (args.forget_as_fake or args.forget_until_heldout) and not args.forget:
        raise UserError("--forget-as-fake and --forget-until-heldout act on the forgotten images: give --forget SPEC")
    if args.forget_check_every <= 0:
        raise UserError(f"--forget-check-every must be positive, got {args.forget_check_every}")
    return freeze(args, data_root=args.data_root if args.data == "celeba" else None,  # other sources have no root
                  augment=",".join(o for o in gan.AUGMENTATIONS if o in ops),  # canonical order
                  adaptive_d_steps=args.adaptive_d_steps or None)  # 0: off


def parse_config(argv=None) -> Config:
    """train_dcgan.py's command line as the run's frozen configuration."""
    return check_args(build_parser().parse_args(argv))


# ----------------------------------------------------------------------------- the training state
@dataclass
class TrainState:
    """What a checkpoint holds of the training: the models, their optimizers, the K schedule and the counters."""

    G: torch.nn.Module
    D: torch.nn.Module  # as the privacy strategy wrapped it
    raw_D: torch.nn.Module
    G_ema: torch.nn.Module | None
    optG: torch.optim.Optimizer
    optD: torch.optim.Optimizer
    sched: gan.DStepSchedule
    reject: gan.MemorizationRejection | None = None  # --memorization-rejection (rebuilt on resume, not saved)
    forget: torch.Tensor | None = None  # --forget-as-fake: the forgotten images (uint8, on the device)
    step: int = 0  # D steps taken
    g_steps: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # batches of the current epoch applied

    @property
    def released(self):
        """The generator a run releases: the EMA if it keeps one."""
        return self.G_ema if self.G_ema is not None else self.G

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
                "D": self.raw_D.state_dict(), "optG": self.optG.state_dict(), "optD": self.optD.state_dict(),
                "step": self.step, "g_steps": self.g_steps, "schedule": self.sched.state_dict()}


def build_state(args, run, td, privacy, plan: dict):
    """Models, warm start, frozen layers, EMA, optimizers and schedule; restored from the checkpoint on resume and
    wrapped by the privacy strategy. Returns (TrainState, --init-from record, D parameters trained)."""
    ckpt, device = run.ckpt, run.device
    model_cfg = model_config(args)
    G, D = build_models(**model_cfg)
    warm = None
    if args.init_from and ckpt is None:
        warm = runs.warm_start(G, D, args, model_cfg, privacy.private)
    elif args.init_from and (run.out / "config.json").is_file():  # resumed: the weights come from the checkpoint
        warm = read_json(run.out / "config.json").get("init_from")
    d_trained = freeze_first_convs(D, args.freeze_d)
    G, D = G.to(device), D.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if args.ema_decay else None
    optG = torch.optim.Adam(G.parameters(), lr=args.lr * args.g_lr_scale, betas=(args.beta1, 0.999))
    optD = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=args.lr, betas=(args.beta1, 0.999))
    sched = gan.DStepSchedule(args.d_steps, args.adaptive_d_steps, args.adaptive_grace)
    if ckpt is not None:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        if G_ema is not None:
            G_ema.load_state_dict(ckpt["G_ema"])
        if ckpt.get("schedule"):
            sched.load_state_dict(ckpt["schedule"])
    if run.world > 1:  # every rank starts from rank 0's weights; each draws its own latent noise
        broadcast_params(*[m for m in (G, D, G_ema) if m is not None])
        torch.manual_seed(args.seed + 7919 * run.rank)
        D = privacy.distribute(D)  # DP: noise on rank 0 only, clipped sums all-reduced -> one DP step
    D, optD = privacy.make_private(D, optD, n_train=td.n_planned, batch_size=args.batch_size,
                                   steps_per_epoch=plan["steps_per_epoch"], total_steps=plan["total_steps"],
                                   state=ckpt["privacy"] if ckpt else None, people=(td.n_units_planned, td.unit_of))
    state = TrainState(G, D, privacy.unwrap(D), G_ema, optG, optD, sched)
    if ckpt is not None:
        optG.load_state_dict(ckpt["optG"])
        optD.load_state_dict(ckpt["optD"])
        state.step, state.g_steps = ckpt["step"], ckpt.get("g_steps", ckpt["step"])
        state.epoch, state.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        if state.step_in_epoch >= plan["steps_per_epoch"]:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
    return state, warm, d_trained


def memorization_rejection(args, td, device):
    """--memorization-rejection TAU or --mr-quantile Q: (the rejection, its record for config.json) or (None, None).
    The reference: the held-out val images (minus inserted ones) and their distance to the nearest training image."""
    if args.memorization_rejection is None and args.mr_quantile is None:
        return None, None
    reject = gan.MemorizationRejection(td.imgs.images[torch.unique(td.index)].to(device), args.memorization_rejection or 0)
    val = td.imgs.splits.get("val", torch.zeros(0, dtype=torch.long))
    val = val[~torch.isin(val, td.special())]
    ref = reject.distances(td.imgs.images[val].to(device)).cpu() if len(val) else torch.zeros(0)
    if args.mr_quantile is not None:
        if len(ref) < 10:
            raise UserError(f"--mr-quantile needs held-out val images to calibrate on; {td.imgs.source} has {len(ref)}")
        reject.tau = float(torch.quantile(ref, args.mr_quantile))
    return reject, {"tau": reject.tau, "quantile": args.mr_quantile, "space": "1 - |Pearson r| of grayscale pixels",
                    "reference": f"{len(ref)} held-out val images, distance to their nearest training image",
                    "reference_quantiles": {str(q): float(torch.quantile(ref, q)) for q in (0.001, 0.01, 0.05, 0.1,
                                                                                          0.25, 0.5)} if len(ref) else {}}


def train_step(state: TrainState, privacy, real_u8, args, run, g_batch: int, units=None) -> dict:
    """One D step on this batch of real images (the only read of real data) and, when K D steps are done, the G
    steps (fresh noise, no real data). Returns the step's log record."""
    real = data_mod.to_float(real_u8)
    with torch.no_grad():
        fake = state.G(torch.randn(len(real), args.nz, device=run.device))
    if state.forget is not None:  # --forget-as-fake: as many forgotten images as real ones join the fakes
        pick = torch.randint(len(state.forget), (len(real),), device=state.forget.device)
        fake = torch.cat([fake, data_mod.to_float(state.forget[pick])])
    real, fake = gan.augment(real, args.augment), gan.augment(fake, args.augment)  # each image on its own
    loss_d, d_x, d_gz = privacy.d_step(state.D, state.optD, real, fake, units)  # units: each row's person
    state.step += 1
    rec = {"kind": "step", "step": state.step, "epoch": state.epoch + 1, "batch": len(real), "loss_d": loss_d,
           "d_x": d_x, "d_g_z": d_gz, "k": state.sched.k}
    if state.sched.d_step_done():
        for _ in range(args.g_steps):
            loss_g, acc = gan.g_step(state.G, state.D, state.optG, privacy, g_batch, args.nz, run.device,
                                     args.mode_seeking, args.augment, state.reject)
            if state.G_ema is not None:
                gan.ema_update(state.G_ema, state.G, args.ema_decay, state.g_steps, args.ema_warmup)
            state.g_steps += 1
        if run.world > 1:  # every rank must take the same schedule decision
            acc = sum(all_gather(acc)) / run.world
        state.sched.g_step_done(acc)  # D's accuracy on the fresh fakes of the last G step
        rec.update(g_step=state.g_steps, loss_g=loss_g, acc_fake=acc, acc_fake_ema=state.sched.acc_ema)
        if state.reject is not None:
            rec["mr_rejected"] = state.reject.last_rate  # the share of the last G step's samples left out
    return rec


def heldout_gap_rule(args, td, device):
    """--forget-until-heldout: a function of D giving the mean logit of the forgotten images minus that of up to
    512 never-seen val images (none of them inserted, coin-flipped or forgotten); the run stops once it is <= 0."""
    if not args.forget_until_heldout:
        return None
    val = td.imgs.splits.get("val", torch.zeros(0, dtype=torch.long))
    val = val[~torch.isin(val, td.special())]
    if len(val) < 10:
        raise UserError(f"--forget-until-heldout compares with never-seen val images; {td.imgs.source} has {len(val)}")
    never = td.imgs.images[val[seeded_perm(len(val), args.seed + 5)[:512]]].to(device)
    gone = td.imgs.images[td.forget_idx].to(device)

    @torch.no_grad()
    def gap(D) -> float:
        was = D.training
        D.eval()
        mean = lambda u8: torch.cat([D(data_mod.to_float(u8[i:i + 256])).float()  # noqa: E731
                                     for i in range(0, len(u8), 256)]).mean().item()
        out = mean(gone) - mean(never)
        D.train(was)
        return out
    return gap


# ----------------------------------------------------------------------------- the loop
def train(args, privacy=None, record: dict | None = None) -> dict:
    """Train G and D. ``args``: the run's Config (parse_config; parsed arguments are checked into one);
    ``privacy`` (privacy.DPSGD) makes every D step DP-SGD; None = non-private. ``record``: more for config.json."""
    args = args if isinstance(args, Config) else check_args(args)
    privacy = privacy or NonPrivate(args)
    privacy.check_args(args)
    with runs.Run(args, privacy) as run:  # the run folder (locked), the checkpoint to resume, device, threads
        return _train(args, privacy, run, record or {})


def _train(args, privacy, run, record: dict) -> dict:
    torch.manual_seed(args.seed)
    td = TrainingData(args, progress=run.progress)
    train_u8 = td.imgs.images[td.index].to(run.device)
    steps_per_epoch = math.ceil(td.n_planned / args.batch_size)  # fixed before any audit coin is flipped
    total_steps = min(args.epochs * steps_per_epoch, args.max_steps or math.inf)
    plan = {"steps_per_epoch": steps_per_epoch, "total_steps": total_steps}
    if run.finished(total_steps):  # --resume of a finished run: its config and artefacts stay as they are
        return read_json(run.out / "results.json")
    state, warm, d_trained = build_state(args, run, td, privacy, plan)
    state.reject, rejection = memorization_rejection(args, td, run.device)
    if args.forget_as_fake:
        if privacy.private:
            raise UserError("--forget-as-fake puts the forgotten images in D's loss: a non-private unlearning "
                            "(a DP run forgets by retraining: --forget alone)")
        state.forget = td.imgs.images[td.forget_idx].to(run.device)
    stop_rule = heldout_gap_rule(args, td, run.device)
    g_batch = math.ceil((args.g_batch_size or args.batch_size) / run.world)  # G's fixed batch, split over ranks
    model_cfg = model_config(args)
    config = {"args": args.as_dict(), "device": str(run.device), "versions": versions(), "data": td.imgs.source,
              **td.describe(), **plan, "private": privacy.private, "world_size": run.world, "init_from": warm,
              **record}
    if privacy.private:
        config["privacy"] = privacy.describe()
    if rejection is not None:
        config["memorization_rejection"] = rejection
    if td.canaries is not None:
        config["canaries"] = {"count": len(td.canaries["indices"]), "copies": sum(td.canaries["repeats"]),
                              "split": td.canaries["split"]}
    run.write_config(config, td)
    run.banner(args, td, privacy, warm, plan, d_trained, g_batch, state.sched.k)

    fixed_z = torch.randn(64, args.nz, generator=torch.Generator().manual_seed(args.seed + 7)).to(run.device)
    log, ckpt = runs.RunLog(run, args, state.step, fixed_z), runs.Checkpointer(run, args, privacy, model_cfg)
    if run.ckpt is not None:
        runs.set_rng_state(run.ckpt, run.rank, run.device)
        eps = privacy.epsilon(state.step)
        run.print(f"resumed from {ckpt.path} at D step {state.step} (G step {state.g_steps})"
                  + (f", ε = {eps:.3f}" if eps is not None else ""))
    t0, real_seen, stopped = time.time(), 0, None
    try:
        for epoch in range(state.epoch, args.epochs):
            if state.step >= total_steps:
                break
            state.epoch, start_b = epoch, state.step_in_epoch  # b: the batch's number in the epoch
            log.epoch_start(epoch, min(steps_per_epoch, total_steps - state.step + start_b), start_b)
            for b, idx in enumerate(privacy.batches(gan.epoch_generator(args.seed, epoch), td.n, steps_per_epoch)):
                if b < start_b:
                    continue  # resumed mid-epoch: these batches were already used
                if state.step >= total_steps:
                    break
                run.threads.refresh()
                idx = idx[run.rank::run.world]  # this rank's share of the (global) batch
                rec = train_step(state, privacy, train_u8[idx.to(run.device)], args, run, g_batch,
                                 privacy.units(idx))
                state.step_in_epoch, real_seen = b + 1, real_seen + len(idx)
                eps = privacy.epsilon(state.step, final=state.step == total_steps)
                if eps is not None:
                    rec["epsilon"] = eps
                if stop_rule is not None and state.step % args.forget_check_every == 0:
                    rec["forget_gap"] = stop_rule(state.raw_D)
                    stopped = state.step if rec["forget_gap"] <= 0 else None
                log.step(rec, rec.get("loss_g", log.last_loss_g), state.g_steps)
                if args.ckpt_every and state.step % args.ckpt_every == 0:
                    log.flush()
                    ckpt.save(state, epoch, state.step_in_epoch)
                if args.snapshot_every and state.step % args.snapshot_every == 0:
                    ckpt.snapshot(state)
                if stopped:
                    break
            epoch_done = state.step_in_epoch >= steps_per_epoch
            last = epoch + 1 == args.epochs or state.step >= total_steps or bool(stopped)
            erec = {"kind": "epoch", "step": state.step, "g_step": state.g_steps, "epoch": epoch + 1,
                    "k": state.sched.k, "loss_d": log.last_loss_d, "loss_g": log.last_loss_g}
            eps = privacy.epsilon(state.step, final=state.step == total_steps)
            if eps is not None:
                erec["epsilon"] = eps
            log.epoch_end(erec)
            ckpt.epoch_end(state, epoch, epoch_done, last)
            if epoch_done:
                state.step_in_epoch = 0
            log.pictures(epoch, last, state.released)
            log.epoch_line(erec)
            if stopped:
                run.print(f"--forget-until-heldout: the forgotten images are at the held-out level at D step {stopped}")
                break
    finally:  # on Ctrl-C the last checkpoint (a consistent state) stays; --resume continues from it
        log.close()
    extra = {"stopped_at_heldout": stopped or None} if stop_rule is not None else {}
    return runs.finish(run, args, state, privacy, td, model_cfg, log, ckpt.wall_s(), time.time() - t0, real_seen,
                       extra)


def main(argv=None):
    return run_cli(lambda a: train(parse_config(a)), argv)


if __name__ == "__main__":
    main()

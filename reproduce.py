"""Reproduce the results of the README and docs/results.md in one command: memorization vs training-set size,
non-private vs DP-SGD; and the levers study of docs/levers.md.

  python reproduce.py --quick --inception-weights W.pth      # the study on the bundled digits, ~10 min on 2 cores
  python reproduce.py --data-root ROOT --inception-weights W.pth        # the study on CelebA (32px grayscale)
  python reproduce.py --levers --data-root ROOT --public-root PUBLIC    # the privacy-utility levers study
  python reproduce.py --frontier --data-root ROOT --inception-weights W.pth   # the defences at the smallest N
  python reproduce.py --identity --data-root ROOT --public-root PUBLIC   # the person as the privacy unit
  python reproduce.py --figures docs/figures                 # the docs' figures, from the finished studies

The study. For each N in --train-sizes, 2N candidate images of the train split (one per near-duplicate group)
each join the training set with probability 1/2 (a seeded coin): the training subset has about N images and
every candidate is a trial of the one-run epsilon audit. On that subset it trains a non-private model and one
DP-SGD model per --epsilons value, each with its script's default recipe and the SAME compute: D sees
--budget real images (epochs = budget / N), so smaller N means more passes over the same images; and (--warm)
a non-private model (--warm-non-private) and a DP model per --warm-epsilons value fine-tuned from a public
pretraining (CelebA: --public-root; digits: the train digits no coin candidate uses), the DP recipe where public
data exists. Stages (stages.py runs them, in --jobs processes):
  train      train_dcgan.py / train_dcgan_dp.py                  -> OUT/runs/n<N>-<model>/
  evaluate   evaluate_mifid.py against the run's own training set -> OUT/runs/n<N>-<model>/eval/
  audit      audit.py: membership inference, exposure, epsilon bounds -> OUT/runs/n<N>-<model>/audit/
  reference  held-out real images (the val split) scored like a model's samples: the FID and d floor and the
             precision/recall ceiling at that N                     -> OUT/reference/n<N>/
  report     OUT/results.md, results.json (every number, setting, stage time) and plots (report.py)

The frontier (--frontier, docs/defences.md). At the smallest N of the study, with its data, coins, budget and
evaluation, every defence as a curve of utility against memorization: DP-SGD at each of FRONTIER_EPSILONS (or
--epsilons), memorization rejection at MR_QUANTILES, DiffAugment at AUGMENTATIONS, early stopping (the
non-private model's snapshots, audit.py --over-training) and no defence. It shares the study's folder: the
study's models at that N are reused, not retrained. Writes OUT/frontier.md, frontier.json, frontier.png and
frontier_samples.png.

The person as the privacy unit (--identity, docs/identity.md). On CelebA split by person, IDENTITY_PEOPLE people
drawn with one coin each (2x as many candidates), IDENTITY_ATTACK_PHOTOS photos of every candidate held back as
the attacker's: a non-private model, image-level DP and person-level DP at each --epsilons, each audited per image
and per person (audit.py's identity audit, white-box calibrated by a reference model trained the same way on
--public-root photos of other people). Writes OUT/identity.md, identity.json and identity_samples.png (default
OUT: outputs/reproduce-identity).

Idempotent and resumable: a finished stage whose settings match is reused; an interrupted training run
resumes from its checkpoint; changing a setting reruns only the stages it affects. Several machines on a shared
folder: give each a share of the models with --only (same flags and --out otherwise), then run the command once
more without --only: it reuses every stage and writes the report.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import report
from stages import Stage, run_stages
from utils import Parser, UserError, run_cli

PRESETS = {
    # CelebA 32px grayscale with a random image split (membership audits need exchangeable members and
    # non-members; the official split is identity-disjoint). Sized for a 2-core CPU.
    "full": {"data": "celeba", "train_sizes": "250,1000,2300", "budget": 120_000, "num_samples": 1000,
             "max_real": None, "canaries": 5, "canary_repeats": "1,4", "epsilons": "8,1", "warm_epsilons": "8",
             "extra_seeds": "1,2", "warm": True, "warm_non_private": True},
    # Digits, sized to take under 10 minutes on 2 CPU cores (docs/reproduce.md) and still show the story: at
    # N = 100 the non-private model memorizes (budget 42,000: white-box AUC 0.97; 30,000 gave 0.82), DP removes
    # it, and the DP model fine-tuned from the public pretraining draws digits (from scratch, DP at N = 100 draws
    # noise). The 2 x 500 coin candidates of N = 500 leave 437 of the 1,437 training digits for that pretraining.
    # The warm non-private rows (a warm start does not prevent memorization) are the default study's message;
    # here they cost a sixth of the compute, so they are opt-in (--warm-non-private).
    "quick": {"data": "digits", "train_sizes": "100,500", "budget": 42_000, "num_samples": 400,
              "max_real": None, "canaries": 2, "canary_repeats": "1,4", "epsilons": "8", "warm_epsilons": "8",
              "extra_seeds": "", "warm": True, "warm_non_private": False},
}


# The frontier's defences at the smallest N (besides no defence and the DP models of --epsilons)
FRONTIER_EPSILONS = "1,2,4,8,16,64"  # DP as a curve: the study's 1 and 8 with four more
MR_QUANTILES = (0.05, 0.25, 0.5)  # memorization rejection's tau: these quantiles of held-out images' distances
AUGMENTATIONS = ("translation,flip", "translation,cutout,flip")  # DiffAugment on (the DP recipe's ops), stronger
CHECKPOINTS = 6  # early stopping: the non-private model every 1/6 of its steps
# The person as the privacy unit (--identity): few people with many photos, many passes (a setting that leaks)
IDENTITY_PEOPLE = 10  # N people in training (2N candidates, one coin each)
IDENTITY_ATTACK_PHOTOS = 5  # photos of every candidate held back from training: the attacker's
IDENTITY_EPOCHS = 800  # many passes: at 240 (the study's budget) D memorizes photos, not people (docs/identity.md)
IDENTITY_SUBSET_SEED = 1  # people and coins that the runs which chose this setting never used
IDENTITY_MAX_PHOTOS = 8  # person-level DP: at most this many of a sampled person's photos per step
IDENTITY_REFERENCE_PHOTOS = 250  # the reference model's public photos (about as many as the models train on)


def build_parser():
    p = Parser(prog="reproduce.py", description=__doc__.split("\n\n")[0], epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="the quick preset (the bundled digits, minutes on a CPU)")
    p.add_argument("--levers", action="store_true", help="the privacy-utility levers study instead of the study")
    p.add_argument("--frontier", action="store_true",
                   help="the defences (DP at many ε, memorization rejection, augmentation, early stopping) at the "
                        "study's smallest N, on one utility-memorization frontier")
    p.add_argument("--identity", action="store_true",
                   help="the person as the privacy unit: non-private, image-level and person-level DP models on "
                        "data drawn by person, each audited per image and per person (CelebA with identity labels)")
    p.add_argument("--figures", default=None, metavar="DIR",
                   help="write the docs' figures to DIR from the finished studies under outputs/ (and the "
                        "quickstart runs), then exit")
    p.add_argument("--data", default=None, help="celeba | folder:PATH | digits (default: the preset's)")
    p.add_argument("--data-root", default=os.environ.get("CELEBA_ROOT"), help="CelebA root (default $CELEBA_ROOT)")
    p.add_argument("--public-root", default=os.environ.get("CELEBA_10K_ROOT"),
                   help="public CelebA images for the warm-start rows (and --levers), minus every file name of "
                        "--data-root (default $CELEBA_10K_ROOT)")
    p.add_argument("--train-sizes", default=None, help="comma-separated N (full: 250,1000,2300; quick: 100,500)")
    p.add_argument("--budget", type=int, default=None,
                   help="real images D sees per model (the same compute at every N; epochs = budget / N)")
    p.add_argument("--epsilons", default=None, help="comma-separated target epsilons of the DP models (full: 8,1; "
                   "--frontier: %s)" % FRONTIER_EPSILONS)
    p.add_argument("--warm-epsilons", default=None, metavar="EPSILONS",
                   help="comma-separated target epsilons of the warm DP rows (full and quick: 8; '' for none). The "
                        "fine-tune's lr 1e-6 moves it little from the pretraining, and alike at any ε: until "
                        "2026-12-06 the study also had ε = 1, whose rows repeated ε = 8's (docs/reproduce.md)")
    p.add_argument("--warm-non-private", action=argparse.BooleanOptionalAction, default=None,
                   help="with --warm, also fine-tune a non-private model from the public pretraining (full: on; "
                        "quick: off)")
    p.add_argument("--delta", type=float, default=1e-6, help="δ of every DP model")
    p.add_argument("--warm", action=argparse.BooleanOptionalAction, default=None,
                   help="also fine-tune models from a public pretraining at every N (which: --warm-non-private, "
                        "--warm-epsilons; default: the preset's; full: on, quick: on)")
    p.add_argument("--num-samples", type=int, default=None, help="generated images per model for evaluation")
    p.add_argument("--max-real", type=int, default=None, help="cap on real train/held-out images in evaluation")
    p.add_argument("--canaries", type=int, default=None, help="canaries per repeat count (0: no exposure audit)")
    p.add_argument("--canary-repeats", default=None, help="comma-separated repeat counts")
    p.add_argument("--seed", type=int, default=0, help="training seed of every model")
    p.add_argument("--extra-seeds", default=None, metavar="SEEDS",
                   help="comma-separated further training seeds of the smallest N's non-private model, the "
                        "memorization headline: its spread over seeds (full: 1,2; quick: none; '' for none)")
    p.add_argument("--inception-weights", default=None, help="FID Inception weights (else $INCEPTION_WEIGHTS, ...)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes that run independent stages side by side (default: one per CPU core)")
    p.add_argument("--threads", default=None,
                   help="CPU threads of every stage: N or auto (default: cores / --jobs, at least 1; a fixed number "
                        "makes a run repeatable bit for bit)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--cache-dir", default=os.environ.get("DCGAN_CACHE_DIR", "outputs/cache"),
                   help="decoded-image and feature cache ('' disables)")
    p.add_argument("--out", default=None, help="study folder (default outputs/reproduce[-quick|-levers|-identity])")
    p.add_argument("--rows", default=None,
                   help="with --levers: comma-separated row numbers to run (0-%d, the numbers of the run folders; "
                        "default all)" % (len(LEVERS) - 1))
    p.add_argument("--only", default=None, metavar="MODELS",
                   help="run only these models' stages (comma-separated run names, e.g. n250-dp-eps8; a non-private "
                        "model brings its reference row) and write no report: several machines can share one --out "
                        "this way, and a final invocation without --only reuses their stages and writes the report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per stage event)")
    return p


def settings(args) -> dict:
    """The preset, overridden by every flag the user gave."""
    s = dict(PRESETS["quick" if args.quick else "full"])
    for k in list(s):
        v = getattr(args, k, None)
        if v is not None:
            s[k] = v
    s.update(data_root=args.data_root if s["data"] == "celeba" else None, delta=args.delta, seed=args.seed,
             device=args.device, inception_weights=args.inception_weights, cache_dir=args.cache_dir,
             public_root=args.public_root, no_progress=args.no_progress)
    s["jobs"], s["threads"] = workers(args.jobs, args.threads)
    s["warm_lr"] = WARM[1]
    if s["data"] == "celeba" and not s["data_root"]:
        raise UserError("the full study trains on CelebA: pass --data-root (or set $CELEBA_ROOT), "
                        "or run --quick for the bundled digits")
    s["epsilon_list"] = _numbers(s["epsilons"], "--epsilons", float)
    warm_eps = str(s["warm_epsilons"]).strip()
    s["warm_epsilon_list"] = _numbers(warm_eps, "--warm-epsilons", float) if warm_eps else []
    s["size_list"] = [int(n) for n in _numbers(s["train_sizes"], "--train-sizes", int)]
    if s["budget"] <= 0:
        raise UserError(f"--budget must be positive, got {s['budget']}")
    try:
        s["extra_seed_list"] = [int(v) for v in str(s["extra_seeds"]).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--extra-seeds must be comma-separated integers, got {s['extra_seeds']!r}") from None
    if s["seed"] in s["extra_seed_list"] or len(set(s["extra_seed_list"])) < len(s["extra_seed_list"]) \
            or any(v < 0 for v in s["extra_seed_list"]):
        raise UserError(f"--extra-seeds must be distinct non-negative seeds other than --seed {s['seed']}, "
                        f"got {s['extra_seeds']!r}")
    return s


def _numbers(text, flag, kind):
    try:
        vals = [kind(e) for e in str(text).split(",") if e.strip()]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not vals or any(not v > 0 for v in vals):
        raise UserError(f"{flag} must be positive, got {text!r}")
    return vals


def workers(jobs, threads) -> tuple:
    """(worker processes, CPU threads per stage): by default one worker per core and one thread each (small models
    gain little from a second thread, and two processes on two cores waste none); a given --threads is kept."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    jobs = jobs or cores
    return jobs, threads or str(max(1, cores // jobs))


def common_argv(s: dict) -> list:
    argv = ["--data", s["data"], "--image-size", "32", "--channels", "1", "--seed", str(s["seed"]),
            "--num-samples", str(s["num_samples"]), "--device", s["device"], "--threads", str(s["threads"]),
            "--cache-dir", s["cache_dir"], "--no-progress"]
    if s["data"] == "celeba":
        argv += ["--data-root", str(s["data_root"]), "--random-split"]
    return argv


# Fine-tuning a pretrained GAN with DP: small steps keep what it learned. Measured with the DP defaults at ε = 8,
# G starting from the pretraining's EMA generator (FID vs the private training set; the pretraining alone scores
# 73.2, see the levers table): lr 5e-5 310.4, 2e-5 164.7, 5e-6 80.6, 1e-6 71.6.
WARM = ["--lr", "1e-6"]

# DP from scratch on few images: DP-SGD's noise grows with D's parameter count and the clipped signal with the
# number of training images, so below SMALL_N images the DP discriminator gets a quarter of the default's
# parameters (ndf 8, the width the digits default uses for 1,437 images). Measured at N = 250, ε = 8 with the DP
# defaults (one seed, 1,000 samples): FID 224.3, precision 0.037 with ndf 8 vs 243.9, 0.001 with ndf 16. At
# ε = 1 (σ = 66) neither width learns faces (ndf 8: 335.9 and 0.001, stripes; ndf 16: 258.2 and 0.000, blobs).
SMALL_N, SMALL_NDF = 2000, 8


def model_plan(s: dict, out: Path, public=None) -> list:
    """[(size N, name, script module, argv)] of the models of the study. With ``public`` (the public pretraining
    run), every size also gets a non-private and one DP model per warm epsilon fine-tuned from it: the same start
    and budget, each with its script's recipe as for the from-scratch rows (D's width is the pretraining's; the
    DP fine-tune at the WARM lr). The warm DP rows are the study's DP recipe: from scratch, DP-SGD with
    epsilon x N up to 18,400 learns coarse faces at best (docs/results.md). Why not one shared recipe: at lr 1e-6 a
    non-private fine-tune does not leave the pretraining either (measured: FID 103.7 / 85.8 / 80.9 at N = 250 /
    1,000 / 2,300, every attack at chance), so the pair would not show what DP removes."""
    plan = []
    for n in s["size_list"]:
        argv = common_argv(s) + ["--train-size", str(n), "--coin-subset",
                                 "--epochs", str(max(1, round(s["budget"] / n)))]
        if s["canaries"]:
            argv += ["--canaries", str(s["canaries"]), "--canary-repeats", str(s["canary_repeats"])]
        plan.append((n, f"n{n}-non-private", "train_dcgan", argv + ["--out", str(out / "runs" / f"n{n}-non-private")]))
        if n == min(s["size_list"]):  # the same model with other seeds: the spread of the memorization headline
            for sd in s["extra_seed_list"]:
                name = f"n{n}-non-private-seed{sd}"
                plan.append((n, name, "train_dcgan", argv + ["--seed", str(sd), "--out", str(out / "runs" / name)]))
        for e in s["epsilon_list"]:
            name = f"n{n}-dp-eps{e:g}"
            small = ["--ndf", str(SMALL_NDF)] if n < SMALL_N else []
            plan.append((n, name, "train_dcgan_dp", argv + small + ["--epsilon", f"{e:g}", "--delta", f"{s['delta']:g}",
                                                                    "--out", str(out / "runs" / name)]))
        if public is not None and s["warm"]:
            warm = argv + ["--ndf", str(_dp_default("ndf", s["data"])), "--init-from", str(public)]
            if s["warm_non_private"]:
                plan.append((n, f"n{n}-non-private-warm", "train_dcgan",
                             warm + ["--out", str(out / "runs" / f"n{n}-non-private-warm")]))
            for e in s["warm_epsilon_list"]:
                plan.append((n, f"n{n}-dp-eps{e:g}-warm", "train_dcgan_dp",
                             warm + WARM + ["--epsilon", f"{e:g}", "--delta", f"{s['delta']:g}",
                                            "--out", str(out / "runs" / f"n{n}-dp-eps{e:g}-warm")]))
    return plan




def public_pretraining(s: dict, out: Path, ndf: int) -> Stage:
    """The training stage of a non-private run on public data. CelebA: --public-root minus every file name of
    --data-root, shared by the studies (it lives beside their folders, so reproduce.py and reproduce.py --levers
    train it once). Digits, which have no separate public set: the train split minus every coin candidate of the
    study (--skip-subset 2 x the largest N), with the budget of a study model."""
    run = out / "public-pretraining" if s["data"] == "digits" else out.parent / f"public-pretraining-ndf{ndf}"
    if s["data"] == "digits":
        from data import load_images

        skip = 2 * max(s["size_list"])
        n_public = len(load_images("digits", image_size=32, channels=1).splits["train"]) - skip
        if n_public < 2:
            raise UserError(f"--train-sizes: the largest N's {skip} coin candidates leave no digits for the public "
                            "pretraining; lower the largest N")
        argv = common_argv(s) + ["--ndf", str(ndf), "--skip-subset", str(skip),
                                 "--epochs", str(max(1, round(s["budget"] / n_public)))]
        cost = 1.0
    else:
        if not s["public_root"]:
            raise UserError("public pretraining needs public data: pass --public-root (e.g. "
                            "../shared/data/celeba-10k-89x109) or set $CELEBA_10K_ROOT")
        argv = [a if a != str(s["data_root"]) else str(s["public_root"]) for a in common_argv(s)
                if a != "--random-split"]
        argv += ["--ngf", "32", "--ndf", str(ndf), "--epochs", "20", "--exclude-from", str(s["data_root"])]
        cost = 1.6  # 20 epochs of the 9.7k public images: 1.6 study budgets
    return Stage(f"public pretraining (ndf {ndf})", "training", "train_dcgan:train", argv + ["--out", str(run)],
                 cost=cost)


# ----------------------------------------------------------------------------- the study's stages
def _eval_argv(s: dict) -> list:
    argv = ["--num-samples", str(s["num_samples"]), "--device", s["device"], "--threads", str(s["threads"]),
            "--seed", str(s["seed"]), "--cache-dir", s["cache_dir"], "--cache-generated", "--no-progress"]
    if s["max_real"]:
        argv += ["--max-real", str(s["max_real"])]
    if s["inception_weights"]:
        argv += ["--inception-weights", str(s["inception_weights"])]
    return argv


def eval_stage(label, run: Path, s: dict, deps, train_of: Path | None = None, out_dir: Path | None = None) -> Stage:
    out_dir = out_dir or run / "eval"
    argv = ["--gen", str(run), "--out", str(out_dir)] + _eval_argv(s)
    if train_of is not None:  # score against another run's training set (a pretraining vs the private data)
        argv += ["--train-of", str(train_of)]
    return Stage(label, "evaluation", "evaluate_mifid:evaluate", argv, tuple(deps), out_dir, "eval.json",
                 {"samples": run / "samples.npz"}, cost=0.3)


def training_stage(label, script: str, argv: list, deps=()) -> Stage:
    """A model's training stage (its script's train(), the run folder its --out); a DP step costs about 1.3x a
    non-private one, which the scheduler weighs."""
    return Stage(label, "training", f"{script}:train", argv, tuple(deps),
                 cost=1.3 if script == "train_dcgan_dp" else 1.0)


def run_study_stages(stages: list, s: dict, out: Path, args) -> dict:
    """Run the stages in s["jobs"] workers with s["threads"] threads each (1 for 'auto'), logs in OUT/logs."""
    return run_stages(stages, s["jobs"], int(s["threads"]) if str(s["threads"]).isdigit() else 1, out / "logs",
                      progress=not args.no_progress)


def audit_stage(label, run: Path, s: dict, deps) -> Stage:
    argv = ["--run", str(run), "--device", s["device"], "--threads", str(s["threads"]), "--out", str(run / "audit"),
            "--seed", str(s["seed"]), "--cache-dir", s["cache_dir"]]
    return Stage(label, "audit", "audit:audit", argv, tuple(deps), run / "audit", "audit.json",
                 {"ckpt": run / "ckpt.pt", "generator": run / "generator.pt", "samples": run / "samples.npz"}, cost=0.2)


def reference_stage(n: int, run: Path, s: dict, out: Path, deps) -> Stage:
    """Never-trained real images (the val split minus anything inserted) scored as if they were samples; at most
    as many as the models' samples (a seeded subset), since FID's bias depends on the sample count."""
    ref_dir = out / "reference" / f"n{n}"
    argv = ["--reference-of", str(run), "--out", str(ref_dir / "eval")] + _eval_argv(s)
    return Stage(f"n{n}-reference", "real-data reference", "evaluate_mifid:evaluate", argv, tuple(deps),
                 ref_dir / "eval", "eval.json", {"config": run / "config.json"}, cost=0.3)


def study_stages(s: dict, out: Path, plan: list, public_stage: Stage | None) -> list:
    """The study as a graph of stages: each model's training, evaluation and audit; per N the real-data reference
    and the pretraining's evaluation (with the non-private model of that N); the public pretraining first. Each
    N's evaluations wait for its non-private model's, which computes and caches the real images' features that
    all of them share."""
    stages, names = [], {name for _, name, _, _ in plan}
    public = _value(public_stage.argv, "--out", "") if public_stage is not None else None
    if public_stage is not None and any("--init-from" in argv or name.endswith("-non-private")
                                        for _, name, _, argv in plan):
        stages.append(public_stage)
    for n, name, script, argv in plan:
        run = out / "runs" / name
        first_eval = f"n{n}-non-private evaluation"
        share = (first_eval,) if f"n{n}-non-private" in names and name != f"n{n}-non-private" else ()
        warm = (public_stage.name,) if "--init-from" in argv else ()
        train = training_stage(name, script, argv, warm)
        stages += [train, eval_stage(name, run, s, (train.name,) + share), audit_stage(name, run, s, (train.name,))]
        if name == f"n{n}-non-private":
            stages.append(reference_stage(n, run, s, out, (first_eval,)))
            if public is not None:  # the baseline of the warm pair, scored against this N's training set
                stages.append(eval_stage(f"n{n}-public-pretraining", Path(public), s,
                                         (public_stage.name, first_eval), train_of=run,
                                         out_dir=out / "reference" / f"n{n}" / "public-pretraining"))
    return stages


# ----------------------------------------------------------------------------- main
def reproduce(args) -> dict:
    if args.figures is not None:
        return report.figures(Path(args.figures))
    if args.levers and args.only is not None:
        raise UserError("--only selects models of the study; with --levers use --rows")
    if sum(map(bool, (args.levers, args.frontier, args.identity))) > 1:
        raise UserError("give one of --levers, --frontier and --identity")
    if args.identity:
        return identity(args)
    if args.levers:
        return levers(args)
    if args.frontier:
        return frontier(args)
    if args.rows is not None:
        raise UserError("--rows selects rows of the levers study: use it with --levers")
    t0 = time.time()
    s = settings(args)
    out = Path(args.out or ("outputs/reproduce-quick" if args.quick else "outputs/reproduce"))
    out.mkdir(parents=True, exist_ok=True)
    public_stage = None
    if s["warm"] and (s["data"] == "digits" or (s["public_root"] and s["data"] == "celeba")):
        public_stage = public_pretraining(s, out, _dp_default("ndf", s["data"]))
    public = Path(_value(public_stage.argv, "--out", "")) if public_stage is not None else None
    plan = model_plan(s, out, public)
    if args.only is not None:
        names = [m.strip() for m in args.only.split(",") if m.strip()]
        unknown = sorted(set(names) - {name for _, name, _, _ in plan})
        if unknown or not names:
            raise UserError(f"--only: no model named {', '.join(unknown) or repr(args.only)} in this study; its models "
                            f"are {', '.join(name for _, name, _, _ in plan)}")
        plan = [p for p in plan if p[1] in names]
    print(f"reproduce ({'quick' if args.quick else 'full'} preset) -> {out}")
    for k in ("data", "data_root", "train_sizes", "budget", "epsilons", "delta", "warm", "warm_epsilons",
              "warm_non_private", "num_samples", "max_real", "canaries", "canary_repeats", "seed", "extra_seeds",
              "jobs", "threads"):
        print(f"  {k:<15} {s[k]}")
    stages = study_stages(s, out, plan, public_stage)
    print(f"  {len(stages)} stages; each stage's output in {out / 'logs'}/")
    times = run_study_stages(stages, s, out, args)
    if args.only is not None:
        print(f"--only: the stages of {', '.join(name for _, name, _, _ in plan)} are done; run without --only "
              "for the report")
        return {"only": [name for _, name, _, _ in plan]}
    models = [(n, name, _value(argv, "--seed", 0)) for n, name, _, argv in plan]
    return report.study_report(s, out, models, public, args, t0, times)


# ----------------------------------------------------------------------------- the frontier of defences
def frontier_plan(s: dict, out: Path) -> tuple:
    """([(defence, setting, run name, script, argv)], the snapshot interval) at the smallest N: the study's
    non-private and DP models (same names and arguments, so a finished study's runs are reused), DP at every
    epsilon, memorization rejection, augmentation and a non-private run that keeps snapshots."""
    n = min(s["size_list"])
    study = {name: (script, argv[:-2]) for size, name, script, argv in  # argv without its trailing --out
             model_plan({**s, "extra_seed_list": []}, out) if size == n}
    base = study[f"n{n}-non-private"][1]
    entries = [("none", "non-private", f"n{n}-non-private", "train_dcgan", base)]
    for e in s["epsilon_list"]:
        entries.append(("DP-SGD", f"ε = {e:g}", f"n{n}-dp-eps{e:g}", *study[f"n{n}-dp-eps{e:g}"]))
    for q in MR_QUANTILES:
        entries.append(("memorization rejection", f"τ = q{q:g} of held-out", f"n{n}-mr-q{q:g}", "train_dcgan",
                        base + ["--mr-quantile", f"{q:g}"]))
    for ops in AUGMENTATIONS:
        entries.append(("augmentation", ops, f"n{n}-augment-{ops.replace(',', '-')}", "train_dcgan",
                        base + ["--augment", ops]))
    from train_dcgan import build_parser as train_parser

    planned = n + (s["canaries"] * sum(int(r) for r in str(s["canary_repeats"]).split(",")) if s["canaries"] else 0)
    a = train_parser().parse_args(base)  # the run's epochs and batch size, defaults included
    every = max(1, a.epochs * math.ceil(planned / a.batch_size) // CHECKPOINTS)
    entries.append(("early stopping", "snapshots", f"n{n}-non-private-snapshots", "train_dcgan",
                    base + ["--snapshot-every", str(every)]))
    return [(d, st, name, script, argv + ["--out", str(out / "runs" / name)])
            for d, st, name, script, argv in entries], every


def frontier(args) -> dict:
    t0 = time.time()
    if args.only is not None or args.rows is not None:
        raise UserError("--only and --rows select models of the study and the levers study, not of --frontier")
    if args.epsilons is None:
        args.epsilons = FRONTIER_EPSILONS
    s = settings(args)
    out = Path(args.out or ("outputs/reproduce-quick" if args.quick else "outputs/reproduce"))
    entries, every = frontier_plan(s, out)
    n = min(s["size_list"])
    print(f"frontier of defences at N = {n} ({'quick' if args.quick else 'full'} preset) -> {out}")
    for k in ("data", "data_root", "budget", "epsilons", "num_samples", "jobs", "threads"):
        print(f"  {k:<15} {s[k]}")
    print(f"  memorization rejection at quantiles {', '.join(map(str, MR_QUANTILES))}; augmentation "
          f"{' | '.join(AUGMENTATIONS)}; snapshots every {every} D steps")
    first_eval, stages = f"n{n}-non-private evaluation", []
    for defence, setting, name, script, argv in entries:
        run = out / "runs" / name
        train = training_stage(name, script, argv)
        share = () if name == f"n{n}-non-private" else (first_eval,)
        stages += [train, eval_stage(name, run, s, (train.name,) + share), audit_stage(name, run, s, (train.name,))]
        if name == f"n{n}-non-private":
            stages.append(reference_stage(n, run, s, out, (first_eval,)))
        if defence == "early stopping":
            over = ["--run", str(run), "--over-training", "--fid-samples", str(s["num_samples"]), "--device",
                    s["device"], "--threads", str(s["threads"]), "--seed", str(s["seed"]), "--cache-dir",
                    s["cache_dir"], "--out", str(run / "audit-over-training")]
            over += ["--inception-weights", str(s["inception_weights"])] if s["inception_weights"] else []
            over += ["--max-real", str(s["max_real"])] if s["max_real"] else []
            stages.append(Stage(name, "audit over training", "audit:audit", over, (train.name, first_eval),
                                run / "audit-over-training", "over_training.json", {"ckpt": run / "ckpt.pt"},
                                cost=0.3 * CHECKPOINTS))
    print(f"  {len(stages)} stages; each stage's output in {out / 'logs'}/")
    run_study_stages(stages, s, out, args)
    return report.frontier_report(s, out, entries, n, t0)


# ----------------------------------------------------------------------------- the person as the privacy unit
def identity_plan(s: dict, out: Path) -> tuple:
    """([(model, script, argv)], the reference run's argv or None) of the identity study: the same people, coins
    and attack photos for every model."""
    base = common_argv(s) + ["--split-unit", "identity", "--privacy-unit", "identity", "--train-size",
                             str(IDENTITY_PEOPLE), "--coin-subset", "--attack-photos", str(IDENTITY_ATTACK_PHOTOS),
                             "--epochs", str(IDENTITY_EPOCHS), "--subset-seed", str(IDENTITY_SUBSET_SEED)]
    entries = [("non-private", "train_dcgan", base)]
    for e in s["epsilon_list"]:
        dp = base + ["--epsilon", f"{e:g}", "--delta", f"{s['delta']:g}"]
        entries.append((f"image-dp-eps{e:g}", "train_dcgan_dp", dp + ["--dp-unit", "image"]))
        entries.append((f"person-dp-eps{e:g}", "train_dcgan_dp",
                        dp + ["--max-photos-per-unit", str(IDENTITY_MAX_PHOTOS)]))
    reference = None
    if s["public_root"]:  # the non-private recipe on about as many photos of other people (none of --data-root's)
        reference = [a if a != str(s["data_root"]) else str(s["public_root"]) for a in common_argv(s)
                     if a != "--random-split"]
        reference += ["--exclude-from", str(s["data_root"]), "--train-size", str(IDENTITY_REFERENCE_PHOTOS),
                      "--epochs", str(IDENTITY_EPOCHS)]
    return [(name, script, argv + ["--out", str(out / "runs" / name)]) for name, script, argv in entries], \
        None if reference is None else reference + ["--out", str(out / "runs" / "reference-public")]


def identity(args) -> dict:
    t0 = time.time()
    if args.only is not None or args.rows is not None:
        raise UserError("--only and --rows select models of the study and the levers study, not of --identity")
    s = settings(args)
    if s["data"] != "celeba":
        raise UserError("--identity needs photos with identity labels: CelebA (--data-root; the bundled digits have "
                        "no people)")
    out = Path(args.out or "outputs/reproduce-identity")
    entries, reference = identity_plan(s, out)
    print(f"the person as the privacy unit -> {out}")
    print(f"  {IDENTITY_PEOPLE} people in training (of {2 * IDENTITY_PEOPLE} candidates, one coin each), "
          f"{IDENTITY_ATTACK_PHOTOS} attack photos per candidate, {IDENTITY_EPOCHS} epochs; ε {s['epsilons']} "
          f"per image and per person (at most {IDENTITY_MAX_PHOTOS} photos of a person per step)")
    stages, ref_deps = [], ()
    if reference is not None:
        stages.append(training_stage("reference-public", "train_dcgan", reference))
        ref_deps = (stages[-1].name,)
    for name, script, argv in entries:
        run = out / "runs" / name
        train = training_stage(name, script, argv)
        aud = audit_stage(name, run, s, (train.name,) + ref_deps)
        if reference is not None:
            aud = dataclasses.replace(aud, argv=aud.argv + ["--reference-run", _value(reference, "--out", "")])
        stages += [train, aud]
    run_study_stages(stages, s, out, args)
    return report.identity_report(s, out, entries, reference, t0)


# ----------------------------------------------------------------------------- the levers study
# Every run: the CelebA subset at 32px grayscale, --random-split, delta = 1e-6, ngf = 32. "Old recipe" pins the
# DP defaults before issue #12 (D sees 30 epochs, the compute of the old study's DP runs); each lever changes one
# thing of it. "Recipe A" (batch 256, lr 1e-3, ndf 16, EMA) was the default before the two G-side / augmentation
# levers; "recipe B" (A + mode-seeking + augmentation) was the default before G's lr doubling, and the "DP
# defaults" rows are train_dcgan_dp.py's defaults (B + G's lr 2x), alone, with other seeds, at epsilon = 1 and
# with G's lr changed. "Previous defaults" are the defaults of an earlier session. Rows 0-26 predate the G lr
# lever and pin it off (G1). Row numbers name the run folders, so new rows go at the end.
G1 = ["--g-lr-scale", "1"]  # G's lr = D's, as before the two time-scale lever
OFF = ["--mode-seeking", "0", "--augment", "none"] + G1  # the levers added last, off
OLD_RECIPE = ["--lr", "5e-5", "--batch-size", "64", "--beta1", "0.5", "--ndf", "32", "--freeze-d", "0",
              "--d-steps", "1", "--adaptive-d-steps", "0", "--g-steps", "1", "--g-batch-size", "64", "--ema-decay", "0",
              "--ema-warmup", "10", "--epochs", "30"] + OFF
PREVIOUS_DEFAULTS = ["--lr", "2e-4", "--batch-size", "512", "--epochs", "60", "--ndf", "16", "--freeze-d", "2",
                     "--adaptive-d-steps", "0.6", "--adaptive-grace", "20", "--g-batch-size", "128",
                     "--ema-decay", "0.999", "--ema-warmup", "10"] + OFF
LEVERS = [  # (name, epsilon, DP arguments; "@public" = --init-from the public pretraining of the same width)
    ("old recipe", 8, OLD_RECIPE),
    ("K = 5 D steps per G step", 8, OLD_RECIPE + ["--d-steps", "5"]),
    ("adaptive K (acc <= 0.6)", 8, OLD_RECIPE + ["--adaptive-d-steps", "0.6", "--adaptive-grace", "20"]),
    ("G EMA 0.999", 8, OLD_RECIPE + ["--ema-decay", "0.999"]),
    ("batch 256, lr 1e-3", 8, OLD_RECIPE + ["--batch-size", "256", "--lr", "1e-3"]),
    ("small D (ndf 16)", 8, OLD_RECIPE + ["--ndf", "16"]),
    ("public warm start", 8, OLD_RECIPE + ["@public"] + WARM),
    ("previous defaults (ndf 16, 2 convs frozen, batch 512, adaptive K)", 8, PREVIOUS_DEFAULTS),
    ("recipe A (batch 256, lr 1e-3, ndf 16, EMA)", 8, OFF),
    ("A, EMA warm-up 10 instead of 3", 8, OFF + ["--ema-warmup", "10"]),
    ("A, K = 5", 8, OFF + ["--d-steps", "5"]),
    ("A + public warm start", 8, OFF + ["@public"] + WARM),
    ("recipe A", 1, OFF),
    ("A + public warm start", 1, OFF + ["@public"] + WARM),
    ("A + mode-seeking G loss (λ = 1)", 8, ["--augment", "none"] + G1),
    ("A + mode-seeking G loss (λ = 1)", 1, ["--augment", "none"] + G1),
    ("recipe B: A + mode-seeking + augmentation (translation, flip)", 8, G1),
    ("recipe B", 1, G1),
    ("B, seed 1", 8, G1 + ["--seed", "1"]),
    ("B, seed 2", 8, G1 + ["--seed", "2"]),
    ("A + mode-seeking, seed 1", 8, ["--augment", "none", "--seed", "1"] + G1),
    ("A + mode-seeking, seed 2", 8, ["--augment", "none", "--seed", "2"] + G1),
    ("A + augmentation, no mode-seeking", 8, ["--mode-seeking", "0"] + G1),
    ("B + public warm start", 8, ["@public"] + WARM + G1),
    ("B, batch 512, 60 epochs", 8, ["--batch-size", "512", "--epochs", "60"] + G1),
    ("B, batch 512, 60 epochs, seed 1", 8, ["--batch-size", "512", "--epochs", "60", "--seed", "1"] + G1),
    ("B, batch 512, 60 epochs, seed 2", 8, ["--batch-size", "512", "--epochs", "60", "--seed", "2"] + G1),
    ("the DP defaults: B + G's lr 2x D's (two time-scale)", 8, []),
    ("the DP defaults, seed 1", 8, ["--seed", "1"]),
    ("the DP defaults, seed 2", 8, ["--seed", "2"]),
    ("the DP defaults", 1, []),
    ("the DP defaults + public warm start", 8, ["@public"] + WARM),
    ("the DP defaults + public warm start", 1, ["@public"] + WARM),
    ("the DP defaults with G's lr 0.5x D's", 8, ["--g-lr-scale", "0.5"]),
    ("the DP defaults with G's lr 4x D's", 8, ["--g-lr-scale", "4"]),
]


def levers(args) -> dict:
    """Every LEVERS row (or --rows) trained and evaluated at ε against the same non-private model, as stages."""
    t0 = time.time()
    s = settings(args)
    if s["data"] != "celeba":
        raise UserError("--levers runs on CelebA: pass --data-root (the private set) and --public-root")
    picked = _rows(args.rows)
    out = Path(args.out or "outputs/reproduce-levers")
    common = common_argv(s) + ["--ngf", "32"]
    s["max_real"] = None
    print(f"levers study -> {out}")
    stages, models, public = [], [], {}  # public: ndf -> its pretraining stage

    def model(label, name, script, argv, deps=()):
        train = Stage(label, "training", f"{script}:train", argv, tuple(deps))
        run = Path(_value(argv, "--out", ""))
        stages.extend([train, eval_stage(label, run, s, (train.name,))])
        models.append((name, script, argv, run, None))

    model("non-private", "non-private, 30 epochs", "train_dcgan",
          common + ["--epochs", "30", "--out", str(out / "runs" / "non-private")])
    for i in picked:
        name, eps, extra = LEVERS[i]
        argv = common + ["--epsilon", f"{eps:g}", "--delta", f"{s['delta']:g}"] + [a for a in extra if a != "@public"]
        ndf, deps = _value(argv, "--ndf", _dp_default("ndf")), ()
        if "@public" in extra:
            if ndf not in public:
                public[ndf] = public_pretraining(s, out, ndf)
                stages.append(public[ndf])
            argv += ["--init-from", _value(public[ndf].argv, "--out", "")]
            deps = (public[ndf].name,)
        label = f"{i:02d}-eps{eps:g}"  # the run folder's name
        model(label, name, "train_dcgan_dp", argv + ["--out", str(out / "runs" / label)], deps)
    for ndf, st in public.items():  # the pretrained models themselves, scored against the private training set
        run = Path(_value(st.argv, "--out", ""))
        label = f"public pretraining only, ndf {ndf} (no private data)"
        stages.append(eval_stage(label, run, s, (st.name, "non-private training"),
                                 train_of=out / "runs" / "non-private"))
        models.append((label, None, None, run, out / "runs" / "non-private"))
    run_study_stages(stages, s, out, args)
    return report.levers_report(s, out, models, t0)


def _rows(text) -> list:
    """--rows as sorted indices into LEVERS (all of them if not given)."""
    if text is None:
        return list(range(len(LEVERS)))
    try:
        rows = sorted({int(e) for e in str(text).split(",") if e.strip()})
    except ValueError:
        rows = []
    if not rows or rows[0] < 0 or rows[-1] >= len(LEVERS):
        raise UserError(f"--rows must be comma-separated row numbers 0-{len(LEVERS) - 1}, got {text!r}")
    return rows


def _value(argv, flag, default):
    """The last value given for ``flag`` in argv (as the parser would take it), else ``default``."""
    idx = [i for i, a in enumerate(argv) if a == flag]
    return type(default)(argv[idx[-1] + 1]) if idx else default


def _dp_default(key, data="celeba"):  # train_dcgan_dp.py's recipe for that data
    from train_dcgan_dp import dp_defaults

    return dp_defaults(data)[key]




def main(argv=None):
    def run(argv):
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return reproduce(args)

    return run_cli(run, argv, interrupted="interrupted: finished stages and the last checkpoints are kept; run the "
                                          "same command again to continue")


if __name__ == "__main__":
    main()

"""Reproduce the results of the README and docs/results.md in one command: memorization vs training-set size,
non-private vs DP-SGD; and the other studies of the docs.

  python reproduce.py --quick --inception-weights W.pth      # the study on the bundled digits, minutes on 2 cores
  python reproduce.py --data-root ROOT --public-root PUBLIC --inception-weights W.pth   # the study on CelebA
  python reproduce.py --frontier ...        # the defences at the smallest N (docs/defences.md)
  python reproduce.py --dp-cost ...         # what DP costs, one step at a time (dp_cost.py, docs/privacy.md)
  python reproduce.py --identity ...        # the person as the privacy unit (docs/identity.md)
  python reproduce.py --unlearning ...      # forgetting without retraining, audited (unlearn_study.py)
  python reproduce.py --levers ...          # how the DP recipe was chosen (levers.py, docs/levers.md)
  python reproduce.py --figures docs/figures                 # the docs' figures, from the finished studies
  python reproduce.py ... --dry-run         # what would run, and why; nothing runs
  python reproduce.py ... --executor dask --scheduler tcp://HOST:8786     # the stages on a Dask cluster

The study. For each N in --train-sizes, 2N candidate images of the train split (one per near-duplicate group)
each join the training set with probability 1/2 (a seeded coin): the training subset has about N images and
every candidate is a trial of the one-run epsilon audit. On that subset it trains a non-private model and one
DP-SGD model per --epsilons value, each with its script's default recipe and the SAME compute: D sees
--budget real images (epochs = budget / N), so smaller N means more passes over the same images; and (--warm)
a non-private model (--warm-non-private) and a DP model per --warm-epsilons value fine-tuned from a public
pretraining (CelebA: --public-root; digits: the train digits no coin candidate uses), the DP recipe where public
data exists; and --references R reference models per N (the non-private recipe on N public images) for the
audits' LiRA, RMIA and calibrated black-box attacks. Stages (stages.py runs them, in --jobs processes or on Dask):
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

Idempotent and resumable: each stage is keyed on its settings, the content of its inputs and the code it runs
(stages.py); a finished stage with the same key is reused, any other runs again (a training with another key is
moved aside, never resumed under new settings), and an interrupted training resumes from its checkpoint.
--dry-run says what would run and why. Many machines: --executor dask (docs/reproduce.md); --only MODELS runs a
share of the models and writes no report.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import audit
import evaluate_mifid
import report
import train_dcgan
import train_dcgan_dp
import unlearn
from levers import LEVERS, WARM_LR
from report import Layout, Model, argv_of
from stages import Script, Stage, plan_stages, run_stages
from utils import Parser, UserError, run_cli

SCRIPTS = {"train_dcgan": Script("train_dcgan", train_dcgan.parse_config, train_dcgan.train, training=True),
           "train_dcgan_dp": Script("train_dcgan_dp", train_dcgan_dp.parse_config, train_dcgan_dp.train,
                                    training=True),
           "evaluate_mifid": Script("evaluate_mifid", evaluate_mifid.parse_args, evaluate_mifid.evaluate),
           "audit": Script("audit", audit.parse_args, audit.audit),
           "unlearn": Script("unlearn", unlearn.parse_config, unlearn.unlearn, training=True)}

PRESETS = {
    # CelebA 32px grayscale with a random image split (membership audits need exchangeable members and
    # non-members; the official split is identity-disjoint). Sized for a 2-core CPU.
    "full": {"data": "celeba", "train_sizes": "250,1000,2300", "budget": 120_000, "num_samples": 1000,
             "max_real": None, "canaries": 5, "canary_repeats": "1,4", "epsilons": "8,1", "warm_epsilons": "8",
             "extra_seeds": "1,2", "warm": True, "warm_non_private": True, "references": 2},
    # Digits, sized to take under 10 minutes on 2 CPU cores (docs/reproduce.md) and still show the story: at
    # N = 100 the non-private model memorizes (budget 42,000: white-box AUC 0.97; 30,000 gave 0.82), DP removes
    # it, and the DP model fine-tuned from the public pretraining draws digits (from scratch, DP at N = 100 draws
    # noise). The 2 x 500 coin candidates of N = 500 leave 437 of the 1,437 training digits for that pretraining.
    # The warm non-private rows (a warm start does not prevent memorization) are the default study's message;
    # here they cost a sixth of the compute, so they are opt-in (--warm-non-private).
    "quick": {"data": "digits", "train_sizes": "100,500", "budget": 42_000, "num_samples": 400,
              "max_real": None, "canaries": 2, "canary_repeats": "1,4", "epsilons": "8", "warm_epsilons": "8",
              "extra_seeds": "", "warm": True, "warm_non_private": False, "references": 2},
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
    p.add_argument("--dp-cost", action="store_true",
                   help="what DP costs, one step at a time, at N = 250 and 2,300 (or --train-sizes): the DP recipe "
                        "without DP, Poisson sampling, clipping, then noise at each --epsilons (default 64,16,8,2); "
                        "docs/privacy.md")
    p.add_argument("--unlearning", action="store_true",
                   help="forget the coin-flipped heads at the smallest N by retraining, fine-tuning, negative "
                        "gradient and the held-out-level stop, each audited against never having trained on them "
                        "(unlearn_study.py, docs/unlearning.md)")
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
    p.add_argument("--references", type=int, default=None, metavar="R",
                   help="reference models per N (the non-private recipe on N public images: none of the candidates, "
                        "canaries or held-out images) for the audits' LiRA, RMIA and calibrated black-box attacks "
                        "(full and quick: 2; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every model")
    p.add_argument("--extra-seeds", default=None, metavar="SEEDS",
                   help="comma-separated further training seeds of the smallest N's non-private model, the "
                        "memorization headline: its spread over seeds (full: 1,2; quick: none; '' for none)")
    p.add_argument("--inception-weights", default=None, help="FID Inception weights (else $INCEPTION_WEIGHTS, ...)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes that run independent stages side by side (default: one per CPU core; with "
                        "--executor dask and no --scheduler: the local cluster's workers)")
    p.add_argument("--executor", choices=["local", "dask"], default="local",
                   help="local: worker processes of this machine; dask: the stages as tasks of a Dask cluster "
                        "(pip install -e \".[cluster]\"; docs/reproduce.md: Slurm/PBS with dask-jobqueue)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="with --executor dask: a running Dask scheduler (e.g. tcp://host:8786, a dask-jobqueue "
                        "cluster's); without it, a local cluster of --jobs worker processes")
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
    p.add_argument("--dry-run", action="store_true",
                   help="say which stages would run and why (settings, inputs or code changed) and which would be "
                        "reused, then exit without running anything")
    p.add_argument("--reuse-stale", action="store_true",
                   help="keep finished stages whose only difference is the code (a change known not to matter); the "
                        "report lists them as stale")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per stage event)")
    return p


def settings(args, **defaults) -> dict:
    """The preset (with ``defaults`` over it), overridden by every flag the user gave."""
    s = {**PRESETS["quick" if args.quick else "full"], **defaults}
    for k in list(s):
        v = getattr(args, k, None)
        if v is not None:
            s[k] = v
    s.update(data_root=args.data_root if s["data"] == "celeba" else None, delta=args.delta, seed=args.seed,
             device=args.device, inception_weights=args.inception_weights, cache_dir=args.cache_dir,
             public_root=args.public_root, no_progress=args.no_progress, quick=args.quick)
    s["jobs"], s["threads"] = workers(args.jobs, args.threads)
    s["warm_lr"] = WARM_LR
    if s["data"] == "celeba" and not s["data_root"]:
        raise UserError("the full study trains on CelebA: pass --data-root (or set $CELEBA_ROOT), "
                        "or run --quick for the bundled digits")
    s["epsilon_list"] = _numbers(s["epsilons"], "--epsilons", float)
    warm_eps = str(s["warm_epsilons"]).strip()
    s["warm_epsilon_list"] = _numbers(warm_eps, "--warm-epsilons", float) if warm_eps else []
    s["size_list"] = [int(n) for n in _numbers(s["train_sizes"], "--train-sizes", int)]
    if s["budget"] <= 0:
        raise UserError(f"--budget must be positive, got {s['budget']}")
    if s["references"] < 0:
        raise UserError(f"--references must be >= 0, got {s['references']}")
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


def common_flags(s: dict) -> dict:
    """The flags every training of a study shares."""
    flags = {"--data": s["data"], "--image-size": 32, "--channels": 1, "--seed": s["seed"],
             "--num-samples": s["num_samples"], "--device": s["device"], "--threads": s["threads"],
             "--cache-dir": s["cache_dir"], "--no-progress": True}
    if s["data"] == "celeba":
        flags.update({"--data-root": s["data_root"], "--random-split": True})
    return flags


def flags_of(argv: list) -> dict:
    """{flag: value} of a command line of flags with values (the levers table's lists)."""
    return dict(zip(argv[::2], argv[1::2]))



# DP from scratch on few images: DP-SGD's noise grows with D's parameter count and the clipped signal with the
# number of training images, so below SMALL_N images the DP discriminator gets a quarter of the default's
# parameters (ndf 8, the width the digits default uses for 1,437 images). Measured at N = 250, ε = 8 with the DP
# defaults (one seed, 1,000 samples): FID 224.3, precision 0.037 with ndf 8 vs 243.9, 0.001 with ndf 16. At
# ε = 1 (σ = 66) neither width learns faces (ndf 8: 335.9 and 0.001, stripes; ndf 16: 258.2 and 0.000, blobs).
SMALL_N, SMALL_NDF = 2000, 8


def model_plan(s: dict, public: Path | None = None) -> list:
    """The Models of the study. With ``public`` (the public pretraining's run folder), every size also gets a
    non-private and one DP model per warm epsilon fine-tuned from it: the same start and budget, each with its
    script's recipe as for the from-scratch rows (D's width is the pretraining's; the DP fine-tune at the WARM lr).
    The warm DP rows are the study's DP recipe: from scratch, DP-SGD with epsilon x N up to 18,400 learns coarse
    faces at best (docs/results.md). Why not one shared recipe: at lr 1e-6 a non-private fine-tune does not leave
    the pretraining either (measured: FID 103.7 / 85.8 / 80.9 at N = 250 / 1,000 / 2,300, every attack at chance),
    so the pair would not show what DP removes."""
    plan, seed = [], s["seed"]
    for n in s["size_list"]:
        base = {**common_flags(s), "--train-size": n, "--coin-subset": True,
                "--epochs": max(1, round(s["budget"] / n))}
        if s["canaries"]:
            base.update({"--canaries": s["canaries"], "--canary-repeats": s["canary_repeats"]})
        plan.append(Model(f"n{n}-non-private", n, "non-private", "train_dcgan", base, seed))
        if n == min(s["size_list"]):  # the same model with other seeds: the spread of the memorization headline
            plan += [Model(f"n{n}-non-private-seed{sd}", n, "non-private", "train_dcgan", {**base, "--seed": sd}, sd)
                     for sd in s["extra_seed_list"]]
        for e in s["epsilon_list"]:
            small = {"--ndf": SMALL_NDF} if n < SMALL_N else {}
            plan.append(Model(f"n{n}-dp-eps{e:g}", n, "dp", "train_dcgan_dp", {**base, **small, "--epsilon": f"{e:g}",
                                                                             "--delta": f"{s['delta']:g}"}, seed,
                              epsilon=e))
        if public is not None and s["warm"]:
            warm = {**base, "--ndf": _dp_default("ndf", s["data"]), "--init-from": public}
            if s["warm_non_private"]:
                plan.append(Model(f"n{n}-non-private-warm", n, "non-private", "train_dcgan", warm, seed, warm=True))
            plan += [Model(f"n{n}-dp-eps{e:g}-warm", n, "dp", "train_dcgan_dp",
                           {**warm, "--lr": WARM_LR, "--epsilon": f"{e:g}", "--delta": f"{s['delta']:g}"}, seed,
                           warm=True, epsilon=e) for e in s["warm_epsilon_list"]]
    return plan


def digits_public(s: dict) -> tuple:
    """(M, images left): on the digits, the public data is the train split after the first M = 2 x the largest N
    images of the subset order, every coin candidate of the study."""
    from data import load_images

    skip = 2 * max(s["size_list"])
    left = len(load_images("digits", image_size=32, channels=1).splits["train"]) - skip
    if left < 2:
        raise UserError(f"--train-sizes: the largest N's {skip} coin candidates leave no digits for public data (the "
                        "pretraining, the reference models); lower the largest N")
    return skip, left


def reference_models(s: dict, n: int) -> list:
    """The --references models at N: the non-private recipe with the study's budget on N public images (CelebA:
    --public-root minus every photo and person of --data-root, a seeded subset each; digits: the N after the coin
    candidates, at most as many as are left), so none of them saw a candidate, canary or held-out image. The
    audits' LiRA, RMIA and calibrated black-box attacks at N compare each model with them."""
    if not s["references"]:
        return []
    base = {**common_flags(s), "--num-samples": 0, "--epochs": max(1, round(s["budget"] / n))}
    if s["data"] == "digits":
        skip, left = digits_public(s)
        base.update({"--skip-subset": skip, "--train-size": min(n, left)})
    elif not s["public_root"]:
        raise UserError("reference models train on public data: pass --public-root (or set $CELEBA_10K_ROOT), or "
                        "--references 0")
    else:
        base.update({"--data-root": s["public_root"], "--random-split": None, "--exclude-from": s["data_root"],
                     "--train-size": n})
    return [Model(f"n{n}-refmodel{r + 1}", n, "reference model", "train_dcgan",
                  {**base, "--seed": s["seed"] + 101 + r, **({} if s["data"] == "digits" else
                                                              {"--subset-seed": 101 + r})}, s["seed"] + 101 + r)
            for r in range(s["references"])]


def public_pretraining(s: dict, layout: Layout, ndf: int) -> Model:
    """A non-private run on public data. CelebA: --public-root minus every file name of --data-root, shared by the
    studies (it lives beside their folders, so reproduce.py and reproduce.py --levers train it once). Digits, which
    have no separate public set: the train split minus every coin candidate of the study (--skip-subset 2 x the
    largest N), with the budget of a study model."""
    if s["data"] == "digits":
        skip, n_public = digits_public(s)
        flags = {**common_flags(s), "--ndf": ndf, "--skip-subset": skip,
                 "--epochs": max(1, round(s["budget"] / n_public))}
        cost = 1.0
    else:
        if not s["public_root"]:
            raise UserError("public pretraining needs public data: pass --public-root (e.g. "
                            "../shared/data/celeba-10k-89x109) or set $CELEBA_10K_ROOT")
        flags = {**common_flags(s), "--data-root": s["public_root"], "--random-split": None, "--ngf": 32, "--ndf": ndf,
                 "--epochs": 20, "--exclude-from": s["data_root"]}
        cost = 1.6  # 20 epochs of the 9.7k public images: 1.6 study budgets
    return Model(f"public pretraining (ndf {ndf})", 0, "non-private", "train_dcgan", flags, s["seed"],
                 folder=layout.public_pretraining(s["data"], ndf), cost=cost)


# ----------------------------------------------------------------------------- the study's stages
def eval_flags(s: dict) -> dict:
    flags = {"--num-samples": s["num_samples"], "--device": s["device"], "--threads": s["threads"],
             "--seed": s["seed"], "--cache-dir": s["cache_dir"], "--cache-generated": True, "--no-progress": True,
             "--max-real": s["max_real"] or None, "--inception-weights": s["inception_weights"] or None}
    return flags


def training_stage(m: Model, layout: Layout, deps=()) -> Stage:
    """A Model's training stage (its script's train(), into its run folder); a DP step costs about 1.3x a
    non-private one, which the scheduler weighs."""
    out = layout.folder(m)
    return Stage(m.name, "training", SCRIPTS[m.script], argv_of({**m.flags, "--out": out}), out, "results.json",
                 tuple(deps), m.cost or (1.3 if m.script == "train_dcgan_dp" else 1.0))


def eval_stage(label: str, gen: Path, out: Path, s: dict, deps, train_of: Path | None = None) -> Stage:
    """evaluate_mifid.py on ``gen``'s samples (against ``train_of``'s training set, default its own)."""
    argv = argv_of({"--gen": gen, "--out": out, **eval_flags(s), "--train-of": train_of})
    return Stage(label, "evaluation", SCRIPTS["evaluate_mifid"], argv, out, "eval.json", tuple(deps), 0.3)


def reference_stage(n: int, run: Path, layout: Layout, s: dict, deps) -> Stage:
    """Never-trained real images (the val split minus anything inserted) scored as if they were samples; at most
    as many as the models' samples (a seeded subset), since FID's bias depends on the sample count."""
    out = layout.reference(n)
    return Stage(f"n{n}-reference", "real-data reference", SCRIPTS["evaluate_mifid"],
                 argv_of({"--reference-of": run, "--out": out, **eval_flags(s)}), out, "eval.json", tuple(deps), 0.3)


def audit_stage(label: str, run: Path, out: Path, s: dict, deps, **extra) -> Stage:
    argv = argv_of({"--run": run, "--device": s["device"], "--threads": s["threads"], "--out": out,
                    "--seed": s["seed"], "--cache-dir": s["cache_dir"], **extra})
    return Stage(label, "audit", SCRIPTS["audit"], argv, out, "audit.json", tuple(deps), 0.2)


def model_stages(m: Model, layout: Layout, s: dict, first_eval: Stage | None, deps=(), refs=()) -> list:
    """A model's training, evaluation (after ``first_eval``, which computes the real images' features they share)
    and audit (against the reference models' training stages ``refs``)."""
    train = training_stage(m, layout, deps)
    ev = eval_stage(m.name, layout.run(m.name), layout.eval(m.name), s,
                    (train,) + ((first_eval,) if first_eval is not None else ()))
    extra = {"--reference-runs": ",".join(str(r.out) for r in refs)} if refs else {}
    return [train, ev, audit_stage(m.name, layout.run(m.name), layout.audit(m.name), s, (train, *refs), **extra)]


def reference_stages(s: dict, layout: Layout, sizes) -> dict:
    """{N: the training stages of N's reference models}."""
    return {n: [training_stage(r, layout) for r in reference_models(s, n)] for n in sorted(set(sizes))}


def study_stages(s: dict, layout: Layout, plan: list, public: Model | None) -> list:
    """The study as a graph of stages: each model's training, evaluation and audit; per N the real-data reference
    and the pretraining's evaluation (with the main non-private model of that N, whose evaluation runs first: it
    computes and caches the real images' features that the others share); the public pretraining first."""
    main = {m.size: m for m in plan if m.kind == "non-private" and not m.warm and m.seed == s["seed"]}
    stages, pub = [], None
    if public is not None and (main or any(m.warm for m in plan)):
        pub = training_stage(public, layout)
        stages.append(pub)
    refs = reference_stages(s, layout, [m.size for m in plan])
    stages += [r for rs in refs.values() for r in rs]
    first = {}
    for m in sorted(plan, key=lambda m: m is not main.get(m.size)):  # each N's main non-private model first
        train, ev, aud = model_stages(m, layout, s, first.get(m.size), (pub,) if m.warm else (), refs[m.size])
        stages += [train, ev, aud]
        if m is main.get(m.size):
            first[m.size] = ev
            stages.append(reference_stage(m.size, layout.run(m.name), layout, s, (ev,)))
            if pub is not None:  # the baseline of the warm pair, scored against this N's training set
                stages.append(eval_stage(f"n{m.size}-public-pretraining", layout.folder(public),
                                         layout.pretraining_eval(m.size), s, (pub, ev), train_of=layout.run(m.name)))
    return stages


def run_study_stages(stages: list, s: dict, layout: Layout, args) -> dict:
    """Run the stages in s["jobs"] workers with s["threads"] threads each (1 for 'auto'), logs in OUT/logs; with
    --dry-run, print what would run and why, run nothing and return {"dry_run": {stage: [action, why]}}."""
    if args.dry_run:
        plan = plan_stages(stages, args.reuse_stale)
        for stage, (action, why) in plan.items():
            print(f"  {action:<11} {stage.name}" + (f"  ({why})" if why else ""))
        runs = sum(not a.startswith("reuse") for a, _ in plan.values())
        print(f"--dry-run: {runs} of {len(plan)} stages would run; nothing was run")
        return {"dry_run": {s.name: list(v) for s, v in plan.items()}}
    if args.scheduler and args.executor != "dask":
        raise UserError("--scheduler names a Dask scheduler: use it with --executor dask")
    return run_stages(stages, s["jobs"], int(s["threads"]) if str(s["threads"]).isdigit() else 1, layout.logs,
                      progress=not args.no_progress, reuse_stale=args.reuse_stale, executor=args.executor,
                      scheduler=args.scheduler, out=layout.out)


def print_settings(title: str, s: dict, keys) -> None:
    print(title)
    for k in keys:
        print(f"  {k:<16} {s[k]}")


# ----------------------------------------------------------------------------- main
def reproduce(args, argv: list) -> dict:
    if args.figures is not None:
        from plots import figures

        return figures(Path(args.figures))
    if args.levers and args.only is not None:
        raise UserError("--only selects models of the study; with --levers use --rows")
    if sum(map(bool, (args.levers, args.frontier, args.identity, args.dp_cost, args.unlearning))) > 1:
        raise UserError("give one of --levers, --frontier, --identity, --dp-cost and --unlearning")
    if args.unlearning:
        from unlearn_study import unlearning

        return unlearning(args)
    if args.dp_cost:
        from dp_cost import dp_cost

        return dp_cost(args)
    if args.identity:
        return identity(args)
    if args.levers:
        from levers import levers

        return levers(args)
    if args.frontier:
        return frontier(args)
    if args.rows is not None:
        raise UserError("--rows selects rows of the levers study: use it with --levers")
    t0 = time.time()
    s = settings(args)
    layout = Layout(Path(args.out or ("outputs/reproduce-quick" if args.quick else "outputs/reproduce")))
    public = None
    if s["warm"] and (s["data"] == "digits" or (s["public_root"] and s["data"] == "celeba")):
        public = public_pretraining(s, layout, _dp_default("ndf", s["data"]))
    plan = model_plan(s, layout.folder(public) if public is not None else None)
    if args.only is not None:
        names = [m.strip() for m in args.only.split(",") if m.strip()]
        unknown = sorted(set(names) - {m.name for m in plan})
        if unknown or not names:
            raise UserError(f"--only: no model named {', '.join(unknown) or repr(args.only)} in this study; its models "
                            f"are {', '.join(m.name for m in plan)}")
        plan = [m for m in plan if m.name in names]
    print_settings(f"reproduce ({'quick' if args.quick else 'full'} preset) -> {layout.out}", s, (
        "data", "data_root", "train_sizes", "budget", "epsilons", "delta", "warm", "warm_epsilons", "warm_non_private",
        "references", "num_samples", "max_real", "canaries", "canary_repeats", "seed", "extra_seeds", "jobs",
        "threads"))
    stages = study_stages(s, layout, plan, public)
    print(f"  {len(stages)} stages; each stage's output in {layout.logs}/")
    outcome = run_study_stages(stages, s, layout, args)
    if args.dry_run:
        return outcome
    if args.only is not None:
        print(f"--only: the stages of {', '.join(m.name for m in plan)} are done; run without --only for the report")
        return {"only": [m.name for m in plan]}
    return report.study_report(s, layout, plan, public, argv, t0, outcome)


# ----------------------------------------------------------------------------- the frontier of defences
def frontier_plan(s: dict) -> tuple:
    """([Model], the snapshot interval) at the smallest N: the study's non-private and DP models (the same Models,
    so a finished study's runs are reused), DP at every epsilon, memorization rejection, augmentation and a
    non-private run that keeps snapshots."""
    n = min(s["size_list"])
    study = [m for m in model_plan({**s, "extra_seed_list": []}) if m.size == n]
    base = next(m for m in study if m.kind == "non-private")
    models = [replace(base, defence="none", setting="non-private")]
    models += [replace(m, defence="DP-SGD", setting=f"ε = {m.epsilon:g}") for m in study if m.kind == "dp"]
    for q in MR_QUANTILES:
        models.append(replace(base, name=f"n{n}-mr-q{q:g}", flags={**base.flags, "--mr-quantile": f"{q:g}"},
                              defence="memorization rejection", setting=f"τ = q{q:g} of held-out"))
    for ops in AUGMENTATIONS:
        models.append(replace(base, name=f"n{n}-augment-{ops.replace(',', '-')}",
                              flags={**base.flags, "--augment": ops}, defence="augmentation", setting=ops))
    a = train_dcgan.parse_config(argv_of(base.flags))  # the run's epochs and batch size, defaults included
    planned = n + (s["canaries"] * sum(int(r) for r in str(s["canary_repeats"]).split(",")) if s["canaries"] else 0)
    every = max(1, a.epochs * math.ceil(planned / a.batch_size) // CHECKPOINTS)
    models.append(replace(base, name=f"n{n}-non-private-snapshots", flags={**base.flags, "--snapshot-every": every},
                          defence="early stopping", setting="snapshots"))
    return models, every


def frontier(args) -> dict:
    t0 = time.time()
    if args.only is not None or args.rows is not None:
        raise UserError("--only and --rows select models of the study and the levers study, not of --frontier")
    s = settings(args, epsilons=FRONTIER_EPSILONS)
    layout = Layout(Path(args.out or ("outputs/reproduce-quick" if args.quick else "outputs/reproduce")))
    models, every = frontier_plan(s)
    n = min(s["size_list"])
    print_settings(f"frontier of defences at N = {n} ({'quick' if args.quick else 'full'} preset) -> {layout.out}",
                   s, ("data", "data_root", "budget", "epsilons", "num_samples", "jobs", "threads"))
    print(f"  memorization rejection at quantiles {', '.join(map(str, MR_QUANTILES))}; augmentation "
          f"{' | '.join(AUGMENTATIONS)}; snapshots every {every} D steps")
    refs = reference_stages(s, layout, [n])[n]
    first, stages = None, list(refs)
    for m in models:  # the non-private model first: its evaluation computes the real features the others share
        train, ev, aud = model_stages(m, layout, s, first, refs=refs)
        stages += [train, ev, aud]
        if first is None:
            first = ev
            stages.append(reference_stage(n, layout.run(m.name), layout, s, (ev,)))
        if m.defence == "early stopping":
            over = layout.over_training(m.name)
            argv = argv_of({"--run": layout.run(m.name), "--over-training": True, "--fid-samples": s["num_samples"],
                            "--device": s["device"], "--threads": s["threads"], "--seed": s["seed"],
                            "--cache-dir": s["cache_dir"], "--out": over, "--max-real": s["max_real"] or None,
                            "--inception-weights": s["inception_weights"] or None,
                            "--reference-runs": ",".join(str(r.out) for r in refs) or None})
            stages.append(Stage(m.name, "audit over training", SCRIPTS["audit"], argv, over, "over_training.json",
                                (train, first, *refs), cost=0.3 * CHECKPOINTS))
    print(f"  {len(stages)} stages; each stage's output in {layout.logs}/")
    outcome = run_study_stages(stages, s, layout, args)
    if args.dry_run:
        return outcome
    return report.frontier_report(s, layout, models, n, t0)


# ----------------------------------------------------------------------------- the person as the privacy unit
def identity_plan(s: dict) -> tuple:
    """([Model], the reference Model or None) of the identity study: the same people, coins and attack photos for
    every model."""
    base = {**common_flags(s), "--split-unit": "identity", "--privacy-unit": "identity",
            "--train-size": IDENTITY_PEOPLE, "--coin-subset": True, "--attack-photos": IDENTITY_ATTACK_PHOTOS,
            "--epochs": IDENTITY_EPOCHS, "--subset-seed": IDENTITY_SUBSET_SEED}
    models = [Model("non-private", IDENTITY_PEOPLE, "non-private", "train_dcgan", base, s["seed"])]
    for e in s["epsilon_list"]:
        dp = {**base, "--epsilon": f"{e:g}", "--delta": f"{s['delta']:g}"}
        models.append(Model(f"image-dp-eps{e:g}", IDENTITY_PEOPLE, "image-dp", "train_dcgan_dp",
                            {**dp, "--dp-unit": "image"}, s["seed"], epsilon=e))
        models.append(Model(f"person-dp-eps{e:g}", IDENTITY_PEOPLE, "person-dp", "train_dcgan_dp",
                            {**dp, "--max-photos-per-unit": IDENTITY_MAX_PHOTOS}, s["seed"], epsilon=e))
    reference = None
    if s["public_root"]:  # the non-private recipe on about as many photos of other people (none of --data-root's)
        reference = Model("reference-public", IDENTITY_REFERENCE_PHOTOS, "non-private", "train_dcgan",
                          {**common_flags(s), "--data-root": s["public_root"], "--random-split": None,
                           "--exclude-from": s["data_root"], "--train-size": IDENTITY_REFERENCE_PHOTOS,
                           "--epochs": IDENTITY_EPOCHS}, s["seed"])
    return models, reference


def identity(args) -> dict:
    t0 = time.time()
    if args.only is not None or args.rows is not None:
        raise UserError("--only and --rows select models of the study and the levers study, not of --identity")
    s = settings(args)
    if s["data"] != "celeba":
        raise UserError("--identity needs photos with identity labels: CelebA (--data-root; the bundled digits have "
                        "no people)")
    layout = Layout(Path(args.out or "outputs/reproduce-identity"))
    models, reference = identity_plan(s)
    print(f"the person as the privacy unit -> {layout.out}")
    print(f"  {IDENTITY_PEOPLE} people in training (of {2 * IDENTITY_PEOPLE} candidates, one coin each), "
          f"{IDENTITY_ATTACK_PHOTOS} attack photos per candidate, {IDENTITY_EPOCHS} epochs; ε {s['epsilons']} "
          f"per image and per person (at most {IDENTITY_MAX_PHOTOS} photos of a person per step)")
    stages, ref = [], None
    if reference is not None:
        ref = training_stage(reference, layout)
        stages.append(ref)
    for m in models:
        train = training_stage(m, layout)
        extra = {"--reference-runs": layout.run(reference.name)} if reference is not None else {}
        stages += [train, audit_stage(m.name, layout.run(m.name), layout.audit(m.name), s,
                                      (train,) + ((ref,) if ref is not None else ()), **extra)]
    outcome = run_study_stages(stages, s, layout, args)
    if args.dry_run:
        return outcome
    return report.identity_report(s, layout, models, reference, t0)


def _dp_default(key, data="celeba"):  # train_dcgan_dp.py's recipe for that data
    return train_dcgan_dp.dp_defaults(data)[key]


def main(argv=None):
    def run(a):
        return reproduce(build_parser().parse_args(a), list(sys.argv[1:] if a is None else a))

    return run_cli(run, argv, interrupted="interrupted: finished stages and the last checkpoints are kept; run the "
                                          "same command again to continue")


if __name__ == "__main__":
    main()

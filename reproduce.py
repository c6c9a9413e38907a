"""Reproduce the README results: memorization vs training-set size, non-private vs DP-SGD, in one command.

  python reproduce.py --data-root ~/data/celeba     # the study on CelebA (32px grayscale)
  python reproduce.py --quick                       # the same pipeline on the bundled digits, minutes on a CPU
  python reproduce.py --levers --data-root ROOT     # the privacy-utility levers study (README table)

The study. For each N in --train-sizes, 2N candidate images of the train split (one per near-duplicate group)
each join the training set with probability 1/2 (a seeded coin): the training subset has about N images and
every candidate is a trial of the one-run epsilon audit. On that subset it trains a non-private model and one
DP-SGD model per --epsilons value, each with its script's default recipe and the SAME compute: D sees
--budget real images (epochs = budget / N), so smaller N means more passes over the same images; and the same
pair fine-tuned from a public pretraining (CelebA: --public-root; digits: the train digits no coin candidate
uses), the DP recipe where public data exists. Stages:
  1. train      train_dcgan.py / train_dcgan_dp.py                  -> OUT/runs/n<N>-<model>/
  2. evaluate   evaluate_mifid.py against the run's own training set -> OUT/runs/n<N>-<model>/eval/
  3. audit      audit.py: membership inference, exposure, epsilon bounds -> OUT/runs/n<N>-<model>/audit/
  4. reference  held-out real images (the val split) scored like a model's samples: the FID and d floor and the
                precision/recall ceiling at that N                     -> OUT/reference/n<N>/
  5. report     OUT/results.md, results.json and plots (memorization_vs_n.png, samples.png, nn_galleries.png,
                copy_galleries.png,
                fid_vs_epsilon.png, roc.png, one_run.png, exposure.png)

The levers study (--levers) trains DP models with one lever at a time, and combinations, at a fixed budget on
the CelebA subset, plus the non-private model of the same budget and a public pretraining run; OUT/levers.md.

Idempotent and resumable: a finished stage whose settings match is reused; an interrupted training run
resumes from its checkpoint; changing a setting reruns only the stages it affects. To use several processes,
give each a share of the models with --only (same flags and --out otherwise), then run the command once more
without --only: it reuses every stage and writes the report.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from utils import UserError, read_json, run_cli, versions, write_json

PRESETS = {
    # CelebA 32px grayscale with a random image split (membership audits need exchangeable members and
    # non-members; the official split is identity-disjoint). Sized for a 2-core CPU.
    "full": {"data": "celeba", "train_sizes": "250,1000,2300", "budget": 120_000, "num_samples": 1000,
             "max_real": None, "canaries": 5, "canary_repeats": "1,4", "epsilons": "8,1", "extra_seeds": "1,2"},
    # Digits: the 2 x 500 coin candidates of N = 500 leave 437 of the 1,437 training digits for the public
    # pretraining of the warm-start rows (--skip-subset).
    "quick": {"data": "digits", "train_sizes": "100,500", "budget": 84_000, "num_samples": 500,
              "max_real": None, "canaries": 2, "canary_repeats": "1,4", "epsilons": "8", "extra_seeds": ""},
}
# The seed project's published numbers, kept as a row of the table (see SEED_NOTE).
SEED_ROWS = [{"model": "seed project, non-private (reported)", "epsilon": None, "fid_train": 1.58, "mifid": 2460.0},
             {"model": "seed project, DP (reported)", "epsilon": "?", "fid_train": 4.80, "mifid": 535.0}]
SEED_NOTE = """\
The seed project's numbers are not comparable with ours and are not reproducible as FID/MiFID:
they were computed on 64-d features (an early Inception block, not the standard 2048-d pool3), with
generator outputs in [-1, 1] fed to a network expecting [0, 1] (halving contrast and shifting the mean),
on only 1,000 samples (FID is biased upward at small N, and the 64-d covariance is a different quantity),
and with MiFID's memorization term in the reversed direction (for each real image its nearest generated
image, as torchmetrics does, instead of the Kaggle definition: for each generated image its nearest
training image). A FID of 1.58 between a DCGAN and CelebA is an artefact of those features, not a
near-perfect model. Our rows use the standard features, the Kaggle direction and report N."""


def build_parser():
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the quick preset (digits, minutes on a CPU)")
    p.add_argument("--levers", action="store_true", help="the privacy-utility levers study instead of the study")
    p.add_argument("--data", default=None, help="celeba | folder:PATH | digits (default: the preset's)")
    p.add_argument("--data-root", default=os.environ.get("CELEBA_ROOT"), help="CelebA root (default $CELEBA_ROOT)")
    p.add_argument("--public-root", default=os.environ.get("CELEBA_10K_ROOT"),
                   help="public CelebA images for the warm-start rows (and --levers), minus every file name of "
                        "--data-root (default $CELEBA_10K_ROOT)")
    p.add_argument("--train-sizes", default=None, help="comma-separated N (full: 250,1000,2300)")
    p.add_argument("--budget", type=int, default=None,
                   help="real images D sees per model (the same compute at every N; epochs = budget / N)")
    p.add_argument("--epsilons", default=None, help="comma-separated target epsilons of the DP models (full: 8,1)")
    p.add_argument("--delta", type=float, default=1e-6)
    p.add_argument("--num-samples", type=int, default=None, help="generated images per model for evaluation")
    p.add_argument("--max-real", type=int, default=None, help="cap on real train/held-out images in evaluation")
    p.add_argument("--canaries", type=int, default=None, help="canaries per repeat count (0: no exposure audit)")
    p.add_argument("--canary-repeats", default=None, help="comma-separated repeat counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra-seeds", default=None, metavar="SEEDS",
                   help="comma-separated further training seeds of the smallest N's non-private model, the "
                        "memorization headline: its spread over seeds (full: 1,2; quick: none; '' for none)")
    p.add_argument("--inception-weights", default=None, help="FID Inception weights (else $INCEPTION_WEIGHTS, ...)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", default="auto", help="CPU threads of every stage (see train_dcgan.py --threads)")
    p.add_argument("--cache-dir", default=os.environ.get("DCGAN_CACHE_DIR", "outputs/cache"),
                   help="decoded-image and feature cache ('' disables)")
    p.add_argument("--out", default=None, help="study folder (default outputs/reproduce[-quick|-levers])")
    p.add_argument("--rows", default=None,
                   help="with --levers: comma-separated row numbers to run (0-%d, the numbers of the run folders; "
                        "default all)" % (len(LEVERS) - 1))
    p.add_argument("--only", default=None, metavar="MODELS",
                   help="run only these models' stages (comma-separated run names, e.g. n250-dp-eps8; a non-private "
                        "model brings its reference row) and write no report: several processes can share one --out "
                        "this way, and a final invocation without --only reuses their stages and writes the report")
    p.add_argument("--no-progress", action="store_true")
    return p


def settings(args) -> dict:
    """The preset, overridden by every flag the user gave."""
    s = dict(PRESETS["quick" if args.quick else "full"])
    for k in list(s):
        v = getattr(args, k, None)
        if v is not None:
            s[k] = v
    s.update(data_root=args.data_root if s["data"] == "celeba" else None, delta=args.delta, seed=args.seed,
             device=args.device, threads=args.threads, inception_weights=args.inception_weights,
             cache_dir=args.cache_dir, public_root=args.public_root, no_progress=args.no_progress)
    if s["data"] == "celeba" and not s["data_root"]:
        raise UserError("the full study trains on CelebA: pass --data-root (or set $CELEBA_ROOT), "
                        "or run --quick for the bundled digits")
    s["epsilon_list"] = _numbers(s["epsilons"], "--epsilons", float)
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


def common_argv(s: dict) -> list:
    argv = ["--data", s["data"], "--image-size", "32", "--channels", "1", "--seed", str(s["seed"]),
            "--num-samples", str(s["num_samples"]), "--device", s["device"], "--threads", str(s["threads"]),
            "--cache-dir", s["cache_dir"]]
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
    run), every size also gets a non-private and one DP model per epsilon fine-tuned from it: the same start
    and budget, each with its script's recipe as for the from-scratch rows (D's width is the pretraining's; the
    DP fine-tune at the WARM lr). The warm DP rows are the study's DP recipe: from scratch, DP-SGD with
    epsilon x N up to 18,400 learns coarse faces at best (README). Why not one shared recipe: at lr 1e-6 a
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
        if public is not None:
            warm = argv + ["--ndf", str(_dp_default("ndf", s["data"])), "--init-from", str(public)]
            plan.append((n, f"n{n}-non-private-warm", "train_dcgan",
                         warm + ["--out", str(out / "runs" / f"n{n}-non-private-warm")]))
            for e in s["epsilon_list"]:
                plan.append((n, f"n{n}-dp-eps{e:g}-warm", "train_dcgan_dp",
                             warm + WARM + ["--epsilon", f"{e:g}", "--delta", f"{s['delta']:g}",
                                            "--out", str(out / "runs" / f"n{n}-dp-eps{e:g}-warm")]))
    return plan


def public_pretraining(s: dict, out: Path, ndf: int, no_progress: bool, train: bool = True) -> Path:
    """A non-private run on public data. CelebA: --public-root minus every file name of --data-root, shared by
    the studies (it lives beside their folders, so reproduce.py and reproduce.py --levers train it once).
    Digits, which have no separate public set: the train split minus every coin candidate of the study
    (--skip-subset 2 x the largest N), with the budget of a study model. ``train=False``: only its folder."""
    run = out / "public-pretraining" if s["data"] == "digits" else out.parent / f"public-pretraining-ndf{ndf}"
    if not train:
        return run
    if s["data"] == "digits":
        from data import load_images

        skip = 2 * max(s["size_list"])
        n_public = len(load_images("digits", image_size=32, channels=1).splits["train"]) - skip
        if n_public < 2:
            raise UserError(f"--train-sizes: the largest N's {skip} coin candidates leave no digits for the public "
                            "pretraining; lower the largest N")
        argv = common_argv(s) + ["--ndf", str(ndf), "--skip-subset", str(skip),
                                 "--epochs", str(max(1, round(s["budget"] / n_public)))]
    else:
        argv = [a if a != str(s["data_root"]) else str(s["public_root"]) for a in common_argv(s)
                if a != "--random-split"]
        argv += ["--ngf", "32", "--ndf", str(ndf), "--epochs", "20", "--exclude-from", str(s["data_root"])]
    train_stage(f"public pretraining (ndf {ndf})", "train_dcgan", argv + ["--out", str(run)], no_progress)
    return run


# ----------------------------------------------------------------------------- stages
_VOLATILE = {"out", "resume", "no_progress", "device", "cache_dir", "threads"}  # do not change what a run computes
_PATH_FLAGS = ("--gen", "--run", "--out", "--train-of", "--inception-weights")  # stage flags that name files


def _stamp_ok(path: Path, stamp: dict) -> bool:
    """A stage's stamp matches: the same argv (its paths compared resolved, however they were spelled) and inputs."""
    from train_dcgan import resolved

    def canonical(st):
        argv = list(st.get("argv", []))
        for i in range(len(argv) - 1):
            if argv[i] in _PATH_FLAGS:
                argv[i + 1] = resolved(argv[i + 1])
        return {**st, "argv": argv}
    return path.is_file() and canonical(read_json(path)) == canonical(stamp)


def train_stage(name, script, argv, no_progress) -> dict:
    import importlib

    mod = importlib.import_module(script)
    parse = mod.parse_args if hasattr(mod, "parse_args") else mod.build_parser().parse_args
    args = parse(argv + (["--no-progress"] if no_progress else []))
    from train_dcgan import as_recorded, check_args, resolved_paths

    check_args(args)  # normalises as train() does, so the comparison below sees what the run recorded
    run = Path(args.out)
    want = {k: v for k, v in vars(args).items() if k not in _VOLATILE}
    if (run / "results.json").is_file() and (run / "config.json").is_file():
        have = as_recorded({k: v for k, v in read_json(run / "config.json")["args"].items() if k not in _VOLATILE},
                           want)
        if resolved_paths(have) == resolved_paths(want):
            print(f"[{name}] trained run found in {run}: reused")
            return read_json(run / "results.json")
    if (run / "ckpt.pt").is_file():
        args.resume = True
        print(f"[{name}] resuming {run}")
    else:
        print(f"[{name}] training -> {run}")
    from train_dcgan import train

    if script == "train_dcgan_dp":
        from train_dcgan_dp import DPPrivacy

        return train(args, DPPrivacy(args))
    return train(args)


def _stage(name, what, module, fn, argv, out_dir: Path, result: str, inputs: dict) -> dict:
    """Run ``module.fn`` on argv unless out_dir holds its result for the same argv and input files."""
    import importlib

    stamp = {"argv": _stable(argv), **{k: _mtime(p) for k, p in inputs.items()}}
    if _stamp_ok(out_dir / "stamp.json", stamp) and (out_dir / result).is_file():
        print(f"[{name}] {what} found: reused")
        return read_json(out_dir / result)
    print(f"[{name}] {what}: running")
    mod = importlib.import_module(module)
    res = getattr(mod, fn)(mod.build_parser().parse_args(argv))
    write_json(out_dir / "stamp.json", stamp)
    return res


def _eval_argv(s: dict) -> list:
    argv = ["--num-samples", str(s["num_samples"]), "--device", s["device"], "--threads", str(s["threads"]),
            "--seed", str(s["seed"]), "--cache-dir", s["cache_dir"]] + (["--no-progress"] if s["no_progress"] else [])
    if s["max_real"]:
        argv += ["--max-real", str(s["max_real"])]
    if s["inception_weights"]:
        argv += ["--inception-weights", str(s["inception_weights"])]
    return argv


def eval_stage(name, run: Path, s: dict, train_of: Path | None = None, out_dir: Path | None = None) -> dict:
    out_dir = out_dir or run / "eval"
    argv = ["--gen", str(run), "--out", str(out_dir)] + _eval_argv(s)
    if train_of is not None:  # score against another run's training set (a pretraining vs the private data)
        argv += ["--train-of", str(train_of)]
    return _stage(name, "evaluation", "evaluate_mifid", "evaluate", argv, out_dir, "eval.json",
                  {"samples": run / "samples.npz"})


def audit_stage(name, run: Path, s: dict) -> dict:
    argv = ["--run", str(run), "--device", s["device"], "--threads", str(s["threads"]), "--out", str(run / "audit"),
            "--seed", str(s["seed"]), "--cache-dir", s["cache_dir"]]
    return _stage(name, "audit", "audit", "audit", argv, run / "audit", "audit.json",
                  {"ckpt": run / "ckpt.pt", "generator": run / "generator.pt", "samples": run / "samples.npz"})


def reference_stage(n: int, run: Path, s: dict, out: Path) -> dict:
    """Never-trained real images (the val split minus anything inserted) scored as if they were samples; at most
    as many as the models' samples (a seeded subset), since FID's bias depends on the sample count."""
    from data import save_npz
    from train_dcgan import _seeded_perm, run_training_data

    ref_dir = out / "reference" / f"n{n}"
    ref_dir.mkdir(parents=True, exist_ok=True)
    td = run_training_data(run, cache_dir=s["cache_dir"])
    val = td.imgs.splits["val"]
    val = val[~torch.isin(val, td.special())]
    if len(val) > s["num_samples"]:
        val = val[_seeded_perm(len(val), 0)[:s["num_samples"]]].sort().values
    npz = ref_dir / "heldout_real.npz"
    if not npz.is_file() or len(np.load(npz)["images"]) != len(val):
        save_npz(npz, td.imgs.images[val])
    argv = ["--gen", str(npz), "--train-of", str(run), "--out", str(ref_dir / "eval")] + _eval_argv(s)
    return _stage(f"n{n}-reference", "real-data reference", "evaluate_mifid", "evaluate", argv, ref_dir / "eval",
                  "eval.json", {"images": npz, "config": run / "config.json"})


def _stable(argv):
    """argv without the flags that do not change results (device, threads, cache, bars), for stage stamps."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--no-progress":
            pass
        elif a in ("--device", "--cache-dir", "--threads"):
            skip = True
        else:
            out.append(a)
    return out


def _mtime(p: Path):
    return p.stat().st_mtime_ns if p.exists() else None


# ----------------------------------------------------------------------------- table
def row(name, n, train_res, ev, au) -> dict:
    r = {"model": name, "size": n, "epsilon": train_res.get("epsilon"),
         "target_epsilon": train_res.get("target_epsilon"),
         "delta": train_res.get("delta"), "sigma": train_res.get("noise_multiplier"),
         "epochs": train_res["epochs"], "steps": train_res["steps"], "g_steps": train_res.get("g_steps"),
         "n_train": train_res["n_train"], "wall_s": {"train": train_res.get("wall_s"), "eval": ev.get("wall_s"),
                                                      "audit": au.get("wall_s") if au else None}}
    r.update(eval_columns(ev))
    if au:
        att, copies = au["attacks"], au.get("copies") or {}
        wb, bb = att["white_box"], att.get("black_box_calibrated", att["black_box"])
        exposures = [e["max"] for a in att.values() for e in a.get("exposure", {}).values()]
        one_run = {k: a["one_run"] for k, a in att.items() if a.get("one_run")}
        r.update({"mia_auc_white": wb["auc"], "mia_tpr_1pct_white": wb["tpr_at_fpr"]["0.01"],
                  "mia_auc_black": bb["auc"], "mia_tpr_1pct_black": bb["tpr_at_fpr"]["0.01"],
                  "mia_auc_black_raw": att["black_box"]["auc"],
                  "copying_rate": copies.get("copying_rate"), "copying_p": copies.get("p_value"),
                  "max_exposure": max(exposures) if exposures else None,
                  "epsilon_lb_heuristic": max(a["epsilon_lower_bound"]["epsilon_lb"] for a in att.values()),
                  "epsilon_lb_one_run": au.get("one_run_epsilon_lb"),  # max over attacks, valid at alpha
                  "one_run": {k: {f: o[f] for f in ("epsilon_lb", "r", "v", "m", "delta", "alpha")}
                              for k, o in one_run.items()}})
    return r


def eval_columns(ev) -> dict:
    return {"fid_train": ev["fid_train"], "fid_heldout": ev["fid_heldout"], "fid_gap": ev["fid_gap"],
            "mifid": ev["mifid"], "memorization_d": ev["memorization_d"], "frac_below_eps": ev["fraction_below_eps"],
            "kid": ev["kid_mean"], "precision": ev["precision"], "recall": ev["recall"], "n_gen": ev["n_gen"]}


COLUMNS = [("N", "size", "d"), ("model", "model", None), ("train images", "n_train", "d"), ("ε", "epsilon", ".2f"),
           ("σ", "sigma", ".2f"),
           ("epochs", "epochs", "d"), ("D / G steps", "steps", "dg"), ("FID train", "fid_train", ".1f"),
           ("FID held-out", "fid_heldout", ".1f"), ("MiFID", "mifid", ".1f"), ("d", "memorization_d", ".3f"),
           ("d < 0.1", "frac_below_eps", ".1%"), ("precision", "precision", ".2f"), ("recall", "recall", ".2f"),
           ("AUC white-box", "mia_auc_white", ".3f"), ("TPR@1%FPR white-box", "mia_tpr_1pct_white", ".3f"),
           ("AUC black-box", "mia_auc_black", ".3f"), ("copying rate, pixel (p)", "copying_rate", "copy"),
           ("max exposure (bits)", "max_exposure", ".1f"),
           ("ε_lb one-run", "epsilon_lb_one_run", ".2f"), ("ε_lb heuristic", "epsilon_lb_heuristic", ".2f")]


def _cell(r, key, fmt):
    v = r.get(key)
    if key == "epsilon" and v is None and not r["model"].startswith(("seed", "real data")):
        return "∞"
    if v is None:
        return "n/a" if r["model"].startswith("real data") else "—"
    if isinstance(v, str) or fmt is None:
        return str(v)
    if fmt == "dg":
        return f"{v} / {r.get('g_steps', v)}"
    if fmt == "copy":
        return f"{v:.1%} ({r['copying_p']:.3f})"
    return format(v, fmt)


def markdown_table(rows, columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(c for c, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r, k, f) for _, k, f in columns) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path, xlabel, ylabel, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _eps_label(r):
    warm = ", public warm start" if r["model"].endswith("-warm") else ""
    return ("non-private (ε = ∞)" if r["epsilon"] is None else f"DP, ε = {r['target_epsilon']:g}") + warm


def plot_memorization_vs_n(rows, refs, path, extra_seed_rows=()):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    groups = {}
    for r in rows:
        groups.setdefault(_eps_label(r), []).append(r)
    for i, (label, rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: r["size"])
        others = [r for r in extra_seed_rows if _eps_label(r) == label]
        for ax, key in zip(axes, ("mia_auc_white", "memorization_d", "fid_train")):
            ax.plot([r["size"] for r in rs], [r.get(key) for r in rs], "o-", color=f"C{i}", label=label)
            if others:
                ax.plot([r["size"] for r in others], [r.get(key) for r in others], "x", color=f"C{i}", ms=8,
                        label=f"{label}, other seeds")
    ref = sorted(refs, key=lambda r: r["size"])
    for ax, key in zip(axes[1:], ("memorization_d", "fid_train")):
        ax.plot([r["size"] for r in ref], [r[key] for r in ref], "s--", color="k", label="held-out real images")
    axes[0].axhline(0.5, color="k", ls=":", lw=1, label="chance")
    for ax, title in zip(axes, ("white-box membership AUC (higher: more memorization)",
                                "memorization distance d (lower: closer to training images)",
                                "FID vs the training set (lower: better)")):
        ax.set_xscale("log")
        ax.set_xlabel("training-set size N")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fid_vs_epsilon(rows, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, n in enumerate(sorted({r["size"] for r in rows})):
        for warm, style in ((False, "o-"), (True, "s:")):
            same = [r for r in rows if r["size"] == n and r["model"].endswith("-warm") == warm]
            dp = sorted([r for r in same if r["epsilon"] is not None], key=lambda r: r["epsilon"])
            if dp:
                ax.plot([r["epsilon"] for r in dp], [r["fid_train"] for r in dp], style, color=f"C{i}",
                        label=f"DP, N = {n}" + (", public warm start" if warm else ""))
        npv = next((r for r in rows if r["size"] == n and r["model"].endswith("-non-private")), None)
        if npv is not None:
            ax.axhline(npv["fid_train"], color=f"C{i}", ls="--", lw=1, label=f"non-private, N = {n}")
    ax.set_xscale("log")
    _finish(plt, fig, ax, path, "ε (δ fixed; log scale)", "FID vs training set (lower is better)",
            "privacy–utility trade-off")


def plot_image_panels(named_images: dict, path, title: str, ncols=None):
    """One panel per entry; each value is a PNG path, a uint8 (N, C, H, W) tensor (first 64 shown) or None (blank)."""
    from torchvision.utils import make_grid

    plt = _plt()
    n = len(named_images)
    ncols = ncols or n
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (name, img) in zip(axes.flat, named_images.items()):
        if img is None:  # a blank panel
            continue
        if isinstance(img, (str, Path)):
            ax.imshow(plt.imread(str(img)))
        else:
            grid = make_grid(img[:64].float() / 255, nrow=8, padding=1, pad_value=1.0)
            ax.imshow(grid.permute(1, 2, 0).numpy().squeeze(), cmap="gray" if grid.shape[0] == 1 else None)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_galleries(named_paths: dict, path):
    plt = _plt()
    n = len(named_paths)
    fig, axes = plt.subplots(n, 1, figsize=(12, 2.6 * n), squeeze=False)
    for ax, (name, p) in zip(axes[:, 0], named_paths.items()):
        ax.imshow(plt.imread(str(p)))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_exposure(named_audits: dict, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    m = None
    for i, (name, au) in enumerate(named_audits.items()):
        exp = au["attacks"]["white_box"].get("exposure") or {}
        if not exp:
            continue
        reps = sorted(exp, key=int)
        ax.plot([int(r) for r in reps], [exp[r]["mean"] for r in reps], "o-", color=f"C{i % 10}", label=name)
        m = au["canaries"]["references"]
    if m:
        ax.axhline(math.log2(m), color="k", ls=":", lw=1, label=f"maximum log2(M), M = {m}")
    ax.set_xscale("log", base=2)
    _finish(plt, fig, ax, path, "times each canary was repeated in training", "mean exposure (bits), white-box score",
            "canary exposure")


# ----------------------------------------------------------------------------- main
def hardware(device) -> str:
    from utils import cpu_model

    cpu = f"{os.cpu_count()} CPU cores ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()})"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {cpu}"
    return f"{device.type}, {cpu}"


def reproduce(args) -> dict:
    if args.levers and args.only is not None:
        raise UserError("--only selects models of the study; with --levers use --rows")
    if args.levers:
        return levers(args)
    if args.rows is not None:
        raise UserError("--rows selects rows of the levers study: use it with --levers")
    t0 = time.time()
    s = settings(args)
    out = Path(args.out or ("outputs/reproduce-quick" if args.quick else "outputs/reproduce"))
    out.mkdir(parents=True, exist_ok=True)
    public = None
    if s["data"] == "digits" or (s["public_root"] and s["data"] == "celeba"):
        public = public_pretraining(s, out, _dp_default("ndf", s["data"]), args.no_progress, train=False)
    plan = model_plan(s, out, public)
    smallest = min(s["size_list"])  # the size of the galleries, ROC and histogram
    if args.only is not None:
        names = [m.strip() for m in args.only.split(",") if m.strip()]
        unknown = sorted(set(names) - {name for _, name, _, _ in plan})
        if unknown or not names:
            raise UserError(f"--only: no model named {', '.join(unknown) or repr(args.only)} in this study; its models "
                            f"are {', '.join(name for _, name, _, _ in plan)}")
        plan = [p for p in plan if p[1] in names]
    if public is not None and (args.only is None or any(name.endswith(("-warm", "-non-private"))
                                                        for _, name, _, _ in plan)):
        public_pretraining(s, out, _dp_default("ndf", s["data"]), args.no_progress)  # where a selected stage needs it
    print(f"reproduce ({'quick' if args.quick else 'full'} preset) -> {out}")
    for k in ("data", "data_root", "train_sizes", "budget", "epsilons", "delta", "num_samples", "max_real",
              "canaries", "canary_repeats", "seed", "extra_seeds"):
        print(f"  {k:<15} {s[k]}")

    rows, refs, pre, audits, scores, samples, galleries, dists = [], [], [], {}, {}, {}, {}, {}
    copy_galleries = {}
    for n, name, script, argv in plan:
        run = out / "runs" / name
        train_res = train_stage(name, script, argv, args.no_progress)
        ev = eval_stage(name, run, s)
        au = audit_stage(name, run, s)
        rows.append({**row(name, n, train_res, ev, au), "seed": _value(argv, "--seed", 0)})
        if rows[-1]["seed"] != s["seed"]:
            continue  # --extra-seeds: table rows only; the plots and galleries show the main seed
        audits[name] = au
        with np.load(run / "audit" / "scores.npz") as z:
            scores[name] = {k: z[k] for k in z.files}
        from data import load_npz

        samples[name] = load_npz(run / "samples.npz")
        galleries[name] = run / "eval" / "nn_gallery.png"
        copy_galleries[name] = run / "audit" / "copies.png"
        dists[name] = np.load(run / "eval" / "nearest_distances.npy")
        if name.endswith("non-private"):
            ref = reference_stage(n, run, s, out)
            refs.append({"model": f"real data (held-out, N = {n})", "size": n, "epsilon": None,
                         "wall_s": {"eval": ref.get("wall_s")}, **eval_columns(ref)})
            galleries[f"n{n}-real data (held-out)"] = out / "reference" / f"n{n}" / "eval" / "nn_gallery.png"
            dists[f"n{n}-real data"] = np.load(out / "reference" / f"n{n}" / "eval" / "nearest_distances.npy")
            if public is not None:  # the baseline of the warm pair, scored against this N's training set
                pre_dir = out / "reference" / f"n{n}" / "public-pretraining"
                ev = eval_stage(f"n{n}-public-pretraining", public, s, train_of=run, out_dir=pre_dir)
                pre.append({"model": "public pretraining only (no private data)", "size": n, "epsilon": 0.0,
                            "wall_s": {"eval": ev.get("wall_s")}, **eval_columns(ev)})
                samples["public pretraining only"] = load_npz(public / "samples.npz")
                galleries[f"n{n}-public pretraining only"] = pre_dir / "nn_gallery.png"
                dists[f"n{n}-public pretraining"] = np.load(pre_dir / "nearest_distances.npy")
    if args.only is not None:
        print(f"--only: the stages of {', '.join(name for _, name, _, _ in plan)} are done; run without --only "
              "for the report")
        return {"only": [name for _, name, _, _ in plan]}

    from audit import plot_one_run, plot_roc
    from metrics import distance_histogram

    at_small = lambda d: {k: v for k, v in d.items() if k.startswith(f"n{smallest}-")}  # noqa: E731
    main = [r for r in rows if r["seed"] == s["seed"]]
    plot_memorization_vs_n(main, refs, out / "memorization_vs_n.png", [r for r in rows if r["seed"] != s["seed"]])
    plot_fid_vs_epsilon(main, out / "fid_vs_epsilon.png")
    distance_histogram(at_small(dists), out / "memorization_hist.png",
                       title=f"memorization distance at N = {smallest}: models vs held-out real images")
    by_size = {n: [name for m, name, _, _ in plan if m == n and name in samples]
               + (["public pretraining only"] if pre and n == smallest else []) for n in s["size_list"]}
    ncols = max(map(len, by_size.values()))
    panels = {}  # one row per size, padded with blank panels
    for n, names in by_size.items():
        panels.update({name: samples[name] for name in names})
        panels.update({f"blank {n}-{i}": None for i in range(ncols - len(names))})
    plot_image_panels(panels, out / "samples.png", "samples (the same latent noise for every model)", ncols=ncols)
    plot_galleries({k: v for k, v in at_small(galleries).items() if v.is_file()}, out / "nn_galleries.png")
    plot_galleries({k: v for k, v in at_small(copy_galleries).items() if v.is_file()}, out / "copy_galleries.png")
    plot_roc(at_small(scores), out / "roc.png")
    plot_one_run(audits, out / "one_run.png")
    plot_exposure(audits, out / "exposure.png")

    from utils import pick_device

    device = pick_device(s["device"])
    compute_s = sum(v or 0 for r in rows + refs + pre for v in r["wall_s"].values())
    if public is not None:
        compute_s += read_json(public / "results.json").get("wall_s") or 0
    table = [r for n in s["size_list"] for r in refs + pre + rows if r["size"] == n]
    first_eval = read_json(out / "runs" / plan[0][1] / "eval" / "eval.json")
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "rows": rows, "reference_rows": refs,
              "pretraining_rows": pre,
              "seed_rows": SEED_ROWS, "hardware": hardware(device), "versions": versions(),
              "compute_s": round(compute_s, 1), "this_invocation_s": round(time.time() - t0, 1),
              "data": first_eval["real"], "inception": first_eval["inception"]}
    write_json(out / "results.json", result)
    (out / "results.md").write_text(render_markdown(result, table, args))
    print(markdown_table(table))
    print(f"wrote {out / 'results.md'}, results.json and plots "
          f"(compute {compute_s / 60:.1f} min in total, this invocation {result['this_invocation_s'] / 60:.1f} min)")
    return result


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
    t0 = time.time()
    s = settings(args)
    if s["data"] != "celeba":
        raise UserError("--levers runs on CelebA: pass --data-root (the private set) and --public-root")
    picked = _rows(args.rows)
    out = Path(args.out or "outputs/reproduce-levers")
    common = common_argv(s) + ["--ngf", "32"]
    s["max_real"] = None
    print(f"levers study -> {out}")
    rows, samples = [], {}

    def run_model(name, script, argv, train_of=None):
        """Train (unless script is None: argv is then a finished run), evaluate, add the row."""
        run = argv if script is None else Path(argv[argv.index("--out") + 1])
        res = read_json(run / "results.json") if script is None else train_stage(name, script, argv, args.no_progress)
        ev = eval_stage(name, run, s, train_of)
        cfg = read_json(run / "config.json")["args"]
        rows.append({"model": name, "epsilon": res.get("epsilon"), "target_epsilon": res.get("target_epsilon"),
                     "sigma": res.get("noise_multiplier"), "steps": res["steps"], "g_steps": res.get("g_steps"),
                     "k_final": res.get("k_final"), "batch": cfg["batch_size"], "lr": cfg["lr"],
                     "g_lr_scale": cfg.get("g_lr_scale", 1.0), "beta1": cfg["beta1"],
                     "ema": cfg["ema_decay"], "train_min": res["wall_s"] / 60,
                     "command": _command(script, argv) if script else _command("train_dcgan", cfg_argv(run)),
                     **eval_columns(ev)})
        from data import load_npz

        label = name if res.get("epsilon") is None else f"{name}, ε = {res['target_epsilon']:g}"
        samples[label] = load_npz(run / "samples.npz")

    public = {}  # ndf -> the public pretraining run of that discriminator width
    # the non-private model of the old study's budget, for comparison
    run_model("non-private, 30 epochs", "train_dcgan", common + ["--epochs", "30", "--out",
                                                                  str(out / "runs" / "non-private")])
    for i in picked:
        name, eps, extra = LEVERS[i]
        argv = common + ["--epsilon", f"{eps:g}", "--delta", f"{s['delta']:g}"] + [a for a in extra if a != "@public"]
        ndf = _value(argv, "--ndf", _dp_default("ndf"))
        if "@public" in extra:
            if not s["public_root"]:
                raise UserError("the levers study needs public pretraining data: pass --public-root (e.g. "
                                "../shared/data/celeba-10k-89x109) or set $CELEBA_10K_ROOT")
            if ndf not in public:
                public[ndf] = public_pretraining(s, out, ndf, args.no_progress)
            argv += ["--init-from", str(public[ndf])]
        run_model(name, "train_dcgan_dp", argv + ["--out", str(out / "runs" / f"{i:02d}-eps{eps:g}")])
    for ndf, run in public.items():  # the pretrained models themselves, scored against the private training set
        run_model(f"public pretraining only, ndf {ndf} (no private data)", None, run,
                  train_of=out / "runs" / "non-private")
    plot_image_panels(samples, out / "samples.png", "samples of every levers run", ncols=5)
    from utils import pick_device

    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "rows": rows,
              "hardware": hardware(pick_device(s["device"])), "versions": versions(),
              "this_invocation_s": round(time.time() - t0, 1)}
    write_json(out / "levers.json", result)
    cols = [("run", "model", None), ("ε", "epsilon", ".2f"), ("σ", "sigma", ".2f"), ("batch", "batch", "d"),
            ("lr", "lr", "g"), ("G lr / lr", "g_lr_scale", "g"), ("β1", "beta1", "g"), ("EMA", "ema", "g"),
            ("D / G steps", "steps", "dg"),
            ("K at end", "k_final", "d"), ("FID train", "fid_train", ".1f"), ("precision", "precision", ".2f"),
            ("recall", "recall", ".2f"), ("train min", "train_min", ".1f")]
    md = "\n".join([markdown_table(rows, cols), "", "Commands:", ""] +
                    [f"- {r['model']}: `{r['command']}`" for r in rows])
    (out / "levers.md").write_text(md + "\n")
    print(markdown_table(rows, cols))
    print(f"wrote {out / 'levers.md'}, levers.json, samples.png ({(time.time() - t0) / 60:.1f} min this invocation)")
    return result


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


def cfg_argv(run: Path) -> list:
    """A finished run's arguments as a command line (for the levers table)."""
    a = read_json(run / "config.json")["args"]
    out = []
    for k in ("data", "data_root", "exclude_from", "ngf", "ndf", "epochs", "batch_size", "lr"):
        if a.get(k) is not None:
            out += [f"--{k.replace('_', '-')}", str(a[k])]
    return out


def _value(argv, flag, default):
    """The last value given for ``flag`` in argv (as the parser would take it), else ``default``."""
    idx = [i for i, a in enumerate(argv) if a == flag]
    return type(default)(argv[idx[-1] + 1]) if idx else default


def _dp_default(key, data="celeba"):  # train_dcgan_dp.py's recipe for that data
    from train_dcgan_dp import dp_defaults

    return dp_defaults(data)[key]


def _command(script, argv) -> str:
    drop = {"--device", "--threads", "--cache-dir", "--num-samples"}
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        else:
            keep.append(shlex.quote(a))
    return f"python {script}.py " + " ".join(keep)


def render_markdown(res: dict, table, args) -> str:
    s = res["settings"]
    cmd = " ".join(["python reproduce.py"] + [shlex.quote(a) for a in getattr(args, "argv", [])])
    md = [f"# Results ({'quick preset' if args.quick else 'full study'})", "",
          f"Command: `{cmd}` (see results.json for every setting). Data: {res['data']}. "
          f"Hardware: {res['hardware']}. Compute: {res['compute_s'] / 60:.1f} min for all stages.", "",
          markdown_table(table), "",
          f"Every model: 32px grayscale, the default recipe of its script, D sees {s['budget']:,} real images "
          f"(epochs = budget / N); training subsets of N = {s['train_sizes']} drawn by coins from 2N candidates "
          f"(every candidate is a trial of the one-run ε bound); {s['canaries']} canaries for each repeat count "
          f"{s['canary_repeats']}. FID/MiFID/precision/recall on Inception-v3 pool3 features of "
          f"{res['rows'][0]['n_gen']} generated images against the run's own training set; MiFID ε_mem = 0.1, "
          "Kaggle direction. Real-data rows: held-out (val) images scored like samples. ε is the spent budget "
          "(PRV accountant); ε_lb one-run: Steinke et al. (2023), 95% confidence; the black-box AUC is the "
          "calibrated attack; copying rate: samples nearer a member than every non-member in pixel space (50% without "
          "copying), with its permutation p-value."
          + (" `-warm` rows start from the public pretraining (the DP fine-tune at lr "
             f"{WARM[1]}); 'public pretraining only' scores that start against N's training set, which it never "
             "saw (ε = 0 with respect to it)." if res["pretraining_rows"] else ""), "",
          "## The seed project's numbers", "", markdown_table(SEED_ROWS, [c for c in COLUMNS if c[1] in
                                                                          ("model", "fid_train", "mifid")]), "",
          SEED_NOTE, "",
          "## Plots", "",
          "- memorization vs N: ![](memorization_vs_n.png)",
          "- privacy–utility: ![](fid_vs_epsilon.png)",
          "- samples side by side: ![](samples.png)",
          "- nearest-neighbour galleries at the smallest N: ![](nn_galleries.png) (Inception space), "
          "![](copy_galleries.png) (pixel space)",
          "- memorization distances at the smallest N: ![](memorization_hist.png)",
          "- membership inference ROC at the smallest N: ![](roc.png)",
          "- one-run ε lower bound: ![](one_run.png)",
          "- canary exposure: ![](exposure.png)", ""]
    return "\n".join(md)


def main(argv=None):
    def run(argv):
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return reproduce(args)

    return run_cli(run, argv)


if __name__ == "__main__":
    main()

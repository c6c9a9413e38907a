"""Audit a trained run for memorization: membership inference, canary exposure, empirical epsilon lower bound.

  python audit.py --run outputs/RUN

Attacks (a higher score means "member"):
  white_box   the trained discriminator's logit D(x) (LOGAN, Hayes et al. 2019): D has seen the members.
  black_box   minus the distance from x to its nearest generated image (GAN-Leaks full black-box, Chen et al.
              2020), in pixel space (L2 on [0, 1] pixels, default) or Inception pool3 space (1 - |cos|).
Members are a seeded random subset of the train split, non-members the --nonmember-split (held-out) images,
equally many of each. Per attack: ROC AUC, TPR at 1% and 0.1% FPR, and the ROC curve (roc.png).

Canary exposure (Secret Sharer, Carlini et al. 2019), for runs trained with --canaries: each canary (a held-out
image inserted R times into training) is ranked by the attack score among the M other images of its held-out
split (never trained on): exposure = log2(M) - log2(rank), rank = 1 + #{references scoring >= the canary}.
log2(M) bits means the canary out-scores every reference; about 1 bit or less is chance.

Empirical epsilon lower bound (Jagielski et al. 2020): an (epsilon, delta)-DP model bounds every membership
test by TPR <= e^eps FPR + delta and TNR <= e^eps FNR + delta. Members and non-members are split in halves; the
threshold is chosen on one half and the bound is computed on the other from one-sided Clopper-Pearson upper
limits on FPR and FNR (alpha/2 each, so the bound holds with probability >= 1 - alpha):
  eps_lb = max(0, log((1 - delta - FPR_hi) / FNR_hi), log((1 - delta - FNR_hi) / FPR_hi)).
This treats each image as an independent trial, which is sound only when the split is random over images
(digits, folders, CelebA with --random-split): the official CelebA split is identity-disjoint, so an attack can
tell the splits apart without any membership leakage. A DP model's bound must stay below its claimed epsilon.

Writes audit.json, scores.npz (all attack scores) and roc.png to --out (default RUN/audit).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

import data as data_mod
from utils import UserError, pick_device, read_json, run_cli, safe_load, write_json

FPR_LEVELS = (0.01, 0.001)


def build_parser():
    p = argparse.ArgumentParser(prog="audit.py", description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder of train_dcgan.py / train_dcgan_dp.py")
    p.add_argument("--data-root", default=None, help="data root if it moved since training (default: the run's)")
    p.add_argument("--nonmember-split", default="test", choices=["val", "test"],
                   help="held-out split of the non-members (canaries are excluded from it)")
    p.add_argument("--max-members", type=int, default=None, help="cap on members and non-members each")
    p.add_argument("--space", default="pixel", choices=["pixel", "inception"], help="black-box distance space")
    p.add_argument("--num-samples", type=int, default=10000,
                   help="generated images for the black-box attack (from generator.pt; else samples.npz)")
    p.add_argument("--delta", type=float, default=None, help="delta of the epsilon bound (default: the run's, "
                   "else 1e-6)")
    p.add_argument("--alpha", type=float, default=0.05, help="the bound holds with probability 1 - alpha")
    p.add_argument("--inception-weights", default=None, help="for --space inception")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=data_mod.DEFAULT_CACHE_DIR)
    p.add_argument("--out", default=None, help="output folder (default RUN/audit)")
    p.add_argument("--seed", type=int, default=0)
    return p


# ----------------------------------------------------------------------------- statistics
def roc_summary(s_in, s_out, fpr_levels=FPR_LEVELS) -> dict:
    """ROC AUC and the best TPR at FPR <= each level (members positive, higher score = member)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in, s_out].astype(np.float64)
    fpr, tpr, _ = roc_curve(y, s)
    return {"auc": float(roc_auc_score(y, s)),
            "tpr_at_fpr": {str(f): float(tpr[fpr <= f].max()) for f in fpr_levels},
            "n_members": len(s_in), "n_nonmembers": len(s_out)}


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) upper confidence limit of a binomial proportion k / n."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(1 - alpha, k + 1, n - k))


def epsilon_from_rates(fpr: float, fnr: float, delta: float) -> float:
    """The largest epsilon that a test with these error rates rules out for (epsilon, delta)-DP."""
    best = 0.0
    for a, b in ((fpr, fnr), (fnr, fpr)):
        if b > 0 and 1 - delta - a > 0:
            best = max(best, math.log((1 - delta - a) / b))
        elif b <= 0 and 1 - delta - a > 0:
            return math.inf
    return best


def epsilon_lb_from_counts(fp: int, n_out: int, fn: int, n_in: int, delta: float, alpha: float) -> float:
    """Clopper-Pearson epsilon lower bound from a test's false positives / negatives (alpha/2 per rate)."""
    return epsilon_from_rates(clopper_pearson_upper(fp, n_out, alpha / 2),
                              clopper_pearson_upper(fn, n_in, alpha / 2), delta)


def _errors(s_in, s_out, thresholds):
    """False negatives (members below t) and false positives (non-members >= t) for each threshold t."""
    fn = np.searchsorted(np.sort(s_in), thresholds, side="left")
    fp = len(s_out) - np.searchsorted(np.sort(s_out), thresholds, side="left")
    return fn, fp


def empirical_epsilon(s_in, s_out, delta: float, alpha: float = 0.05, seed: int = 0) -> dict:
    """Threshold chosen on one half of members/non-members, Clopper-Pearson bound on the other half."""
    rng = np.random.default_rng(seed)
    s_in, s_out = np.asarray(s_in, np.float64), np.asarray(s_out, np.float64)
    pi, po = rng.permutation(len(s_in)), rng.permutation(len(s_out))
    a_in, b_in = s_in[pi[:len(pi) // 2]], s_in[pi[len(pi) // 2:]]
    a_out, b_out = s_out[po[:len(po) // 2]], s_out[po[len(po) // 2:]]
    if min(len(a_in), len(a_out), len(b_in), len(b_out)) == 0:
        return {"epsilon_lb": 0.0, "threshold": None, "note": "too few members/non-members"}
    cand = np.unique(np.r_[a_in, a_out, np.inf])
    fn, fp = _errors(a_in, a_out, cand)
    crit = [epsilon_lb_from_counts(int(p), len(a_out), int(n), len(a_in), delta, alpha) for n, p in zip(fn, fp)]
    t = float(cand[int(np.argmax(crit))])
    fn_b, fp_b = (int(v[0]) for v in _errors(b_in, b_out, np.array([t])))
    return {"epsilon_lb": epsilon_lb_from_counts(fp_b, len(b_out), fn_b, len(b_in), delta, alpha),
            "threshold": t, "fp": fp_b, "n_nonmembers": len(b_out), "fn": fn_b, "n_members": len(b_in),
            "delta": delta, "alpha": alpha}


def exposure(canary_scores, ref_scores) -> np.ndarray:
    """Secret-Sharer exposure of each canary among M references: log2(M) - log2(rank)."""
    ref = np.asarray(ref_scores, np.float64)
    rank = 1 + (ref[None, :] >= np.asarray(canary_scores, np.float64)[:, None]).sum(1)
    return math.log2(len(ref)) - np.log2(rank)


# ----------------------------------------------------------------------------- scores
@torch.no_grad()
def discriminator_scores(D, images_u8: torch.Tensor, device, batch_size: int = 256) -> np.ndarray:
    D = D.to(device).eval()
    out = [D(data_mod.to_float(images_u8[i:i + batch_size].to(device))).float().cpu()
           for i in range(0, len(images_u8), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


@torch.no_grad()
def nearest_l2(query_u8: torch.Tensor, ref_u8: torch.Tensor, device, chunk: int = 1024) -> np.ndarray:
    """L2 distance (pixels scaled to [0, 1]) from each query image to its nearest reference image."""
    ref = ref_u8.flatten(1).to(device, torch.float32) / 255
    out = []
    for i in range(0, len(query_u8), chunk):
        q = query_u8[i:i + chunk].flatten(1).to(device, torch.float32) / 255
        best = torch.full((len(q),), math.inf, device=device)
        for j in range(0, len(ref), 8192):
            best = torch.minimum(best, torch.cdist(q, ref[j:j + 8192]).min(1).values)
        out.append(best.cpu())
    return torch.cat(out).numpy()


def load_run(run: Path, data_root=None, cache_dir=None):
    """(train args, ImageSet, discriminator, canary plan or None) of a run folder."""
    from models import Discriminator

    if not (run / "config.json").is_file():
        raise UserError(f"{run} is not a run folder (no config.json); pass the --out folder of a training run")
    if not (run / "ckpt.pt").is_file():
        raise UserError(f"{run} has no ckpt.pt: the white-box attack needs the trained discriminator")
    a = read_json(run / "config.json")["args"]
    imgs = data_mod.load_images(a["data"], data_root or a.get("data_root"), a["image_size"], a["channels"],
                                cache_dir or None, a.get("split_seed", 0), progress=False,
                                random_split=a.get("random_split", False))
    blob = safe_load(run / "ckpt.pt")
    c = blob["config"]
    D = Discriminator(c["ndf"], c["channels"], c["image_size"])
    D.load_state_dict(blob["D"])
    canaries = read_json(run / "canaries.json") if (run / "canaries.json").is_file() else None
    if canaries is not None and canaries["split_key"] != imgs.split_key(canaries["split"]):
        raise UserError(f"the {canaries['split']} split of {imgs.source} differs from the one the run was "
                        "trained with (files changed?); the canaries cannot be located")
    return a, imgs, D, canaries


def generated_images(run: Path, n: int, device) -> tuple[torch.Tensor, str]:
    from train_dcgan import generate, load_generator

    if (run / "generator.pt").is_file() and n:
        G, cfg = load_generator(run / "generator.pt", device)
        return generate(G, n, cfg["nz"], device, seed=4242).cpu(), f"{n} fresh samples of generator.pt"
    if (run / "samples.npz").is_file():
        x = data_mod.load_npz(run / "samples.npz")
        return x, f"{len(x)} images of samples.npz"
    raise UserError(f"{run} has neither generator.pt nor samples.npz: did the training run finish?")


def _subset(idx: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:n]]


# ----------------------------------------------------------------------------- main
def audit(args) -> dict:
    t0 = time.time()
    run = Path(args.run)
    device = pick_device(args.device)
    a, imgs, D, canaries = load_run(run, args.data_root, args.cache_dir)
    results = read_json(run / "results.json") if (run / "results.json").is_file() else {}
    delta = args.delta if args.delta is not None else results.get("delta", 1e-6)

    canary_idx = torch.tensor(canaries["indices"] if canaries else [], dtype=torch.long)
    nonmem = imgs.splits[args.nonmember_split]
    nonmem = nonmem[~torch.isin(nonmem, canary_idx)]
    members = imgs.splits["train"]
    n = min(len(members), len(nonmem), args.max_members or len(nonmem))
    if n < 2:
        raise UserError(f"need at least 2 members and non-members; the {args.nonmember_split} split of "
                        f"{imgs.source} has {len(nonmem)} usable images")
    members, nonmem = _subset(members, n, args.seed), _subset(nonmem, n, args.seed + 1)
    refs = None
    if canaries:
        pool = imgs.splits[canaries["split"]]
        refs = pool[~torch.isin(pool, canary_idx)]
        if canaries["split"] == args.nonmember_split:
            print("note: canary references and non-members come from the same split")

    gen_u8, gen_desc = generated_images(run, args.num_samples, device)
    queries = {"members": imgs.images[members], "nonmembers": imgs.images[nonmem]}
    if canaries:
        queries.update(canaries=imgs.images[canary_idx], references=imgs.images[refs])
    scores = {f"white_box_{k}": discriminator_scores(D, v, device, args.batch_size) for k, v in queries.items()}
    if args.space == "pixel":
        scores.update({f"black_box_{k}": -nearest_l2(v, gen_u8, device) for k, v in queries.items()})
    else:
        import metrics

        ext = metrics.InceptionFeatures(args.inception_weights, device)
        gen_f = ext(gen_u8, desc=f"generated features ({len(gen_u8)})")
        for k, v in queries.items():
            scores[f"black_box_{k}"] = -metrics.nearest_cosine(ext(v, desc=f"{k} features"), gen_f, device=device)[0]

    attacks = {}
    for att in ("white_box", "black_box"):
        s_in, s_out = scores[f"{att}_members"], scores[f"{att}_nonmembers"]
        r = roc_summary(s_in, s_out)
        r["epsilon_lower_bound"] = empirical_epsilon(s_in, s_out, delta, args.alpha, args.seed)
        if canaries:
            e = exposure(scores[f"{att}_canaries"], scores[f"{att}_references"])
            reps = np.array(canaries["repeats"])
            r["exposure"] = {str(k): {"mean": float(e[reps == k].mean()), "max": float(e[reps == k].max()),
                                      "min": float(e[reps == k].min()), "values": e[reps == k].round(3).tolist()}
                             for k in sorted(set(canaries["repeats"]))}
        attacks[att] = r
    out = Path(args.out) if args.out else run / "audit"
    out.mkdir(parents=True, exist_ok=True)
    res = {"run": str(run), "data": imgs.source, "nonmember_split": args.nonmember_split,
           "black_box_space": args.space, "generated": gen_desc, "claimed_epsilon": results.get("epsilon"),
           "delta": delta, "attacks": attacks,
           "canaries": None if not canaries else {"count": len(canary_idx), "split": canaries["split"],
                                                  "references": len(refs), "max_exposure_bits": math.log2(len(refs))},
           "wall_s": round(time.time() - t0, 1)}
    np.savez(out / "scores.npz", **scores)
    write_json(out / "audit.json", res)
    plot_roc({run.name: scores}, out / "roc.png")
    print_summary(res)
    print(f"wrote {out / 'audit.json'}, scores.npz, roc.png")
    return res


def plot_roc(named_scores: dict, path) -> None:
    """ROC curves (log-log) of both attacks for one or more models ({name: scores of audit()})."""
    from sklearn.metrics import roc_curve

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, attack, title in ((axes[0], "white_box", "white-box MIA (discriminator score)"),
                              (axes[1], "black_box", "black-box MIA (distance to nearest sample)")):
        for name, scores in named_scores.items():
            s_in, s_out = scores[f"{attack}_members"], scores[f"{attack}_nonmembers"]
            fpr, tpr, _ = roc_curve(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out])
            ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=name)
        ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(res: dict) -> None:
    for att, r in res["attacks"].items():
        lb = r["epsilon_lower_bound"]
        line = (f"  {att:<10} AUC {r['auc']:.3f} | TPR@1%FPR {r['tpr_at_fpr']['0.01']:.3f} | "
                f"TPR@0.1%FPR {r['tpr_at_fpr']['0.001']:.3f} | ε lower bound {lb['epsilon_lb']:.3f}")
        if r.get("exposure"):
            line += " | exposure (mean bits) " + ", ".join(f"R={k}: {v['mean']:.2f}" for k, v in r["exposure"].items())
        print(line)
    claimed = res["claimed_epsilon"]
    worst = max(r["epsilon_lower_bound"]["epsilon_lb"] for r in res["attacks"].values())
    if claimed is not None and worst > claimed:
        print(f"WARNING: the empirical lower bound {worst:.3f} exceeds the claimed ε = {claimed:.3f}: the DP "
              "guarantee is violated, or members and non-members are not exchangeable (use a random split)")


def main(argv=None):
    return run_cli(lambda a: audit(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    main()

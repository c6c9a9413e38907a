"""Audit a trained run for memorization: membership inference, canary exposure, empirical epsilon lower bound.

  python audit.py --run outputs/RUN

Attacks (a higher score means "member"):
  white_box            the trained discriminator's logit D(x) (LOGAN, Hayes et al. 2019): D has seen the members
  white_box_augmented  for a run trained with --augment: the mean of D over x, its mirror (with flip) and 8 seeded
                       draws of the run's augmentation policy, E_T[D(T(x))] (the adaptive attack on augmentation:
                       Yu et al. 2021; LiRA's augmented queries)
  white_box_lira       with --reference-runs (models trained the same way on other data): offline LiRA with a
                       global variance (Carlini et al. 2022) on D's logit (the augmented one, if trained so)
  white_box_rmia       with --reference-runs: offline RMIA (Zarifzadeh et al. 2024) against the --calibration-size
                       held-out images as the population
  black_box            minus the distance from x to its nearest generated image (GAN-Leaks full black-box, Chen et
                       al. 2020), in pixel space (L2 on [0, 1] pixels, default) or Inception pool3 space (1 - |cos|)
  black_box_calibrated that distance divided by the distance to the nearest of --calibration-size held-out images
  black_box_reference  with --reference-runs: that distance minus the mean distance to the reference models'
                       samples (GAN-Leaks' calibrated attack)
Members are a seeded random subset of the images the run trained on (its training set is rebuilt from its
config.json), non-members the --nonmember-split (held-out) images minus any inserted one, equally many.
Per attack: ROC AUC, TPR at 1% and 0.1% FPR, and the ROC curve (roc.png).

Canary exposure (Secret Sharer, Carlini et al. 2019), for runs trained with --canaries: each canary (a held-out
image inserted R times into training) is ranked by the attack score among the M other images of its held-out
split (never trained on): exposure = log2(M) - log2(rank), rank = 1 + #{references scoring >= the canary}.
log2(M) bits means the canary out-scores every reference; a canary never learned averages log2(e) = 1.44 bits.

One-run epsilon lower bound, for runs trained with audit coins (--coin-subset, --audit-canaries): each of m
candidates was included independently with probability 1/2. Guessing "in" for the r highest scores (a
pre-declared grid of r), the number of correct guesses of an (eps, delta)-DP run is bounded by Steinke, Nasr &
Jagielski's (2023) analysis and by the f-DP analysis of Mahloujifar, Melis & Chaudhuri (2024); eps_lb is the
largest eps rejected (audit_stats.one_run_audit, with the ceiling m candidates allow and, for a DP run, the value
an idealised mechanism at its ε would give). Bonferroni over the grid, both analyses AND the attacks: each
attack's bound is tested at alpha / #attacks, so one_run_epsilon_lb, the maximum over attacks, is a proof at
confidence 1 - alpha.

White-box DP audit, for runs of train_dcgan_dp.py --audit-gradient-canaries M: the same bounds on the gradient
canaries' coins, for every noisy update (the threat model of DP-SGD's guarantee) and for the final model,
in audit.json's "gradient_canaries" (gradient_canary_audit).

Heuristic epsilon bound (Jagielski et al. 2020), kept and labelled as such: thresholds members vs held-out
images with Clopper-Pearson limits, treating every image as an independent trial, which their membership
(not randomised) does not justify.

Identity membership inference (Webster et al. 2021), for runs trained with --privacy-unit identity, person coins
and --attack-photos K: was this PERSON trained on, judged from K other photos of them that training never saw?
A person's score is the mean of an attack's scores over their attack photos; AUC and TPR at 1% FPR over the
people and the one-run bound with one coin per person, in audit.json's "identity" and identity_roc.png
(docs/identity.md).

Pixel-space copies: the fraction of generated images nearer (L2) to a member than to every one of as many
non-members (50% for a generator that draws new images), with a permutation p-value over random relabelings of
members and non-members, and copies.png, the samples nearest a member relative to the non-members above it.

Writes audit.json, scores.npz (all attack scores), roc.png, copies.png and one_run.png to --out (default
RUN/audit).

--checkpoint FILE audits the models of one snapshot (train_dcgan.py --snapshot-every) or checkpoint of the run
instead of its final ones. --over-training audits every snapshot in RUN/snapshots/ and the final checkpoint and
scores each one's samples with evaluate_mifid.py (--fid-samples images, FID against the run's training set):
over_training.json and over_training.png (memorization and FID against D steps) in --out (default
RUN/audit-over-training), one folder per checkpoint. Early stopping as a defence: the checkpoint with the lowest
FID whose white-box AUC is <= --stop-auc (choosing it reads the members' scores, so the choice is not private).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

import data as data_mod
from audit_stats import empirical_epsilon, exposure, lira_offline, one_run_audit, rmia_offline, roc_summary
from audit_plots import plot_one_run, plot_over_training, plot_roc
from evaluate_mifid import at_least
from utils import (Parser, Threads, UserError, atomic_savez, pick_device, read_json, run_cli, seeded_subset,
                   write_json)

ATTACKS = ("white_box", "white_box_augmented", "white_box_lira", "white_box_rmia", "black_box", "black_box_calibrated",
           "black_box_reference")
AUGMENT_DRAWS = 8  # draws of the training augmentation policy per query of the adaptive attack


def build_parser():
    p = Parser(prog="audit.py", description=__doc__.split("\n")[0], epilog=__doc__)
    p.add_argument("--run", required=True, help="run folder of train_dcgan.py / train_dcgan_dp.py")
    p.add_argument("--data-root", default=None, help="data root if it moved since training (default: the run's)")
    p.add_argument("--nonmember-split", default="test", choices=["val", "test"],
                   help="held-out split of the non-members (canaries are excluded from it)")
    p.add_argument("--max-members", type=int, default=None, help="cap on members and non-members each")
    p.add_argument("--space", default="pixel", choices=["pixel", "inception"], help="black-box distance space")
    p.add_argument("--calibration-size", type=int, default=200,
                   help="held-out images (of --nonmember-split, then not used as non-members) that calibrate the "
                        "black-box distance (0: raw distances only)")
    p.add_argument("--reference-runs", default=None, metavar="RUN[,RUN...]",
                   help="runs trained the same way on other data (none of the candidates, members or non-members): "
                        "the reference models of the LiRA, RMIA and calibrated black-box attacks, so images every "
                        "model likes are not taken for members (two or more: LiRA's global variance)")
    p.add_argument("--num-samples", type=int, default=10000,
                   help="generated images for the black-box attack (from generator.pt; else samples.npz)")
    p.add_argument("--delta", type=float, default=None, help="delta of the epsilon bound (default: the run's, "
                   "else 1e-6)")
    p.add_argument("--alpha", type=float, default=0.05, help="the bound holds with probability 1 - alpha")
    p.add_argument("--inception-weights", default=None, help="for --space inception")
    p.add_argument("--batch-size", type=int, default=256, help="images per discriminator batch")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", default="auto", help="CPU threads: N, or auto = the cores other processes leave idle")
    p.add_argument("--cache-dir", default=data_mod.DEFAULT_CACHE_DIR, help="decoded-image (and feature) cache")
    p.add_argument("--out", default=None, help="output folder (default RUN/audit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the member / non-member / calibration subsets")
    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="audit this snapshot or checkpoint of the run (its D and its G's EMA, else G) instead of the "
                        "final models")
    g.add_argument("--over-training", action="store_true",
                   help="audit every snapshot in RUN/snapshots/ and the final checkpoint, each with its FID")
    g.add_argument("--fid-samples", type=int, default=1000,
                   help="with --over-training: samples per checkpoint scored by evaluate_mifid.py (0: no FID)")
    g.add_argument("--max-real", type=int, default=None,
                   help="with --over-training: at most this many real images in the FID (evaluate_mifid.py)")
    g.add_argument("--stop-auc", type=float, default=0.6,
                   help="early stopping: the lowest-FID checkpoint whose white-box AUC is at most this")
    return p


# ----------------------------------------------------------------------------- scores
@torch.no_grad()
def discriminator_scores(D, images_u8: torch.Tensor, device, batch_size: int = 256, view=None) -> np.ndarray:
    """D's logit of each image (``view``: a transformation of the [-1, 1] batch first)."""
    D = D.to(device).eval()
    view = view or (lambda x: x)
    out = [D(view(data_mod.to_float(images_u8[i:i + batch_size].to(device)))).float().cpu()
           for i in range(0, len(images_u8), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def augmented_scores(D, images_u8: torch.Tensor, ops: str, device, batch_size: int = 256, draws: int = AUGMENT_DRAWS,
                     seed: int = 0) -> np.ndarray:
    """E_T[D(T(x))] over the training augmentation policy ``ops``: the mean of D's logit over the image, its mirror
    (if the policy flips) and ``draws`` seeded draws of the policy (gan.augment, as in training)."""
    from gan import augment

    views = [None] + ([lambda x: x.flip(3)] if "flip" in ops.split(",") else [])
    total = sum(discriminator_scores(D, images_u8, device, batch_size, v) for v in views)
    for k in range(draws):
        with torch.random.fork_rng():
            torch.manual_seed(seed * 7919 + k)
            total = total + discriminator_scores(D, images_u8, device, batch_size, lambda x: augment(x, ops))
    return total / (len(views) + draws)


def reference_runs(spec, target_cfg: dict) -> list:
    """The --reference-runs folders, each a finished run of the target's image size and channels."""
    runs = [Path(r) for r in str(spec or "").split(",") if r.strip()]
    for r in runs:
        if not ((r / "results.json").is_file() and (r / "ckpt.pt").is_file()):
            raise UserError(f"--reference-runs: {r} is not a finished run (results.json and ckpt.pt); train it first")
        cfg = read_json(r / "config.json")["args"]
        if (cfg["image_size"], cfg["channels"]) != (target_cfg["image_size"], target_cfg["channels"]):
            raise UserError(f"--reference-runs: {r} trained on {cfg['image_size']} px, {cfg['channels']} channel(s); "
                            f"the audited run on {target_cfg['image_size']} px, {target_cfg['channels']}")
    return runs


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


COPY_TEST_MAX_REAL = 2000  # members (and as many non-members) of the pixel copy test: random subsets


@torch.no_grad()
def pixel_copies(gen_u8: torch.Tensor, members_u8: torch.Tensor, nonmembers_u8: torch.Tensor, device,
                 permutations: int = 200, seed: int = 0, gallery=None) -> dict:
    """Do the samples sit nearer the training images than unseen ones, in pixel space? For each generated image,
    d_in and d_out are its L2 distances (pixels in [0, 1]) to the nearest member and to the nearest of as many
    never-trained non-members. ``copying_rate`` = P[d_in < d_out] (ties 1/2) over the samples; ``p_value``: the
    fraction of random relabelings of the 2n real images into two halves whose rate is at least as high (members
    and non-members are exchangeable, so this is exact whatever the samples look like: a collapsed generator
    whose one mode happens to lie near a member gets a high rate and a high p-value). ``fraction_ratio_below_0.5``:
    samples at most half as far from a member as from any non-member (near-copies). ``gallery`` (a path): the 16
    samples of smallest d_in / d_out above their nearest member."""
    n = len(members_u8)
    if n != len(nonmembers_u8) or n == 0:
        raise ValueError("members and non-members must be equally many (nearest-neighbour distances depend on it)")
    real = torch.cat([members_u8, nonmembers_u8]).flatten(1).to(device, torch.float32) / 255
    d = torch.cat([torch.cdist(gen_u8[i:i + 1024].flatten(1).to(device, torch.float32) / 255, real)
                   for i in range(0, len(gen_u8), 1024)])  # (samples, 2n)

    # d_in < d_out exactly when every real image at a sample's smallest distance is in the "in" half (equal when
    # both halves hold one), so a relabeling's rate needs only each sample's nearest images: a count per sample
    # instead of a scan of the (samples x 2n) matrix for each of the permutations
    at_min = d == d.min(1, keepdim=True).values
    n_min = at_min.sum(1)
    single, nearest = n_min == 1, d.argmin(1)
    tied = torch.nonzero(~single).flatten()

    def rate(first):  # first: the n columns of one half
        in_first = torch.zeros(2 * n, dtype=torch.bool, device=device)
        in_first[first] = True
        total = in_first[nearest[single]].sum().double()
        if len(tied):
            c, t = (at_min[tied] & in_first).sum(1), n_min[tied]
            total += (c == t).sum() + 0.5 * ((c > 0) & (c < t)).sum()
        return float(total / len(d))

    observed = rate(torch.arange(n, device=device))
    g = torch.Generator().manual_seed(seed)
    null = [rate(torch.randperm(2 * n, generator=g)[:n].to(device)) for _ in range(permutations)]
    d_in, nn = d[:, :n].min(1)
    ratio = (d_in / d[:, n:].min(1).values.clamp_min(1e-12)).cpu().numpy()
    if gallery is not None:
        import metrics

        metrics.nn_gallery(gen_u8, members_u8, ratio, nn.cpu().numpy(), gallery, distance="d_in / d_out",
                           title="pixel space: the samples nearest a member relative to the non-members")
    return {"space": "pixel L2 on [0, 1]", "generated": len(gen_u8), "members": n, "copying_rate": observed,
            "p_value": (1 + sum(r >= observed for r in null)) / (1 + permutations), "permutations": permutations,
            "null_rate_quantiles": {str(q): float(np.quantile(null, q)) for q in (0.05, 0.5, 0.95)},
            "fraction_ratio_below_0.5": float((ratio < 0.5).mean())}


def load_run(run: Path, data_root=None, cache_dir=None, checkpoint=None):
    """(the run's TrainingData, rebuilt exactly as the run saw it, and its trained discriminator: the final one,
    or ``checkpoint``'s)."""
    from models import load_discriminator
    from runs import run_training_data

    td = run_training_data(run, data_root, cache_dir)
    ckpt = Path(checkpoint) if checkpoint else run / "ckpt.pt"
    if not ckpt.is_file():
        raise UserError(f"{run} has no ckpt.pt: the white-box attack needs the trained discriminator" if not checkpoint
                        else f"--checkpoint {checkpoint} does not exist")
    return td, load_discriminator(ckpt)


def generated_images(run: Path, n: int, device, checkpoint=None) -> tuple[torch.Tensor, str]:
    from gan import generate
    from models import load_generator

    if checkpoint and n:
        G, cfg = load_generator(checkpoint, device)
        return generate(G, n, cfg["nz"], device, seed=4242).cpu(), f"{n} fresh samples of {checkpoint}"
    if checkpoint:
        raise UserError("--checkpoint needs --num-samples > 0 (a snapshot has no samples.npz)")
    if (run / "generator.pt").is_file() and n:
        G, cfg = load_generator(run / "generator.pt", device)
        return generate(G, n, cfg["nz"], device, seed=4242).cpu(), f"{n} fresh samples of generator.pt"
    if (run / "samples.npz").is_file():
        x = data_mod.load_npz(run / "samples.npz")
        return x, f"{len(x)} images of samples.npz"
    raise UserError(f"{run} has neither generator.pt nor samples.npz: did the training run finish?")


def strongest(attacks: dict, kind: str) -> str:
    """The strongest attack of a kind ("white_box", "black_box") by TPR at 1% FPR, then AUC (the tables' column;
    every attack's numbers are in audit.json)."""
    mine = [k for k in attacks if k.startswith(kind)]
    return max(mine, key=lambda k: (attacks[k]["tpr_at_fpr"]["0.01"], attacks[k]["auc"]))


def gradient_canary_audit(path: Path, delta: float, alpha: float, claimed: float | None = None) -> dict:
    """The white-box DP audit of a run trained with --audit-gradient-canaries M (its gradient_canaries.npz): for
    each threat model (every noisy update: what DP-SGD's guarantee covers; the final D only), the canaries'
    scores against their coins: AUC and the one-run ε lower bounds (both analyses, their ceilings, and the value
    an idealised mechanism at the claimed ε would give). Each threat model is its own claim, tested at alpha."""
    with np.load(path) as z:
        coins, scores = z["coins"].astype(bool), {k: z[k] for k in ("iterate", "final")}
    out = {"m": len(coins), "heads": int(coins.sum()), "threat_models": {}}
    for name, s in (("every_iterate", scores["iterate"]), ("final_model", scores["final"])):
        r = roc_summary(s[coins], s[~coins])
        r["one_run"] = one_run_audit(s, coins, delta, alpha, claimed_epsilon=claimed, curve=False)
        out["threat_models"][name] = r
    return out


def identity_audit(coins: dict, scores: dict, delta: float, alpha: float, seed: int = 0,
                   two_sided: bool = False) -> tuple[dict, dict]:
    """Identity membership inference (Webster et al. 2021): was this PERSON in training, judged from other photos of
    them (the --attack-photos held back from every coin-flipped person, member or not)? A person's score is the
    mean of an attack's scores over their attack photos. Per attack: AUC and TPR at low FPR over the people, and
    the one-run ε lower bound with one coin per person (Bonferroni over the attacks, as the image-level one). With
    a reference model, ``control_reference_model_auc``: the white-box AUC of that model, which trained on none of
    the people: how far from 0.5 this draw of people and coins lies by chance.
    Returns (the results, the people's scores as plot_roc takes them)."""
    held = coins["attack_photos"]
    if not any(held):
        return {"note": "the run held back no attack photos (train with --attack-photos K)"}, {}
    counts = np.array([len(h) for h in held])
    owner = np.repeat(np.arange(len(held)), counts)
    mean_per_person = lambda s: np.bincount(owner, weights=s, minlength=len(held)) / counts  # noqa: E731
    inc = np.asarray(coins["included"], bool)
    attacks = [att for att in ATTACKS if f"{att}_attack" in scores]
    out = {"people": len(held), "members": int(inc.sum()), "attack_photos_per_person": len(held[0]),
           "score": "mean attack score over the person's attack photos", "attacks": {}}
    people = {}
    for att in attacks:
        per_person = mean_per_person(scores[f"{att}_attack"])
        people[f"{att}_members"], people[f"{att}_nonmembers"] = per_person[inc], per_person[~inc]
        r = roc_summary(per_person[inc], per_person[~inc])
        r["one_run"] = one_run_audit(per_person, inc, delta, alpha / len(attacks), seed, two_sided=two_sided)
        out["attacks"][att] = r
    out["one_run_epsilon_lb"] = max(a["one_run"]["epsilon_lb"] for a in out["attacks"].values())
    if "reference_logit_attack" in scores:  # the reference models trained on none of the candidates: what this
        # draw of people and coins scores without any training on them (all models of a study share the draw)
        per_person = mean_per_person(scores["reference_logit_attack"])
        out["control_reference_model_auc"] = roc_summary(per_person[inc], per_person[~inc])["auc"]
    return out, people


# ----------------------------------------------------------------------------- main
def check_args(args):
    """Every value in range (one-line errors); returns ``args`` unchanged."""
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be in (0, 1) (the bounds hold with probability 1 - alpha), got {args.alpha}")
    if args.delta is not None and not 0 <= args.delta < 1:
        raise UserError(f"--delta must be in [0, 1), got {args.delta}")
    at_least(args, 0, "calibration_size", "num_samples", "fid_samples")
    at_least(args, 2, "max_members", "max_real")
    at_least(args, 1, "batch_size")
    if not 0 <= args.stop_auc <= 1:
        raise UserError(f"--stop-auc is an AUC in [0, 1], got {args.stop_auc}")
    return args


def audit(args) -> dict:
    if args.over_training:
        return over_training(args)
    t0 = time.time()
    run = Path(args.run)
    device = pick_device(args.device)
    threads = Threads(args.threads)
    td, D = load_run(run, args.data_root, args.cache_dir, args.checkpoint)
    imgs, canaries, coins = td.imgs, td.canaries, td.coins
    results = read_json(run / "results.json") if (run / "results.json").is_file() else {}
    delta = args.delta if args.delta is not None else results.get("delta", 1e-6)
    claimed = results.get("epsilon")
    if args.checkpoint:  # a snapshot records the ε spent up to its step
        from utils import safe_load

        claimed = safe_load(args.checkpoint).get("epsilon", claimed)

    # never-trained pools exclude every inserted or coin-flipped image
    special = td.special()
    members = torch.unique(td.train_idx)  # the run's own training images (a coin-drawn subset: the heads)
    held = imgs.splits[args.nonmember_split]
    held = held[~torch.isin(held, special)]
    n_cal = min(args.calibration_size, len(held) // 3)
    calib, nonmem = held[:0], held
    if n_cal:  # the calibration set of the black-box attack: held-out images used for nothing else
        perm = torch.randperm(len(held), generator=torch.Generator().manual_seed(args.seed + 2))
        calib, nonmem = held[perm[:n_cal]].sort().values, held[perm[n_cal:]].sort().values
    n = min(len(members), len(nonmem), args.max_members or len(nonmem))
    if n < 2:
        raise UserError(f"need at least 2 members and non-members; the {args.nonmember_split} split of "
                        f"{imgs.source} has {len(nonmem)} usable images")
    members, nonmem = seeded_subset(members, n, args.seed), seeded_subset(nonmem, n, args.seed + 1)
    queries = {"members": members, "nonmembers": nonmem}
    refs = None
    if canaries:
        pool = imgs.splits[canaries["split"]]
        refs = pool[~torch.isin(pool, special)]
        queries.update(canaries=torch.tensor(canaries["indices"]), references=refs)
        if canaries["split"] == args.nonmember_split:
            print("note: canary references and non-members come from the same split")
    person_coins = coins if coins and coins.get("unit") == "identity" else None
    if person_coins:  # one coin per person: the image-level one-run audit does not apply (its trials are people)
        coins = None
        if any(person_coins["attack_photos"]):
            queries["attack"] = torch.tensor([i for held in person_coins["attack_photos"] for i in held])
    elif coins:
        queries["candidates"] = torch.tensor(coins["indices"])
    unlearned = td.forget is not None  # an unlearned run (unlearn.py): its members are the retained images
    if unlearned:
        queries["forgotten"] = td.forget_idx

    out = Path(args.out) if args.out else run / "audit"
    out.mkdir(parents=True, exist_ok=True)
    gen_u8, gen_desc = generated_images(run, args.num_samples, device, args.checkpoint)
    cfg = td.args
    refs_runs = reference_runs(args.reference_runs, vars(cfg))
    # every image is scored once, though it may be a member, a candidate and a canary at once
    union = torch.unique(torch.cat(list(queries.values())))
    scores = {}

    def spread(name, values):  # per query set, from the union's scores
        for k, v in queries.items():
            scores[f"{name}_{k}"] = values[torch.searchsorted(union, v).numpy()]

    ops = cfg.augment or ""
    logit = lambda model, x: (augmented_scores(model, x, ops, device, args.batch_size, seed=args.seed)  # noqa: E731
                              if ops else discriminator_scores(model, x, device, args.batch_size))
    raw = discriminator_scores(D, imgs.images[union], device, args.batch_size)
    spread("white_box", raw)
    target = logit(D, imgs.images[union]) if ops else raw  # what the reference-model attacks calibrate
    if ops:  # the adaptive attack on augmentation
        spread("white_box_augmented", target)
    if refs_runs:
        from models import load_discriminator

        ref_D = [load_discriminator(r / "ckpt.pt") for r in refs_runs]
        ref = np.stack([logit(Dr, imgs.images[union]) for Dr in ref_D])
        spread("white_box_lira", lira_offline(target, ref))
        # not an attack: the reference models' own raw logit (the identity control: the same for every audited run)
        spread("reference_logit", np.stack([discriminator_scores(Dr, imgs.images[union], device, args.batch_size)
                                            for Dr in ref_D]).mean(0) if ops else ref.mean(0))
        if n_cal:
            pop = imgs.images[calib]
            spread("white_box_rmia", rmia_offline(target, ref, logit(D, pop), np.stack([logit(Dr, pop)
                                                                                        for Dr in ref_D])))
    if args.space == "pixel":
        dist = lambda q, ref: nearest_l2(q, ref, device)  # noqa: E731
    else:
        import metrics

        ext = metrics.InceptionFeatures(args.inception_weights, device, threads=threads)
        feats = {}

        def dist(q, ref):
            for x in (q, ref):
                if id(x) not in feats:
                    feats[id(x)] = ext(x, desc=f"features ({len(x)})")
            return metrics.nearest_cosine(feats[id(q)], feats[id(ref)], device=device)[0]
    d_gen = dist(imgs.images[union], gen_u8)
    spread("black_box", -d_gen)
    if n_cal:  # difficulty calibration: how much closer the generator comes than never-trained real images
        spread("black_box_calibrated", -d_gen / np.maximum(dist(imgs.images[union], imgs.images[calib]), 1e-12))
    if refs_runs:  # GAN-Leaks' calibration: how much closer than the reference models' generators come
        d_ref = np.mean([dist(imgs.images[union], generated_images(r, args.num_samples, device)[0])
                         for r in refs_runs], axis=0)
        spread("black_box_reference", d_ref - d_gen)

    cap = min(n, COPY_TEST_MAX_REAL)  # the test holds (samples x 2 cap) distances in memory
    copies = pixel_copies(gen_u8, imgs.images[seeded_subset(members, cap, args.seed + 3)],
                          imgs.images[seeded_subset(nonmem, cap, args.seed + 4)], device, seed=args.seed,
                          gallery=out / "copies.png")
    attacks = {}
    audited = [att for att in ATTACKS if f"{att}_members" in scores]
    # Bonferroni over the attacks too: each one-run bound holds at alpha / #attacks, so the maximum over attacks
    # (what a reader takes away, and what one_run_epsilon_lb reports) holds at alpha
    alpha_attack = args.alpha / len(audited)
    for att in audited:
        s_in, s_out = scores[f"{att}_members"], scores[f"{att}_nonmembers"]
        r = roc_summary(s_in, s_out)
        r["epsilon_lower_bound"] = empirical_epsilon(s_in, s_out, delta, args.alpha, args.seed)
        if coins:
            r["one_run"] = one_run_audit(scores[f"{att}_candidates"], coins["included"], delta, alpha_attack,
                                         args.seed, claimed_epsilon=claimed, two_sided=unlearned)
        if unlearned:  # the forgotten images against never-seen ones (0.5: forgotten as if never trained)
            r["forgotten"] = roc_summary(scores[f"{att}_forgotten"], s_out)
        if canaries:
            e = exposure(scores[f"{att}_canaries"], scores[f"{att}_references"])
            reps = np.array(canaries["repeats"])
            r["exposure"] = {str(k): {"mean": float(e[reps == k].mean()), "max": float(e[reps == k].max()),
                                      "min": float(e[reps == k].min()), "values": e[reps == k].round(3).tolist()}
                             for k in sorted(set(canaries["repeats"]))}
        attacks[att] = r
    identity, people = (identity_audit(person_coins, scores, delta, args.alpha, args.seed, unlearned)
                        if person_coins else (None, {}))
    res = {"run": str(run), "checkpoint": args.checkpoint, "data": imgs.source, "nonmember_split": args.nonmember_split,
           "black_box_space": args.space, "calibration_images": int(n_cal), "generated": gen_desc,
           "reference_runs": [str(r) for r in refs_runs],
           "claimed_epsilon": claimed, "privacy_unit": results.get("privacy_unit", "image"), "delta": delta,
           "attacks": attacks, "copies": copies,
           "one_run_epsilon_lb": None if not coins else max(a["one_run"]["epsilon_lb"] for a in attacks.values()),
           "alpha": args.alpha,
           "canaries": None if not canaries else {"count": len(canaries["indices"]), "split": canaries["split"],
                                                  "references": len(refs), "max_exposure_bits": math.log2(len(refs))},
           "coins": None if not coins else {"kind": coins["kind"], "candidates": len(coins["indices"]),
                                            "included": int(sum(coins["included"]))},
           "identity": identity,
           "unlearning": None if not unlearned else {
               "forget": td.forget["spec"], "forgotten_images": td.forget["images"], "retained_members": len(members),
               "note": "members = the retained training images; the one-run bound is two-sided (forgotten "
                       "candidates may score below never-trained ones)"},
           "gradient_canaries": gradient_canary_audit(run / "gradient_canaries.npz", delta, args.alpha, claimed)
           if (run / "gradient_canaries.npz").is_file() and not args.checkpoint else None,
           "wall_s": round(time.time() - t0, 1)}
    atomic_savez(out / "scores.npz", **scores)
    write_json(out / "audit.json", res)
    plot_roc({run.name: scores}, out / "roc.png")
    if people:
        plot_roc({f"{run.name}, per person": people}, out / "identity_roc.png")
    if coins:
        plot_one_run({run.name: res}, out / "one_run.png")
    print_summary(res)
    print(f"wrote {out / 'audit.json'}, scores.npz, roc.png, copies.png" + (", one_run.png" if coins else "")
          + (", identity_roc.png" if people else ""))
    return res


# ----------------------------------------------------------------------------- memorization over training
def checkpoints(run: Path) -> list:
    """[(D step, file)]: every snapshot of RUN/snapshots/ and the final checkpoint (ckpt.pt), by step."""
    from utils import safe_load

    found = {int(f.stem[4:]): f for f in sorted((run / "snapshots").glob("step*.pt")) if f.stem[4:].isdigit()}
    if (run / "ckpt.pt").is_file():
        found.setdefault(int(safe_load(run / "ckpt.pt")["step"]), run / "ckpt.pt")
    return sorted(found.items())


def over_training(args) -> dict:
    """Audit (and score) each checkpoint of the run; over_training.json/.png and the early-stopping choice."""
    import argparse

    import evaluate_mifid

    t0, run = time.time(), Path(args.run)
    if args.checkpoint:
        raise UserError("give --checkpoint (one checkpoint) or --over-training (all of them), not both")
    found = checkpoints(run)
    if len(found) < 2:
        raise UserError(f"{run} has {len(found)} checkpoint(s): train with --snapshot-every N to keep the models "
                        "every N D steps")
    out = Path(args.out) if args.out else run / "audit-over-training"
    points = []
    for step, f in found:
        print(f"checkpoint {f.name} (D step {step})")
        sub = out / f"step{step:07d}"
        a = audit(argparse.Namespace(**{**vars(args), "over_training": False, "checkpoint": str(f), "out": str(sub)}))
        wb = strongest(a["attacks"], "white_box")
        point = {"step": step, "checkpoint": str(f), "white_attack": wb, "auc_white": a["attacks"][wb]["auc"],
                 "auc_white_raw": a["attacks"]["white_box"]["auc"], "auc_black": a["attacks"]["black_box"]["auc"],
                 "auc_black_calibrated": a["attacks"].get("black_box_calibrated", {}).get("auc"),
                 "epsilon_lb_one_run": a["one_run_epsilon_lb"], "copying_rate": a["copies"]["copying_rate"],
                 "copying_p": a["copies"]["p_value"]}
        if args.fid_samples:
            argv = ["--gen", str(f), "--train-of", str(run), "--num-samples", str(args.fid_samples),
                    "--device", args.device, "--threads", str(args.threads), "--cache-dir", args.cache_dir or "",
                    "--seed", str(args.seed), "--out", str(sub / "eval"), "--no-progress"]
            argv += ["--inception-weights", args.inception_weights] if args.inception_weights else []
            argv += ["--max-real", str(args.max_real)] if args.max_real else []
            if args.data_root:
                argv += ["--data-root", args.data_root]
            e = evaluate_mifid.evaluate(evaluate_mifid.parse_args(argv))
            point.update(fid_train=e["fid_train"], precision=e["precision"], recall=e["recall"],
                         n_gen=e["n_gen"])
        points.append(point)
    ok = [p for p in points if p["auc_white"] <= args.stop_auc and "fid_train" in p]
    stop = min(ok, key=lambda p: p["fid_train"]) if ok else None
    res = {"run": str(run), "points": points, "fid_samples": args.fid_samples, "stop_auc": args.stop_auc,
           "early_stopping": stop, "early_stopping_rule": f"the lowest FID (vs train) with white-box AUC <= "
           f"{args.stop_auc}; the choice reads the members' scores, so it is not itself private",
           "wall_s": round(time.time() - t0, 1)}
    write_json(out / "over_training.json", res)
    plot_over_training(res, out / "over_training.png")
    print(f"{'D step':>7} {'FID':>7} {'AUC white':>9} {'AUC black':>9} {'ε_lb':>6} {'copies':>7}")
    for p in points:
        print(f"{p['step']:>7} {p.get('fid_train', math.nan):>7.1f} {p['auc_white']:>9.3f} {p['auc_black']:>9.3f} "
              f"{p['epsilon_lb_one_run'] or 0:>6.2f} {p['copying_rate']:>7.1%}")
    print("early stopping: " + (f"D step {stop['step']} (FID {stop['fid_train']:.1f}, white-box AUC "
                                f"{stop['auc_white']:.3f})" if stop else f"no checkpoint has white-box AUC <= "
                                                                         f"{args.stop_auc} and a FID"))
    print(f"wrote {out / 'over_training.json'}, over_training.png")
    return res


def print_summary(res: dict) -> None:
    for att, r in res["attacks"].items():
        lb = r["epsilon_lower_bound"]
        line = (f"  {att:<21} AUC {r['auc']:.3f} | TPR@1%FPR {r['tpr_at_fpr']['0.01']:.3f} | "
                f"TPR@0.1%FPR {r['tpr_at_fpr']['0.001']:.3f} | heuristic ε bound {lb['epsilon_lb']:.3f}")
        if r.get("one_run"):
            o = r["one_run"]
            line += (f" | one-run ε_lb {o['epsilon_lb']:.3f} (f-DP {o['epsilon_lb_fdp']:.2f}, Steinke et al. "
                     f"{o['epsilon_lb_steinke']:.2f}; {o['v']}/{o['r']} of m = {o['m']}; ceiling "
                     f"{o['ceiling']['epsilon_lb']:.2f}" + (f"; two-sided, best side {o['side']}" if o.get("two_sided")
                                                            else "") + ")")
        if r.get("forgotten"):
            line += f" | forgotten vs never-seen AUC {r['forgotten']['auc']:.3f}"
        if r.get("exposure"):
            line += " | exposure (mean bits) " + ", ".join(f"R={k}: {v['mean']:.2f}" for k, v in r["exposure"].items())
        print(line)
    idn = res.get("identity") or {}
    for att, r in idn.get("attacks", {}).items():
        o = r["one_run"]
        print(f"  identity {att:<21} AUC {r['auc']:.3f} | TPR@1%FPR {r['tpr_at_fpr']['0.01']:.3f} | one-run ε_lb "
              f"{o['epsilon_lb']:.3f} ({o['v']}/{o['r']} of m = {o['m']} people, {idn['attack_photos_per_person']} "
              "attack photos each)")
    c = res["copies"]
    print(f"  pixel-space copies: {c['copying_rate']:.1%} of {c['generated']} samples are nearer a member than every "
          f"non-member (permutation p = {c['p_value']:.3f}; 50% expected without copying); "
          f"{c['fraction_ratio_below_0.5']:.2%} at most half as far")
    gc = (res.get("gradient_canaries") or {}).get("threat_models", {})
    for name, r in gc.items():
        o = r["one_run"]
        print(f"  gradient canaries, {name:<13} AUC {r['auc']:.3f} | ε_lb {o['epsilon_lb']:.3f} (f-DP "
              f"{o['epsilon_lb_fdp']:.2f}, Steinke et al. {o['epsilon_lb_steinke']:.2f}; {o['v']}/{o['r']} of m = "
              f"{o['m']}) | an idealised mechanism at the claimed ε: "
              f"{(o.get('idealised') or {}).get('epsilon_lb', float('nan')):.2f} | ceiling {o['ceiling']['epsilon_lb']:.2f}")
    claimed = res["claimed_epsilon"]
    worst = max(res["one_run_epsilon_lb"] or 0.0,  # a person's bound tests the claim only if the person is the unit
                (idn.get("one_run_epsilon_lb") or 0.0) if res.get("privacy_unit") == "identity" else 0.0,
                *(r["one_run"]["epsilon_lb"] for r in gc.values()))
    if claimed is not None and worst > claimed:
        print(f"WARNING: the one-run lower bound {worst:.3f} exceeds the claimed ε = {claimed:.3f}: with probability "
              ">= 1 - alpha the DP guarantee is violated (an implementation or accounting bug)")


def parse_args(argv=None):
    """The command line, every value checked (one-line errors)."""
    return check_args(build_parser().parse_args(argv))


def main(argv=None):
    return run_cli(lambda a: audit(parse_args(a)), argv)


if __name__ == "__main__":
    main()

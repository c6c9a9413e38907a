"""Audit a trained run for memorization: membership inference, canary exposure, empirical epsilon lower bound.

  python audit.py --run outputs/RUN

Attacks (a higher score means "member"):
  white_box   the trained discriminator's logit D(x) (LOGAN, Hayes et al. 2019): D has seen the members.
              With --reference-run, also white_box_calibrated: D(x) minus a reference run's D(x).
  black_box   minus the distance from x to its nearest generated image (GAN-Leaks full black-box, Chen et al.
              2020), in pixel space (L2 on [0, 1] pixels, default) or Inception pool3 space (1 - |cos|).
Members are a seeded random subset of the images the run trained on (its training set is rebuilt from its
config.json), non-members the --nonmember-split (held-out) images minus any inserted one, equally many.
Per attack: ROC AUC, TPR at 1% and 0.1% FPR, and the ROC curve (roc.png).

Canary exposure (Secret Sharer, Carlini et al. 2019), for runs trained with --canaries: each canary (a held-out
image inserted R times into training) is ranked by the attack score among the M other images of its held-out
split (never trained on): exposure = log2(M) - log2(rank), rank = 1 + #{references scoring >= the canary}.
log2(M) bits means the canary out-scores every reference; a canary never learned averages log2(e) = 1.44 bits.

One-run epsilon lower bound (Steinke, Nasr & Jagielski 2023), for runs trained with audit coins (--coin-subset,
--audit-canaries): each of m candidates was included independently with probability 1/2. Guessing "in" for the
highest and "out" for the lowest scores (a pre-declared grid of guess counts r), the number of correct guesses
of an (eps, delta)-DP run is dominated by Binomial(r, e^eps / (1 + e^eps)) plus a delta term; eps_lb is the
largest eps rejected. Bonferroni over the grid of r AND the attacks: each attack's bound is tested at
alpha / #attacks, so one_run_epsilon_lb, the maximum over attacks, is a proof at confidence 1 - alpha.

Heuristic epsilon bound (Jagielski et al. 2020), kept and labelled as such: thresholds members vs held-out
images with Clopper-Pearson limits, treating every image as an independent trial, which their membership
(not randomised) does not justify.

The black-box score is also reported calibrated: the distance to the nearest generated image divided by the
distance to the nearest of --calibration-size held-out real images (images that are close to everything are
not evidence of membership).

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
from audit_stats import empirical_epsilon, exposure, one_run_audit, roc_summary
from utils import (Parser, Threads, UserError, atomic_savez, pick_device, plt, read_json, run_cli, seeded_subset,
                   write_json)

ATTACKS = ("white_box", "white_box_calibrated", "black_box", "black_box_calibrated")


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
    p.add_argument("--reference-run", default=None, metavar="RUN",
                   help="a run trained the same way on other data (e.g. public photos of other people): the "
                        "white_box_calibrated attack scores D(x) minus that run's D(x), so images every discriminator "
                        "likes are not taken for members (difficulty calibration, Watson et al. 2022)")
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


def identity_audit(coins: dict, scores: dict, delta: float, alpha: float, seed: int = 0) -> tuple[dict, dict]:
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
        r["one_run"] = one_run_audit(per_person, inc, delta, alpha / len(attacks), seed)
        out["attacks"][att] = r
    out["one_run_epsilon_lb"] = max(a["one_run"]["epsilon_lb"] for a in out["attacks"].values())
    if "white_box_calibrated_attack" in scores:  # the reference model trained on none of the candidates: what this
        # draw of people and coins scores without any training on them (all models of a study share the draw)
        per_person = mean_per_person(scores["white_box_attack"] - scores["white_box_calibrated_attack"])
        out["control_reference_model_auc"] = roc_summary(per_person[inc], per_person[~inc])["auc"]
    return out, people


# ----------------------------------------------------------------------------- main
def check_args(args):
    """Every value in range (one-line errors); returns ``args`` unchanged."""
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be in (0, 1) (the bounds hold with probability 1 - alpha), got {args.alpha}")
    if args.delta is not None and not 0 <= args.delta < 1:
        raise UserError(f"--delta must be in [0, 1), got {args.delta}")
    for k in ("calibration_size", "num_samples", "fid_samples"):
        if getattr(args, k) < 0:
            raise UserError(f"--{k.replace('_', '-')} must be >= 0, got {getattr(args, k)}")
    for k in ("max_members", "max_real"):
        if getattr(args, k) is not None and getattr(args, k) < 2:
            raise UserError(f"--{k.replace('_', '-')} must be >= 2, got {getattr(args, k)}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
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

    out = Path(args.out) if args.out else run / "audit"
    out.mkdir(parents=True, exist_ok=True)
    gen_u8, gen_desc = generated_images(run, args.num_samples, device, args.checkpoint)
    scores = {f"white_box_{k}": discriminator_scores(D, imgs.images[v], device, args.batch_size)
              for k, v in queries.items()}
    if args.reference_run:
        from models import load_discriminator

        ref_ckpt = Path(args.reference_run) / "ckpt.pt"
        if not ref_ckpt.is_file():
            raise UserError(f"--reference-run {args.reference_run} has no ckpt.pt: give the folder of a finished run")
        D_ref = load_discriminator(ref_ckpt)
        for k, v in queries.items():
            scores[f"white_box_calibrated_{k}"] = scores[f"white_box_{k}"] - discriminator_scores(
                D_ref, imgs.images[v], device, args.batch_size)
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
    # each image's nearest-neighbour distances once, though it may be a member, a candidate and a canary at once
    union = torch.unique(torch.cat(list(queries.values())))
    d_gen = dist(imgs.images[union], gen_u8)
    d_cal = np.maximum(dist(imgs.images[union], imgs.images[calib]), 1e-12) if n_cal else None
    for k, v in queries.items():
        at = torch.searchsorted(union, v).numpy()
        scores[f"black_box_{k}"] = -d_gen[at]
        if n_cal:  # difficulty calibration: how much closer the generator comes than never-trained real images
            scores[f"black_box_calibrated_{k}"] = -d_gen[at] / d_cal[at]

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
                                         args.seed)
        if canaries:
            e = exposure(scores[f"{att}_canaries"], scores[f"{att}_references"])
            reps = np.array(canaries["repeats"])
            r["exposure"] = {str(k): {"mean": float(e[reps == k].mean()), "max": float(e[reps == k].max()),
                                      "min": float(e[reps == k].min()), "values": e[reps == k].round(3).tolist()}
                             for k in sorted(set(canaries["repeats"]))}
        attacks[att] = r
    identity, people = (identity_audit(person_coins, scores, delta, args.alpha, args.seed) if person_coins
                        else (None, {}))
    res = {"run": str(run), "checkpoint": args.checkpoint, "data": imgs.source, "nonmember_split": args.nonmember_split,
           "black_box_space": args.space, "calibration_images": int(n_cal), "generated": gen_desc,
           "reference_run": args.reference_run,
           "claimed_epsilon": claimed, "privacy_unit": results.get("privacy_unit", "image"), "delta": delta,
           "attacks": attacks, "copies": copies,
           "one_run_epsilon_lb": None if not coins else max(a["one_run"]["epsilon_lb"] for a in attacks.values()),
           "alpha": args.alpha,
           "canaries": None if not canaries else {"count": len(canaries["indices"]), "split": canaries["split"],
                                                  "references": len(refs), "max_exposure_bits": math.log2(len(refs))},
           "coins": None if not coins else {"kind": coins["kind"], "candidates": len(coins["indices"]),
                                            "included": int(sum(coins["included"]))},
           "identity": identity,
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
        point = {"step": step, "checkpoint": str(f), "auc_white": a["attacks"]["white_box"]["auc"],
                 "auc_black": a["attacks"]["black_box"]["auc"],
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


def plot_over_training(res: dict, path) -> None:
    pyplot = plt()
    pts = res["points"]
    steps = [p["step"] for p in pts]
    fig, (ax1, ax2) = pyplot.subplots(1, 2, figsize=(10, 3.6))
    if all("fid_train" in p for p in pts):
        ax1.plot(steps, [p["fid_train"] for p in pts], "o-", color="k", label="FID vs train")
        ax1.set_ylabel(f"FID vs the training set ({res['fid_samples']} samples)")
        if res["early_stopping"]:
            ax1.axvline(res["early_stopping"]["step"], color="tab:green", ls="--",
                        label=f"early stop (white-box AUC ≤ {res['stop_auc']})")
        ax1.legend(fontsize=8)
    ax1.set_xlabel("D step")
    black = "auc_black_calibrated" if all(p.get("auc_black_calibrated") is not None for p in pts) else "auc_black"
    bb_label = "black-box AUC, calibrated" if black == "auc_black_calibrated" else "black-box AUC"
    for key, label in (("auc_white", "white-box AUC"), (black, bb_label), ("copying_rate", "pixel copy rate")):
        ax2.plot(steps, [p[key] for p in pts], "o-", label=label)
    ax2.axhline(0.5, color="grey", lw=0.8)
    ax2.set_ylim(0.3, 1.02)
    ax2.set_xlabel("D step")
    if any(p["epsilon_lb_one_run"] is not None for p in pts):
        tw = ax2.twinx()
        tw.plot(steps, [p["epsilon_lb_one_run"] or 0 for p in pts], "s:", color="tab:red", label="ε_lb one-run")
        tw.set_ylabel("one-run ε lower bound", color="tab:red")
        tw.legend(fontsize=8, loc="lower right")
    ax2.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"memorization over training: {Path(res['run']).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


ATTACK_TITLES = {"white_box": "white-box (discriminator logit)",
                 "white_box_calibrated": "white-box, calibrated (− reference model's logit)",
                 "black_box": "black-box (distance to nearest sample)",
                 "black_box_calibrated": "black-box, calibrated (÷ distance to held-out)"}


def plot_roc(named_scores: dict, path) -> None:
    """ROC curves (log-log) of every attack for one or more models ({name: scores of audit()})."""
    from sklearn.metrics import roc_curve

    pyplot = plt()
    atts = [a for a in ATTACKS if any(f"{a}_members" in sc for sc in named_scores.values())]
    fig, axes = pyplot.subplots(1, len(atts), figsize=(5 * len(atts), 4.2), squeeze=False)
    for ax, attack in zip(axes[0], atts):
        for name, scores in named_scores.items():
            if f"{attack}_members" not in scores:
                continue
            s_in, s_out = scores[f"{attack}_members"], scores[f"{attack}_nonmembers"]
            fpr, tpr, _ = roc_curve(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out])
            ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=name)
        ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(ATTACK_TITLES[attack], fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def plot_one_run(named_audits: dict, path) -> None:
    """One-run epsilon lower bound against the number of guesses r, per attack and model."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4.2))
    for i, (name, res) in enumerate(named_audits.items()):
        for att, ls in zip(ATTACKS, ("-", "--", ":")):
            o = res["attacks"].get(att, {}).get("one_run")
            if not o:
                continue
            ax.plot([c["r"] for c in o["curve"]], [c["epsilon_lb_uncorrected"] for c in o["curve"]], ls, color=f"C{i}",
                    lw=1, label=f"{name}, {att} (uncorrected curve)")
            ax.plot([g["r"] for g in o["grid"]], [g["epsilon_lb"] for g in o["grid"]], "o", color=f"C{i}", ms=3)
        eps = res.get("claimed_epsilon")
        if eps is not None:
            ax.axhline(eps, color=f"C{i}", lw=0.8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("guesses r (the rest abstain)")
    ax.set_ylabel("ε lower bound")
    ax.set_title("one-run audit: lines = bound at α for each r (uncorrected);\ndots = the pre-declared grid at "
                 "α / grid size (the reported bound); thin lines = claimed ε", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def print_summary(res: dict) -> None:
    for att, r in res["attacks"].items():
        lb = r["epsilon_lower_bound"]
        line = (f"  {att:<21} AUC {r['auc']:.3f} | TPR@1%FPR {r['tpr_at_fpr']['0.01']:.3f} | "
                f"TPR@0.1%FPR {r['tpr_at_fpr']['0.001']:.3f} | heuristic ε bound {lb['epsilon_lb']:.3f}")
        if r.get("one_run"):
            o = r["one_run"]
            line += f" | one-run ε_lb {o['epsilon_lb']:.3f} ({o['v']}/{o['r']} of m = {o['m']})"
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
    claimed = res["claimed_epsilon"]
    worst = max(res["one_run_epsilon_lb"] or 0.0,  # a person's bound tests the claim only if the person is the unit
                (idn.get("one_run_epsilon_lb") or 0.0) if res.get("privacy_unit") == "identity" else 0.0)
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

"""Score generated images: FID (vs train and held-out), MiFID, KID, precision/recall, memorization.

  python evaluate_mifid.py --gen outputs/RUN --real celeba --data-root ~/data/celeba

--gen is a folder of images, an .npz of uint8 images, a generator checkpoint (generator.pt / ckpt.pt), or a run
folder (its samples.npz, else its generator.pt). The real side is, by default, the images the run actually
trained on (its training subset, included coin candidates and canaries; --train-of RUN names another run, e.g.
to score held-out real images as a reference). Otherwise --real is celeba, folder:PATH or digits (the whole
train split, decoded with the SAME transform as the generated images: their size and channel count), or a
feature file written by --save-stats. The memorization reference of MiFID is that training set; the held-out
FID uses --heldout-split (minus any inserted or coin-flipped image).
Writes eval.json, nearest_distances.npy (each generated image's d), nn_gallery.png and memorization_hist.png
to --out. See metrics.py for exact definitions.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

import data as data_mod
import metrics
from utils import Parser, Threads, UserError, atomic_save_npy, init_distributed, run_cli, seeded_subset, write_json


def build_parser():
    p = Parser(prog="evaluate_mifid.py", description=__doc__.split("\n")[0], epilog=__doc__)
    p.add_argument("--gen", default=None, help="image folder, .npz, generator checkpoint, or run folder")
    p.add_argument("--reference-of", default=None, metavar="RUN",
                   help="instead of --gen: RUN's never-trained val images (minus any inserted one; at most "
                        "--num-samples, a seeded subset) scored as if they were samples: the real-data reference")
    p.add_argument("--real", default=None, help="celeba | folder:PATH | digits | FEATURES.npz (--save-stats); "
                   "default: the training set of the --gen (or --train-of) run")
    p.add_argument("--train-of", default=None, metavar="RUN",
                   help="use RUN's training images as the train set (default: --gen, when it is a run folder)")
    p.add_argument("--data-root", default=os.environ.get("CELEBA_ROOT"), help="CelebA root for --real celeba "
                   "(default $CELEBA_ROOT)")
    p.add_argument("--image-size", type=int, default=None, help="real-image size (default: the generated size)")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3], help="default: the generated channels")
    p.add_argument("--split-seed", type=int, default=0, help="as in training, for sources without partition file")
    p.add_argument("--random-split", action="store_true", help="CelebA: random split instead of the partition "
                   "file (use when training did)")
    p.add_argument("--dedup-threshold", type=float, default=data_mod.DEDUP_THRESHOLD,
                   help="near-duplicate grouping of the split, as in training (explicit --real only)")
    p.add_argument("--heldout-split", default="test", choices=["val", "test"],
                   help="the held-out split of the held-out FID (minus any inserted or coin-flipped image)")
    p.add_argument("--num-samples", type=int, default=10000,
                   help="images to generate from a checkpoint (--reference-of: at most this many real images)")
    p.add_argument("--max-real", type=int, default=None,
                   help="use at most this many train and held-out images each (seeded subsets)")
    p.add_argument("--inception-weights", default=None, help="FID Inception weights (else $INCEPTION_WEIGHTS, "
                   "torch hub cache, or download)")
    p.add_argument("--strict-weights", action="store_true", help="fail unless the weights are the official file")
    p.add_argument("--mifid-eps", type=float, default=0.1, help="memorization threshold of MiFID")
    p.add_argument("--pr-k", type=int, default=3, help="k of the precision/recall k-NN radii")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="images per KID subset (100 subsets)")
    p.add_argument("--batch-size", type=int, default=64, help="Inception batch size")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", default="auto", help="CPU threads: N, or auto = the cores other processes leave idle")
    p.add_argument("--cache-dir", default=data_mod.DEFAULT_CACHE_DIR, help="decoded-image and feature cache")
    p.add_argument("--cache-generated", action="store_true",
                   help="cache the generated images' features too (keyed by their pixels, like the real sets'): a set "
                        "scored against several training sets is featurised once")
    p.add_argument("--save-stats", default=None, metavar="PATH.npz",
                   help="also save the real train/held-out features to PATH.npz (reusable as --real)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval or outputs/eval)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-real subsets and of KID's subsets")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, batch jobs)")
    return p


def at_least(args, minimum, *names) -> None:
    """A one-line UserError for the first argument of ``names`` below ``minimum`` (None: not given, skipped)."""
    for k in names:
        v = getattr(args, k)
        if v is not None and v < minimum:
            raise UserError(f"--{k.replace('_', '-')} must be >= {minimum}, got {v}")


def check_args(args):
    """Every value in range (one-line errors); returns ``args`` unchanged."""
    at_least(args, 1, "num_samples", "batch_size", "pr_k", "max_real", "image_size")
    if args.kid_subset_size < 2:
        raise UserError(f"--kid-subset-size must be >= 2 (KID's unbiased estimate), got {args.kid_subset_size}")
    if not args.mifid_eps > 0:
        raise UserError(f"--mifid-eps must be > 0, got {args.mifid_eps}")
    if not 0 <= args.dedup_threshold <= 1:
        raise UserError(f"--dedup-threshold must be in [0, 1] (0 disables), got {args.dedup_threshold}")
    return args


def load_gen(spec: str, num_samples: int, device) -> tuple[torch.Tensor, str]:
    p = Path(spec)
    if p.is_dir() and (p / "samples.npz").is_file():
        return data_mod.load_npz(p / "samples.npz"), f"{p / 'samples.npz'}"
    if p.is_dir() and (p / "generator.pt").is_file():
        p = p / "generator.pt"
    if p.is_dir():
        return data_mod.load_native(p), f"folder {p}"
    if not p.exists():
        raise UserError(f"--gen {spec} does not exist")
    if p.suffix == ".npz":
        return data_mod.load_npz(p), str(p)
    if p.suffix in (".pt", ".pth"):
        from gan import generate
        from models import load_generator

        G, cfg = load_generator(p, device)
        print(f"generating {num_samples} images from {p}")
        return generate(G, num_samples, cfg["nz"], device), f"{num_samples} samples of {p}"
    raise UserError(f"--gen {spec}: expected a folder, .npz, or generator .pt")


def load_real_features(args, extractor, size, channels, train_of=None):
    """(train features, held-out features or None, train uint8 images or None, description); ``train_of``: the run
    whose training set is the real side (default --train-of, else --gen when it is a run folder)."""
    if args.real and args.real.endswith(".npz") and Path(args.real).is_file():
        with np.load(args.real, allow_pickle=False) as z:
            if "train" not in z.files:
                raise UserError(f"{args.real} has no 'train' features; write it with --save-stats")
            if str(z["weights_sha256"]) != extractor.sha256:
                raise UserError(f"{args.real} was computed with other Inception weights; recompute it")
            return z["train"], (z["heldout"] if "heldout" in z.files else None), None, f"features {args.real}"
    run = train_of or args.train_of or (args.gen if args.gen and (Path(args.gen) / "config.json").is_file() else None)
    if args.real is None and run is None:
        raise UserError("give --real (celeba, folder:PATH, digits or a --save-stats file): --gen is not a training "
                        "run folder, so there is no training set to default to (or name one with --train-of)")
    if args.real is None:  # the run's own training images
        from runs import run_training_data

        td = run_training_data(Path(run), args.data_root, args.cache_dir)
        imgs, train_all, special = td.imgs, torch.unique(td.index), td.special()
        if imgs.images.shape[1:] != (channels, size, size):
            raise UserError(f"{run} trained on {tuple(imgs.images.shape[1:])} images, the generated ones are "
                            f"{(channels, size, size)}")
        what = f"training set of {run}"
    else:
        imgs = data_mod.load_images(args.real, args.data_root, size, channels, args.cache_dir or None,
                                    args.split_seed, random_split=args.random_split, dedup=args.dedup_threshold)
        train_all, special, what = imgs.splits["train"], torch.zeros(0, dtype=torch.long), "train"
    train_idx = seeded_subset(train_all, args.max_real, args.seed)
    train_u8 = imgs.images[train_idx]
    train_f = metrics.cached_features(extractor, train_u8, args.cache_dir, desc=f"train features ({len(train_u8)})")
    held = imgs.splits.get(args.heldout_split)
    held = None if held is None else seeded_subset(held[~torch.isin(held, special)], args.max_real, args.seed)
    held_f = None
    if held is not None and len(held) > 1:
        held_f = metrics.cached_features(extractor, imgs.images[held], args.cache_dir,
                                         desc=f"{args.heldout_split} features ({len(held)})")
    return train_f, held_f, train_u8, f"{imgs.source} ({what} {len(train_u8)}, {args.heldout_split} " \
                                      f"{0 if held is None else len(held)})"


def reference_images(run, n: int | None, cache_dir=None) -> torch.Tensor:
    """RUN's val images that it never trained on (minus canaries and audit candidates), at most n of them (a
    seeded subset): never-trained real images to score like a model's samples."""
    from runs import run_training_data

    td = run_training_data(Path(run), cache_dir=cache_dir)
    val = td.imgs.splits["val"]
    return td.imgs.images[seeded_subset(val[~torch.isin(val, td.special())], n, 0)]


def evaluate(args) -> dict:
    t0 = time.time()
    if (args.gen is None) == (args.reference_of is None):
        raise UserError("give --gen (the images to score) or --reference-of RUN (its held-out real images)")
    rank, world, device = init_distributed(args.device)  # torchrun: Inception batches are sharded over ranks
    threads = Threads(args.threads)
    train_of = args.train_of
    if args.reference_of is not None:
        gen_u8 = reference_images(args.reference_of, args.num_samples, args.cache_dir)
        gen_desc, train_of = f"{len(gen_u8)} held-out val images of {args.reference_of}", train_of or args.reference_of
    else:
        gen_u8, gen_desc = load_gen(args.gen, args.num_samples, device)
    if len(gen_u8) < 2:
        raise UserError(f"need at least 2 generated images, got {len(gen_u8)}")
    size = args.image_size or gen_u8.shape[-1]
    channels = args.channels or gen_u8.shape[1]
    extractor = metrics.InceptionFeatures(args.inception_weights, device, args.batch_size, args.strict_weights,
                                          threads=threads, progress=not args.no_progress)
    train_f, held_f, train_u8, real_desc = load_real_features(args, extractor, size, channels, train_of)
    gen_f = (metrics.cached_features(extractor, gen_u8, args.cache_dir, desc=f"generated features ({len(gen_u8)})")
             if args.cache_generated else extractor(gen_u8, desc=f"generated features ({len(gen_u8)})"))
    if args.save_stats and rank == 0:
        np.savez(args.save_stats, train=train_f, **({"heldout": held_f} if held_f is not None else {}),
                 weights_sha256=extractor.sha256)
        print(f"saved real features to {args.save_stats}")
    metrics.warn_small(len(gen_f), "the generated set")
    metrics.warn_small(len(train_f), "the train set")

    fid_train = metrics.fid(gen_f, train_f)
    fid_held = metrics.fid(gen_f, held_f) if held_f is not None else None
    # FID is biased by the real-set size too: the gap compares held-out with a train subset of the same size
    fid_matched = None
    if held_f is not None:
        fid_matched = fid_train if len(train_f) <= len(held_f) else \
            metrics.fid(gen_f, train_f[seeded_subset(torch.arange(len(train_f)), len(held_f), args.seed + 1).numpy()])
    dists, nn_idx = metrics.nearest_cosine(gen_f, train_f, device=device,
                                            progress=rank == 0 and not args.no_progress)
    mi = metrics.mifid(fid_train, gen_f, train_f, args.mifid_eps, "kaggle", device, distances=dists)
    mi_tm = metrics.mifid(fid_train, gen_f, train_f, args.mifid_eps, "torchmetrics", device)
    kid_m, kid_s = metrics.kid(train_f, gen_f, subset_size=args.kid_subset_size, seed=args.seed)
    prec, rec = metrics.precision_recall(train_f, gen_f, k=args.pr_k)
    res = {
        "gen": gen_desc, "real": real_desc, "n_gen": len(gen_f), "n_train": len(train_f),
        "n_heldout": None if held_f is None else len(held_f), "image_size": size, "channels": channels,
        "fid_train": fid_train, "fid_heldout": fid_held,
        "fid_train_matched": fid_matched, "fid_gap": None if fid_held is None else fid_held - fid_matched,
        "mifid": mi["mifid"], "memorization_d": mi["d"], "mifid_eps": args.mifid_eps,
        "mifid_torchmetrics_direction": mi_tm["mifid"], "memorization_d_torchmetrics_direction": mi_tm["d"],
        "kid_mean": kid_m, "kid_std": kid_s, "precision": prec, "recall": rec, "pr_k": args.pr_k,
        "nearest_distance_quantiles": {q: float(np.quantile(dists, float(q))) for q in ("0.001", "0.01", "0.1", "0.5")},
        "fraction_below_eps": float((dists < args.mifid_eps).mean()),
        "inception": extractor.identity, "features": extractor.record(), "wall_s": round(time.time() - t0, 1),
        "world_size": world,
    }
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
        if rank != 0:
            return res
    out = Path(args.out) if args.out else (Path(args.gen) / "eval" if args.gen and Path(args.gen).is_dir() and
                                           (Path(args.gen) / "config.json").exists() else Path("outputs/eval"))
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(out / "nearest_distances.npy", dists)
    write_json(out / "eval.json", res)
    metrics.distance_histogram({"generated": dists}, out / "memorization_hist.png", args.mifid_eps)
    if train_u8 is not None:
        metrics.nn_gallery(gen_u8, train_u8, dists, nn_idx, out / "nn_gallery.png")
    print_table(res)
    print(f"wrote {out / 'eval.json'}, memorization_hist.png" + (", nn_gallery.png" if train_u8 is not None else ""))
    return res


def print_table(r: dict) -> None:
    def f(v, fmt=".3f"):
        return "n/a" if v is None else format(v, fmt)

    rows = [("generated images", r["n_gen"]), ("train images (memorization ref.)", r["n_train"]),
            ("held-out images", r["n_heldout"]), ("FID vs train", f(r["fid_train"])),
            ("FID vs held-out", f(r["fid_heldout"])),
            ("FID vs train, held-out-sized subset", f(r["fid_train_matched"])), ("MiFID (Kaggle)", f(r["mifid"])),
            ("memorization d (gen -> nearest train)", f(r["memorization_d"], ".4f")),
            ("d, torchmetrics direction (train -> gen)", f(r["memorization_d_torchmetrics_direction"], ".4f")),
            ("KID x 1e3", f"{r['kid_mean'] * 1e3:.3f} ± {r['kid_std'] * 1e3:.3f}"),
            (f"precision / recall (k={r['pr_k']})", f"{f(r['precision'])} / {f(r['recall'])}"),
            (f"fraction of generated with d < {r['mifid_eps']}", f(r["fraction_below_eps"], ".4f"))]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")


def parse_args(argv=None):
    """The command line, every value checked (one-line errors)."""
    return check_args(build_parser().parse_args(argv))


def main(argv=None):
    return run_cli(lambda a: evaluate(parse_args(a)), argv)


if __name__ == "__main__":
    main()

"""The training set of a run: the train split or a seeded subset of it, plus canaries and coin-flipped audit
candidates. Everything here is a deterministic function of the run's arguments, so audit.py and evaluate_mifid.py
rebuild exactly the images a run trained on from its config.json (runs.run_training_data).

  --train-size N        N images of the train split (one per near-duplicate group), in the --subset-seed order
  --coin-subset         with --train-size N: 2N candidates, each included with probability 1/2 (coins.json)
  --skip-subset M       the train split minus the first M images of that order (public data disjoint from them)
  --canaries K          K held-out images per repeat count, each copied R times into training (canaries.json)
  --audit-canaries M    M held-out candidates, each included once with probability 1/2 (coins.json)
"""
from __future__ import annotations

import numpy as np
import torch

from data import load_images
from utils import UserError, seeded_perm


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
    chosen = pool[seeded_perm(len(pool), seed)[:need]]
    return {"split": split, "seed": seed, "indices": chosen.tolist(), "names": [imgs.names[i] for i in chosen],
            "repeats": [r for r in repeats for _ in range(k)], "split_key": imgs.split_key(split)}


class TrainingData:
    """The training set of a run: the train split (or a subset of it), plus canaries and coin-flipped candidates.

    ``n`` is the realised size. ``n_planned`` is the size fixed BEFORE any coin is flipped (the fixed part plus
    half the candidates); D's batch schedule (steps per epoch, Poisson rate q, DP-SGD's normalisation) uses it,
    so the mechanism does not depend on the coins, as the one-run audit requires."""

    def __init__(self, args, progress=True):
        self.imgs = imgs = load_images(
            args.data, args.data_root, args.image_size, args.channels, args.cache_dir or None, args.split_seed,
            progress=progress, random_split=args.random_split, dedup=args.dedup_threshold,
            exclude_from=args.exclude_from, identity_file=args.identity_file, split_unit=args.split_unit)
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
            train = pool[seeded_perm(len(pool), args.subset_seed)[args.skip_subset:]].sort().values
        if args.train_size is not None:
            pool = imgs.representatives(train)
            need = args.train_size * (2 if args.coin_subset else 1)
            if need > len(pool):
                raise UserError(f"--train-size {args.train_size}{' with --coin-subset' if args.coin_subset else ''} "
                                f"needs {need} images, but the train split of {imgs.source} has {len(pool)} "
                                "(one per near-duplicate group); lower --train-size")
            train = pool[seeded_perm(len(pool), args.subset_seed)[:need]].sort().values
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
            cand = pool[seeded_perm(len(pool), args.subset_seed + 1)[:args.audit_canaries]].sort().values
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
             "n_val": len(self.imgs.splits.get("val", [])), "n_test": len(self.imgs.splits.get("test", [])),
             "identities": self.imgs.identity_report(torch.unique(self.index))}
        if self.coins:
            d["coins"] = {"kind": self.coins["kind"], "candidates": len(self.coins["indices"]),
                          "included": int(sum(self.coins["included"]))}
        return d

"""The training set of a run: the train split or a seeded subset of it, plus canaries and coin-flipped audit
candidates. Everything here is a deterministic function of the run's arguments, so audit.py and evaluate_mifid.py
rebuild exactly the images a run trained on from its config.json (runs.run_training_data).

  --train-size N        N images of the train split (one per near-duplicate group), in the --subset-seed order
  --coin-subset         with --train-size N: 2N candidates, each included with probability 1/2 (coins.json)
  --skip-subset M       the train split minus the first M images of that order (public data disjoint from them);
                        with --train-size N: the N images that follow them
  --canaries K          K held-out images per repeat count, each copied R times into training (canaries.json)
  --audit-canaries M    M held-out candidates, each included once with probability 1/2 (coins.json)
  --forget SPEC         train on the rest: minus the coins' heads, or the images and people a file lists (unlearn.py)

With --privacy-unit identity these draw PEOPLE (CelebA's identity labels, or --identity-file): --train-size N
takes N people of the train split with all their photos (one per near-duplicate group), --coin-subset 2N people
with one coin each, --audit-canaries M people of the held-out split. --attack-photos k holds back k photos of
every drawn person (seeded) from training: the attacker's photos of audit.py's identity membership audit. Under
DP-SGD the person is then the unit that is sampled and clipped (privacy.DPSGD), ``unit_of`` maps each training
row to its person.
"""
from __future__ import annotations

from pathlib import Path

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


def draw_people(imgs, pool: torch.Tensor, count: int, seed: int, attack_photos: int, what: str) -> list:
    """``count`` people of the images ``pool`` (one per near-duplicate group), seeded, each with more than
    ``attack_photos`` photos: [(person, training photos, attack photos)] in person order. The attack photos are
    a seeded choice of each person's photos, held back from training."""
    pool = imgs.representatives(pool)
    ids = imgs.identity_ids()[pool]
    people, counts = torch.unique(ids, return_counts=True)
    eligible = people[counts > attack_photos]
    if count > len(eligible):
        raise UserError(f"{what} needs {count} people with more than {attack_photos} photos (--attack-photos), but "
                        f"{imgs.source} has {len(eligible)} such people there (of {len(people)}); lower the count"
                        + (" or --attack-photos" if attack_photos else ""))
    chosen = eligible[seeded_perm(len(eligible), seed)[:count]].sort().values
    out = []
    for person in chosen.tolist():
        photos = pool[ids == person]
        order = seeded_perm(len(photos), [seed, person, 0xA77])
        held = photos[order[:attack_photos]].sort().values
        out.append((person, photos[order[attack_photos:]].sort().values, held))
    return out


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
        unit = getattr(args, "privacy_unit", "image")
        if args.skip_subset:  # the rest of the --subset-seed order after the first M (with --train-size: its first N)
            pool = imgs.representatives(train)
            left = len(pool) - args.skip_subset
            if not 0 < args.skip_subset <= len(pool) - 2 or args.coin_subset or (args.train_size or 0) > left \
                    or (args.train_size is not None and unit == "identity"):
                raise UserError(f"--skip-subset takes 0 < M <= {len(pool) - 2} (the train split of {imgs.source} has "
                                f"{len(pool)} images, one per near-duplicate group), no --coin-subset, and a "
                                f"--train-size (of images) of at most the {left} left; got {args.skip_subset}"
                                + (f" with --train-size {args.train_size}" if args.train_size is not None else ""))
            rest = pool[seeded_perm(len(pool), args.subset_seed)[args.skip_subset:]]
            train = rest[:args.train_size].sort().values
        k_attack = getattr(args, "attack_photos", 0)
        self.attack_photos = k_attack  # identity unit: photos per drawn person held back (coins.json)
        if args.train_size is not None and unit == "identity" and not args.skip_subset:
            drawn = draw_people(imgs, train, args.train_size * (2 if args.coin_subset else 1), args.subset_seed,
                                k_attack if args.coin_subset else 0,  # attack photos: of coin-flipped people only
                                f"--train-size {args.train_size}" + (" with --coin-subset" if args.coin_subset else ""))
            if args.coin_subset:
                self.coins, heads, n_candidates = self._person_coins(drawn, "subset", "train", args)
            else:
                heads = [photos for _, photos, _ in drawn]
            train = torch.cat(heads).sort().values if heads else train[:0]
        elif args.train_size is not None and not args.skip_subset:
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
            if unit == "identity":  # a canary's person is in training regardless of any coin: not a candidate
                ids = imgs.identity_ids()
                pool = pool[~torch.isin(ids[pool], ids[taken])]
            if args.audit_canaries > len(pool) - 2:
                raise UserError(f"--audit-canaries {args.audit_canaries} needs that many images of the "
                                f"{args.canary_split} "
                                f"split besides the canaries, and it has {len(pool)} (keep 2 as references)")
            if unit == "identity":
                drawn = draw_people(imgs, pool, args.audit_canaries, args.subset_seed + 1, k_attack,
                                    f"--audit-canaries {args.audit_canaries} (of the {args.canary_split} split)")
                self.coins, heads, n_candidates = self._person_coins(drawn, "audit-canaries", args.canary_split, args)
                extra.append(torch.cat(heads) if heads else pool[:0])
            else:
                cand = pool[seeded_perm(len(pool), args.subset_seed + 1)[:args.audit_canaries]].sort().values
                self.coins = self._coins(cand, "audit-canaries", args)
                n_candidates = len(cand)
                extra.append(cand[torch.tensor(self.coins["included"])])
        self.index = torch.cat([train] + extra) if extra else train  # indices into imgs.images, with repeats
        self.n = len(self.index)
        included = 0  # training images that a coin put in
        if self.coins is not None:
            included = (sum(len(p) for p, inc in zip(self.coins["photos"], self.coins["included"]) if inc)
                        if "photos" in self.coins else sum(self.coins["included"]))
        self.n_planned = self.n - included + n_candidates / 2
        # the privacy unit of each training row (DP-SGD samples and clips units): each row its own unit (image), or
        # its person; the planned number of units is fixed before any coin is flipped, as n_planned
        self.unit = unit
        if unit == "identity":
            self.unit_of = torch.unique(imgs.identity_ids()[self.index], return_inverse=True)[1]
            units = int(self.unit_of.max()) + 1 if self.n else 0
            people = len(self.coins["identities"]) if self.coins and "identities" in self.coins else 0
            self.n_units_planned = units - (sum(self.coins["included"]) if people else 0) + people / 2
        else:
            self.unit_of = torch.arange(self.n)
            self.n_units_planned = self.n_planned
        # --forget: the run trains on the rest (the batch schedule, n_planned, stays the one planned without it)
        self.forget = self._forget(args.forget) if getattr(args, "forget", None) else None
        self.forget_idx = torch.zeros(0, dtype=torch.long)
        if self.forget is not None:
            self.forget_idx = torch.tensor(self.forget["indices"], dtype=torch.long)
            keep = ~torch.isin(self.index, self.forget_idx)
            self.index, self.train_idx = self.index[keep], self.train_idx[~torch.isin(self.train_idx, self.forget_idx)]
            self.unit_of = torch.unique(self.unit_of[keep], return_inverse=True)[1] if keep.any() else self.unit_of[:0]
            self.n = len(self.index)

    def _forget(self, spec: str) -> dict:
        """The images --forget names, with their near-duplicates: ``heads`` (the audit coins' included candidates,
        all photos of a person coin) or a text file of one entry per line: an image file name, or person:ID (every
        photo of that identity). Every entry must have been trained, and something must stay."""
        imgs, trained, group = self.imgs, torch.unique(self.index), self.imgs.group_ids()
        if spec == "heads":
            if self.coins is None:
                raise UserError("--forget heads forgets the audit coins' heads, but this run has no coins (train "
                                "with --audit-canaries M or --coin-subset)")
            photos = self.coins.get("photos", [[i] for i in self.coins["indices"]])
            chosen = [i for p, inc in zip(photos, self.coins["included"]) if inc for i in p]
            entries = len(chosen) if "photos" not in self.coins else int(sum(self.coins["included"]))
        else:
            try:
                lines = [ln.strip() for ln in Path(spec).read_text().splitlines() if ln.strip()]
            except OSError as e:
                raise UserError(f"--forget {spec}: cannot read it ({e.strerror}); give heads or a text file of "
                                "image file names and person:ID lines") from None
            if not lines:
                raise UserError(f"--forget {spec} is empty; list one image file name or person:ID per line")
            where = {name: i for i, name in enumerate(imgs.names)}
            ids = imgs.identity_ids()
            trained_groups = set(group[trained].tolist())
            chosen, unknown, untrained = [], [], []
            for ln in lines:
                person = ln[len("person:"):] if ln.startswith("person:") else None
                if person is not None:
                    hit = (ids == int(person)).nonzero().flatten().tolist() if person.isdigit() else []
                elif ln in where:
                    hit = [where[ln]]
                else:
                    hit = []
                if not hit:
                    unknown.append(ln)
                    continue
                hit = [i for i in hit if int(group[i]) in trained_groups]  # a near-duplicate of a trained image counts
                untrained += [ln] if not hit else []
                chosen += hit
            if unknown:
                raise UserError(f"--forget {spec}: {len(unknown)} of its {len(lines)} lines name nothing in "
                                f"{imgs.source} (e.g. {unknown[0]!r}); list file names as the data has them, or "
                                "person:ID with an identity of its identity file")
            if untrained:
                raise UserError(f"--forget {spec}: {untrained[0]!r} was not in this run's training set"
                                f"{f' (nor {len(untrained) - 1} more)' if len(untrained) > 1 else ''}; forget only "
                                "what the run trained on")
            entries = len(lines)
        gone = trained[torch.isin(group[trained], group[torch.tensor(chosen, dtype=torch.long)])] if chosen \
            else trained[:0]
        if not len(gone):
            raise UserError(f"--forget {spec}: nothing to forget (no coin came up heads)")
        if len(gone) == len(trained):
            raise UserError(f"--forget {spec} forgets every training image; nothing would be left to train on")
        return {"spec": spec, "entries": entries, "images": len(gone), "indices": gone.tolist(),
                "names": [imgs.names[i] for i in gone]}

    def special(self) -> torch.Tensor:
        """Indices of images that were inserted, coin-flipped, held back as attack photos or forgotten: never
        'never-trained' references."""
        return torch.tensor((self.canaries["indices"] if self.canaries else []) +
                            (self.coins["indices"] if self.coins else []) +
                            (self.forget["indices"] if self.forget else []), dtype=torch.long)

    def _person_coins(self, drawn: list, kind: str, split: str, args) -> tuple:
        """One coin per drawn person: it includes or excludes all their training photos. Returns (the coins,
        the included people's training photos, the number of candidate training photos); the coins' ``indices``
        list every candidate image (training and attack photos) so that no held-out pool uses them."""
        heads = coin_flips(len(drawn), args.subset_seed).tolist()
        coins = {"kind": kind, "unit": "identity", "seed": args.subset_seed, "split": split,
                 "identities": [p for p, _, _ in drawn], "included": heads,
                 "photos": [photos.tolist() for _, photos, _ in drawn],
                 "attack_photos": [held.tolist() for _, _, held in drawn],
                 "indices": sorted(i for _, photos, held in drawn for i in photos.tolist() + held.tolist()),
                 "data_key": self.imgs.key}
        included = [photos for (_, photos, _), inc in zip(drawn, heads) if inc]
        return coins, included, sum(len(photos) for _, photos, _ in drawn)

    def _coins(self, cand: torch.Tensor, kind: str, args) -> dict:
        heads = coin_flips(len(cand), args.subset_seed)
        return {"kind": kind, "seed": args.subset_seed, "indices": cand.tolist(),
                "names": [self.imgs.names[i] for i in cand], "included": heads.tolist(),
                "split": "train" if kind == "subset" else args.canary_split, "data_key": self.imgs.key}

    def describe(self) -> dict:
        d = {"n_train": self.n, "n_planned": self.n_planned, "dedup": self.imgs.dedup,
             "n_val": len(self.imgs.splits.get("val", [])), "n_test": len(self.imgs.splits.get("test", [])),
             "identities": self.imgs.identity_report(torch.unique(self.index))}
        if self.forget is not None:
            d["forget"] = {k: self.forget[k] for k in ("spec", "entries", "images", "names")}
        if self.coins:
            d["coins"] = {"kind": self.coins["kind"], "unit": self.coins.get("unit", "image"),
                          "candidates": len(self.coins.get("identities", self.coins["indices"])),
                          "included": int(sum(self.coins["included"]))}
        if self.unit == "identity":
            d["privacy_unit"] = {"unit": "identity", "units": int(self.unit_of.max()) + 1 if self.n else 0,
                                 "units_planned": self.n_units_planned,
                                 "attack_photos_per_person": self.attack_photos}
        return d

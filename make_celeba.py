"""Make CelebA folders of the design the results use, from the official CelebA download.

  python make_celeba.py subset --celeba CELEBA --out DIR        # 200 people x 30 photos, the original JPEGs
  python make_celeba.py downsample --celeba CELEBA --out DIR    # photos 000001-010000 at half size (89 x 109)

CELEBA is the official download: img_align_celeba/ (202,599 JPEGs, "Align&Cropped Images"),
list_eval_partition.txt ("Eval") and identity_CelebA.txt ("Anno"). Each command writes DIR/img_align_celeba/ and
copies both text files beside it (all 202,599 rows: the loader ignores rows of absent files), so DIR is a CelebA
root for --data-root. subset: --people persons drawn (seeded) among those with at least --photos photos, --photos
of each drawn (seeded): a private set with many photos per person (membership audits by image and by person).
downsample: the first --first photos by file name, resized to --size (a public pretraining set; 32 px training
needs no more). Both print what they wrote; an existing DIR/img_align_celeba/ is an error, never overwritten.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from data import IDENTITY_FILE, find_celeba, read_identities
from utils import Parser, UserError, run_cli, seeded_perm


def build_parser():
    p = Parser(prog="make_celeba.py", description=__doc__.split("\n")[0], epilog=__doc__)
    p.add_argument("what", choices=["subset", "downsample"], help="which folder to make")
    p.add_argument("--celeba", required=True, help="the official CelebA root (img_align_celeba/ and the text files)")
    p.add_argument("--out", required=True, help="the new CelebA root")
    p.add_argument("--people", type=int, default=200, help="subset: persons")
    p.add_argument("--photos", type=int, default=30, help="subset: photos per person")
    p.add_argument("--seed", type=int, default=0, help="subset: seed of the draw of persons and photos")
    p.add_argument("--first", type=int, default=10000, help="downsample: how many photos, in file-name order")
    p.add_argument("--size", default="89x109", help="downsample: WIDTHxHEIGHT")
    return p


def subset(src: Path, people: int, photos: int, seed: int) -> list:
    """The photos of the subset: ``people`` persons drawn among those with at least ``photos`` photos on disk,
    ``photos`` of each, both draws seeded (utils.seeded_perm), sorted by file name."""
    img_dir = find_celeba(src)[0]
    ident = src / IDENTITY_FILE
    if not ident.is_file():
        raise UserError(f"{ident} not found: the subset draws persons (download identity_CelebA.txt, 'Anno')")
    by_person = {}
    for name, person in read_identities(ident).items():
        if (img_dir / name).is_file():
            by_person.setdefault(person, []).append(name)
    eligible = sorted(p for p, names in by_person.items() if len(names) >= photos)
    if len(eligible) < people:
        raise UserError(f"only {len(eligible)} persons have {photos} photos on disk; lower --people or --photos")
    chosen = [eligible[i] for i in seeded_perm(len(eligible), seed)[:people].tolist()]
    picked = []
    for k, person in enumerate(chosen):
        names = sorted(by_person[person])
        picked += [names[i] for i in seeded_perm(len(names), (seed, k))[:photos].tolist()]
    return sorted(picked)


def make(args) -> dict:
    src, out = Path(args.celeba).expanduser(), Path(args.out).expanduser()
    img_dir, partition = find_celeba(src)
    if (out / "img_align_celeba").exists():
        raise UserError(f"{out / 'img_align_celeba'} exists: choose a new --out")
    if args.what == "subset":
        if args.people < 1 or args.photos < 1:
            raise UserError("--people and --photos must be >= 1")
        names, size = subset(src, args.people, args.photos, args.seed), None
    else:
        try:
            size = tuple(int(v) for v in args.size.lower().split("x"))
            assert len(size) == 2 and min(size) > 0
        except (ValueError, AssertionError):
            raise UserError(f"--size takes WIDTHxHEIGHT, e.g. 89x109, got {args.size!r}") from None
        names = sorted(p.name for p in img_dir.glob("*.jpg"))[:args.first]
    tmp = out / ".img_align_celeba.partial"  # renamed when complete: a cut run leaves no half folder behind
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in names:
        if size is None:
            shutil.copy2(img_dir / name, tmp / name)
        else:
            from PIL import Image

            with Image.open(img_dir / name) as img:
                img.convert("RGB").resize(size, Image.LANCZOS).save(tmp / name, quality=95)
    tmp.rename(out / "img_align_celeba")
    copied = [f.name for f in (partition, src / IDENTITY_FILE) if f is not None and f.is_file()]
    for f in copied:
        shutil.copy2(src / f, out / f)
    print(f"wrote {len(names)} photos to {out / 'img_align_celeba'}" + (f" and {', '.join(copied)}" if copied else ""))
    return {"photos": len(names), "out": str(out)}


def main(argv=None):
    return run_cli(lambda a: make(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    main()

"""Image sources, the decode-once uint8 cache, and train/val/test splits.

Sources (``--data``):
  celeba          ROOT/img_align_celeba/*.jpg (+ optional ROOT/list_eval_partition.txt); torchvision's
                  ROOT/celeba/... layout works too. Partial copies are fine: partition rows naming
                  absent files are ignored; files on disk missing from the partition file are skipped
                  with a warning. Without a partition file, or with ``random_split`` (--random-split), the
                  split is a seeded 80/10/10 split over images. The official split is identity-disjoint;
                  membership audits need the random one (members and non-members exchangeable).
  folder:PATH     any folder of images (recursive; jpg/jpeg/png/webp/bmp), seeded 80/10/10 split.
  digits          scikit-learn's bundled 8x8 digits (1,797 images) upscaled; offline default.

Transform (as the seed project): resize the shorter side to ``image_size`` (bilinear, antialiased) ->
center crop -> grayscale (1 channel) or RGB (3) -> uint8. Models see ``to_float(x) = x/127.5 - 1``
in [-1, 1].

Decoding happens once: the uint8 tensor is cached on disk (``--cache-dir``, default outputs/cache)
under a key made of the file list, each file's size and mtime, and the transform, so later epochs
and runs read memory, and any change to the files or the transform rebuilds the cache.

Near-duplicates (photo sources: celeba, folder): CelebA holds re-encoded / re-cropped copies of the same
photograph under different file names. Images whose 32x32 grayscale versions correlate at >= ``dedup``
(Pearson correlation of the pixels, default 0.95) are linked, and each connected component is a *group*.
The seeded split assigns whole groups, and train_dcgan.py draws subsets and audit coins from one
representative per group, so a held-out image never has its twin in training. (0.95 was chosen by
inspecting pairs on the shared CelebA subset: above 0.965 every pair was the same photograph, 0.945-0.965
mixed, below that different photos; grouping two different photos only makes a split more conservative.)
The bundled digits have no exact duplicates and are not grouped: upscaled 8x8 digits correlate highly
without being copies.

Identities: the person shown by each image, from CelebA's identity_CelebA.txt beside the partition file (or
``identity_file``, --identity-file: any two-column '<file> <identity>' text file); without one every image is its
own person. ``split_unit`` 'identity' (--split-unit) keeps each person's images on one side of a seeded split.

``exclude_from`` (--exclude-from ROOT) drops every file whose name also appears under ROOT (a CelebA root
or an image folder) before decoding and, when both sides have identity labels, every file showing a person who
appears under ROOT: public pretraining data disjoint from a private set by photo and by person.

Bad files: unreadable, corrupt or truncated images are skipped and counted; a warning names them
(the run fails only when nothing is readable). RGBA/LA/palette/CMYK images are converted (alpha is
dropped); 16-bit images are scaled to 8 bits (x / 257), never clipped.
"""
from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from utils import UserError, atomic_torch_save, seeded_perm, sha256_json

IMG_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
SPLITS = ("train", "val", "test")
CACHE_VERSION = 1
DEDUP_THRESHOLD = 0.95
IDENTITY_FILE = "identity_CelebA.txt"
DEFAULT_CACHE_DIR = os.environ.get("DCGAN_CACHE_DIR", "outputs/cache")


@dataclass
class ImageSet:
    """All decoded images of a source as one uint8 tensor (N, C, H, W) plus split indices."""

    images: torch.Tensor
    names: list
    splits: dict = field(default_factory=dict)  # split name -> LongTensor of indices
    source: str = ""
    key: str = ""  # identity of files + transform; used by feature caches
    skipped: list = field(default_factory=list)
    groups: torch.Tensor | None = None  # near-duplicate group id per image (the smallest index in the group)
    dedup: dict = field(default_factory=dict)  # how the groups were formed and how many were merged
    identities: torch.Tensor | None = None  # person id per image (None: every image is its own person)
    identity_file: str | None = None

    def group_ids(self) -> torch.Tensor:
        return self.groups if self.groups is not None else torch.arange(len(self.images))

    def identity_ids(self) -> torch.Tensor:
        return self.identities if self.identities is not None else torch.arange(len(self.images))

    def identity_report(self, idx: torch.Tensor | None = None) -> dict:
        """How many people the images ``idx`` (default: all) show, and how many images each (config.json)."""
        ids = self.identity_ids() if idx is None else self.identity_ids()[idx]
        counts = torch.unique(ids, return_counts=True)[1].numpy() if len(ids) else np.zeros(1)
        return {"file": self.identity_file, "images": len(ids), "identities": int((counts > 0).sum()),
                "images_per_identity": {"min": int(counts.min()), "median": float(np.median(counts)),
                                        "max": int(counts.max())}}

    def representatives(self, idx: torch.Tensor) -> torch.Tensor:
        """The first image (lowest index) of each group among ``idx``; other group members are dropped."""
        idx = idx.sort().values
        g = self.group_ids()[idx]
        _, first = np.unique(g.numpy(), return_index=True)
        return idx[torch.from_numpy(np.sort(first))]

    def split(self, name: str) -> torch.Tensor:
        if name == "all":
            return self.images
        if name not in self.splits:
            raise UserError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)} or all")
        return self.images[self.splits[name]]

    def split_key(self, name: str) -> str:
        idx = self.splits[name].tolist() if name != "all" else "all"
        return sha256_json([self.key, name, idx])

    def __len__(self):
        return len(self.images)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the generator's range)."""
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] (generator output) -> uint8 [0, 255], rounding to nearest."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


# ----------------------------------------------------------------------------- decoding
def _to_mode(img: Image.Image, channels: int | None) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) <= 65535 else arr.max() / 255.0
        img = Image.fromarray(np.clip(np.round(arr / scale), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
    if channels is None:
        channels = 1 if img.mode in ("L", "1", "I", "F") else 3
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")  # drop alpha
    return img.convert("L" if channels == 1 else "RGB")


def transform_pil(img: Image.Image, image_size: int | None, channels: int | None) -> np.ndarray:
    """Resize shorter side -> center crop -> L/RGB -> uint8 array (C, H, W)."""
    import torchvision.transforms.functional as TF

    img = _to_mode(img, channels)
    if image_size:
        img = TF.center_crop(TF.resize(img, image_size, interpolation=TF.InterpolationMode.BILINEAR,
                                       antialias=True), image_size)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode(path, image_size, channels):
    """(uint8 array, None), or (None, why) for a file whose CONTENT is bad (corrupt, truncated, not an image): a
    skipped file is cached as such. A failure to read the file (an OSError with an errno: missing, no permission,
    an I/O error) may pass, so it is an error of the run, never remembered."""
    try:
        with Image.open(path) as img:
            img.load()
            return transform_pil(img, image_size, channels), None
    except OSError as e:
        if e.errno is not None:  # PIL's own decoding errors (truncated, unidentified) carry no errno
            raise UserError(f"cannot read {path} ({type(e).__name__}: {e.strerror or e}); fix or remove it and "
                            "run again") from None
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    except MemoryError:
        raise
    except Exception as e:  # any other decoder error: bad content
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def decode_files(paths, image_size, channels, desc="decoding", progress=True):
    """Decode files in parallel threads. Returns (uint8 tensor, kept indices, skipped [(path, why)])."""
    arrays, kept, skipped = [], [], []
    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: _decode(p, image_size, channels), paths, chunksize=64)
        for i, (arr, err) in enumerate(tqdm(results, total=len(paths), desc=desc, disable=not progress,
                                            unit="img", leave=False)):
            if arr is None:
                skipped.append((str(paths[i]), err))
            else:
                arrays.append(arr)
                kept.append(i)
    if arrays:
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise UserError(f"images have different sizes {sorted(shapes)[:3]}; pass an image size to resize them")
        return torch.from_numpy(np.stack(arrays)), kept, skipped
    return None, kept, skipped


def _warn_skipped(skipped, total):
    if skipped:
        eg = "; ".join(f"{Path(p).name} ({why})" for p, why in skipped[:3])
        print(f"warning: skipped {len(skipped)} of {total} unreadable image file(s), e.g. {eg}. "
              "Delete or re-download them to silence this.", file=sys.stderr)


def fingerprint(data: str, root=None) -> str:
    """What identifies a source's files without decoding them (a study stage's key, stages.py): the bundled digits'
    scikit-learn version; a photo folder's file names and sizes and the contents of its partition and identity
    files. A changed, added or removed file changes it."""
    import hashlib

    from utils import sha256_file

    if data == "digits":
        import sklearn

        return f"sklearn-digits {sklearn.__version__}"
    if data == "celeba":
        folder, part = find_celeba(Path(root).expanduser())
        extra = [part, celeba_identity_file(Path(root).expanduser())]
    else:
        folder, extra = Path(str(data).partition("folder:")[2] or root).expanduser(), []
    h = hashlib.sha256()
    for p in _list_images(folder):
        h.update(f"{p.relative_to(folder)}\0{p.stat().st_size}\n".encode())
    for f in extra:
        h.update(f"{f.name if f else None}\0{sha256_file(f) if f else ''}\n".encode())
    return h.hexdigest()


def _list_images(folder: Path) -> list:
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTS and p.is_file()]
    return sorted(files, key=lambda p: str(p.relative_to(folder)))


def _cached_decode(files, base: Path, image_size, channels, cache_dir, source, progress):
    """Decode ``files`` once; reuse the cached tensor while files and transform are unchanged."""
    stats = []
    for p in files:
        st = p.stat()
        stats.append((str(p.relative_to(base)), st.st_size, st.st_mtime_ns))
    key = sha256_json({"v": CACHE_VERSION, "base": str(base.resolve()), "files": stats,
                       "image_size": image_size, "channels": channels})
    cache = Path(cache_dir) / f"images-{source}-{image_size}px-{channels}ch-{key[:16]}.pt" if cache_dir else None
    blob = _cached(cache)
    if isinstance(blob, dict) and blob.get("key") == key:
        return blob["images"], blob["names"], blob["skipped"], key
    images, kept, skipped = decode_files(files, image_size, channels, desc=f"decoding {source}", progress=progress)
    names = [stats[i][0] for i in kept]
    skipped = [[str(Path(p).relative_to(base)), why] for p, why in skipped]
    if images is None:
        eg = "; ".join(f"{p} ({why})" for p, why in skipped[:3])
        raise UserError(f"none of the {len(files)} image files under {base} could be read (e.g. {eg})")
    if cache is not None:
        atomic_torch_save({"key": key, "images": images, "names": names, "skipped": skipped}, cache)
    return images, names, skipped, key


# ----------------------------------------------------------------------------- splits
def seeded_split(n: int, seed: int = 0, val_frac: float = 0.1, test_frac: float = 0.1, groups=None) -> dict:
    """Seeded 80/10/10 split. With ``groups`` (a group id per image) whole groups are assigned: groups are
    taken in a seeded random order and fill test, then val, then train (sizes rounded up to whole groups)."""
    n_test, n_val = int(round(n * test_frac)), int(round(n * val_frac))
    if n >= 3:
        n_test, n_val = max(n_test, 1), max(n_val, 1)
    if groups is None:
        perm = seeded_perm(n, seed)
        return {"test": perm[:n_test].sort().values, "val": perm[n_test:n_test + n_val].sort().values,
                "train": perm[n_test + n_val:].sort().values}
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    order = seeded_perm(len(uniq), seed).numpy()
    sizes = np.bincount(inv)[order]
    ends = np.cumsum(sizes)
    n_test_g = min(len(uniq), int(np.searchsorted(ends, n_test)) + 1) if n_test else 0
    taken = ends[n_test_g - 1] if n_test_g else 0
    n_val_g = (min(len(uniq), int(np.searchsorted(ends, taken + n_val)) + 1) - n_test_g) if n_val else 0
    where = np.empty(len(uniq), np.int64)
    where[order] = np.repeat([0, 1, 2], [n_test_g, n_val_g, len(uniq) - n_test_g - n_val_g])
    lab = torch.from_numpy(where[inv])
    return {s: torch.nonzero(lab == i).flatten() for i, s in enumerate(("test", "val", "train"))}


def pixel_rows(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Images (uint8, or floats in any range) as grayscale pixel rows, centred and of unit norm, so that the dot
    product of two rows is their Pearson correlation; ``size``: average-pooled to size x size first. A flat image is
    a zero row, near nothing."""
    x = images.float()
    if x.shape[1] == 3:  # ITU-R 601 luma, as PIL's "L"
        x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if size is not None and x.shape[-1] != size:
        x = torch.nn.functional.adaptive_avg_pool2d(x, size)
    v = x.flatten(1)
    v = v - v.mean(1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)


def near_duplicate_groups(images: torch.Tensor, threshold: float = DEDUP_THRESHOLD, chunk: int = 4096):
    """Group id per image (the smallest index of its group): connected components of the graph linking images
    whose 32x32 grayscale versions have Pearson correlation >= threshold. Chunked: memory O(chunk x N)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    v = pixel_rows(images, 32)
    rows, cols = [], []
    for i in range(0, len(v), chunk):
        c = v[i:i + chunk] @ v.T
        r, k = torch.nonzero(c >= threshold, as_tuple=True)
        keep = (r + i) < k  # each pair once, no self-pairs
        rows.append(r[keep] + i)
        cols.append(k[keep])
    r, k = (torch.cat(rows).numpy(), torch.cat(cols).numpy()) if rows else (np.zeros(0, int), np.zeros(0, int))
    n = len(v)
    _, lab = connected_components(coo_matrix((np.ones(len(r)), (r, k)), shape=(n, n)), directed=False)
    first = np.full(lab.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, lab, np.arange(n))
    return torch.from_numpy(first[lab])


def _groups(images, threshold, cache_dir, key):
    """Near-duplicate groups of a photo source, cached beside the decoded images; (groups, report)."""
    if not threshold or threshold <= 0:
        return None, {"threshold": None, "note": "near-duplicate grouping disabled"}
    path = Path(cache_dir) / f"groups-{sha256_json([key, threshold, CACHE_VERSION])[:16]}.pt" if cache_dir else None
    groups = _cached(path)
    if groups is None or len(groups) != len(images):
        groups = near_duplicate_groups(images, threshold)
        if path is not None:
            atomic_torch_save(groups, path)
    sizes = torch.bincount(groups)
    merged = sizes[sizes > 1]
    return groups, {"threshold": threshold, "measure": "Pearson correlation of 32x32 grayscale pixels",
                    "groups_merged": int(len(merged)), "images_in_merged_groups": int(merged.sum()),
                    "largest_group": int(sizes.max()) if len(sizes) else 0}


def _read_table(path, second: str, valid=None) -> dict:
    """A two-column '<file> <value>' text file (CelebA's annotation format): {file name: value}."""
    table = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or (valid is not None and parts[1] not in valid):
                raise UserError(f"{path}:{lineno}: expected '<file> <{second}>', got {line.strip()!r}")
            table[parts[0]] = parts[1]
    return table


def read_partition(path: Path) -> dict:
    """list_eval_partition.txt: {file name: 0 (train) | 1 (val) | 2 (test)}."""
    return {k: int(v) for k, v in _read_table(path, "0|1|2", ("0", "1", "2")).items()}


# ----------------------------------------------------------------------------- sources
def read_identities(path) -> dict:
    """CelebA's identity annotation (``identity_CelebA.txt``, no header), or any two-column text file in that
    format: {file name: identity}."""
    return _read_table(path, "identity")


def celeba_identity_file(root: Path) -> Path | None:
    """identity_CelebA.txt beside the partition file (plain or torchvision layout), if there is one."""
    for base in (root, root / "celeba"):
        if (base / "img_align_celeba").is_dir():
            return base / IDENTITY_FILE if (base / IDENTITY_FILE).is_file() else None
    return None


def _identity_table(identity_file) -> tuple:
    """(the identity file's {file name: person}, its resolved path), or (None, None) without one."""
    if identity_file is None:
        return None, None
    path = Path(identity_file).expanduser()
    if not path.is_file():
        raise UserError(f"--identity-file {path} does not exist; give a two-column '<file> <identity>' text file")
    return read_identities(path), str(path.resolve())


def _identities(names, table, path) -> torch.Tensor | None:
    """Person id per image from an identity table (images it does not list are their own person)."""
    if table is None:
        return None
    labels = [table.get(Path(n).name) for n in names]
    missing = sum(x is None for x in labels)
    if missing == len(names):
        raise UserError(f"none of the {len(names)} images is listed in {path}; is it the identity file of this data?")
    if missing:
        print(f"warning: {missing} image(s) are not in {Path(path).name}; each counts as a person of its own",
              file=sys.stderr)
    labels = [x if x is not None else f"\0{i}" for i, x in enumerate(labels)]
    return torch.from_numpy(np.unique(labels, return_inverse=True)[1].astype(np.int64))


def merge_groups(*labelings) -> torch.Tensor:
    """Connected components of "same label under any of the labelings" (e.g. near-duplicate groups and persons),
    each named by its smallest image index."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(labelings[0])
    rows, cols, offset = [], [], n
    for lab in labelings:
        inv = np.unique(np.asarray(lab), return_inverse=True)[1]
        rows.append(np.arange(n))
        cols.append(offset + inv)
        offset += inv.max() + 1 if n else 0
    r, c = np.concatenate(rows), np.concatenate(cols)
    _, comp = connected_components(coo_matrix((np.ones(len(r)), (r, c)), shape=(offset, offset)), directed=False)
    comp = comp[:n]
    first = np.full(comp.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, comp, np.arange(n))
    return torch.from_numpy(first[comp])


def find_celeba(root: Path):
    """Return (image folder, partition file or None) for the plain or torchvision CelebA layout."""
    for base in (root, root / "celeba"):
        if (base / "img_align_celeba").is_dir():
            img_dir = base / "img_align_celeba"
            # the official zip unpacks to img_align_celeba/img_align_celeba/
            if (img_dir / "img_align_celeba").is_dir() and not any(img_dir.glob("*.jpg")):
                img_dir = img_dir / "img_align_celeba"
            part = base / "list_eval_partition.txt"
            return img_dir, (part if part.is_file() else None)
    raise UserError(f"no img_align_celeba/ folder under {root} (or {root / 'celeba'}); "
                    "point --data-root at the folder that holds img_align_celeba/ and list_eval_partition.txt")


def _exclude(files, base: Path, exclude_from, identities=(None, None)):
    """Drop files whose name also appears under ``exclude_from`` (a CelebA root or an image folder) and, when both
    sides have identity labels (this source's ``identities`` = (table, path), and identity_CelebA.txt beside ROOT's
    partition file), every file showing a person who appears under ROOT: public data disjoint from a private set by
    photo and by person."""
    if not exclude_from:
        return files, None
    other = Path(exclude_from).expanduser()
    if not other.is_dir():
        raise UserError(f"--exclude-from {other} is not a folder")
    try:
        other_dir = find_celeba(other)[0]
    except UserError:
        other_dir = other
    other_files = _list_images(other_dir)
    names = {p.name for p in other_files}
    kept = [p for p in files if p.name not in names]
    report = {"exclude_from": str(other_dir.resolve()), "excluded": len(files) - len(kept)}
    other_ids = celeba_identity_file(other) if other_dir != other else None
    here, here_path = identities
    if here is not None and other_ids is not None:
        there = read_identities(other_ids)
        people = {there[n] for n in names if n in there}
        by_person = [p for p in kept if here.get(p.name) not in people]
        report.update(excluded_by_identity=len(kept) - len(by_person), identities_excluded=len(people),
                      identity_files=[here_path, str(other_ids.resolve())])
        kept = by_person
    else:
        report["excluded_by_identity"] = None  # not checkable: a side has no identity labels
    if not kept:
        raise UserError(f"--exclude-from {other}: every image of {base} is also there (by name or person); nothing "
                        "left to train on")
    return kept, report


def _cached(path):
    """What a cache file holds (loaded with weights_only=True), or None: no cache, no file, or unreadable (rebuilt)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except MemoryError:
        raise
    except Exception:
        return None


def _load_photos(folder: Path, kind: str, image_size, channels, cache_dir, progress, dedup, exclude_from,
                 identity_file):
    """Decode a photo folder (cached), minus --exclude-from's names and people, group its near-duplicates and label
    its people: (images, names, skipped, key, groups, dedup report, identities)."""
    files = _list_images(folder)
    if not files:
        raise UserError(f"{folder} holds no images (looked recursively for {', '.join(sorted(IMG_EXTS))})")
    table, id_path = _identity_table(identity_file)
    files, excl = _exclude(files, folder, exclude_from, (table, id_path))
    images, names, skipped, key = _cached_decode(files, folder, image_size, channels, cache_dir, kind, progress)
    _warn_skipped(skipped, len(files))
    groups, report = _groups(images, dedup, cache_dir, key)
    if excl:
        report.update(excl)
    return images, names, skipped, key, groups, report, (_identities(names, table, id_path), id_path)


def _split_groups(groups, identities, split_unit: str):
    """The groups a seeded split keeps whole: near-duplicate groups, and with split_unit 'identity' persons too."""
    if split_unit != "identity" or identities is None:
        return groups
    return merge_groups(identities, groups if groups is not None else torch.arange(len(identities)))


def _load_celeba(root, image_size, channels, cache_dir, split_seed, progress, random_split=False, dedup=None,
                 exclude_from=None, identity_file=None, split_unit="image"):
    img_dir, part_file = find_celeba(root)
    identity_file = identity_file or celeba_identity_file(root)
    images, names, skipped, key, groups, report, (ids, id_file) = _load_photos(
        img_dir, "celeba", image_size, channels, cache_dir, progress, dedup, exclude_from, identity_file)
    source = f"celeba:{img_dir}"
    if part_file is None or random_split:
        key = sha256_json([key, "groups", report] + ([split_unit, id_file] if split_unit != "image" else []))
        split = seeded_split(len(names), split_seed, groups=_split_groups(groups, ids, split_unit))
        return ImageSet(images, names, split, source, key, skipped, groups, report, ids, id_file)
    part = read_partition(part_file)
    labels = torch.tensor([part.get(Path(n).name, -1) for n in names])
    missing = int((labels < 0).sum())
    if missing == len(names):
        raise UserError(f"none of the {len(names)} images in {img_dir} is listed in {part_file}; "
                        "remove or fix the partition file")
    if missing:
        print(f"warning: {missing} image(s) in {img_dir} are not in {part_file.name} and are ignored", file=sys.stderr)
    splits = {s: torch.nonzero(labels == i).flatten() for i, s in enumerate(SPLITS)}
    key = sha256_json([key, "partition", labels.tolist()])
    return ImageSet(images, names, splits, source, key, skipped, groups, report, ids, id_file)


def _load_folder(folder, image_size, channels, cache_dir, split_seed, progress, dedup=None, exclude_from=None,
                 identity_file=None, split_unit="image"):
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist")
    images, names, skipped, key, groups, report, (ids, id_file) = _load_photos(
        folder, "folder", image_size, channels, cache_dir, progress, dedup, exclude_from, identity_file)
    key = sha256_json([key, "groups", report] + ([split_unit, id_file] if split_unit != "image" else []))
    split = seeded_split(len(names), split_seed, groups=_split_groups(groups, ids, split_unit))
    return ImageSet(images, names, split, f"folder:{folder}", key, skipped, groups, report, ids, id_file)


def _load_digits(image_size, channels, split_seed, cache_dir=None):
    key = sha256_json({"v": CACHE_VERSION, "source": "sklearn-digits", "image_size": image_size, "channels": channels})
    cache = Path(cache_dir) / f"images-digits-{image_size}px-{channels}ch-{key[:16]}.pt" if cache_dir else None
    images = _cached(cache)
    if images is None:  # resizing the 1,797 digits takes a few seconds: once per size and channel count
        from sklearn.datasets import load_digits

        raw = load_digits().images  # (1797, 8, 8), values 0..16
        raw = [Image.fromarray(np.round(im * 255 / 16).astype(np.uint8), "L") for im in raw]
        images = torch.from_numpy(np.stack([transform_pil(im, image_size, channels) for im in raw]))
        if cache is not None:
            atomic_torch_save(images, cache)
    names = [f"digit-{i:04d}" for i in range(len(images))]
    return ImageSet(images, names, seeded_split(len(images), split_seed), "digits", key,
                    dedup={"threshold": None, "note": "digits: no exact duplicates; not grouped"})


def load_images(data: str = "digits", root=None, image_size: int = 32, channels: int = 1,
                cache_dir=DEFAULT_CACHE_DIR, split_seed: int = 0, progress: bool = True,
                random_split: bool = False, dedup: float | None = DEDUP_THRESHOLD, exclude_from=None,
                identity_file=None, split_unit: str = "image") -> ImageSet:
    """Load a source (see module docstring) as an :class:`ImageSet`. ``dedup``: near-duplicate correlation
    threshold of photo sources (None or 0 disables grouping); ``exclude_from``: drop files named as there (and
    their people, where both sides have identity labels); ``identity_file``: the person of each image (CelebA:
    identity_CelebA.txt beside the partition file by default); ``split_unit`` 'identity': a seeded split keeps each
    person's images on one side."""
    if channels not in (1, 3):
        raise UserError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if dedup is not None and not 0 <= dedup <= 1:
        raise UserError(f"--dedup-threshold must be in [0, 1] (0 disables), got {dedup}")
    if split_unit not in ("image", "identity"):
        raise UserError(f"--split-unit must be image or identity, got {split_unit!r}")
    if data == "digits":
        if exclude_from or identity_file:
            raise UserError("--exclude-from and --identity-file apply to celeba and folder sources, not digits")
        return _load_digits(image_size, channels, split_seed, cache_dir)
    if data == "celeba":
        if root is None:
            raise UserError("--data celeba needs --data-root (the folder holding img_align_celeba/)")
        root = Path(root).expanduser()
        if not root.exists():
            raise UserError(f"--data-root {root} does not exist")
        return _load_celeba(root, image_size, channels, cache_dir, split_seed, progress, random_split, dedup,
                            exclude_from, identity_file, split_unit)
    if data.startswith("folder:") or data == "folder":
        folder = Path(data[len("folder:"):] if data != "folder" else (root or "")).expanduser()
        return _load_folder(folder, image_size, channels, cache_dir, split_seed, progress, dedup, exclude_from,
                            identity_file, split_unit)
    raise UserError(f"unknown --data {data!r}; use celeba, folder:PATH or digits")


def load_native(path) -> torch.Tensor:
    """Read a folder of images (e.g. generated samples) as-is: no resize, L stays 1 channel."""
    folder = Path(path)
    files = _list_images(folder)
    if not files:
        raise UserError(f"{folder} holds no images")
    images, _, skipped = decode_files(files, None, None, desc=f"reading {folder.name}", progress=False)
    _warn_skipped(skipped, len(files))
    if images is None:
        raise UserError(f"none of the images in {folder} could be read")
    return images


def save_npz(path, images: torch.Tensor) -> None:
    """Save uint8 images (N, C, H, W) as .npz (key 'images'), atomically."""
    import io

    from utils import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, images=images.numpy())
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path) -> torch.Tensor:
    try:
        with np.load(path, allow_pickle=False) as z:
            key = "images" if "images" in z.files else z.files[0]
            arr = z[key]
    except Exception as e:
        raise UserError(f"cannot read {path} as .npz of images ({type(e).__name__}: {e})") from None
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise UserError(f"{path}: expected images of shape (N, C, H, W) or (N, H, W, C), got {arr.shape}")
    if arr.shape[1] not in (1, 3) and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.min() >= -1.0001 and arr.max() <= 1.0001 and arr.min() < 0:
            return to_uint8(torch.from_numpy(arr.astype(np.float32)))
        raise UserError(f"{path}: images must be uint8 [0,255] or float in [-1,1], got {arr.dtype} "
                        f"in [{arr.min()}, {arr.max()}]")
    return torch.from_numpy(np.ascontiguousarray(arr))


warnings.filterwarnings("ignore", message=".*Palette images with Transparency.*")

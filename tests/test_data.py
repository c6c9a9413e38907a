import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from utils import UserError


def _img(path, mode="RGB", size=(40, 50), value=None):
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    if mode == "I;16":
        arr = rng.integers(0, 65535, size[::-1], dtype=np.uint16) if value is None else np.full(size[::-1], value, np.uint16)
        Image.fromarray(arr).save(path)
        return
    shape = size[::-1] + ((len(mode),) if mode in ("RGB", "RGBA") else ())
    arr = rng.integers(0, 255, shape, dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA" if mode == "RGBA" else ("RGB" if mode == "RGB" else "L"))
    if mode == "P":
        img = img.convert("RGB").convert("P")
    img.save(path)


def test_folder_with_bad_files(tmp_path, capsys):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    _img(root / "a.jpg")
    _img(root / "sub" / "b.png", "RGBA")
    _img(root / "c.png", "P")
    _img(root / "d.png", "I;16", value=65535)
    _img(root / "e.webp")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = root / "trunc.jpg"
    _img(good)
    good.write_bytes(good.read_bytes()[:200])  # truncated JPEG
    (root / "notes.txt").write_text("not an image")
    s = data.load_images(f"folder:{root}", image_size=32, channels=1, cache_dir=tmp_path / "cache")
    assert s.images.dtype == torch.uint8 and s.images.shape == (5, 1, 32, 32)
    assert sorted(s.names) == ["a.jpg", "c.png", "d.png", "e.webp", "sub/b.png"]
    assert sorted(p for p, _ in s.skipped) == ["corrupt.jpg", "trunc.jpg"]
    err = capsys.readouterr().err
    assert "skipped 2 of 7" in err and "corrupt.jpg" in err
    # 16-bit white is scaled (65535 / 257 = 255), not clipped garbage
    assert int(s.images[s.names.index("d.png")].min()) == 255
    # splits are disjoint and cover everything
    allidx = torch.cat([s.splits[k] for k in data.SPLITS]).sort().values
    assert torch.equal(allidx, torch.arange(5))
    rgb = data.load_images(f"folder:{root}", image_size=32, channels=3, cache_dir=None)
    assert rgb.images.shape == (5, 3, 32, 32)


def test_a_read_error_is_an_error_of_the_run_and_never_cached(tmp_path, monkeypatch):
    """A file whose content is bad is skipped, and the skip is cached with the decoded images; a file that cannot
    be read (an OSError with an errno: I/O error, no permission, vanished) may read next time, so it stops the run
    with a one-line error and nothing is cached: the images, splits and coins never depend on a passing failure."""
    import errno

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(6):
        _img(root / f"{i}.png")
    (root / "bad.png").write_bytes(b"not an image")
    real_open = Image.open

    def flaky(path, *a, **k):
        if Path(path).name == "3.png":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(Image, "open", flaky)
    with pytest.raises(UserError, match=r"cannot read .*3\.png .*Input/output error.*fix or remove it"):
        data.load_images(f"folder:{root}", image_size=32, channels=1, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("images-*.pt"))
    monkeypatch.setattr(Image, "open", real_open)
    s = data.load_images(f"folder:{root}", image_size=32, channels=1, cache_dir=tmp_path / "cache")
    assert len(s.images) == 6 and [p for p, _ in s.skipped] == ["bad.png"]
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 1


def test_transform_resize_crop():
    img = Image.new("L", (40, 80))
    img.paste(255, (0, 20, 40, 60))  # white centre band, black top and bottom
    arr = data.transform_pil(img, 16, 1)
    # shorter side -> 16 (40x80 -> 16x32), centre crop keeps the band (edge rows blurred by antialiasing)
    assert arr.shape == (1, 16, 16) and arr[0, 1:-1].min() == 255 and arr[0, 0].max() < 255


@pytest.mark.parametrize("spec,msg", [("folder:/nonexistent/x", "does not exist"), ("bogus", "unknown --data")])
def test_bad_sources(spec, msg):
    with pytest.raises(UserError, match=msg):
        data.load_images(spec)


def test_empty_and_unreadable_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        data.load_images(f"folder:{tmp_path / 'empty'}", cache_dir=None)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="could be read"):
        data.load_images(f"folder:{bad}", cache_dir=None)
    with pytest.raises(UserError, match="--data-root"):
        data.load_images("celeba", root=tmp_path / "missing")
    with pytest.raises(UserError, match="img_align_celeba"):
        data.load_images("celeba", root=tmp_path)


def _fake_celeba(root, names, partition):
    d = root / "img_align_celeba"
    d.mkdir(parents=True)
    for n in names:
        _img(d / n, size=(45, 55))
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, s in partition.items()))


def test_celeba_partial_copy(tmp_path, capsys):
    part = {f"{i:06d}.jpg": (0 if i <= 6 else 1 if i <= 8 else 2) for i in range(1, 11)}
    on_disk = ["000001.jpg", "000002.jpg", "000005.jpg", "000007.jpg", "000009.jpg", "000010.jpg", "999999.jpg"]
    _fake_celeba(tmp_path, on_disk, part)
    s = data.load_images("celeba", tmp_path, image_size=32, cache_dir=None)
    names = lambda k: sorted(s.names[i] for i in s.splits[k])  # noqa: E731
    assert names("train") == ["000001.jpg", "000002.jpg", "000005.jpg"]
    assert names("val") == ["000007.jpg"]
    assert names("test") == ["000009.jpg", "000010.jpg"]
    assert "999999.jpg" not in sum((names(k) for k in data.SPLITS), [])
    assert "not in list_eval_partition.txt" in capsys.readouterr().err


def test_torchvision_layout_and_no_partition(tmp_path):
    d = tmp_path / "celeba" / "img_align_celeba"
    d.mkdir(parents=True)
    for i in range(10):
        _img(d / f"{i:06d}.jpg")
    s = data.load_images("celeba", tmp_path, image_size=32, cache_dir=None)
    assert len(s) == 10 and [len(s.splits[k]) for k in data.SPLITS] == [8, 1, 1]
    s2 = data.load_images("celeba", tmp_path, image_size=32, cache_dir=None)
    assert all(torch.equal(s.splits[k], s2.splits[k]) for k in data.SPLITS)  # seeded, deterministic


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(4):
        _img(root / f"{i}.png")
    cache = tmp_path / "cache"
    first = data.load_images(f"folder:{root}", cache_dir=cache)
    assert len(list(cache.glob("images-*.pt"))) == 1

    def boom(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(data, "decode_files", boom)
    again = data.load_images(f"folder:{root}", cache_dir=cache)
    assert torch.equal(first.images, again.images) and first.key == again.key
    monkeypatch.undo()
    _img(root / "0.png", size=(41, 50))  # content (size) changes -> rebuild
    os.utime(root / "0.png", ns=(1, 1))
    changed = data.load_images(f"folder:{root}", cache_dir=cache)
    assert changed.key != first.key and not torch.equal(changed.images[0], first.images[0])
    other = data.load_images(f"folder:{root}", image_size=64, cache_dir=cache)  # other transform -> other entry
    assert other.images.shape[-1] == 64 and len(list(cache.glob("images-*.pt"))) == 3


def test_digits_offline():
    s = data.load_images("digits", image_size=32, channels=3)
    assert s.images.shape == (1797, 3, 32, 32) and s.images.dtype == torch.uint8
    assert [len(s.splits[k]) for k in data.SPLITS] == [1437, 180, 180]
    x = data.to_float(s.images[:4])
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(data.to_uint8(x), s.images[:4])


def test_npz_roundtrip(tmp_path):
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    data.save_npz(tmp_path / "s.npz", x)
    assert torch.equal(data.load_npz(tmp_path / "s.npz"), x)
    np.savez(tmp_path / "f.npz", images=np.random.rand(2, 8, 8, 3).astype(np.float32))  # [0,1] floats: ambiguous
    with pytest.raises(UserError, match="uint8"):
        data.load_npz(tmp_path / "f.npz")


def test_real_celeba_subset(celeba_root, tmp_path):
    s = data.load_images("celeba", celeba_root, image_size=32, channels=1, cache_dir=tmp_path)
    assert [len(s.splits[k]) for k in data.SPLITS] == [4560, 780, 659]
    assert s.images.shape == (5999, 1, 32, 32)
    assert 60 < s.images.float().mean() < 200  # real faces, not blank


# ----------------------------------------------------------------------------- near-duplicate groups
def _smooth_images(n, seed):
    """n distinct smooth 48x48 gray 'photos' (random low-frequency patterns, like faces at this scale)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 6, 6, generator=g)
    return (torch.nn.functional.interpolate(low, size=48, mode="bicubic", align_corners=False).clamp(0, 1) * 255)


def test_planted_near_duplicates_are_grouped_and_never_split(tmp_path):
    base = _smooth_images(60, 0)
    twins = {3: 40, 7: 41, 11: 42}  # image i gets a near-copy j: re-encoded (noise) and shifted by one pixel
    imgs = base.clone()
    g = torch.Generator().manual_seed(1)
    for i, j in twins.items():
        imgs[j] = (torch.roll(base[i], 1, dims=2) + torch.randn(base[i].shape, generator=g) * 3).clamp(0, 255)
    imgs[50] = imgs[3].clone()  # and an exact copy: a group of three
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, x in enumerate(imgs):
        Image.fromarray(x[0].round().byte().numpy(), "L").save(folder / f"{k:03d}.png")
    s = data.load_images(f"folder:{folder}", image_size=32, channels=1, cache_dir=tmp_path / "c")
    groups = s.group_ids()
    assert s.dedup["groups_merged"] == 3 and s.dedup["images_in_merged_groups"] == 7
    assert groups[3] == groups[40] == groups[50] and groups[7] == groups[41] and groups[11] == groups[42]
    assert len(torch.unique(groups)) == 60 - 4  # nothing else was merged: distinct images stay apart
    for seed in range(20):  # whatever the split seed, a group lives in one split
        splits = data.seeded_split(len(groups), seed, groups=groups)
        where = torch.full((len(groups),), -1)
        for k, idx in enumerate(splits.values()):
            where[idx] = k
        assert (where >= 0).all() and all(len(set(where[groups == u].tolist())) == 1 for u in torch.unique(groups))
    reps = s.representatives(torch.arange(60))
    assert len(reps) == 56 and 40 not in reps.tolist() and 3 in reps.tolist()
    # 0 disables grouping; RGB input gives the same groups (luma)
    off = data.load_images(f"folder:{folder}", image_size=32, channels=1, cache_dir=tmp_path / "c", dedup=0)
    assert off.groups is None
    rgb = data.load_images(f"folder:{folder}", image_size=32, channels=3, cache_dir=tmp_path / "c")
    assert torch.equal(rgb.group_ids(), groups)


def test_group_split_sizes_follow_the_fractions():
    groups = torch.arange(1000) // 2  # 500 pairs
    splits = data.seeded_split(1000, 0, groups=groups)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes["test"] in (100, 101, 102) and sizes["val"] in (100, 101, 102) and sum(sizes.values()) == 1000
    one = data.seeded_split(10, 0, groups=torch.zeros(10, dtype=torch.long))  # a single group is never cut
    assert [len(one[k]) for k in ("test", "val", "train")] == [10, 0, 0]


def test_exclude_from_drops_files_named_elsewhere(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for name in ("x.png", "y.png", "z.png"):
        _img(a / name)
    _img(b / "y.png")
    s = data.load_images(f"folder:{a}", image_size=32, channels=1, cache_dir=tmp_path / "c", exclude_from=b)
    assert sorted(s.names) == ["x.png", "z.png"] and s.dedup["excluded"] == 1
    with pytest.raises(UserError, match="not a folder"):
        data.load_images(f"folder:{a}", image_size=32, cache_dir=None, exclude_from=tmp_path / "nope")


# ----------------------------------------------------------------------------- identities
def _fake_celeba_people(root, people, start):
    """A CelebA root with people[i] photos of person i + start, random pixels, and identity_CelebA.txt."""
    d = root / "img_align_celeba"
    d.mkdir(parents=True)
    rows, k = [], 0
    for i, count in enumerate(people):
        for _ in range(count):
            k += 1
            name = f"{start * 1000 + k:06d}.jpg"
            _img(d / name, size=(40, 48), value=None)
            rows.append(f"{name} {start + i}\n")
    (root / "identity_CelebA.txt").write_text("".join(rows))
    return [r.split()[0] for r in rows]


def test_identity_labels_are_read_and_reported(tmp_path, capsys):
    names = _fake_celeba_people(tmp_path, [3, 1, 2], start=7)
    (tmp_path / "img_align_celeba" / "999999.jpg").write_bytes((tmp_path / "img_align_celeba" / names[0]).read_bytes())
    s = data.load_images("celeba", tmp_path, image_size=32, cache_dir=None, dedup=0)
    assert s.identity_file.endswith("identity_CelebA.txt") and "not in identity_CelebA.txt" in capsys.readouterr().err
    ids = s.identity_ids()
    by_name = dict(zip(s.names, ids.tolist()))
    assert by_name[names[0]] == by_name[names[1]] == by_name[names[2]] != by_name[names[3]]
    assert by_name["999999.jpg"] not in {by_name[n] for n in names}  # unlisted: a person of its own
    rep = s.identity_report()
    assert rep["identities"] == 4 and rep["images_per_identity"] == {"min": 1, "median": 1.5, "max": 3}
    digits = data.load_images("digits", image_size=32, cache_dir=None)  # no labels: every image its own person
    assert digits.identities is None and digits.identity_report()["identities"] == len(digits)
    with pytest.raises(UserError, match="not digits"):
        data.load_images("digits", identity_file=tmp_path / "identity_CelebA.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("000001.jpg\n")
    with pytest.raises(UserError, match="bad.txt:1: expected '<file> <identity>'"):
        data.load_images("celeba", tmp_path, image_size=32, cache_dir=None, identity_file=bad)
    with pytest.raises(UserError, match="--identity-file .*nope.txt does not exist"):  # also beside --exclude-from
        data.load_images("celeba", tmp_path, image_size=32, cache_dir=None, identity_file=tmp_path / "nope.txt",
                         exclude_from=tmp_path)


def test_split_by_identity_keeps_every_person_on_one_side(tmp_path):
    _fake_celeba_people(tmp_path, [5] * 12, start=1)  # 12 people, 5 photos each; no partition file: seeded split
    by_image = data.load_images("celeba", tmp_path, image_size=32, cache_dir=None, dedup=0)
    by_person = data.load_images("celeba", tmp_path, image_size=32, cache_dir=None, dedup=0, split_unit="identity")

    def people_per_split(s):
        return {k: set(s.identity_ids()[v].tolist()) for k, v in s.splits.items()}
    image_sides = people_per_split(by_image)
    assert image_sides["train"] & (image_sides["val"] | image_sides["test"])  # photos split, people shared
    sides = people_per_split(by_person)
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    assert sum(len(v) for v in by_person.splits.values()) == 60 and all(len(v) for v in by_person.splits.values())
    assert data.merge_groups(torch.tensor([0, 0, 1, 2]), torch.tensor([5, 6, 6, 7])).tolist() == [0, 0, 0, 3]


def test_exclude_from_drops_the_people_of_the_other_root(tmp_path):
    """Public data disjoint from a private root by person, where both have identity labels: a photo of a person who
    has another photo there goes too; without labels on one side only the names are compared."""
    private, public = tmp_path / "private", tmp_path / "public"
    _fake_celeba_people(private, [2, 2], start=1)  # persons 1, 2
    pub = _fake_celeba_people(public, [3, 1, 2], start=2)  # persons 2 (shared, other photos), 3, 4
    s = data.load_images("celeba", public, image_size=32, cache_dir=None, dedup=0, exclude_from=private)
    assert sorted(s.names) == sorted(pub[3:]) and s.dedup["excluded"] == 0
    assert s.dedup["excluded_by_identity"] == 3 and s.dedup["identities_excluded"] == 2
    (private / "identity_CelebA.txt").unlink()
    s = data.load_images("celeba", public, image_size=32, cache_dir=None, dedup=0, exclude_from=private)
    assert len(s) == 6 and s.dedup["excluded_by_identity"] is None  # not checkable


def test_shared_public_pretraining_set_shares_no_person_with_the_private_subset(celeba_root):
    """The study's public data (the 10k folder minus the subset's file names and people) and the private subset
    share no identity. (Measured: the subset's 132 people with photos in the 10k folder appear there only through
    the 277 files the two share by name, so the identity check finds nothing more to remove on this data.)"""
    import os

    public = os.environ.get("CELEBA_10K_ROOT")
    if not public:
        pytest.skip("CelebA 10k folder not available: set CELEBA_10K_ROOT (.ci/run points it at ../shared)")
    table = data.read_identities(celeba_root / "identity_CelebA.txt")
    private = {table[p.name] for p in (celeba_root / "img_align_celeba").glob("*.jpg")}
    names = data._exclude(data._list_images(Path(public) / "img_align_celeba"), Path(public), celeba_root,
                          data._identity_table(Path(public) / "identity_CelebA.txt"))
    kept, report = names
    assert not {table[p.name] for p in kept} & private
    assert report["identities_excluded"] == 200 and report["excluded"] == 277 and report["excluded_by_identity"] == 0


def test_make_celeba_folders_of_the_results_design(tmp_path, capsys):
    """make_celeba.py subset draws whole persons with enough photos and that many photos of each; downsample resizes
    the first photos; both copy the annotation files and give a folder the loader takes as a CelebA root."""
    import make_celeba

    src = tmp_path / "celeba"
    names = _fake_celeba_people(src, [3, 4, 1, 3], start=1)  # persons 1-4; person 3 has one photo
    (src / "list_eval_partition.txt").write_text("".join(f"{n} 0\n" for n in names))
    make_celeba.main(["subset", "--celeba", str(src), "--out", str(tmp_path / "sub"), "--people", "2", "--photos", "3"])
    PARTITION = "list_eval_partition.txt"
    ident = data.read_identities(tmp_path / "sub" / "identity_CelebA.txt")
    got = sorted(p.name for p in (tmp_path / "sub" / "img_align_celeba").iterdir())
    people = {ident[n] for n in got}
    assert len(got) == 6 and len(people) == 2 and 3 not in people  # person 3 has too few photos
    assert all(sum(ident[n] == p for n in got) == 3 for p in people) and (tmp_path / "sub" / PARTITION).is_file()
    assert make_celeba.subset(src, 2, 3, 0) == got  # seeded
    assert len({tuple(make_celeba.subset(src, 1, 2, seed)) for seed in range(6)}) > 1
    s = data.load_images("celeba", tmp_path / "sub", image_size=32, cache_dir=None, dedup=0)
    assert len(s) == 6 and s.identity_report()["identities"] == 2
    make_celeba.main(["downsample", "--celeba", str(src), "--out", str(tmp_path / "small"), "--first", "5",
                      "--size", "20x24"])
    small = sorted((tmp_path / "small" / "img_align_celeba").iterdir())
    assert [p.name for p in small] == sorted(names)[:5] and Image.open(small[0]).size == (20, 24)
    for argv, msg in ((["subset", "--people", "4", "--photos", "3"], "only 3 persons have 3 photos"),
                      (["downsample", "--size", "20"], "--size takes WIDTHxHEIGHT"),
                      (["downsample", "--out", str(tmp_path / "small")], "exists: choose a new --out")):
        with pytest.raises(SystemExit) as e:
            make_celeba.main(argv[:1] + ["--celeba", str(src), "--out", str(tmp_path / "x")] + argv[1:])
        assert e.value.code == 2 and msg in capsys.readouterr().err

import numpy as np
import pytest
import scipy.linalg
import torch

import evaluate_mifid
import metrics
from utils import UserError


def _feats(n, d=16, seed=0, shift=0.0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_fid_self_is_zero():
    f = _feats(500, 32)
    assert abs(metrics.fid(f, f)) < 1e-8


def test_fid_closed_form_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_fid_matches_scipy_sqrtm_reference():
    f1, f2 = _feats(300, 24, 1), _feats(300, 24, 2, shift=0.3)
    mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # pytorch-fid's formula
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert metrics.fid(f1, f2) == pytest.approx(ref, rel=1e-8)


def _naive_d(query, ref):
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    d = 1 - np.abs(q @ r.T)
    return d.min(axis=1), d.argmin(axis=1)


def test_chunked_nearest_equals_naive():
    g, t = _feats(70, 8, 3), _feats(133, 8, 4)
    d, idx = metrics.nearest_cosine(g, t, chunk_q=16, chunk_r=25)
    rd, ridx = _naive_d(g, t)
    assert np.allclose(d, rd, atol=1e-6) and np.array_equal(idx, ridx)
    d2, _ = metrics.nearest_cosine(g, t, chunk_q=7, chunk_r=4)  # streaming path (many reference chunks)
    assert np.allclose(d2, rd, atol=1e-6)


def test_mifid_kaggle_direction_against_numpy():
    gen, train = np.abs(_feats(40, 8, 5)), np.abs(_feats(90, 8, 6))
    gen[3] = 0  # all-zero rows are dropped, as in the Kaggle code
    keep = gen.sum(1) != 0
    d_ref = _naive_d(gen[keep], train)[0].mean()
    r = metrics.mifid(10.0, gen, train, eps=1.0)
    assert r["d"] == pytest.approx(d_ref, rel=1e-6)
    assert r["mifid"] == pytest.approx(10.0 / (d_ref + 1e-14), rel=1e-6)
    assert metrics.mifid(10.0, gen, train, eps=1e-9)["mifid"] == pytest.approx(10.0)  # above threshold: FID
    # memorised copies: d -> 0 and MiFID explodes
    copies = metrics.mifid(10.0, train[:20] * 2.0, train, eps=0.1)
    assert copies["d"] < 1e-6 and copies["mifid"] > 1e6


def test_mifid_directions_differ_and_torchmetrics_matches():
    gen, train = np.abs(_feats(30, 8, 7)), np.abs(_feats(80, 8, 8))
    kag = metrics.mifid(5.0, gen, train, eps=1.0, direction="kaggle")["d"]
    tm = metrics.mifid(5.0, gen, train, eps=1.0, direction="torchmetrics")["d"]
    assert tm == pytest.approx(_naive_d(train, gen)[0].mean(), rel=1e-6) and abs(kag - tm) > 1e-3
    mifid_tm = pytest.importorskip("torchmetrics.image.mifid")
    ref = mifid_tm._compute_cosine_distance(torch.tensor(train), torch.tensor(gen), cosine_distance_eps=1.0)
    assert tm == pytest.approx(float(ref), rel=1e-6)


def test_kid_matches_naive_unbiased_mmd():
    x, y = _feats(30, 6, 9), _feats(30, 6, 10, shift=0.5)
    k = lambda a, b: (a @ b.T / 6 + 1) ** 3  # noqa: E731
    m = 30
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    ref = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    mean, std = metrics.kid(x, y, subsets=3, subset_size=30)
    assert mean == pytest.approx(ref, rel=1e-10) and std == pytest.approx(0, abs=1e-10)


def test_precision_recall_against_naive():
    real, fake = _feats(60, 4, 11), _feats(50, 4, 12, shift=0.8)

    def naive(a, b, k=3):
        daa = np.linalg.norm(a[:, None] - a[None], axis=-1)
        rad = np.sort(daa, axis=1)[:, k]
        dba = np.linalg.norm(b[:, None] - a[None], axis=-1)
        return (dba <= rad[None]).any(axis=1).mean()

    p, r = metrics.precision_recall(real, fake, k=3, chunk=16)
    assert p == pytest.approx(naive(real, fake)) and r == pytest.approx(naive(fake, real))
    p1, r1 = metrics.precision_recall(real, real)
    assert p1 == 1.0 and r1 == 1.0


def test_input_range_conversion():
    """Generator outputs in [-1, 1] map to the full uint8 range; [0, 255] floats are rejected.
    (The seed fed [-1, 1] to a metric expecting [0, 1]: half the range was clipped to black.)"""
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0]).view(1, 1, 2, 2)
    u = metrics.to_uint8_rgb(x)
    assert u.shape == (1, 3, 2, 2) and u.dtype == torch.uint8
    assert u[0, 0].flatten().tolist() == [0, 64, 128, 255]
    assert torch.equal(metrics.to_uint8_rgb(u), u)
    with pytest.raises(UserError, match=r"\[-1, 1\]"):
        metrics.to_uint8_rgb(x * 127.5 + 127.5)


def test_feature_cache_is_keyed_by_pixels(tmp_path):
    """Same pixels (another tensor, e.g. a dataset restored with new file dates) hit the cache; one changed pixel,
    other Inception weights or no cache dir miss it."""
    calls = []

    class Stub:
        identity = {"weights": "a"}

        def __call__(self, images, desc=""):
            calls.append(len(images))
            return images.flatten(1).float().numpy()[:, :3]

    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    first = metrics.cached_features(Stub(), x, tmp_path)
    again = metrics.cached_features(Stub(), x.clone(), tmp_path)
    assert calls == [5] and np.array_equal(first, again)
    y = x.clone()
    y[2, 0, 0, 1] ^= 1
    assert not np.array_equal(metrics.cached_features(Stub(), y, tmp_path), first) and calls == [5, 5]
    other = Stub()
    other.identity = {"weights": "b"}
    metrics.cached_features(other, x, tmp_path)
    metrics.cached_features(Stub(), x, None)
    assert calls == [5, 5, 5, 5] and len(list(tmp_path.glob("features-*.npy"))) == 3


def test_weights_checks(tmp_path, monkeypatch):
    bad = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(2)}, bad)
    with pytest.raises(UserError, match="Mixed_7c"):
        metrics.verify_weights(bad)
    other = tmp_path / "other.pth"
    torch.save({"Mixed_7c.branch_pool.conv.weight": torch.zeros(1)}, other)
    with pytest.warns(UserWarning, match="not the official"):
        metrics.verify_weights(other)
    with pytest.raises(UserError, match="not the official"):
        metrics.verify_weights(other, strict=True)
    with pytest.raises(UserError, match="not found"):
        metrics.resolve_inception_weights(tmp_path / "missing.pth")
    # offline with nothing cached: one clear error, no random-weights fallback
    monkeypatch.delenv("INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(metrics, "WEIGHTS_URL", (tmp_path / "nowhere.pth").as_uri())
    with pytest.raises(UserError, match="--inception-weights"):
        metrics.resolve_inception_weights()


@pytest.mark.parametrize("extra,msg", [
    (["--batch-size", "0"], "--batch-size must be >= 1"),  # was a bare ValueError from deep in metrics.py
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--max-real", "0"], "--max-real must be >= 1"),
    (["--kid-subset-size", "1"], "--kid-subset-size must be >= 2"),
    (["--mifid-eps", "0"], "--mifid-eps must be > 0"),
])
def test_evaluate_bad_input_is_one_line(tmp_path, capsys, extra, msg):
    with pytest.raises(SystemExit) as e:
        evaluate_mifid.main(["--gen", str(tmp_path), "--out", str(tmp_path / "eval"), *extra])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1


def test_shared_weights_are_recognised(inception_weights):
    assert metrics.verify_weights(inception_weights) in metrics.KNOWN_WEIGHTS


def _celeba_32px_folders(celeba_root, tmp_path, n):
    """Two folders of n 32px gray CelebA images: (a) the seeded train subset evaluate_mifid --max-real n
    uses, (b) test images."""
    import data
    from PIL import Image

    from utils import seeded_subset

    s = data.load_images("celeba", celeba_root, image_size=32, channels=1, cache_dir=tmp_path / "c")
    dirs = []
    for name, idx in (("a", seeded_subset(s.splits["train"], n, 0)), ("b", s.splits["test"][:n])):
        d = tmp_path / name
        d.mkdir()
        for j, i in enumerate(idx.tolist()):
            Image.fromarray(s.images[i, 0].numpy(), "L").save(d / f"{j:03d}.png")
        dirs.append(d)
    return s, dirs


def test_features_and_fid_match_torch_fidelity(celeba_root, inception_weights, tmp_path):
    """Our pipeline (channels_last, our FID) == torch-fidelity's calculate_metrics on the same folders: features to
    1e-4, FID to 1e-4 relative (issue #35's bound)."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    import data

    s, (a, b) = _celeba_32px_folders(celeba_root, tmp_path, 24)
    ours = metrics.InceptionFeatures(inception_weights, batch_size=24)
    ref_net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(inception_weights)).eval()
    x = data.load_native(a)
    fa = ours(x, progress=False)
    with torch.no_grad():
        fr = ref_net(metrics.to_uint8_rgb(x))[0].numpy()
    assert fa.shape == (24, 2048) and np.allclose(fa, fr, rtol=1e-3, atol=1e-4)
    fb = ours(data.load_native(b), progress=False)
    tf = torch_fidelity.calculate_metrics(input1=str(a), input2=str(b), fid=True, cuda=False, verbose=False,
                                          feature_extractor_weights_path=str(inception_weights), save_cpu_ram=True)
    assert metrics.fid(fa, fb) == pytest.approx(tf["frechet_inception_distance"], rel=1e-4)


def test_evaluate_cli_end_to_end(celeba_root, inception_weights, tmp_path):
    import json

    import evaluate_mifid

    _, (a, _) = _celeba_32px_folders(celeba_root, tmp_path, 12)
    out = tmp_path / "eval"
    argv = ["--gen", str(a), "--real", "celeba", "--data-root", str(celeba_root), "--max-real", "12",
            "--inception-weights", str(inception_weights), "--cache-dir", str(tmp_path / "c"), "--out", str(out),
            "--kid-subset-size", "12", "--save-stats", str(tmp_path / "stats.npz")]
    evaluate_mifid.main(argv)
    r = json.loads((out / "eval.json").read_text())
    assert r["n_gen"] == 12 and r["n_train"] == 12 and r["n_heldout"] == 12
    # the generated set IS the 12 training images: fully memorised, d ~ 0, FID vs train ~ 0
    assert r["memorization_d"] < 1e-4 and r["fid_train"] < 1e-2 and r["fid_heldout"] > 10
    assert r["mifid"] == pytest.approx(r["fid_train"] / (r["memorization_d"] + 1e-14))
    assert r["fraction_below_eps"] == 1.0
    assert (out / "nn_gallery.png").is_file() and (out / "memorization_hist.png").is_file()
    assert len(list((tmp_path / "c").glob("features-*.npy"))) == 2  # train + held-out features cached
    r2 = evaluate_mifid.evaluate(evaluate_mifid.build_parser().parse_args(
        argv[:4] + ["--real", str(tmp_path / "stats.npz")] + argv[6:12] + ["--out", str(tmp_path / "e2")]))
    assert r2["fid_train"] == pytest.approx(r["fid_train"], rel=1e-9)


def test_evaluate_defaults_to_the_runs_own_training_set(tmp_path, inception_weights):
    """A run trained on a coin-drawn subset is scored against exactly the images it trained on."""
    import json

    import evaluate_mifid
    import runs
    import train_dcgan
    from conftest import tiny_args

    run = tmp_path / "run"
    train_dcgan.main(tiny_args(run, "--max-steps", "2", "--train-size", "12", "--coin-subset"))
    td = runs.run_training_data(run)
    evaluate_mifid.main(["--gen", str(run), "--inception-weights", str(inception_weights), "--cache-dir", "",
                         "--kid-subset-size", "8", "--max-real", "30", "--out", str(tmp_path / "eval")])
    r = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert r["n_train"] == len(torch.unique(td.index)) == sum(td.coins["included"])
    assert "training set of" in r["real"] and r["n_gen"] == 16
    with pytest.raises(SystemExit) as e:  # a plain image file set has no training set to default to
        evaluate_mifid.main(["--gen", str(run / "samples.npz"), "--inception-weights", str(inception_weights)])
    assert e.value.code == 2


@pytest.mark.parametrize("n1,n2", [(40, 300), (300, 40), (30, 30), (300, 300)])
def test_fid_through_the_smaller_set_equals_the_covariance_formula(n1, n2):
    """fid() takes the n x n route when a set has fewer rows than dimensions (the study's 1,000 samples of 2048-d
    features); it must equal frechet_distance on the two covariances and pytorch-fid's sqrtm formula. (Those carry
    about 1e-8 relative error of their own where a covariance is singular: square roots of round-off eigenvalues.)"""
    f1, f2 = _feats(n1, 64, 3), _feats(n2, 64, 4, shift=0.2) * 1.5
    (mu1, s1), (mu2, s2) = metrics.feature_stats(f1), metrics.feature_stats(f2)
    sqrtm = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert metrics.fid(f1, f2) == pytest.approx(metrics.frechet_distance(mu1, s1, mu2, s2), rel=1e-7)
    assert metrics.fid(f1, f2) == pytest.approx(sqrtm, rel=1e-7)


def test_kid_over_overlapping_subsets_matches_per_subset_products():
    """KID reads each subset's block of the full kernel matrices: the same as forming every subset's products."""
    x, y = _feats(50, 8, 11), _feats(40, 8, 12, shift=0.3)
    rng = np.random.default_rng(5)
    vals = []
    for _ in range(7):
        a, b = x[rng.choice(50, 20, replace=False)], y[rng.choice(40, 20, replace=False)]
        kxx, kyy, kxy = ((u @ v.T / 8 + 1) ** 3 for u, v in ((a, a), (b, b), (a, b)))
        vals.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (20 * 19) - 2 * kxy.mean())
    mean, std = metrics.kid(x, y, subsets=7, subset_size=20, seed=5)
    assert mean == pytest.approx(np.mean(vals), rel=1e-10) and std == pytest.approx(np.std(vals), rel=1e-8)

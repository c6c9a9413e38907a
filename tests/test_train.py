import copy
import json

import pytest
import torch

import gan
import privacy
import runs
import train_dcgan
from conftest import tiny_args
from models import build_models, load_generator
from training_set import TrainingData


def _run(tmp_path, *extra):
    return train_dcgan.train(train_dcgan.build_parser().parse_args(tiny_args(tmp_path, *extra)))


def _weights(run):
    ck = torch.load(run / "ckpt.pt", weights_only=True)
    return ck, {**{f"G.{k}": v for k, v in ck["G"].items()}, **{f"D.{k}": v for k, v in ck["D"].items()}}


def test_two_steps_write_every_artefact(tmp_path):
    res = _run(tmp_path, "--max-steps", "2")
    for f in ("config.json", "ckpt.pt", "log.jsonl", "loss_curve.png", "grids/epoch_001.png", "generator.pt",
              "samples.npz", "results.json"):
        assert (tmp_path / f).is_file(), f
    assert res["steps"] == 2 and res["images_per_s"] > 0
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["args"]["batch_size"] == 32 and "torch" in cfg["versions"] and cfg["device"] == "cpu"
    steps = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == [1, 2]
    G, cfg = load_generator(tmp_path / "generator.pt")
    import data

    s = data.load_npz(tmp_path / "samples.npz")
    assert s.shape == (16, 1, 32, 32) and s.dtype == torch.uint8


def test_resume_equivalence(tmp_path):
    _run(tmp_path / "full", "--max-steps", "4")
    _run(tmp_path / "split", "--max-steps", "2")
    _run(tmp_path / "split", "--max-steps", "4", "--resume")
    a, wa = _weights(tmp_path / "full")
    b, wb = _weights(tmp_path / "split")
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    la = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    lb = (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    steps = lambda lines: [json.loads(x) for x in lines if '"step"' in x and '"kind": "step"' in x]  # noqa: E731
    assert steps(la) == steps(lb)


def test_short_epochs_checkpoint_every_few_dozen_steps_and_resume_exactly(tmp_path, monkeypatch):
    """At small N an epoch is 2 D steps: checkpoints come at epoch ends at least CKPT_MIN_STEPS apart (and at the end),
    and a run interrupted between two of them resumes from the last one to the same weights and log."""
    extra = ("--train-size", "40", "--epochs", "60", "--ema-decay", "0.99")  # 2 D steps per epoch, 120 in all
    saves = []
    real_save = runs.atomic_torch_save
    monkeypatch.setattr(runs, "atomic_torch_save", lambda obj, path: (saves.append(obj.get("step")),
                                                                            real_save(obj, path)))
    _run(tmp_path / "full", *extra)
    assert saves == [50, 100, 120, None]  # three checkpoints (not 60), then generator.pt

    real_grid = runs.save_grid

    def crash_at_epoch_42(G, z, path):
        if path.name == "epoch_042.png":  # a grid every 3 epochs (60 / 25); D step 84
            raise KeyboardInterrupt
        real_grid(G, z, path)
    monkeypatch.setattr(runs, "save_grid", crash_at_epoch_42)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "split", *extra)
    assert torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)["step"] == 50  # 34 steps are lost
    monkeypatch.setattr(runs, "save_grid", real_grid)
    _run(tmp_path / "split", *extra, "--resume")
    (a, wa), (b, wb) = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert a["step"] == b["step"] == 120 and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(a["G_ema"][k], b["G_ema"][k]) for k in a["G_ema"])
    lines = lambda run: [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines(tmp_path / "full") == lines(tmp_path / "split")


def test_identical_runs_in_separate_processes_are_bit_identical(tmp_path):
    # what a reader of a results table relies on: the same command, a fresh process, the same weights (the DP
    # script: the shared loop plus the noise)
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for name, seed in (("a", "0"), ("b", "0"), ("other-seed", "1")):
        subprocess.run([sys.executable, str(repo / "train_dcgan_dp.py"), *tiny_args(tmp_path / name, "--max-steps", "3"),
                        "--seed", seed], check=True, capture_output=True, cwd=tmp_path)
    (_, wa), (_, wb), (_, wc) = (_weights(tmp_path / n) for n in ("a", "b", "other-seed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # the comparison can fail


def test_resuming_a_finished_run_leaves_its_artefacts_alone(tmp_path):
    first = _run(tmp_path, "--max-steps", "2")
    files = {f: (tmp_path / f).read_bytes() for f in ("results.json", "samples.npz", "generator.pt", "ckpt.pt")}
    again = _run(tmp_path, "--max-steps", "2", "--resume")
    assert again == json.loads(files["results.json"]) and again["final_loss_d"] == first["final_loss_d"] is not None
    assert all((tmp_path / f).read_bytes() == b for f, b in files.items())


def test_resume_across_epoch_boundary(tmp_path):
    # digits train split = 1437 images -> 45 steps/epoch at batch 32; stop mid-epoch 2, resume to the end
    _run(tmp_path / "full", "--epochs", "2", "--max-steps", "50", "--ckpt-every", "20")
    _run(tmp_path / "split", "--epochs", "2", "--max-steps", "47")
    _run(tmp_path / "split", "--epochs", "2", "--max-steps", "50", "--resume")
    _, wa = _weights(tmp_path / "full")
    _, wb = _weights(tmp_path / "split")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_refuses_to_overwrite_and_resume_mismatch(tmp_path, capsys):
    _run(tmp_path, "--max-steps", "1")
    with pytest.raises(SystemExit) as e:
        train_dcgan.main(tiny_args(tmp_path, "--max-steps", "1"))
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_dcgan.main(tiny_args(tmp_path, "--max-steps", "2", "--resume", "--lr", "0.1"))
    assert "--lr" in capsys.readouterr().err
    # a CelebA root ($CELEBA_ROOT by default) is not part of a digits run: set or not, the run resumes
    train_dcgan.main(tiny_args(tmp_path, "--max-steps", "2", "--resume", "--data-root", str(tmp_path)))
    assert json.loads((tmp_path / "config.json").read_text())["args"]["data_root"] is None


def test_g_lr_scale_sets_g_lr_only_and_is_locked_on_resume(tmp_path, capsys):
    _run(tmp_path, "--max-steps", "1", "--lr", "3e-4", "--g-lr-scale", "2.5")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert [g["lr"] for g in ckpt["optG"]["param_groups"]] == [pytest.approx(7.5e-4)]
    assert [g["lr"] for g in ckpt["optD"]["param_groups"]] == [pytest.approx(3e-4)]
    assert train_dcgan.build_parser().parse_args([]).g_lr_scale == 1.0  # the non-private default: one lr
    with pytest.raises(SystemExit):
        train_dcgan.main(tiny_args(tmp_path, "--max-steps", "2", "--resume", "--lr", "3e-4"))
    assert "--g-lr-scale" in capsys.readouterr().err


@pytest.mark.parametrize("argv,msg", [
    (["--g-lr-scale", "0"], "--g-lr-scale must be positive"),
    (["--data", "celeba", "--data-root", "/nonexistent"], "does not exist"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--data", "folder:/nonexistent"], "does not exist"),
    (["--augment", "translation,rotate"], "--augment takes a comma-separated list of translation, cutout, flip"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        train_dcgan.main(["--out", str(tmp_path / "x"), "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_checkpoint_loading_is_safe(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "generator.pt"
    bad.write_bytes(pickle.dumps({"G": Evil(), "config": {}}))
    from utils import UserError

    with pytest.raises(UserError, match="cannot load"):
        load_generator(bad)


def test_celeba_one_epoch(tmp_path):
    import os

    root = os.environ.get("CELEBA_10K_ROOT")
    if not root:
        pytest.skip("CelebA 10k folder not available: set CELEBA_10K_ROOT (.ci/run points it at ../shared)")
    res = train_dcgan.train(train_dcgan.build_parser().parse_args(
        tiny_args(tmp_path, "--max-steps", "3", "--batch-size", "64")[2:] + ["--data", "celeba", "--data-root", root,
                                                                            "--cache-dir", str(tmp_path / "c")]))
    assert res["n_train"] == 10000 and (tmp_path / "grids" / "epoch_001.png").is_file()


# ----------------------------------------------------------------------------- D steps per G step, EMA, warm start
def _log(run):
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_k_d_steps_per_g_step_and_exact_resume_with_ema(tmp_path):
    extra = ("--d-steps", "3", "--ema-decay", "0.9", "--augment", "flip,translation")
    _run(tmp_path / "full", "--max-steps", "8", *extra)
    _run(tmp_path / "split", "--max-steps", "4", *extra)  # stops inside a block of 3 D steps
    res = _run(tmp_path / "split", "--max-steps", "8", "--resume", *extra)
    assert res["steps"] == 8 and res["g_steps"] == 2  # G steps after D steps 3 and 6
    a, wa = _weights(tmp_path / "full")
    b, wb = _weights(tmp_path / "split")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(a["G_ema"][k], b["G_ema"][k]) for k in a["G_ema"])
    assert not all(torch.equal(a["G_ema"][k], a["G"][k]) for k in a["G"])  # the EMA is not the raw G
    assert [r.get("g_step") for r in _log(tmp_path / "full") if r["kind"] == "step"] == \
        [None, None, 1, None, None, 2, None, None]
    # the released generator is the EMA
    G, _ = load_generator(tmp_path / "full" / "generator.pt")
    assert all(torch.equal(G.state_dict()[k], a["G_ema"][k]) for k in a["G_ema"])


@pytest.mark.parametrize("warmup", [10.0, 3.0])
def test_ema_equals_a_hand_computation(warmup):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = copy.deepcopy(model)
    want = [p.detach().clone() for p in model.parameters()]
    for t in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        gan.ema_update(ema, model, 0.9, t, warmup)
        b = min(0.9, (1 + t) / (warmup + t))  # warm-up, then the decay
        want = [b * w + (1 - b) * p.detach() for w, p in zip(want, model.parameters())]
    assert all(torch.allclose(e, w, atol=1e-6) for e, w in zip(ema.parameters(), want))


def test_adaptive_schedule_climbs_the_ladder_by_hand():
    s = gan.DStepSchedule(k=1, adaptive=0.6, grace=3, beta=0.5)
    ks = []
    for acc in [0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]:  # one G step each
        while not s.d_step_done():
            pass
        s.g_step_done(acc)
        ks.append(s.k)
    # EMA after G steps 4..: 0.55, 0.375, ... <= 0.6; the first change waits for 3 G steps at K = 1
    assert ks == [1, 1, 1, 2, 2, 2, 5, 5, 5, 10]
    fixed, due = gan.DStepSchedule(k=4), []
    for _ in range(9):
        due.append(fixed.d_step_done())
        if due[-1]:
            fixed.g_step_done(0.0)
    assert due == [False, False, False, True] * 2 + [False] and fixed.k == 4  # fixed K never moves


def test_adaptive_schedule_never_reads_real_data(tmp_path, monkeypatch):
    """K follows D's accuracy on fresh fakes only: wiping every real image once the D step has used it (and all
    held-out images) must not change K or the weights; the schedule must also move, or the test proves nothing."""
    extra = ("--max-steps", "60", "--adaptive-d-steps", "0.9", "--adaptive-grace", "3")
    _run(tmp_path / "clean", *extra)
    orig_step, orig_data = privacy.NonPrivate.d_step, TrainingData.__init__
    noise = torch.Generator().manual_seed(1)  # the wiping must not consume the training run's RNG

    def d_step(self, D, optD, real, fake, units=None):
        out = orig_step(self, D, optD, real, fake, units)
        # a later read of this batch (e.g. to measure D's accuracy) would see noise
        real.copy_(torch.rand(real.shape, generator=noise) * 2 - 1)
        return out

    def data_init(self, args, progress=True):
        orig_data(self, args, progress)
        held = torch.cat([self.imgs.splits["val"], self.imgs.splits["test"]])
        self.imgs.images[held] = torch.randint(0, 256, self.imgs.images[held].shape, generator=noise,
                                               dtype=torch.uint8)

    monkeypatch.setattr(privacy.NonPrivate, "d_step", d_step)
    monkeypatch.setattr(TrainingData, "__init__", data_init)
    _run(tmp_path / "wiped", *extra)
    k = lambda run: [r["k"] for r in _log(run) if r["kind"] == "step"]  # noqa: E731
    assert k(tmp_path / "clean") == k(tmp_path / "wiped") and len(set(k(tmp_path / "clean"))) > 1
    _, wa = _weights(tmp_path / "clean")
    _, wb = _weights(tmp_path / "wiped")
    assert all(torch.equal(wa[key], wb[key]) for key in wa)


def test_init_from_loads_weights_and_rejects_other_architectures(tmp_path, capsys, monkeypatch):
    _run(tmp_path / "src", "--max-steps", "3")  # G EMA 0.999 (the default): the released G is the EMA
    _run(tmp_path / "dst", "--max-steps", "1", "--init-from", str(tmp_path / "src"), "--ema-decay", "0",
         "--lr", "1e-9")
    cfg = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert cfg["init_from"]["run"] == str(tmp_path / "src") and cfg["init_from"]["same_data_as_this_run"]
    assert cfg["init_from"]["generator"] == "EMA"
    src, _ = _weights(tmp_path / "src")
    dst, _ = _weights(tmp_path / "dst")  # one tiny step away from the source's EMA generator and its D

    def dist(a, b):
        return max((a[k] - b[k]).abs().max().item() for k in a)
    assert dist(src["G_ema"], dst["G"]) < 1e-6 < 1e-4 < dist(src["G"], dst["G"])
    assert 0 < dist(src["D"], dst["D"]) < 1e-6
    monkeypatch.chdir(tmp_path)  # resuming with the source spelled relative: the same folder, so the run continues
    res = _run(tmp_path / "dst", "--max-steps", "2", "--init-from", "src", "--ema-decay", "0", "--lr", "1e-9",
               "--resume")
    assert res["steps"] == 2
    with pytest.raises(SystemExit) as e:
        train_dcgan.main(tiny_args(tmp_path / "bad", "--max-steps", "1", "--ngf", "16", "--init-from",
                                   str(tmp_path / "src")))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "different architecture" in err and "--ngf 8 there, 16 here" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_mode_seeking_generator_loss_by_hand(lam):
    """--mode-seeking adds lam / (mean|G(z1) - G(z2)| / mean|z1 - z2| + 1e-5) over the batch halves to G's loss."""
    from models import build_models

    torch.manual_seed(0)
    G, D = build_models(8, 8, 8, 1, 32)
    ref = copy.deepcopy(G)
    bce = torch.nn.BCEWithLogitsLoss()
    torch.manual_seed(1)
    gan.g_step(G, D, torch.optim.SGD(G.parameters(), lr=0.1), privacy.NonPrivate(), 16, 8, "cpu", lam)
    assert all(p.grad is None for p in D.parameters())  # D is frozen in the G step
    torch.manual_seed(1)
    z = torch.randn(16, 8)
    x = ref(z)
    out = D(x)
    lz = (x[:8] - x[8:]).abs().mean() / (z[:8] - z[8:]).abs().mean()
    (bce(out, torch.ones_like(out)) + lam / (lz + 1e-5)).backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(G.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _shift(img, dy, dx):
    """img (C, H, W) moved down by dy and right by dx, zeros where it came from outside."""
    out = torch.zeros_like(img)
    h, w = img.shape[1:]
    out[:, max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = img[:, max(0, -dy):h - max(0, dy),
                                                                     max(0, -dx):w - max(0, dx)]
    return out


def test_augment_by_hand():
    """Each image is shifted by its own (dy, dx) in [-4, 4]^2 at 32 px (zero fill) and mirrored with probability
    1/2; gradients flow back to the pixels used; '' is the identity."""
    torch.manual_seed(0)
    x = torch.randn(64, 1, 32, 32, requires_grad=True)
    assert gan.augment(x, "") is x
    y = gan.augment(x, "translation,flip")
    shifts, flips = set(), 0
    for i in range(len(x)):
        hits = [(dy, dx, f) for f in (False, True) for dy in range(-4, 5) for dx in range(-4, 5)
                if torch.equal(y[i], _shift(x[i].flip(2) if f else x[i], -dy, -dx))]
        assert len(hits) == 1, i  # exactly one shift and flip explains the image
        shifts.add(hits[0][:2])
        flips += hits[0][2]
    assert len(shifts) > 30 and {d for s in shifts for d in s} == set(range(-4, 5)) and 16 <= flips <= 48
    y.sum().backward()
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0} and x.grad.sum() == sum((y[i] != 0).sum() for i in range(64))


def test_cutout_by_hand():
    """Cutout zeroes one axis-aligned square of half the side per image (16 x 16 at 32 px, cut off at the border),
    its centre drawn over the whole image, and leaves every other pixel as it was."""
    torch.manual_seed(0)
    x = torch.rand(200, 1, 32, 32) + 1  # no zeros of its own
    y = gan.augment(x, "cutout")
    sizes, corners = set(), set()
    for i in range(len(x)):
        zero = y[i, 0] == 0
        assert torch.equal(y[i, 0][~zero], x[i, 0][~zero])
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert zero.sum() == len(rows) * len(cols)  # one rectangle ...
        assert rows.tolist() == list(range(rows[0], rows[-1] + 1)) and cols.tolist() == list(range(cols[0], cols[-1] + 1))
        assert (len(rows) == 16 or rows[0] == 0 or rows[-1] == 31) and (len(cols) == 16 or cols[0] == 0 or cols[-1] == 31)
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16  # ... a 16 x 16 square, at least its quarter inside
        sizes.add((len(rows), len(cols)))
        corners.add((rows[0].item() == 0, rows[-1].item() == 31))
    assert (16, 16) in sizes and len(sizes) > 10 and corners == {(True, False), (False, False), (False, True)}


def test_augment_changes_training_and_is_what_d_sees(tmp_path, monkeypatch):
    seen = []
    orig = gan.augment
    monkeypatch.setattr(gan, "augment", lambda x, ops: seen.append(ops) or orig(x, ops))
    _run(tmp_path / "aug", "--max-steps", "2", "--augment", "translation")
    assert seen == ["translation"] * 6  # D step: real and fake; G step: the fakes; twice
    _run(tmp_path / "plain", "--max-steps", "2")
    a, b = _weights(tmp_path / "aug")[1], _weights(tmp_path / "plain")[1]
    assert not all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- memorization rejection
def test_memorization_rejection_removes_a_planted_training_image_from_g_loss():
    """A 'generator' whose output holds an exact copy of a training image (and a brightened copy: the same
    correlation) next to fresh images: those copies get no gradient from G's adversarial loss, the others do;
    without rejection every sample does."""
    torch.manual_seed(0)
    train_u8 = torch.randint(0, 256, (20, 1, 32, 32), dtype=torch.uint8)
    planted = train_u8[7].float() / 127.5 - 1

    class Fixed(torch.nn.Module):  # ignores z: its "samples" are parameters, so their gradients show who counts
        def __init__(self):
            super().__init__()
            self.x = torch.nn.Parameter(torch.cat([planted[None], (planted[None] * 0.5 + 0.2),
                                                   torch.rand(6, 1, 32, 32) * 2 - 1]))

        def forward(self, z):
            return self.x

    _, D = build_models(8, 8, 8, 1, 32)
    reject = gan.MemorizationRejection(train_u8, tau=0.05)
    assert reject.distances(torch.stack([planted, planted * 0.5 + 0.2])).max() < 1e-5  # copies: distance 0
    for rej, removed in ((reject, {0, 1}), (None, set())):
        G = Fixed()
        gan.g_step(G, D, torch.optim.SGD(G.parameters(), lr=0.0), privacy.NonPrivate(), 8, 4, "cpu", reject=rej)
        zero = {i for i in range(8) if G.x.grad[i].abs().max() == 0}
        assert zero == removed
    assert reject.last_rate == 0.25 and reject.steps == 1


def test_memorization_rejection_calibrates_tau_from_held_out_images_and_logs_the_rate(tmp_path, capsys):
    res = _run(tmp_path / "mr", "--max-steps", "3", "--mr-quantile", "0.5")
    cfg = json.loads((tmp_path / "mr" / "config.json").read_text())["memorization_rejection"]
    assert cfg["quantile"] == 0.5 and cfg["tau"] == pytest.approx(cfg["reference_quantiles"]["0.5"])
    assert 0 < cfg["tau"] < 1 and "val images" in cfg["reference"]
    rates = [r["mr_rejected"] for r in _log(tmp_path / "mr") if r["kind"] == "step"]
    assert len(rates) == 3 and all(0 <= r <= 1 for r in rates)
    assert res["memorization_rejection"]["rejected_mean"] == pytest.approx(sum(rates) / 3)
    import train_dcgan_dp

    with pytest.raises(SystemExit) as e:  # it reads the training set every G step: not DP
        train_dcgan_dp.main(tiny_args(tmp_path / "dp", "--memorization-rejection", "0.1"))
    assert e.value.code == 2 and "not be post-processing" in capsys.readouterr().err

import copy
import json
import types

import pytest
import torch
from PIL import Image

import train_dcgan
import train_dcgan_dp
from conftest import tiny_args
from models import build_models

BCE = torch.nn.BCEWithLogitsLoss()


def _privacy(**kw):
    a = dict(epsilon=None, noise_multiplier=0.0, delta=1e-5, max_grad_norm=0.05, clipping="flat", accountant="rdp",
             poisson=True, secure_rng=False, grad_sample_mode="hooks", max_physical_batch_size=None)
    a.update(kw)
    return train_dcgan_dp.DPPrivacy(types.SimpleNamespace(**a))


def _setup(n_pairs=5, **kw):
    torch.manual_seed(0)
    G, D = build_models(nz=8, ngf=8, ndf=8)
    G, D = G.double(), D.double()  # float64: (p0 - p1) / lr recovers the gradient to 1e-12
    real = torch.rand(n_pairs, 1, 32, 32, dtype=torch.float64) * 2 - 1
    fake = G(torch.randn(n_pairs, 8, dtype=torch.float64)).detach()
    pv = _privacy(**kw)
    Dc = copy.deepcopy(D)
    Dp, opt = pv.make_private(Dc, torch.optim.SGD(Dc.parameters(), lr=0.1), n_train=10 * n_pairs,
                              batch_size=n_pairs, steps_per_epoch=10, total_steps=10)
    return D, Dp, opt, pv, real, fake


def _reference_clipped_sum(D, real, fake, C):
    """Independent reference: per-PAIR gradients by plain autograd, each clipped to C, summed."""
    params = list(D.parameters())
    total, norms = None, []
    for i in range(len(real)):
        out_r, out_f = D(real[i:i + 1]), D(fake[i:i + 1])
        loss = BCE(out_r, torch.ones(1)) + BCE(out_f, torch.zeros(1))
        g = torch.autograd.grad(loss, params)
        n = torch.sqrt(sum((x ** 2).sum() for x in g)).item()
        norms.append(n)
        f = min(1.0, C / (n + 1e-6))
        total = [x * f for x in g] if total is None else [t + x * f for t, x in zip(total, g)]
    return total, norms


def _new_params(pv, Dp):
    return [p.detach().clone() for p in pv.unwrap(Dp).parameters()]


@pytest.mark.parametrize("mode", train_dcgan_dp.GRAD_SAMPLE_MODES)
def test_per_pair_clipping_matches_reference(mode):
    C = 0.05
    D, Dp, opt, pv, real, fake = _setup(max_grad_norm=C, grad_sample_mode=mode)
    ref, norms = _reference_clipped_sum(copy.deepcopy(D), real, fake, C)
    assert min(norms) > 10 * C  # clipping is active for every pair
    pv.d_step(Dp, opt, real, fake, BCE)  # noise 0, SGD lr 0.1 on (clipped sum) / expected batch size 5
    assert opt.expected_batch_size == 5
    clipped_sum = [(p0 - p1) / 0.1 * 5 for p0, p1 in zip(D.parameters(), _new_params(pv, Dp))]
    for g, r in zip(clipped_sum, ref):
        assert torch.allclose(g, r, atol=1e-10)
    # each unit contributes at most C: the clipped sum of 5 pairs has norm <= 5 C
    assert torch.sqrt(sum((g ** 2).sum() for g in clipped_sum)) <= 5 * C + 1e-5
    if mode == "ghost":  # the ghost norms themselves are the per-pair gradient norms
        assert torch.allclose(pv.clipper.last_norms, torch.tensor(norms, dtype=torch.float64), rtol=1e-10)


def test_ghost_norms_on_rgb_64px_with_bias():
    """Both paths (ghost norms over stride sub-grids, grouped-conv materialisation), several chunks, float64."""
    torch.manual_seed(0)
    nn = torch.nn  # 64 -> 32 -> 8 -> 4 -> 1; the third conv (kernel 3, stride 2: 4 sub-grid groups) is a ghost one
    D = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.GroupNorm(2, 8), nn.LeakyReLU(0.2), nn.Conv2d(8, 32, 4, 4),
                      nn.Conv2d(32, 128, 3, 2, 1), nn.GroupNorm(4, 128), nn.Conv2d(128, 1, 4), nn.Flatten(0)).double()
    real, fake = torch.randn(7, 3, 64, 64).double(), torch.randn(7, 3, 64, 64).double()
    clipper = train_dcgan_dp.PairGhostClipper(D, max_grad_norm=0.5, chunk_floats=1000)
    clipper.step(D, real, fake)
    ref, norms = _reference_clipped_sum(copy.deepcopy(D), real, fake, 0.5)
    assert torch.allclose(clipper.last_norms, torch.tensor(norms, dtype=torch.float64), rtol=1e-10)
    assert min(norms) > 0.5 and all(torch.allclose(p.grad, r, atol=1e-12) for p, r in zip(D.parameters(), ref))


def test_ghost_norms_on_odd_sizes_strides_and_kernels(monkeypatch):
    """Sub-grid edge cases, each through the ghost path: an input size that the stride does not divide, no
    padding, stride 3 with padding 2 (taps at negative sub-grid shifts), and a kernel smaller than its stride
    (sub-grids that no tap reads). Float64, against per-pair autograd."""
    torch.manual_seed(1)
    nn = torch.nn
    D = nn.Sequential(nn.Conv2d(2, 4, 3, 2, 0), nn.Conv2d(4, 6, 5, 3, 2), nn.GroupNorm(2, 6), nn.LeakyReLU(0.2),
                      nn.Conv2d(6, 8, 1, 2, bias=False), nn.Conv2d(8, 1, 2), nn.Flatten(0)).double()
    real, fake = torch.randn(4, 2, 23, 23).double(), torch.randn(4, 2, 23, 23).double()  # 23 -> 11 -> 4 -> 2 -> 1
    clipper = train_dcgan_dp.PairGhostClipper(D, max_grad_norm=0.5, chunk_floats=3000)
    ghost = []
    original = clipper._ghost_sq_norms
    monkeypatch.setattr(clipper, "_ghost_is_cheaper", lambda *costs: True)  # small layers would be materialised
    monkeypatch.setattr(clipper, "_ghost_sq_norms", lambda m, *a: ghost.append(m) or original(m, *a))
    clipper.step(D, real, fake)
    assert ghost == [D[0], D[1], D[4], D[5]]
    ref, norms = _reference_clipped_sum(copy.deepcopy(D), real, fake, 0.5)
    assert torch.allclose(clipper.last_norms, torch.tensor(norms, dtype=torch.float64), rtol=1e-10)
    assert min(norms) > 0.5 and all(torch.allclose(p.grad, r, atol=1e-12) for p, r in zip(D.parameters(), ref))


def test_per_layer_clipping_matches_reference_and_keeps_sensitivity_c():
    """--clipping per-layer: each block (a conv and the GroupNorm after it) of each pair's gradient clipped to
    C / sqrt(L) by an independent per-pair autograd reference; every pair's clipped gradient has norm <= C."""
    torch.manual_seed(0)
    _, D = build_models(ndf=8)
    D = D.double()
    real, fake = torch.rand(5, 1, 32, 32, dtype=torch.float64) * 2 - 1, torch.randn(5, 1, 32, 32, dtype=torch.float64)
    C = 0.05
    clipper = train_dcgan_dp.PairGhostClipper(D, max_grad_norm=C, clipping="per-layer")
    blocks = [[D.main[0]], [D.main[2], D.main[3]], [D.main[5], D.main[6]], [D.main[8]]]  # conv, (conv, GN) ...
    assert clipper.n_blocks == len(blocks) == 4
    ref = {}
    for i in range(5):
        out_r, out_f = D(real[i:i + 1]), D(fake[i:i + 1])
        loss = BCE(out_r, torch.ones(1)) + BCE(out_f, torch.zeros(1))
        pair = []
        for block in blocks:
            params = [p for m in block for p in m.parameters()]
            g = torch.autograd.grad(loss, params, retain_graph=True)
            norm = torch.sqrt(sum((x ** 2).sum() for x in g))
            assert norm > C / 2  # every block is clipped
            pair += [(p, x * min(1.0, C / 2 / (norm.item() + 1e-6))) for p, x in zip(params, g)]
        assert torch.sqrt(sum((x ** 2).sum() for _, x in pair)) <= C + 1e-9  # the sensitivity stays C
        for p, x in pair:
            ref[p] = ref.get(p, 0) + x
    clipper.step(D, real, fake)
    assert all(torch.allclose(p.grad, ref[p], atol=1e-12) for p in D.parameters())
    # flat clipping of the same pairs gives a different sum (the test can tell the two apart)
    flat = train_dcgan_dp.PairGhostClipper(D, max_grad_norm=C)
    flat.step(D, real, fake)
    assert not torch.allclose(D.main[5].weight.grad, ref[D.main[5].weight], atol=1e-6)
    with pytest.raises(train_dcgan_dp.UserError, match="--clipping per-layer needs --grad-sample-mode ghost"):
        _privacy(clipping="per-layer").check_args(types.SimpleNamespace(
            epsilon=8.0, noise_multiplier=None, delta=1e-5, max_grad_norm=1.0, max_physical_batch_size=None,
            clipping="per-layer", grad_sample_mode="hooks"))


def test_ghost_rejects_unsupported_layers_and_inplace_outputs():
    nn = torch.nn
    with pytest.raises(train_dcgan_dp.UserError, match="supports Conv2d .* not 1 .Linear.; use --grad-sample-mode hooks"):
        train_dcgan_dp.PairGhostClipper(nn.Sequential(nn.Flatten(), nn.Linear(1024, 1)), 1.0)
    # an in-place activation would overwrite the conv output whose gradient the norms need
    D = nn.Sequential(nn.Conv2d(1, 4, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(4, 1, 16), nn.Flatten(0))
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(train_dcgan_dp.UserError, match="modified in place"):
        train_dcgan_dp.PairGhostClipper(D, 1.0).step(D, x, x)


def test_two_backward_passes_would_break_the_unit():
    """Negative control: separate real/fake backward passes (the Opacus DCGAN example) clip per image."""
    D, Dp, opt, _, real, fake = _setup(max_grad_norm=0.05)
    opt.zero_grad()
    # with Poisson sampling Opacus rejects the second backward (it would clip real and fake separately)
    BCE(Dp(real), torch.ones(5)).backward()
    with pytest.raises(ValueError, match="Poisson sampling is not compatible"):
        BCE(Dp(fake), torch.zeros(5)).backward()


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_physical_batches_equal_logical_batch(mode):
    after = []
    for chunk in (None, 4):  # one chunk of 6 pairs, or chunks of 4 + 2 pairs: ONE noisy step either way
        D, Dp, opt, pv, real, fake = _setup(n_pairs=6, max_grad_norm=0.05, grad_sample_mode=mode,
                                            max_physical_batch_size=chunk)
        pv.d_step(Dp, opt, real, fake, BCE)
        after.append(_new_params(pv, Dp))
        assert pv.engine.accountant.history == [(0.0, 0.1, 1)]
    assert not torch.allclose(after[0][0], D.main[0].weight)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(*after))


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_noise_has_the_right_scale(mode):
    sigma, C, B = 1.3, 0.7, 10
    torch.manual_seed(0)
    _, D = build_models(ndf=16)
    pv = _privacy(noise_multiplier=sigma, max_grad_norm=C, grad_sample_mode=mode)
    Dp, opt = pv.make_private(D, torch.optim.SGD(D.parameters(), lr=0.1), n_train=100, batch_size=B,
                              steps_per_epoch=10, total_steps=10)
    opt.zero_grad()
    pv.empty_batch(Dp)  # zero gradients: p.grad is pure noise
    opt.pre_step()
    g = torch.cat([p.grad.flatten() for p in opt.params])
    expected = sigma * C / opt.expected_batch_size
    assert g.numel() > 20000
    assert abs(g.std().item() / expected - 1) < 0.03 and abs(g.mean().item()) < 0.05 * expected


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_empty_batch_still_noisy_and_counted(mode):
    torch.manual_seed(0)
    _, D = build_models(ndf=8)
    pv = _privacy(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode)
    Dp, opt = pv.make_private(D, torch.optim.SGD(D.parameters(), lr=1.0), n_train=100, batch_size=10,
                              steps_per_epoch=10, total_steps=10)
    before = [p.clone() for p in Dp.parameters()]
    opt.zero_grad()
    pv.empty_batch(Dp)
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, Dp.parameters()))
    assert pv.engine.accountant.history[-1][2] == 1


def _dp_accounting_eps(sigma, q, steps, delta, kind):
    import dp_accounting
    from dp_accounting import pld, rdp

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    acc = (rdp.RdpAccountant() if kind == "rdp"
           else pld.PLDAccountant(value_discretization_interval=1e-4))
    return acc.compose(event).get_epsilon(delta)


@pytest.mark.parametrize("accountant,rtol", [("rdp", 0.05), ("prv", 0.02)])
def test_reported_epsilon_matches_independent_accountant(tmp_path, accountant, rtol):
    pytest.importorskip("dp_accounting")
    args = train_dcgan_dp.parse_args(tiny_args(tmp_path, "--max-steps", "6", "--noise-multiplier", "1.1",
                                               "--accountant", accountant, "--delta", "1e-5"))
    res = train_dcgan.train(args, train_dcgan_dp.DPPrivacy(args))
    assert res["dp_steps"] == 6 and res["noise_multiplier"] == 1.1
    ref = _dp_accounting_eps(1.1, res["sample_rate"], 6, 1e-5, accountant)
    assert res["epsilon"] == pytest.approx(ref, rel=rtol)
    assert res["epsilon_prv"] <= res["epsilon_rdp"]  # PRV is the tighter accountant
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["epsilon"] == pytest.approx(res["epsilon"])


def test_live_epsilon_is_evaluated_every_few_steps_and_exact_at_the_end(tmp_path, monkeypatch):
    """The loop does not evaluate the accountant at every epoch end (tiny epochs made ε evaluation most of a small-N
    DP run): every logged ε lags by fewer than REFRESH_STEPS D steps, and the last one is exact."""
    calls = []
    real = train_dcgan_dp._accountant_epsilon
    monkeypatch.setattr(train_dcgan_dp, "_accountant_epsilon", lambda *a: calls.append(1) or real(*a))
    # --train-size 40 with batch 32: 2 D steps per epoch
    args = train_dcgan_dp.parse_args(tiny_args(tmp_path, "--train-size", "40", "--epochs", "24",
                                               "--noise-multiplier", "1.1", "--ema-decay", "0", "--accountant", "rdp"))
    res = train_dcgan.train(args, train_dcgan_dp.DPPrivacy(args))
    assert res["dp_steps"] == 48
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "step"]
    # in the loop: steps 1, 21, 41 and the last; outside it, 4 (σ check, summary, both accountants in results.json)
    assert len(calls) == 4 + 4  # once per epoch would be 24 + 4
    priv = train_dcgan_dp.DPPrivacy(args)
    priv.noise_multiplier, priv.sample_rate = res["noise_multiplier"], res["sample_rate"]
    exact = {t: priv.epsilon_after(t) for t in range(1, 49)}
    for r in steps:  # the logged value is the exact ε of the run at most REFRESH_STEPS - 1 D steps earlier
        assert any(r["epsilon"] == pytest.approx(exact[t], rel=1e-9)
                   for t in range(max(1, r["step"] - train_dcgan_dp.DPPrivacy.REFRESH_STEPS + 1), r["step"] + 1)), r
    assert log[-1]["epsilon"] == steps[-1]["epsilon"] == pytest.approx(res["epsilon"], rel=1e-12)


def test_epsilon_counts_d_steps_only(tmp_path):
    """With K = 5 D steps per G step, epsilon after T D steps equals an independent accountant's for T steps at
    (q, sigma): the G steps are post-processing and add nothing."""
    pytest.importorskip("dp_accounting")
    args = train_dcgan_dp.parse_args(tiny_args(tmp_path, "--max-steps", "10", "--noise-multiplier", "1.1",
                                               "--d-steps", "5", "--accountant", "prv", "--delta", "1e-5"))
    res = train_dcgan.train(args, train_dcgan_dp.DPPrivacy(args))
    assert res["dp_steps"] == 10 and res["g_steps"] == 2
    assert res["epsilon"] == pytest.approx(_dp_accounting_eps(1.1, res["sample_rate"], 10, 1e-5, "prv"), rel=0.02)


def test_target_epsilon_is_met():
    pytest.importorskip("dp_accounting")
    from opacus.accountants.utils import get_noise_multiplier

    sigma = get_noise_multiplier(target_epsilon=2.0, target_delta=1e-6, sample_rate=0.01, steps=500, accountant="rdp")
    assert _dp_accounting_eps(sigma, 0.01, 500, 1e-6, "rdp") <= 2.0 * 1.02


def _dp_run(path, *extra):
    argv = tiny_args(path, "--noise-multiplier", "1.0", *extra)
    args = train_dcgan_dp.parse_args(argv)
    return train_dcgan.train(args, train_dcgan_dp.DPPrivacy(args))


def test_resume_keeps_the_ledger_and_weights(tmp_path):
    full = _dp_run(tmp_path / "full", "--max-steps", "4")
    _dp_run(tmp_path / "split", "--max-steps", "2")
    split = _dp_run(tmp_path / "split", "--max-steps", "4", "--resume")
    assert split["dp_steps"] == 4 and split["epsilon"] == pytest.approx(full["epsilon"], rel=1e-9)
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)
    assert all(torch.equal(a["D"][k], b["D"][k]) for k in a["D"])
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
    again = _dp_run(tmp_path / "again", "--max-steps", "4")  # same seed -> same epsilon and weights
    c = torch.load(tmp_path / "again" / "ckpt.pt", weights_only=True)
    assert again["epsilon"] == full["epsilon"] and all(torch.equal(a["D"][k], c["D"][k]) for k in a["D"])


def test_resume_refuses_to_exceed_target(tmp_path, capsys):
    argv = tiny_args(tmp_path, "--epsilon", "5", "--max-steps", "2")
    train_dcgan_dp.main(argv)
    with pytest.raises(SystemExit) as e:
        train_dcgan_dp.main(tiny_args(tmp_path, "--epsilon", "5", "--max-steps", "6", "--resume"))
    assert e.value.code == 2 and "refusing to train" in capsys.readouterr().err


@pytest.mark.parametrize("extra,msg", [
    (["--epsilon", "0"], "--epsilon must be > 0"),
    (["--epsilon", "-1"], "--epsilon must be > 0"),
    (["--delta", "1.5"], "--delta must be in (0, 1)"),
    (["--delta", "0"], "--delta must be in (0, 1)"),
    (["--max-grad-norm", "0"], "--max-grad-norm must be > 0"),
    (["--epsilon", "1", "--noise-multiplier", "1"], "exactly one"),
    (["--epsilon", "1e-9", "--epochs", "50"], "unreachable"),
    (["--noise-multiplier", "0.001"], "cannot evaluate σ = 0.001"),
    (["--secure-rng"], "torchcsprng"),
])
def test_bad_dp_input(tmp_path, capsys, extra, msg):
    pytest.importorskip("opacus")
    try:
        import torchcsprng  # noqa: F401
        if "--secure-rng" in extra:
            pytest.skip("torchcsprng is installed")
    except ImportError:
        pass
    with pytest.raises(SystemExit) as e:
        train_dcgan_dp.main(tiny_args(tmp_path, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and msg in err[-1] and not any("Traceback" in x for x in err)


def test_delta_warning(tmp_path):
    with pytest.warns(UserWarning, match="delta"):
        _dp_run(tmp_path, "--max-steps", "1", "--delta", "0.01")


def test_default_epsilon_is_8():
    assert train_dcgan_dp.parse_args([]).epsilon == 8.0


def test_dp_defaults_depend_on_the_data_and_yield_to_flags():
    digits, photos = train_dcgan_dp.parse_args([]), train_dcgan_dp.parse_args(["--data", "celeba"])
    assert (digits.ndf, digits.epochs, digits.ema_warmup) == (8, 60, 10.0)
    assert (photos.ndf, photos.epochs, photos.ema_warmup) == (16, 30, 3.0)
    assert digits.batch_size == photos.batch_size == 256 and digits.lr == photos.lr == 1e-3
    assert digits.mode_seeking == photos.mode_seeking == 1.0
    assert (digits.augment, photos.augment) == ("none", "translation,flip")  # digits are not mirror-symmetric
    assert (digits.g_lr_scale, photos.g_lr_scale) == (1.0, 2.0)  # G's lr doubling was measured on CelebA only
    mine = train_dcgan_dp.parse_args(["--ndf", "4", "--epochs", "2", "--ema-warmup", "5"])
    assert (mine.ndf, mine.epochs, mine.ema_warmup) == (4, 2, 5.0)


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_frozen_d_layers_get_neither_gradient_nor_noise(tmp_path, mode):
    """--freeze-d F: D's first F convolutions keep their weights exactly (no noise is added to them); the rest is
    trained with DP-SGD."""
    import models

    res = _dp_run(tmp_path, "--max-steps", "3", "--freeze-d", "2", "--grad-sample-mode", mode)
    torch.manual_seed(0)  # train() seeds with --seed 0 before building the models
    _, D0 = models.build_models(8, 8, 8, 1, 32)
    D1 = torch.load(tmp_path / "ckpt.pt", weights_only=True)["D"]
    frozen = [k for k in D1 if k.startswith(("main.0.", "main.2.", "main.3."))]  # conv 1, conv 2 and its norm
    assert len(frozen) == 4 and all(torch.equal(D0.state_dict()[k], D1[k]) for k in frozen)
    assert all(not torch.equal(D0.state_dict()[k], D1[k]) for k in D1 if k not in frozen)
    assert res["dp_steps"] == 3
    with pytest.raises(SystemExit):  # the last convolution is always trained
        train_dcgan_dp.main(tiny_args(tmp_path / "bad", "--freeze-d", "4"))


def test_warm_start_from_the_same_source_needs_a_disjoint_skip_subset(tmp_path, capsys):
    """--skip-subset M trains on what --train-size draws last; a DP run may start from it only if its draw
    (2N coin candidates) lies within the M skipped images, else epsilon would not cover the pretraining."""
    src = tmp_path / "public"
    train_dcgan.train(train_dcgan.build_parser().parse_args(tiny_args(src, "--max-steps", "1", "--skip-subset", "200")))
    pretrained = set(train_dcgan.run_training_data(src).index.tolist())
    _dp_run(tmp_path / "ok", "--max-steps", "1", "--train-size", "100", "--coin-subset", "--init-from", str(src))
    cand = set(json.loads((tmp_path / "ok" / "coins.json").read_text())["indices"])
    assert len(cand) == 200 and len(pretrained) == 1437 - 200 and not cand & pretrained
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())["init_from"]
    assert cfg["same_data_as_this_run"] and cfg["disjoint_by_subset"] and cfg["skip_subset"] == 200
    for extra in (["--train-size", "101", "--coin-subset"], ["--train-size", "100", "--subset-seed", "1"], []):
        with pytest.raises(SystemExit) as e:  # 202 candidates > 200; another order; the whole train split
            train_dcgan_dp.main(tiny_args(tmp_path / "bad", "--noise-multiplier", "1", "--max-steps", "1",
                                          "--init-from", str(src), *extra))
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "was trained on this run's data" in err and len(err.splitlines()) == 1
    folder = tmp_path / "imgs"  # an image folder, named by two spellings of its path: the same data
    folder.mkdir()
    for i in range(40):
        Image.fromarray(((torch.rand(36, 36) * 255).to(torch.uint8)).numpy()).save(folder / f"{i}.png")
    train_dcgan.main(tiny_args(tmp_path / "fsrc", "--max-steps", "1", "--data", f"folder:{folder}"))
    with pytest.raises(SystemExit) as e:
        train_dcgan_dp.main(tiny_args(tmp_path / "fdst", "--noise-multiplier", "1", "--max-steps", "1", "--data",
                                      f"folder:{folder}/../imgs", "--init-from", str(tmp_path / "fsrc")))
    assert e.value.code == 2 and "was trained on this run's data" in capsys.readouterr().err
    for bad in (["--skip-subset", "1436"], ["--skip-subset", "5", "--train-size", "10"]):
        with pytest.raises(SystemExit) as e:
            train_dcgan.main(tiny_args(tmp_path / "bad2", "--max-steps", "1", *bad))
        assert e.value.code == 2 and "--skip-subset takes 0 < M <= 1435" in capsys.readouterr().err

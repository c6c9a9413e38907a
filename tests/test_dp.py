import copy
import json
import types

import numpy as np
import pytest
import torch
from PIL import Image

import privacy
import runs
import train_dcgan
import train_dcgan_dp
from conftest import tiny_args
from models import build_models

BCE = torch.nn.BCEWithLogitsLoss()


def _privacy(**kw):
    a = dict(epsilon=None, noise_multiplier=0.0, delta=1e-5, max_grad_norm=0.05, clipping="flat", accountant="rdp",
             poisson=True, secure_rng=False, grad_sample_mode="hooks", max_physical_batch_size=None,
             privacy_unit="image", max_photos_per_unit=None, audit_gradient_canaries=0, seed=0)
    a.update(kw)
    return privacy.DPSGD(types.SimpleNamespace(**a))


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


from test_ghost_clipping import reference_clipped_sum  # noqa: E402


def _new_params(pv, Dp):
    return [p.detach().clone() for p in pv.unwrap(Dp).parameters()]


@pytest.mark.parametrize("mode", privacy.GRAD_SAMPLE_MODES)
def test_per_pair_clipping_matches_reference(mode):
    C = 0.05
    D, Dp, opt, pv, real, fake = _setup(max_grad_norm=C, grad_sample_mode=mode)
    ref, norms = reference_clipped_sum(copy.deepcopy(D), real, fake, C)
    assert min(norms) > 10 * C  # clipping is active for every pair
    pv.d_step(Dp, opt, real, fake)  # noise 0, SGD lr 0.1 on (clipped sum) / expected batch size 5
    assert opt.expected_batch_size == 5
    clipped_sum = [(p0 - p1) / 0.1 * 5 for p0, p1 in zip(D.parameters(), _new_params(pv, Dp))]
    for g, r in zip(clipped_sum, ref):
        assert torch.allclose(g, r, atol=1e-10)
    # each unit contributes at most C: the clipped sum of 5 pairs has norm <= 5 C
    assert torch.sqrt(sum((g ** 2).sum() for g in clipped_sum)) <= 5 * C + 1e-5
    if mode == "ghost":  # the ghost norms themselves are the per-pair gradient norms
        assert torch.allclose(pv.clipper.last_norms, torch.tensor(norms, dtype=torch.float64), rtol=1e-10)


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
        pv.d_step(Dp, opt, real, fake)
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
    args = train_dcgan_dp.parse_config(tiny_args(tmp_path, "--max-steps", "6", "--noise-multiplier", "1.1",
                                               "--accountant", accountant, "--delta", "1e-5"))
    res = train_dcgan.train(args, privacy.DPSGD(args))
    assert res["dp_steps"] == 6 and res["noise_multiplier"] == 1.1
    ref = _dp_accounting_eps(1.1, res["sample_rate"], 6, 1e-5, accountant)
    assert res["epsilon"] == pytest.approx(ref, rel=rtol)
    assert res["epsilon_prv"] <= res["epsilon_rdp"]  # PRV is the tighter accountant
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["epsilon"] == pytest.approx(res["epsilon"])


def test_live_epsilon_is_evaluated_every_few_steps_and_exact_at_the_end(tmp_path, monkeypatch):
    """The loop does not evaluate the accountant at every step or epoch end (one PRV evaluation costs as much as
    dozens of small D steps): the logged ε is the exact ε at the last multiple of refresh_every D steps (a function
    of the step, so a resumed run logs the same), and exact at the last step."""
    calls = []
    real = privacy._accountant_epsilon
    privacy.epsilon_of.cache_clear()
    monkeypatch.setattr(privacy, "_accountant_epsilon", lambda *a: calls.append(1) or real(*a))
    # --train-size 40 with batch 32: 2 D steps per epoch
    args = train_dcgan_dp.parse_config(tiny_args(tmp_path, "--train-size", "40", "--epochs", "24",
                                               "--noise-multiplier", "1.1", "--ema-decay", "0", "--accountant", "rdp"))
    pv = privacy.DPSGD(args)
    res = train_dcgan.train(args, pv)
    assert res["dp_steps"] == 48 and pv.refresh_every == 20
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "step"]
    # evaluated at steps 20, 40 and 48 (the last; also the results' ε), 0 costs nothing; and once more for
    # results.json's ε under the other accountant (PRV): 4 in all, where once per epoch would be 24
    assert len(calls) == 4
    exact = {t: pv.epsilon_at(t) for t in range(0, 49)}
    for r in steps:
        want = exact[48] if r["step"] == 48 else exact[r["step"] - r["step"] % 20]
        assert r["epsilon"] == want, r
    assert log[-1]["epsilon"] == steps[-1]["epsilon"] == pytest.approx(res["epsilon"], rel=1e-12)


def test_epsilon_counts_d_steps_only(tmp_path):
    """With K = 5 D steps per G step, epsilon after T D steps equals an independent accountant's for T steps at
    (q, sigma): the G steps are post-processing and add nothing."""
    pytest.importorskip("dp_accounting")
    args = train_dcgan_dp.parse_config(tiny_args(tmp_path, "--max-steps", "10", "--noise-multiplier", "1.1",
                                               "--d-steps", "5", "--accountant", "prv", "--delta", "1e-5"))
    res = train_dcgan.train(args, privacy.DPSGD(args))
    assert res["dp_steps"] == 10 and res["g_steps"] == 2
    assert res["epsilon"] == pytest.approx(_dp_accounting_eps(1.1, res["sample_rate"], 10, 1e-5, "prv"), rel=0.02)


def test_target_epsilon_is_met():
    pytest.importorskip("dp_accounting")
    from opacus.accountants.utils import get_noise_multiplier

    sigma = get_noise_multiplier(target_epsilon=2.0, target_delta=1e-6, sample_rate=0.01, steps=500, accountant="rdp")
    assert _dp_accounting_eps(sigma, 0.01, 500, 1e-6, "rdp") <= 2.0 * 1.02


def _dp_run(path, *extra):
    argv = tiny_args(path, "--noise-multiplier", "1.0", *extra)
    args = train_dcgan_dp.parse_config(argv)
    return train_dcgan.train(args, privacy.DPSGD(args))


def test_resume_keeps_the_ledger_and_weights(tmp_path):
    full = _dp_run(tmp_path / "full", "--max-steps", "4")
    _dp_run(tmp_path / "split", "--max-steps", "2")
    split = _dp_run(tmp_path / "split", "--max-steps", "4", "--resume")
    assert split["dp_steps"] == 4 and split["epsilon"] == pytest.approx(full["epsilon"], rel=1e-9)
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)
    assert all(torch.equal(a["D"][k], b["D"][k]) for k in a["D"])
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
    # the resumed invocation logs what the uninterrupted run did, ε included (the live ε is a function of the
    # step); the first invocation's last step (2) logged its exact ε, as every run's last step does
    steps = lambda run: [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())  # noqa: E731
                         if r["kind"] == "step"]
    full_log, split_log = steps(tmp_path / "full"), steps(tmp_path / "split")
    assert full_log[2:] == split_log[2:] and full_log[1]["epsilon"] == 0.0 < split_log[1]["epsilon"]
    assert [{k: v for k, v in r.items() if k != "epsilon"} for r in full_log] == \
        [{k: v for k, v in r.items() if k != "epsilon"} for r in split_log]
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
    (["--noise-multiplier", "-1"], "--noise-multiplier must be >= 0"),
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


def _run_measured(path, *extra):
    """train_dcgan_dp.py in a child process: (exit code, stderr, the child's peak anonymous memory in bytes). Anonymous
    memory (resident minus file-backed pages, /proc/self/statm polled every 5 ms) is what an accountant's grid
    would take; the resident total also counts the pages of torch's libraries that the page cache lends, which
    vary between machines and runs by a gigabyte."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/statm").is_file():
        pytest.skip("measures memory through Linux's /proc")
    code = ("import json, os, sys, threading, time, train_dcgan_dp\n"
            "peak = [0]\n"
            "def poll():\n"
            "    while True:\n"
            "        resident, shared = (int(v) for v in open('/proc/self/statm').read().split()[1:3])\n"
            "        peak[0] = max(peak[0], (resident - shared) * os.sysconf('SC_PAGE_SIZE'))\n"
            "        time.sleep(0.005)\n"
            "threading.Thread(target=poll, daemon=True).start()\n"
            "try:\n    train_dcgan_dp.main(sys.argv[1:])\nfinally:\n    time.sleep(0.02)\n"
            "    print(json.dumps(peak[0]))")
    # 64 images, batch 32: q = 1/2 as in issue #47 (168 D steps there, 40 here), on a tiny model
    argv = tiny_args(path, "--train-size", "64", "--epochs", "20", "--ema-decay", "0", *extra)
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       cwd=Path(privacy.__file__).parent, timeout=300)
    assert p.stdout.strip(), p.stderr
    return p.returncode, p.stderr, int(p.stdout.strip().splitlines()[-1])


def test_a_small_sigma_run_keeps_its_results_and_clipping_only_is_epsilon_infinity(tmp_path):
    """Issue #47: at σ = 0.05 (q = 1/2, 40 steps) the PRV accountant's grid would need 150 million points (GBs):
    results.json's transparency ε under PRV is skipped with a note, never allocated, so a run under RDP finishes
    with its results and samples in bounded memory; σ = 0 (clipping only) is ε = ∞, recorded as null with a note;
    under the default PRV accountant σ = 0.05 is refused before the first step."""
    code, err, peak = _run_measured(tmp_path / "rdp", "--noise-multiplier", "0.05", "--accountant", "rdp")
    res = json.loads((tmp_path / "rdp" / "results.json").read_text())
    assert code == 0 and peak < 2 * 2 ** 30, (err, peak)
    assert res["dp_steps"] == 40 and (tmp_path / "rdp" / "samples.npz").is_file()
    assert res["epsilon"] == res["epsilon_rdp"] > 1e3 and res["epsilon_prv"] is None
    assert "not evaluated" in res["epsilon_prv_note"] and "points" in res["epsilon_prv_note"]

    code, err, peak = _run_measured(tmp_path / "clip", "--noise-multiplier", "0")
    res = json.loads((tmp_path / "clip" / "results.json").read_text())
    assert code == 0 and peak < 2 * 2 ** 30, (err, peak)
    assert res["noise_multiplier"] == 0 and res["epsilon"] is None and res["epsilon_prv"] is None
    assert "ε = ∞" in res["epsilon_note"] and (tmp_path / "clip" / "samples.npz").is_file()
    log = [json.loads(x) for x in (tmp_path / "clip" / "log.jsonl").read_text().splitlines()]
    assert not any("epsilon" in r for r in log)  # no ε to log, and no Infinity in the JSON

    code, err, _ = _run_measured(tmp_path / "prv", "--noise-multiplier", "0.05")
    assert code == 2 and "cannot evaluate σ = 0.05" in err and "--accountant rdp" in err
    assert not (tmp_path / "prv" / "log.jsonl").exists() and not (tmp_path / "prv" / "ckpt.pt").exists()


def test_sigma_calibration_is_opacus_search_with_bounded_evaluations(monkeypatch):
    """noise_for_epsilon walks Opacus' get_noise_multiplier search (the same σ to the last digit where every
    evaluation fits in memory); where the search passes through a σ whose PRV grid would not fit (here: a grid cap
    of 20,000 points, so that the test is fast), that σ counts as spending too much, and the search ends with a σ
    that spends at most the target."""
    from opacus.accountants.utils import get_noise_multiplier

    for eps, q, steps in ((8.0, 0.5, 96), (1.0, 0.1, 300)):
        assert privacy.noise_for_epsilon(eps, 1e-6, q, steps, "rdp") == get_noise_multiplier(
            target_epsilon=eps, target_delta=1e-6, sample_rate=q, steps=steps, accountant="rdp")
    monkeypatch.setattr(privacy, "PRV_MAX_POINTS", 20_000)
    privacy.epsilon_of.cache_clear()
    sigma = privacy.noise_for_epsilon(100.0, 1e-6, 1.0, 10, "prv")
    with pytest.raises(privacy.AccountingTooLarge, match="grid would need"):  # the search went past the cap
        privacy.epsilon_of("prv", ((sigma / 2, 1.0, 10),), 1e-6)
    assert privacy.epsilon_of("prv", ((sigma, 1.0, 10),), 1e-6) <= 100.0
    privacy.epsilon_of.cache_clear()


def _canary_run(path, *extra):
    """A tiny DP run with 1,000 gradient canaries: 64 images, batch 32 (q = 1/2, 2 steps an epoch)."""
    args = train_dcgan_dp.parse_config(tiny_args(path, "--train-size", "64", "--ema-decay", "0",
                                                 "--audit-gradient-canaries", "1000", *extra))
    res = train_dcgan.train(args, privacy.DPSGD(args))
    with np.load(path / "gradient_canaries.npz") as z:
        return res, {k: z[k] for k in z.files}


def test_gradient_canaries_enter_the_clipped_sum_as_sampled_units(tmp_path):
    """Without noise, a canary's every-iterate score is C / (expected batch) times the steps it was sampled in: 0
    for tails, about q T for heads (sampled by the same Poisson draw as the images); with σ the tails' scores have
    the noise's spread, σ C sqrt(T) / (expected batch). A resumed run adds the same canaries (bit-identical)."""
    res, z = _canary_run(tmp_path / "clip", "--noise-multiplier", "0", "--epochs", "20")
    coins, s = z["coins"].astype(bool), z["iterate"] * 32 / 1.0  # C = 1, expected batch 32
    assert res["dp_steps"] == 40 and res["gradient_canaries"]["heads"] == coins.sum() and 400 < coins.sum() < 600
    assert np.all(s[~coins] == 0) and np.allclose(s[coins], np.round(s[coins]))  # whole steps
    assert abs(s[coins].mean() - 0.5 * 40) < 1.0 and s[coins].std() == pytest.approx(np.sqrt(40 * 0.25), rel=0.15)
    assert np.all(np.sign(z["final"][coins]) >= 0) and np.all(z["final"][~coins] == 0)  # descent moves heads only
    res, z = _canary_run(tmp_path / "noise", "--noise-multiplier", "2", "--epochs", "20")
    tails = z["iterate"][~z["coins"].astype(bool)] * 32
    assert tails.std() == pytest.approx(2 * np.sqrt(40), rel=0.1) and abs(tails.mean()) < 0.5
    _canary_run(tmp_path / "split", "--noise-multiplier", "2", "--epochs", "20", "--max-steps", "23")
    _, split = _canary_run(tmp_path / "split", "--noise-multiplier", "2", "--epochs", "20", "--resume")
    assert all(np.array_equal(z[k], split[k]) for k in z)


def test_white_box_audit_catches_a_planted_bug(tmp_path, monkeypatch):
    """Issue #44: a DP-SGD that adds a quarter of the noise it accounts for, at claimed ε = 2, is caught by one run
    with 1,000 gradient canaries (every-iterate bound > 2); the correct implementation's bound stays at most 2."""
    import audit

    res, _ = _canary_run(tmp_path / "ok", "--epsilon", "2", "--delta", "1e-5", "--epochs", "10")
    ok = audit.gradient_canary_audit(tmp_path / "ok" / "gradient_canaries.npz", 1e-5, 0.05, res["epsilon"])
    monkeypatch.setattr(privacy, "PLANTED_NOISE_FACTOR", 0.25)
    bad_res, _ = _canary_run(tmp_path / "bug", "--epsilon", "2", "--delta", "1e-5", "--epochs", "10")
    bad = audit.gradient_canary_audit(tmp_path / "bug" / "gradient_canaries.npz", 1e-5, 0.05, bad_res["epsilon"])
    assert res["epsilon"] == bad_res["epsilon"] <= 2  # the ledger does not see the bug
    assert ok["threat_models"]["every_iterate"]["one_run"]["epsilon_lb"] <= 2
    assert bad["threat_models"]["every_iterate"]["one_run"]["epsilon_lb"] > 2


def test_delta_warning(tmp_path):
    with pytest.warns(UserWarning, match="delta"):
        _dp_run(tmp_path, "--max-steps", "1", "--delta", "0.01")


def test_default_epsilon_is_8():
    assert train_dcgan_dp.parse_config([]).epsilon == 8.0


def test_dp_defaults_depend_on_the_data_and_yield_to_flags():
    digits, photos = train_dcgan_dp.parse_config([]), train_dcgan_dp.parse_config(["--data", "celeba"])
    assert (digits.ndf, digits.epochs, digits.ema_warmup) == (8, 60, 10.0)
    assert (photos.ndf, photos.epochs, photos.ema_warmup) == (16, 30, 3.0)
    assert digits.batch_size == photos.batch_size == 256 and digits.lr == photos.lr == 1e-3
    assert digits.mode_seeking == photos.mode_seeking == 1.0
    assert (digits.augment, photos.augment) == ("", "translation,flip")  # digits are not mirror-symmetric (none)
    assert (digits.g_lr_scale, photos.g_lr_scale) == (1.0, 2.0)  # G's lr doubling was measured on CelebA only
    mine = train_dcgan_dp.parse_config(["--ndf", "4", "--epochs", "2", "--ema-warmup", "5"])
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
    pretrained = set(runs.run_training_data(src).index.tolist())
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
    for bad in (["--skip-subset", "1436"], ["--skip-subset", "1430", "--train-size", "10"]):
        with pytest.raises(SystemExit) as e:
            train_dcgan.main(tiny_args(tmp_path / "bad2", "--max-steps", "1", *bad))
        assert e.value.code == 2 and "--skip-subset takes 0 < M <= 1435" in capsys.readouterr().err
    after = runs.run_training_data(src).index  # --train-size N after --skip-subset M: the N that follow the M
    train_dcgan.main(tiny_args(tmp_path / "next", "--max-steps", "1", "--skip-subset", "200", "--train-size", "30"))
    nxt = runs.run_training_data(tmp_path / "next").index
    assert len(nxt) == 30 and set(nxt.tolist()) <= set(after.tolist()) and not set(nxt.tolist()) & cand


def test_ghost_mode_errors_name_the_flag_to_use():
    """The clipper raises ValueError (it knows no CLI); the DP strategy turns it into a one-line UserError that names
    the flag to use instead."""
    from utils import UserError

    with pytest.raises(UserError, match="--clipping per-layer needs --grad-sample-mode ghost"):
        _privacy(clipping="per-layer").check_args(types.SimpleNamespace(
            epsilon=8.0, noise_multiplier=None, delta=1e-5, max_grad_norm=1.0, max_physical_batch_size=None,
            clipping="per-layer", grad_sample_mode="hooks", privacy_unit="image", max_photos_per_unit=None,
            poisson=True, audit_gradient_canaries=0))
    nn = torch.nn
    D = nn.Sequential(nn.Conv2d(1, 4, 4, 2, 1), nn.Flatten(), nn.Linear(1024, 1), nn.Flatten(0))
    with pytest.raises(UserError, match=r"supports Conv2d .* not 2 \(Linear\); use --grad-sample-mode hooks"):
        _privacy(grad_sample_mode="ghost").make_private(D, torch.optim.SGD(D.parameters(), lr=0.1), n_train=50,
                                                        batch_size=5, steps_per_epoch=10, total_steps=10)

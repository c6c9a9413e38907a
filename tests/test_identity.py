"""The person as the privacy unit: people drawn with one coin each, attack photos held back, user-level DP-SGD
(per-person clipping in the training step, Poisson sampling of people, the accountant over people), resume and
bad input, and the identity membership audit."""
import copy
import json

import numpy as np
import pytest
import torch
from test_data import _fake_celeba_people
from test_dp import _dp_accounting_eps, _privacy
from test_ghost_clipping import reference_person_clipped_sum

import audit
import audit_stats
import privacy
import train_dcgan
import train_dcgan_dp
from models import build_models
from training_set import TrainingData

PEOPLE = [8] * 12  # 12 people with 8 photos each; the identity split keeps each person on one side


def _argv(root, out, *extra):
    return ["--data", "celeba", "--data-root", str(root), "--random-split", "--split-unit", "identity",
            "--dedup-threshold", "0", "--privacy-unit", "identity", "--train-size", "3", "--coin-subset",
            "--attack-photos", "2", "--ngf", "8", "--ndf", "8", "--nz", "8", "--batch-size", "8", "--num-samples", "16",
            "--no-progress", "--cache-dir", "", "--threads", "1", "--out", str(out), *extra]


@pytest.fixture
def people_root(tmp_path):
    _fake_celeba_people(tmp_path / "celeba", PEOPLE, start=1)
    return tmp_path / "celeba"


def test_people_are_drawn_with_one_coin_each(people_root, tmp_path):
    args = train_dcgan.build_parser().parse_args(_argv(people_root, tmp_path / "run"))
    td = TrainingData(args, progress=False)
    c, ids = td.coins, td.imgs.identity_ids()
    assert c["unit"] == "identity" and len(c["identities"]) == 6 and len(c["included"]) == 6
    trained = set(td.index.tolist())
    for person, inc, photos, held in zip(c["identities"], c["included"], c["photos"], c["attack_photos"]):
        assert len(held) == 2 and len(photos) == 6 and set(ids[photos + held].tolist()) == {person}
        assert set(photos) <= trained if inc else not set(photos) & trained  # all of a person's photos, or none
        assert not set(held) & trained  # the attacker's photos are never trained on
    assert set(ids[td.index].tolist()) == {p for p, inc in zip(c["identities"], c["included"]) if inc}
    assert td.n_units_planned == 3 and td.n_planned == 18  # fixed before the coins: half the candidates
    assert torch.equal(td.unit_of, torch.unique(ids[td.index], return_inverse=True)[1])
    assert not set(c["indices"]) & set(td.imgs.splits["test"].tolist())  # candidates come from the train split


def test_dp_step_clips_each_person_as_one_unit():
    """DPSGD's step with a batch's persons (noise 0) leaves the per-person clipped sum / expected batch in the
    gradient: the plain-autograd reference (sum of the person's pair gradients, then clip)."""
    torch.manual_seed(0)
    _, D = build_models(nz=8, ngf=8, ndf=8)
    D = D.double()
    real, fake = torch.rand(6, 1, 32, 32).double() * 2 - 1, torch.randn(6, 1, 32, 32).double()
    unit_of = torch.tensor([0, 1, 1, 2, 2, 2])
    pv = _privacy(grad_sample_mode="ghost", privacy_unit="identity")
    Dp = copy.deepcopy(D)
    Dp, opt = pv.make_private(Dp, torch.optim.SGD(Dp.parameters(), lr=1.0), n_train=30, batch_size=6,
                              steps_per_epoch=10, total_steps=10, people=(30, torch.arange(30)))
    assert opt.expected_batch_size == 3  # persons per step: the normalisation counts people
    before = [p.detach().clone() for p in Dp.parameters()]
    pv.d_step(Dp, opt, real, fake, unit_of)
    ref, norms = reference_person_clipped_sum(copy.deepcopy(D), real, fake, unit_of, 0.05)
    assert min(norms) > 0.5
    for b, p, r in zip(before, Dp.parameters(), ref):
        assert torch.allclose((b - p.detach()) * 3, r, atol=1e-10)


def test_poisson_batches_sample_whole_people_and_cap_their_photos():
    unit_of = torch.arange(40).repeat_interleave(5)  # 40 people x 5 photos
    pv = _privacy(grad_sample_mode="ghost", privacy_unit="identity", max_photos_per_unit=None)
    pv.unit_of, pv.sample_rate, pv.engine = unit_of, 0.25, type("E", (), {"secure_rng": None})()
    sizes = []
    for idx in pv.batches(torch.Generator().manual_seed(0), 200, 40):
        counts = torch.bincount(unit_of[idx], minlength=40)
        assert set(counts.tolist()) <= {0, 5}  # a person comes with all their photos, or not at all
        sizes.append(int((counts > 0).sum()))
    assert 8 < np.mean(sizes) < 12  # q = 1/4 of 40 people
    pv.args.max_photos_per_unit = 2
    seen = set()
    for idx in pv.batches(torch.Generator().manual_seed(0), 200, 40):
        counts = torch.bincount(unit_of[idx], minlength=40)
        assert set(counts.tolist()) <= {0, 2}
        seen |= set(idx.tolist())
        assert torch.equal(pv.units(idx), torch.unique(unit_of[idx], return_inverse=True)[1])
    assert len(seen) > 150  # the subset is drawn anew each step


def test_user_level_dp_run_reports_epsilon_per_person_and_resume_keeps_the_unit(people_root, tmp_path, capsys):
    pytest.importorskip("dp_accounting")
    out = tmp_path / "dp"
    argv = _argv(people_root, out, "--noise-multiplier", "1.3", "--max-steps", "4", "--accountant", "prv",
                 "--delta", "1e-5", "--max-photos-per-unit", "4")
    args = train_dcgan_dp.parse_config(argv)
    res = train_dcgan.train(args, privacy.DPSGD(args))
    cfg = json.loads((out / "config.json").read_text())
    assert res["privacy_unit"] == "identity" and cfg["privacy"]["units_planned"] == 3
    assert cfg["privacy_unit"]["units_planned"] == 3 and cfg["privacy"]["max_photos_per_unit"] == 4
    # the accountant over people: q = 1 / steps per epoch (18 planned photos, batch 8: 3 steps), 4 steps
    assert res["sample_rate"] == pytest.approx(1 / 3)
    assert res["epsilon"] == pytest.approx(_dp_accounting_eps(1.3, 1 / 3, 4, 1e-5, "prv"), rel=0.02)
    # resume refuses a changed unit
    with pytest.raises(SystemExit) as e:
        changed = list(argv)
        changed[changed.index("--privacy-unit") + 1] = "image"
        for flag in ("--attack-photos", "--max-photos-per-unit"):
            del changed[changed.index(flag):changed.index(flag) + 2]
        train_dcgan_dp.main(changed + ["--resume"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "--privacy-unit 'identity' -> 'image'" in last


@pytest.mark.parametrize("extra,msg", [
    (["--privacy-unit", "image"], "--attack-photos holds back photos of coin-flipped people"),
    (["--grad-sample-mode", "hooks"], "ghost mode only"),
    (["--max-physical-batch-size", "4"], "ghost mode only"),
    (["--max-photos-per-unit", "0"], "--max-photos-per-unit takes a positive count"),
    (["--attack-photos", "8"], "people with more than 8 photos"),
    (["--privacy-unit", "image", "--attack-photos", "0", "--dp-unit", "identity"], "needs the data drawn by person"),
    (["--batch-size", "4"], "fewer than one person per step on average"),  # 3 people, 5 steps an epoch
])
def test_bad_identity_input(people_root, tmp_path, capsys, extra, msg):
    argv = _argv(people_root, tmp_path / "bad", "--max-steps", "2")
    for flag in extra[::2]:  # a flag given again replaces the default's value
        if flag in argv:
            del argv[argv.index(flag):argv.index(flag) + 2]
    with pytest.raises(SystemExit) as e:
        train_dcgan_dp.main(argv + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and msg in err[-1] and not any("Traceback" in x for x in err)


def test_identity_audit_scores_people_from_their_attack_photos(people_root, tmp_path):
    out = tmp_path / "np"
    train_dcgan.main(_argv(people_root, out, "--max-steps", "3"))
    res = audit.audit(audit.build_parser().parse_args(["--run", str(out), "--num-samples", "40", "--threads", "1",
                                                       "--calibration-size", "0"]))
    idn, coins = res["identity"], json.loads((out / "coins.json").read_text())
    assert idn["people"] == 6 and idn["members"] == sum(coins["included"]) and idn["attack_photos_per_person"] == 2
    assert res["coins"] is None and res["one_run_epsilon_lb"] is None  # no image-level one-run over person coins
    scores = np.load(out / "audit" / "scores.npz")
    td, D = audit.load_run(out)
    white = audit.discriminator_scores(D, td.imgs.images[[i for h in coins["attack_photos"] for i in h]], "cpu")
    assert np.allclose(scores["white_box_attack"], white, atol=1e-5)
    person = white.reshape(6, 2).mean(1)  # each person's score: the mean over their attack photos
    inc = np.array(coins["included"], bool)
    ref = audit_stats.roc_summary(person[inc], person[~inc])["auc"]
    assert idn["attacks"]["white_box"]["auc"] == pytest.approx(ref)
    assert idn["attacks"]["white_box"]["one_run"]["m"] == 6


def test_identity_study_end_to_end(tmp_path, monkeypatch):
    """reproduce.py --identity on tiny people: the same people, coins and attack photos for every model, image- and
    person-level DP, a reference model on other people, both audit levels in the table."""
    import reproduce

    _fake_celeba_people(tmp_path / "private", PEOPLE, start=1)
    _fake_celeba_people(tmp_path / "public", [8] * 6, start=50)
    for k, v in (("IDENTITY_PEOPLE", 3), ("IDENTITY_ATTACK_PHOTOS", 2), ("IDENTITY_EPOCHS", 2),
                 ("IDENTITY_MAX_PHOTOS", 4), ("IDENTITY_REFERENCE_PHOTOS", 20)):
        monkeypatch.setattr(reproduce, k, v)
    out = tmp_path / "study"
    res = reproduce.main(["--identity", "--data-root", str(tmp_path / "private"), "--public-root",
                          str(tmp_path / "public"), "--epsilons", "8", "--num-samples", "16", "--threads", "1",
                          "--jobs", "2", "--no-progress", "--cache-dir", "", "--out", str(out)])
    rows = {r["model"]: r for r in res["rows"]}
    assert list(rows) == ["non-private", "image-dp-eps8", "person-dp-eps8"]
    assert [rows[m]["dp_unit"] for m in rows] == ["—", "image", "identity"]
    coins = {m: json.loads((out / "runs" / m / "coins.json").read_text()) for m in rows}
    assert coins["non-private"] == coins["image-dp-eps8"] == coins["person-dp-eps8"]  # the same people and coins
    for r in rows.values():
        assert r["id_people"] == 6 and 0 <= r["id_auc_white_cal"] <= 1 and r["image_auc_white_cal"] is not None
        assert 0 <= r["id_auc_control"] <= 1
    assert len({r["id_auc_control"] for r in rows.values()}) == 1  # one reference model, one draw of people
    assert "group privacy" in rows["image-dp-eps8"]["person_bound"]
    assert "person-level" in rows["person-dp-eps8"]["person_bound"]
    assert (out / "identity_samples.png").stat().st_size > 0
    md = (out / "identity.md").read_text()
    assert "--dp-unit image" in md and "--max-photos-per-unit 4" in md and "--exclude-from" in md


def test_audit_canaries_draw_held_out_people(tmp_path):
    """--audit-canaries M with --privacy-unit identity: M people of the held-out split, one coin each, their attack
    photos held back; the --train-size people keep all their photos (no coins on them); a canary's person is never
    a candidate (their canary is trained on whatever the coin says)."""
    _fake_celeba_people(tmp_path / "many", [5] * 60, start=1)
    argv = _argv(tmp_path / "many", tmp_path / "run", "--canary-split", "val", "--canaries", "2")
    argv[argv.index("--coin-subset")] = "--audit-canaries"
    argv.insert(argv.index("--audit-canaries") + 1, "2")
    args = train_dcgan.build_parser().parse_args(argv)
    td = TrainingData(args, progress=False)
    c, ids = td.coins, td.imgs.identity_ids()
    val_people = set(ids[td.imgs.splits["val"]].tolist())
    assert c["kind"] == "audit-canaries" and c["unit"] == "identity" and set(c["identities"]) <= val_people
    assert not set(ids[td.canaries["indices"]].tolist()) & set(c["identities"])
    fixed = [p for p in set(ids[td.index].tolist()) if p not in c["identities"]]
    fixed = [p for p in fixed if p not in ids[td.canaries["indices"]].tolist()]
    assert len(fixed) == 3 and all(int((ids[td.index] == p).sum()) == 5 for p in fixed)  # all photos of each
    assert td.n_units_planned == 3 + 2 + 1  # the people drawn, the canaries' people, half the candidates

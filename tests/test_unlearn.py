"""unlearn.py: forgetting by retraining, fine-tuning, negative gradient and the held-out-level stop; the one-run
unlearning audit (two-sided); the original run never written; bad input as one-line errors."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import audit
import audit_stats
import train_dcgan
import unlearn
from conftest import tiny_args
from utils import UserError


# ----------------------------------------------------------------------------- the audit on toy mechanisms
def _coins(m, seed):
    return np.random.default_rng(seed).random(m) < 0.5


def test_two_sided_one_run_audit_on_toy_unlearners():
    """m = 400 coin-flipped candidates. An unlearner whose scores ignore the coins (retraining) proves nothing;
    one that keeps the heads (no unlearning) proves a large ε; one that pushes the heads BELOW the never-trained
    tails (over-unlearning) proves as much two-sided, and nothing one-sided."""
    m, rng = 400, np.random.default_rng(3)
    inc = _coins(m, 1)
    ignores = [audit_stats.one_run_audit(rng.standard_normal(m), inc, 0.0, 0.05, seed=s, curve=False,
                                         two_sided=True)["epsilon_lb"] for s in range(8)]
    assert sum(b > 0 for b in ignores) <= 1 and max(ignores) < 0.1  # a bound holds with probability 1 - alpha
    keeps = audit_stats.one_run_audit(rng.standard_normal(m) + 4 * inc, inc, 1e-5, 0.05, two_sided=True, curve=False)
    assert keeps["epsilon_lb"] > 2.5 and keeps["side"] == "high" and keeps["two_sided"]
    below = rng.standard_normal(m) - 4 * inc
    two = audit_stats.one_run_audit(below, inc, 1e-5, 0.05, two_sided=True, curve=False)
    one = audit_stats.one_run_audit(below, inc, 1e-5, 0.05, curve=False)
    assert two["side"] == "low" and two["epsilon_lb"] > 2.5 and one["epsilon_lb"] == 0.0
    # the price of the second side: Bonferroni over twice the tests, so a slightly smaller bound for the same guesses
    assert two["alpha_per_test"] == pytest.approx(one["alpha_per_test"] / 2)
    mirror = audit_stats.one_run_audit(-below, inc, 1e-5, 0.05, curve=False)
    assert 0 < mirror["epsilon_lb"] - two["epsilon_lb"] < 0.5


# ----------------------------------------------------------------------------- unlearning tiny GANs
def _tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A tiny digits GAN: 60 fixed training images and 40 coin-flipped val candidates (about 20 heads)."""
    out = tmp_path_factory.mktemp("unlearn") / "original"
    train_dcgan.main(tiny_args(out, "--train-size", "60", "--audit-canaries", "40", "--epochs", "6",
                               "--seed", "1"))
    return out


def _unlearn(original, out, *extra):
    return unlearn.main(["--run", str(original), "--forget", "heads", "--out", str(out), "--threads", "1",
                         "--no-progress", *extra])


def test_retrain_never_sees_a_forgotten_image(original, tmp_path, monkeypatch):
    """retrain: the same recipe and seed without the heads; no batch holds a forgotten image, every retained image
    is trained, and the original's folder is byte-identical afterwards."""
    before = _tree_hash(original)
    seen = []
    step = train_dcgan.train_step
    monkeypatch.setattr(train_dcgan, "train_step", lambda state, privacy, real_u8, *a, **k: (
        seen.append(real_u8.clone()), step(state, privacy, real_u8, *a, **k))[1])
    out = _unlearn(original, tmp_path / "retrain", "--method", "retrain")
    assert _tree_hash(original) == before
    coins = json.loads((original / "coins.json").read_text())
    cfg = json.loads((tmp_path / "retrain" / "config.json").read_text())
    heads = [i for i, inc in zip(coins["indices"], coins["included"]) if inc]
    assert out["forgotten_images"] == cfg["forget"]["images"] == len(heads) > 5 and out["method"] == "retrain"
    assert cfg["unlearning"]["original_ckpt_sha256"] == hashlib.sha256((original / "ckpt.pt").read_bytes()).hexdigest()
    assert cfg["init_from"] is None and cfg["n_train"] == 60 and cfg["args"]["seed"] == 1
    from data import load_images

    imgs = load_images("digits", None, 32, 1, None, 0, progress=False)
    batches = torch.cat(seen).flatten(1)
    forgotten = imgs.images[heads].flatten(1)
    # a forgotten digit that is pixel-identical to a retained one may appear through that one: none here
    assert not (batches[:, None, :] == forgotten[None]).all(-1).any()
    assert len(seen) == json.loads((tmp_path / "retrain" / "results.json").read_text())["steps"]


def test_finetune_neggrad_and_heldout_write_new_runs_that_audit_two_sided(original, tmp_path):
    """The approximate methods start from the original, run their D steps (heldout: until the forgotten images
    are at the held-out level), leave the original untouched, and audit.py audits them: the retained members
    against never-seen images, the forgotten against never-seen, the coins two-sided."""
    before = _tree_hash(original)
    steps = json.loads((original / "results.json").read_text())["steps"]
    ft = _unlearn(original, tmp_path / "finetune", "--method", "finetune", "--steps", "5")
    ng = _unlearn(original, tmp_path / "neggrad", "--method", "neggrad", "--steps", "5")
    ho = _unlearn(original, tmp_path / "heldout", "--method", "heldout", "--steps", "400", "--check-every", "1")
    assert _tree_hash(original) == before
    assert ft["cost"]["d_steps"] == ng["cost"]["d_steps"] == 5 and ft["cost"]["x_original_steps"] == 5 / steps
    cfg = json.loads((tmp_path / "neggrad" / "config.json").read_text())
    assert cfg["init_from"]["run"] == str(original) and cfg["args"]["forget_as_fake"]
    # heldout stops when the forgotten images' mean logit reaches the never-seen images' (logged at every check)
    log = [json.loads(x) for x in (tmp_path / "heldout" / "log.jsonl").read_text().splitlines()]
    gaps = [r["forget_gap"] for r in log if "forget_gap" in r]
    assert ho["stopped_at_heldout"] == ho["cost"]["d_steps"] == len(gaps) < 400 and gaps[-1] <= 0 < gaps[0]
    # a resumed finished early-stopped run stays as it is
    results = (tmp_path / "heldout" / "results.json").read_bytes()
    _unlearn(original, tmp_path / "heldout", "--method", "heldout", "--steps", "400", "--check-every", "1",
             "--resume")
    assert (tmp_path / "heldout" / "results.json").read_bytes() == results
    res = audit.main(["--run", str(tmp_path / "neggrad"), "--threads", "1", "--num-samples", "16",
                      "--calibration-size", "0", "--cache-dir", ""])
    assert res["unlearning"]["forgotten_images"] == ng["forgotten_images"]
    assert res["unlearning"]["retained_members"] == 60
    for r in res["attacks"].values():
        assert r["one_run"]["two_sided"] and 0 <= r["forgotten"]["auc"] <= 1
        assert {g["side"] for g in r["one_run"]["grid"]} == {"high", "low"}


def test_bad_unlearning_requests_are_one_line_errors(original, tmp_path, capsys):
    def fails(argv, words):
        with pytest.raises(SystemExit) as e:
            unlearn.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and all(w in err for w in words), err

    base = ["--run", str(original), "--no-progress", "--threads", "1"]
    untrained = tmp_path / "untrained.txt"
    coins = json.loads((original / "coins.json").read_text())
    tails = [n for n, inc in zip(coins["names"], coins["included"]) if not inc]
    untrained.write_text(tails[0] + "\n")
    fails(base + ["--forget", str(untrained), "--out", str(tmp_path / "a")], ["was not in this run's training set"])
    (tmp_path / "nobody.txt").write_text("no-such-image.png\n")
    fails(base + ["--forget", str(tmp_path / "nobody.txt"), "--out", str(tmp_path / "b")], ["name nothing"])
    fails(base + ["--forget", "heads", "--method", "forget-harder"], ["--method", "invalid choice"])
    fails(["--run", str(tmp_path), "--forget", "heads"], ["not a finished training run"])
    plain = tmp_path / "plain"  # a run without coins, asked to forget its heads
    train_dcgan.main(tiny_args(plain, "--train-size", "20", "--epochs", "1"))
    fails(["--run", str(plain), "--forget", "heads", "--out", str(tmp_path / "c"), "--no-progress"],
          ["has no coins"])
    every = tmp_path / "every.txt"
    cfg = json.loads((plain / "config.json").read_text())
    from runs import run_training_data

    td = run_training_data(plain)
    every.write_text("\n".join(td.imgs.names[i] for i in td.index.tolist()) + "\n")
    assert cfg["n_train"] == 20
    fails(["--run", str(plain), "--forget", str(every), "--out", str(tmp_path / "d"), "--no-progress"],
          ["forgets every training image"])
    # a resumed unlearning with another forget set
    one = tmp_path / "one.txt"
    one.write_text(td.imgs.names[int(td.index[0])] + "\n")
    two = tmp_path / "two.txt"
    two.write_text(td.imgs.names[int(td.index[1])] + "\n")
    unlearn.main(["--run", str(plain), "--forget", str(one), "--method", "finetune", "--steps", "1",
                  "--out", str(tmp_path / "e"), "--no-progress", "--threads", "1"])
    fails(["--run", str(plain), "--forget", str(two), "--method", "finetune", "--steps", "1", "--out",
           str(tmp_path / "e"), "--resume", "--no-progress"], ["--resume", "another forget"])
    one.write_text(td.imgs.names[int(td.index[2])] + "\n")  # the same file, other content
    fails(["--run", str(plain), "--forget", str(one), "--method", "finetune", "--steps", "1", "--out",
           str(tmp_path / "e"), "--resume", "--no-progress"], ["forget sha256"])
    fails(["--run", str(tmp_path / "e"), "--forget", str(two), "--out", str(tmp_path / "f")], ["itself an unlearned"])
    with pytest.raises(UserError, match="--forget-as-fake and --forget-until-heldout"):
        train_dcgan.parse_config(tiny_args(tmp_path / "g", "--forget-as-fake"))


def test_unlearning_study_end_to_end(tmp_path, inception_weights):
    """reproduce.py --unlearning on the digits: the original, the four methods and the DP row, each evaluated and
    audited against a reference model; the unlearned rows two-sided, their costs relative to retraining."""
    import reproduce

    out = tmp_path / "study"
    res = reproduce.main(["--unlearning", "--quick", "--train-sizes", "60", "--budget", "600", "--num-samples", "32",
                          "--max-real", "40", "--references", "1", "--canaries", "0", "--inception-weights",
                          str(inception_weights), "--no-progress", "--threads", "1", "--jobs", "2",
                          "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    rows = {r["defence"]: r for r in res["rows"]}
    assert list(rows) == ["original", "retrain", "finetune", "neggrad", "heldout", "DP-SGD, ε = 8"]
    assert rows["retrain"]["x_retrain"] == 1.0 and rows["original"]["x_retrain"] is None
    assert rows["finetune"]["steps"] == round(0.15 * rows["original"]["steps"])
    for name in ("retrain", "finetune", "neggrad", "heldout"):
        au = json.loads((out / "runs" / f"n60-unlearn-{name}" / "audit" / "audit.json").read_text())
        assert au["unlearning"]["retained_members"] == 48 and au["reference_runs"]
        assert all(a["one_run"]["two_sided"] for a in au["attacks"].values())
        assert 0 <= rows[name]["forgotten_auc"] <= 1 and rows[name]["fid_train"] > 0
    orig = json.loads((out / "runs" / "n60-unlearn-original" / "audit" / "audit.json").read_text())
    assert orig["unlearning"] is None and orig["coins"]["candidates"] == 24
    for f in ("unlearning.md", "unlearning.json", "unlearning.png", "unlearning_samples.png"):
        assert (out / f).stat().st_size > 0
    again = reproduce.main(["--unlearning", "--quick", "--train-sizes", "60", "--budget", "600", "--num-samples",
                            "32", "--max-real", "40", "--references", "1", "--canaries", "0", "--inception-weights",
                            str(inception_weights), "--no-progress", "--threads", "1", "--cache-dir",
                            str(tmp_path / "cache"), "--out", str(out), "--dry-run"])
    assert all(a == "reuse" for a, _ in again["dry_run"].values())

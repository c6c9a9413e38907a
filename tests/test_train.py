import json

import pytest
import torch

import train_dcgan
from conftest import tiny_args


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
    G, cfg = train_dcgan.load_generator(tmp_path / "generator.pt")
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


@pytest.mark.parametrize("argv,msg", [
    (["--data", "celeba", "--data-root", "/nonexistent"], "does not exist"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--data", "folder:/nonexistent"], "does not exist"),
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
        train_dcgan.load_generator(bad)


def test_celeba_one_epoch(tmp_path):
    import os

    root = os.environ.get("CELEBA_10K_ROOT")
    if not root:
        pytest.skip("CelebA 10k folder not available: set CELEBA_10K_ROOT (.ci/run points it at ../shared)")
    res = train_dcgan.train(train_dcgan.build_parser().parse_args(
        tiny_args(tmp_path, "--max-steps", "3", "--batch-size", "64")[2:] + ["--data", "celeba", "--data-root", root,
                                                                            "--cache-dir", str(tmp_path / "c")]))
    assert res["n_train"] == 10000 and (tmp_path / "grids" / "epoch_001.png").is_file()

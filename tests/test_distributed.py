"""Multi-process runs under torchrun (2 CPU processes, gloo)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import evaluate_mifid
import train_dcgan_dp
from conftest import tiny_args

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(script, *argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / script), *argv]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def test_dp_training_on_two_processes(tmp_path):
    argv = tiny_args(tmp_path / "ddp", "--max-steps", "6", "--device", "cpu")
    out = _torchrun("train_dcgan_dp.py", *argv)
    assert "x 2 processes" in out
    res = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert res["world_size"] == 2 and res["ranks_identical"] is True  # one synchronized DP step per step
    # the accounting is the single-process one: same q, sigma and steps, hence the same epsilon
    single = train_dcgan_dp.DPSGD(train_dcgan_dp.parse_config(tiny_args(tmp_path / "one", "--max-steps", "6")))
    train_dcgan_dp.train_dcgan.train(single.args, single)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    for k in ("sample_rate", "noise_multiplier", "dp_steps", "epsilon"):
        assert res[k] == pytest.approx(one[k], rel=1e-9), k
    assert res["steps"] == one["steps"] == 6
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["privacy"]["grad_sample_mode"] == "ghost"
    # Opacus' per-sample modes go through DPDDP instead: same ledger, identical ranks
    _torchrun("train_dcgan_dp.py", *tiny_args(tmp_path / "ddp-hooks", "--max-steps", "6", "--device", "cpu",
                                              "--grad-sample-mode", "hooks"))
    hooks = json.loads((tmp_path / "ddp-hooks" / "results.json").read_text())
    assert hooks["ranks_identical"] is True and hooks["epsilon"] == pytest.approx(one["epsilon"], rel=1e-9)
    # the non-private script shares the loop: gradients averaged over ranks, models identical
    _torchrun("train_dcgan.py", *tiny_args(tmp_path / "ddp-np", "--max-steps", "4", "--device", "cpu"))
    res = json.loads((tmp_path / "ddp-np" / "results.json").read_text())
    assert res["world_size"] == 2 and res["ranks_identical"] is True and res["steps"] == 4


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through Linux's /proc")
def test_leaving_the_group_ends_its_threads(tmp_path):
    """After destroy_process_group() no gloo thread may be left, even when torchvision (hence torch._dynamo) is
    first imported after init_distributed(), as data.py does: left running into interpreter shutdown, their
    teardown aborted a rank in CI ("terminate called without an active exception")."""
    script = tmp_path / "leave.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch.distributed as dist
        import utils
        utils.init_distributed("cpu")
        import torchvision  # noqa: F401
        dist.destroy_process_group()
        names = [open(f"/proc/self/task/{{t}}/comm").read() for t in os.listdir("/proc/self/task")]
        os.write(1, f"gloo threads left: {{sum('gloo' in n for n in names)}}\\n".encode())  # one write per rank
    """))
    assert _torchrun(script).count("gloo threads left: 0\n") == 2


def test_feature_extraction_sharded_over_two_processes(tmp_path, inception_weights):
    common = ["--gen", str(tmp_path / "gen.npz"), "--real", "digits", "--max-real", "40", "--cache-dir", "",
              "--inception-weights", str(inception_weights), "--device", "cpu", "--kid-subset-size", "20"]
    import data
    import torch

    data.save_npz(tmp_path / "gen.npz", torch.randint(0, 256, (33, 1, 32, 32), dtype=torch.uint8,
                                                      generator=torch.Generator().manual_seed(0)))
    # batch 16: 33 generated images = 3 batches, shared unevenly between the 2 ranks
    _torchrun("evaluate_mifid.py", *common, "--batch-size", "16", "--out", str(tmp_path / "two"))
    evaluate_mifid.main(common + ["--batch-size", "16", "--out", str(tmp_path / "one")])
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    assert two["world_size"] == 2
    for k in ("fid_train", "fid_heldout", "memorization_d", "kid_mean", "precision", "recall"):
        assert two[k] == pytest.approx(one[k], rel=1e-5, abs=1e-6), k

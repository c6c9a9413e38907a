"""A run's configuration is parsed once, checked and frozen; one process per run folder (issue #43)."""
import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import config
import train_dcgan
import train_dcgan_dp
from conftest import tiny_args

REPO = Path(__file__).resolve().parents[1]


def test_check_args_returns_a_new_frozen_config_and_leaves_the_parsed_arguments_alone():
    ns = train_dcgan.build_parser().parse_args(["--data-root", "/x", "--augment", "flip,translation",
                                                "--adaptive-d-steps", "0"])
    before = dict(vars(ns))
    cfg = train_dcgan.check_args(ns)
    assert vars(ns) == before  # the parsed arguments are not changed
    assert isinstance(cfg, config.Config) and cfg.data_root is None  # digits have no root
    assert cfg.augment == "translation,flip" and cfg.adaptive_d_steps is None  # canonical order; 0 is off
    with pytest.raises(AttributeError, match="frozen"):
        cfg.epochs = 3
    assert cfg.replace(epochs=3).epochs == 3 and cfg.epochs == 60
    dp = train_dcgan_dp.parse_config(["--data", "celeba", "--data-root", "/x"])  # the recipe, ε and unit resolved
    assert (dp.ndf, dp.epochs, dp.epsilon, dp.dp_unit) == (16, 30, 8.0, "image") and isinstance(dp, config.Config)


def _assigned_names(node):
    """(name, attribute) of every `name.attribute = ...` (also in tuples) and `setattr(name, ...)` in ``node``."""
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
            for t in ast.walk(target):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                    yield t.value.id, t.attr
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args \
            and isinstance(node.args[0], ast.Name):
        yield node.args[0].id, "?"


def test_nothing_assigns_to_parsed_arguments():
    """A lint over every module of the project: no assignment to an attribute of args, cfg or a (the names parsed
    arguments and configs go by); a new config is made with Config.replace or config.freeze."""
    found = [f"{f.name}:{node.lineno} {name}.{attr}" for f in sorted(REPO.glob("*.py"))
             for node in ast.walk(ast.parse(f.read_text())) for name, attr in _assigned_names(node)
             if name in ("args", "cfg", "a")]
    assert not found, found
    bad = ast.parse("args.x = 1\na, args.y = 1, 2\nsetattr(cfg, 'z', 3)\nself.args = args")  # the lint can fail
    assert sorted(n for node in ast.walk(bad) for n, _ in _assigned_names(node)) == ["args", "args", "cfg", "self"]


def test_resume_keeps_a_finished_run_as_it_is_and_locks_what_shapes_it(tmp_path, capsys):
    argv = tiny_args(tmp_path, "--max-steps", "2", "--num-samples", "8")
    train_dcgan.main(argv)
    files = {f: (tmp_path / f).read_bytes() for f in ("config.json", "coins.json", "results.json", "samples.npz",
                                                       "log.jsonl") if (tmp_path / f).exists()}
    train_dcgan.main(tiny_args(tmp_path, "--max-steps", "2", "--num-samples", "16", "--resume"))  # finished: as is
    assert "nothing left to train" in capsys.readouterr().out
    assert {f: (tmp_path / f).read_bytes() for f in files} == files
    res = train_dcgan.main(tiny_args(tmp_path, "--max-steps", "3", "--num-samples", "16", "--resume"))  # longer
    assert res["steps"] == 3 and json.loads((tmp_path / "config.json").read_text())["args"]["num_samples"] == 16
    for flag, value in (("--seed", "1"), ("--nz", "16"), ("--canaries", "1")):  # not resumable
        with pytest.raises(SystemExit) as e:
            train_dcgan.main(tiny_args(tmp_path, "--max-steps", "4", "--resume", flag, value))
        assert e.value.code == 2 and f"--{flag[2:]}" in capsys.readouterr().err
    train_dcgan_dp.main(tiny_args(tmp_path / "dp", "--max-steps", "1", "--noise-multiplier", "1"))
    with pytest.raises(SystemExit) as e:  # a DP run's checkpoint is not resumed without DP
        train_dcgan.main(tiny_args(tmp_path / "dp", "--max-steps", "2", "--resume"))
    assert e.value.code == 2 and "--noise-multiplier 1.0 -> None" in capsys.readouterr().err


def test_a_second_process_on_a_run_folder_gets_a_one_line_error(tmp_path, capsys):
    """The folder lock (utils.folder_lock, flock): while one process trains (or unlearns) a run, another one on the
    same folder is refused at once; the kernel releases the lock however the holder ends."""
    code = "import sys, time, utils\nwith utils.folder_lock(sys.argv[1]):\n    print('held', flush=True)\n" \
           "    time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as e:
            train_dcgan.main(tiny_args(tmp_path, "--max-steps", "1"))
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1
        assert f"is in use by another process (pid {holder.pid})" in err
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert train_dcgan.main(tiny_args(tmp_path, "--max-steps", "1"))["steps"] == 1  # free again after a kill

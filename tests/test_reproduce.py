import json
import os
from pathlib import Path

import pytest
import torch

import plots
import report
import reproduce
import stages
from conftest import tiny_args
from utils import UserError


def _argv(out, weights):
    # the --quick pipeline, shrunk further so that it fits the test suite: two sizes, one epsilon, no extra seed
    # (test_extra_seeds_... checks their commands), the public pretraining on the digits no coin candidate uses,
    # both warm rows (the quick preset's warm non-private row is opt-in)
    return ["--quick", "--train-sizes", "40,80", "--budget", "400", "--epsilons", "8", "--extra-seeds", "",
            "--warm-non-private", "--num-samples", "32",
            "--max-real", "40", "--canaries", "2", "--inception-weights", str(weights), "--no-progress",
            "--threads", "1", "--cache-dir", str(out.parent / "cache"), "--out", str(out)]


def test_quick_pipeline_end_to_end_idempotent_and_resumable(tmp_path, inception_weights, capsys, monkeypatch):
    out = tmp_path / "study"
    res = reproduce.main(_argv(out, inception_weights) + ["--jobs", "2"])
    for f in ("results.md", "results.json", "memorization_vs_n.png", "fid_vs_epsilon.png", "memorization_hist.png",
              "samples.png", "nn_galleries.png", "copy_galleries.png", "roc.png", "one_run.png", "exposure.png"):
        assert (out / f).stat().st_size > 0, f
    rows = {r["model"]: r for r in res["rows"]}
    assert set(rows) == {f"n{n}-{m}" for n in (40, 80) for m in ("non-private", "dp-eps8", "non-private-warm",
                                                                   "dp-eps8-warm")}
    pub = json.loads((out / "public-pretraining" / "config.json").read_text())["args"]
    assert pub["skip_subset"] == 160 and pub["epochs"] == 1 and pub["train_size"] is None  # 400 / 1,277 digits
    for name in ("n40-dp-eps8-warm", "n80-non-private-warm"):
        warm = json.loads((out / "runs" / name / "config.json").read_text())["init_from"]
        assert warm["run"] == str(out / "public-pretraining") and warm["disjoint_by_subset"]
    assert {r["size"] for r in res["pretraining_rows"]} == {40, 80}
    npv, dp = rows["n40-non-private"], rows["n40-dp-eps8"]
    assert npv["epsilon"] is None and npv["epochs"] == dp["epochs"] == 10  # the same budget of real images
    assert rows["n80-non-private"]["epochs"] == 5  # epochs = budget / N
    assert 7 < dp["epsilon"] <= 8.0 and dp["sigma"] > 0
    for r in rows.values():
        assert r["fid_train"] > 0 and r["mifid"] >= r["fid_train"] * (1 - 1e-9) and 0 <= r["mia_auc_white"] <= 1
        assert r["epsilon_lb_one_run"] >= 0 and r["max_exposure"] is not None and 0 <= r["copying_rate"] <= 1
        assert r["epsilon_lb_one_run"] == max(o["epsilon_lb"] for o in r["one_run"].values())
        assert {o["m"] for o in r["one_run"].values()} == {2 * r["size"]}  # every coin candidate is a trial
    assert dp["epsilon_lb_one_run"] <= dp["epsilon"]
    refs = {r["size"]: r for r in res["reference_rows"]}
    assert set(refs) == {40, 80} and all(r["fid_train"] > 0 for r in refs.values())
    md = (out / "results.md").read_text()
    assert "| 40 | n40-dp-eps8 |" in md and "real data (held-out, N = 40)" in md and "2460" in md and "reversed" in md
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    times = saved["stage_times"]  # the compute breakdown by stage kind, and the images Inception saw
    assert set(times["by_kind_s"]) >= {"public pretraining", "training", "evaluation", "audit"}
    assert times["total_s"] > 0 and times["inception"]["images"] > 0
    # compute nothing twice: the pretraining's samples are featurised once (its second evaluation reads the cache),
    # and every N's real images once (the first evaluation at that N computes them, the others wait for it)
    pre = [json.loads((out / "reference" / f"n{n}" / "public-pretraining" / "eval.json").read_text())["features"]
           for n in (40, 80)]
    assert sorted(f["images_computed"] for f in pre)[0] == 0
    for n in (40, 80):
        computed = [json.loads((out / "runs" / f"n{n}-{m}" / "eval" / "eval.json").read_text())["features"]
                    ["images_computed"] for m in ("non-private", "dp-eps8", "non-private-warm", "dp-eps8-warm")]
        assert computed[0] > computed[1] == computed[2] == computed[3] == 32  # only the samples after the first
    log = capsys.readouterr()
    assert "batch/s" not in log.err and "it/s" not in log.err  # --no-progress reaches every stage
    assert "[n40-dp-eps8] training: running" in log.out and (out / "logs" / "n40-dp-eps8-training.log").is_file()

    # everything finished: all stages reused (progress bars do not change what a stage computes), also with the
    # study folder and the weights given as relative paths (the stages recorded them absolute)
    monkeypatch.chdir(tmp_path)
    rel = _argv(Path("study"), os.path.relpath(inception_weights, tmp_path))
    again = reproduce.main([a for a in rel if a != "--no-progress"] + ["--jobs", "1"])
    log = capsys.readouterr().out
    assert log.count("reused") == 33 and "running" not in log
    assert again["rows"] == res["rows"]

    # an interrupted DP run (checkpoint, no final artefacts) resumes; only its later stages are redone. --only
    # runs that model's stages and no other, and writes no report; the next full invocation reuses them all
    run = out / "runs" / "n40-dp-eps8"
    (run / "results.json").unlink()
    (run / "samples.npz").unlink()
    (out / "results.md").unlink()
    assert reproduce.main(_argv(out, inception_weights) + ["--only", "n40-dp-eps8"]) == {"only": ["n40-dp-eps8"]}
    log = capsys.readouterr().out
    assert "[n40-dp-eps8] training: resuming" in log and "[n40-dp-eps8] evaluation: running" in log
    assert "resumed from" in (out / "logs" / "n40-dp-eps8-training.log").read_text()
    assert "[n40-non-private]" not in log and "[n80" not in log and not (out / "results.md").exists()
    third = reproduce.main(_argv(out, inception_weights))
    log = capsys.readouterr().out
    assert log.count("reused") == 33 and "running" not in log and (out / "results.md").is_file()
    assert {r["model"]: r["epsilon"] for r in third["rows"]} == {r["model"]: r["epsilon"] for r in res["rows"]}
    _what_reruns(out, inception_weights, res, capsys, monkeypatch)


def _runs(plan, what=""):
    """The stages of a --dry-run plan that would run (of kind ``what``), {name: why}."""
    return {k: why for k, (action, why) in plan.items() if not action.startswith("reuse") and k.endswith(what)}


def _what_reruns(out, weights, res, capsys, monkeypatch):
    """Issue #43: each stage is keyed on its settings, its inputs' content and its code; --dry-run says what a
    change reruns, and a changed setting retrains (the old run moved aside) instead of aborting or keeping it."""
    import shutil
    import subprocess
    import sys

    def plan(*extra):
        return reproduce.main(_argv(out, weights) + ["--dry-run", *extra])["dry_run"]

    trainings = {k for k in plan() if k.endswith(" training")}
    refmodels = {f"n{n}-refmodel{r} training" for n in (40, 80) for r in (1, 2)}
    assert len(trainings) == 13 and refmodels < trainings and not _runs(plan())  # 8 models, 4 reference models and
    pretraining = "public pretraining (ndf 8) training"  # the public pretraining (1 epoch at either budget)
    for flag, value, field, retrained in (("--budget", "200", "epochs", trainings - {pretraining}),
                                          ("--num-samples", "16", "num_samples", trainings - refmodels),  # they draw 0
                                          ("--seed", "1", "seed", trainings)):
        runs = _runs(plan(flag, value), " training")  # (a warm run after a changed pretraining: "after" it)
        assert set(runs) == retrained and all(f"settings changed: {field}" in why or why == f"after {pretraining}"
                                              for why in runs.values()), runs
    runs = _runs(plan("--canaries", "1"))  # the models' trainings, not the pretraining's: it has no canaries
    assert {k for k in runs if k.endswith(" training")} == trainings - {pretraining} - refmodels
    runs = _runs(plan("--delta", "1e-7"))  # the DP models only, and what reads them
    assert {k for k in runs if k.endswith(" training")} == {f"n{n}-dp-eps8{w} training" for n in (40, 80)
                                                           for w in ("", "-warm")}
    assert "n40-non-private evaluation" not in runs and "n40-reference real-data reference" not in runs
    assert runs["n40-dp-eps8 training"] == "settings changed: delta" and runs["n40-dp-eps8 audit"].startswith("after")

    # retraining the public pretraining (a new results.json) reruns the warm rows and the pretraining's evaluations
    pub = out / "public-pretraining" / "results.json"
    original = pub.read_text()
    pub.write_text(original.replace("{", '{"retrained": true,', 1))
    runs = _runs(plan())
    pub.write_text(original)
    assert {k for k in runs if k.endswith(" training")} == {f"n{n}-{m}-warm training" for n in (40, 80)
                                                           for m in ("non-private", "dp-eps8")}
    assert all(runs[f"n{n}-{m}-warm training"] == "input changed: init_from" for n in (40, 80)
               for m in ("non-private", "dp-eps8"))
    assert runs["n40-public-pretraining evaluation"] == "input changed: gen"

    # the code: a copy of the project with README.md changed reruns nothing; with a metric changed (metrics.py) it
    # reruns every evaluation and audit (which import metrics.py), not one training
    repo, code = Path(reproduce.__file__).resolve().parent, out.parent / "code"
    shutil.copytree(repo, code, ignore=shutil.ignore_patterns(".git", ".venv", "outputs", "__pycache__", "*.egg-info"))
    (code / "README.md").write_text("changed\n")

    def plan_of_copy(*extra):
        p = subprocess.run([sys.executable, str(code / "reproduce.py"), *_argv(out, weights), "--dry-run", *extra],
                           capture_output=True, text=True, cwd=out.parent, timeout=300)
        assert p.returncode == 0, p.stderr
        return {line.split(maxsplit=1)[1].split("  (")[0]: line.split()[0] for line in p.stdout.splitlines()
                if line.startswith("  ") and line.split()[0] in ("reuse", "run", "resume", "reuse-stale")}

    assert set(plan_of_copy().values()) == {"reuse"}
    metrics = (code / "metrics.py").read_text()
    (code / "metrics.py").write_text(metrics.replace("def fid(", "def fid(  # a changed metric\n        ", 1))
    reruns = {k for k, action in plan_of_copy().items() if action != "reuse"}
    assert reruns == {k for k in plan() if not k.endswith(" training")} and len(reruns) == 33 - 13
    assert {k for k, action in plan_of_copy("--reuse-stale").items() if action == "reuse-stale"} == reruns

    # a changed setting is trained anew (never resumed under it, never refused): the old run is moved aside; back
    # to the original setting, the run is retrained and computes exactly what it did
    capsys.readouterr()
    reproduce.main(_argv(out, weights) + ["--only", "n40-dp-eps8", "--delta", "1e-7"])
    assert "[n40-dp-eps8] training: running (settings changed: delta)" in capsys.readouterr().out
    assert json.loads((out / "runs" / "n40-dp-eps8" / "config.json").read_text())["args"]["delta"] == 1e-7
    assert len(list((out / "runs" / ".stale").glob("n40-dp-eps8-*/ckpt.pt"))) == 1
    again = reproduce.main(_argv(out, weights))
    log = capsys.readouterr().out
    assert log.count("running") == 3 and log.count("reused") == 30  # the model's training, evaluation and audit
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_s", "features")} for r in rows]  # noqa
    assert strip(again["rows"]) == strip(res["rows"])

    # --reuse-stale keeps what only the code changed (here: metrics.py, as this process sees it), and says so
    real_sha = stages._source_sha
    monkeypatch.setattr(stages, "_source_sha", lambda m: "edited" if m == "metrics" else real_sha(m))
    stale = reproduce.main(_argv(out, weights) + ["--reuse-stale"])
    assert len(stale["stale_stages"]) == 20 and set(stale["stale_stages"].values()) == {"code changed: metrics.py"}
    assert "**Stale: 20 stage(s) were computed by other code" in (out / "results.md").read_text()
    assert "running" not in capsys.readouterr().out


def _small(out, weights, jobs):
    """One size, no warm rows (2 models, 7 stages), trained long enough to checkpoint half way (D step 50 of 100)."""
    return ["--quick", "--train-sizes", "40", "--budget", "4000", "--epsilons", "8", "--no-warm", "--extra-seeds", "",
            "--references", "0",
            "--num-samples", "32", "--max-real", "40", "--canaries", "2", "--inception-weights", str(weights),
            "--no-progress", "--threads", "1", "--jobs", str(jobs),
            "--cache-dir", str(out.parent / f"cache-{out.name}"), "--out", str(out)]


@pytest.fixture(scope="module")
def small_local(tmp_path_factory):
    """The small study with the local executor, one worker: what every other executor must compute."""
    from conftest import _env_path

    weights = _env_path("INCEPTION_WEIGHTS", "FID Inception weights")
    return reproduce.main(_small(tmp_path_factory.mktemp("local") / "seq", weights, 1))


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "features")} for r in rows]


def test_parallel_study_interrupted_by_ctrl_c_and_killed_resumes_to_the_sequential_results(tmp_path,
                                                                                         inception_weights,
                                                                                         small_local):
    """--jobs 2 computes what --jobs 1 does (same --threads), also when Ctrl-C stops it in the middle of a training
    run and when SIGKILL ends it (and its workers) at three random moments (seeded), each time followed by the same
    command: finished stages are reused, an interrupted training resumes from its checkpoint, nothing half-written
    is taken for a result. (Each study has its own feature cache: nothing is shared between the two.)"""
    import random
    import signal
    import subprocess
    import sys
    import time

    seq = small_local
    repo = Path(reproduce.__file__).resolve().parent
    par = tmp_path / "par"

    def start():  # SIGINT back to its default in the child: a test run started in the background by a shell
        # inherits SIGINT ignored (POSIX), and Python keeps an ignored SIGINT ignored, so Ctrl-C would never arrive
        return subprocess.Popen([sys.executable, str(repo / "reproduce.py"), *_small(par, inception_weights, 2)],
                                cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    p = start()
    deadline = time.time() + 300
    while not list(par.glob("runs/*/ckpt.pt")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not (par / "results.json").exists() and not all((par / "runs" / m / "results.json").exists()
                                                          for m in ("n40-non-private", "n40-dp-eps8"))
    for delay in random.Random(43).sample(range(2, 16), 3):  # seconds after the start
        p = start()
        time.sleep(delay)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the main process and its workers, with no chance to clean up
        p.communicate(timeout=60)
    resumed = reproduce.main(_small(par, inception_weights, 2))
    logs = "".join(f.read_text() for f in (par / "logs").glob("*training.log"))
    assert "resumed from" in logs  # a cut training run continued from its checkpoint
    assert _strip(resumed["rows"]) == _strip(seq["rows"]) and len(seq["rows"]) == 2
    assert _strip(resumed["reference_rows"]) == _strip(seq["reference_rows"])


def test_dask_executor_computes_what_the_local_one_does_also_when_a_worker_dies(tmp_path, inception_weights,
                                                                                 small_local):
    """--executor dask on a LocalCluster of 2 worker processes: the same rows as the local executor's, also when a
    worker is killed while it trains (Dask runs the stage again on another worker; the training resumes from its
    checkpoint)."""
    import signal
    import threading
    import time

    import psutil

    pytest.importorskip("distributed")
    out = tmp_path / "dask"
    killed = []

    def kill_a_training_worker():  # once a checkpoint exists, SIGKILL a worker process (the local cluster's)
        deadline = time.time() + 300
        while not list(out.glob("runs/*/ckpt.pt")) and time.time() < deadline:
            time.sleep(0.05)
        workers = [c for c in psutil.Process().children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        if workers:
            os.kill(workers[0].pid, signal.SIGKILL)
            killed.append(workers[0].pid)

    threading.Thread(target=kill_a_training_worker, daemon=True).start()
    res = reproduce.main(_small(out, inception_weights, 2) + ["--executor", "dask"])
    assert killed and _strip(res["rows"]) == _strip(small_local["rows"])
    assert _strip(res["reference_rows"]) == _strip(small_local["reference_rows"])


def _parse_out(argv):
    import argparse

    return argparse.Namespace(out=argv[0])


def _ok(args):
    (Path(args.out) / "done.txt").write_text("ok")


def _fail(args):
    from utils import UserError

    raise UserError("this stage was told to fail")


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_a_failed_stage_stops_what_needs_it_only_and_names_its_log(tmp_path, executor):
    """Four stages: a fails, b needs a, c and d (which needs c) do not: c and d run, b does not, and the error is
    one line that names a's log."""
    from stages import Script, Stage, run_stages

    if executor == "dask":
        pytest.importorskip("distributed")
    ok, fail = Script("config", _parse_out, _ok), Script("config", _parse_out, _fail)
    mk = lambda name, script, deps=(): Stage(name, "work", script, [str(tmp_path / name)], tmp_path / name,  # noqa
                                             "done.txt", deps)
    a = mk("a", fail)
    c = mk("c", ok)
    stages = [a, mk("b", ok, (a,)), c, mk("d", ok, (c,))]
    for s in stages:
        s.out.mkdir()
    with pytest.raises(UserError) as e:
        run_stages(stages, jobs=2, log_dir=tmp_path / "logs", progress=False, executor=executor, out=tmp_path)
    msg = str(e.value)
    assert "1 stage(s) failed; 1 stage(s) that need them did not run" in msg and "told to fail" in msg
    assert str(tmp_path / "logs" / "a-work.log") in msg and "\n" not in msg
    assert [(tmp_path / n / "done.txt").is_file() for n in "abcd"] == [False, False, True, True]


def test_stages_after_reused_ones_run(tmp_path):
    """A chain a -> b -> c whose b's output is deleted: a is reused, b runs, and c, whose input b wrote again
    byte for byte, is reused (a pass that only reuses stages must not end the study)."""
    from stages import Script, Stage, run_stages

    ok = Script("config", _parse_out, _ok)
    a = Stage("a", "work", ok, [str(tmp_path / "a")], tmp_path / "a", "done.txt")
    b = Stage("b", "work", ok, [str(tmp_path / "b")], tmp_path / "b", "done.txt", (a,))
    c = Stage("c", "work", ok, [str(tmp_path / "c")], tmp_path / "c", "done.txt", (b,))
    for s in (a, b, c):
        s.out.mkdir()
    first = run_stages([a, b, c], progress=False)
    assert [first[f"{n} work"]["action"] for n in "abc"] == ["run"] * 3
    (tmp_path / "b" / "done.txt").unlink()
    again = run_stages([a, b, c], progress=False)
    assert [again[f"{n} work"]["action"] for n in "abc"] == ["reuse", "run", "reuse"]


def test_an_option_added_later_does_not_change_old_stages(tmp_path):
    """A stage key written before --forget existed equals today's key of the same training (the option at its
    config.BEFORE value); the option set to anything else, or another setting changed, is a difference."""
    from stages import Stage, differences

    flags = tiny_args(tmp_path / "run")
    stage = Stage("x", "training", reproduce.SCRIPTS["train_dcgan"], flags, tmp_path, "results.json")
    key = stage.key()
    old = {**key, "args": {k: v for k, v in key["args"].items() if not k.startswith("forget")}}
    assert "forget" in key["args"] and differences(old, key) == []
    other = Stage("x", "training", reproduce.SCRIPTS["train_dcgan"], flags + ["--forget", "heads"], tmp_path,
                  "results.json").key()
    assert differences(old, other) == ["settings changed: forget"]
    assert differences({**old, "args": {**old["args"], "lr": 1.0}}, key) == ["settings changed: lr"]


def test_bad_settings_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CELEBA_ROOT", raising=False)
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--out", str(tmp_path)])
    assert e.value.code == 2 and "--data-root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--quick", "--epsilons", "8,zero", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--epsilons" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--quick", "--train-sizes", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--train-sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--quick", "--rows", "1", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--levers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--levers", "--data-root", str(tmp_path), "--rows", "6,99", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--rows must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--quick", "--only", "n40-dp-eps8", "--out", str(tmp_path)])  # the quick sizes are 100, 500
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--only: no model named n40-dp-eps8" in err and "n100-dp-eps8" in err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--levers", "--data-root", str(tmp_path), "--only", "x", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--rows" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--quick", "--jobs", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--jobs must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # 2 x 718 coin candidates leave 1 of the 1,437 train digits to pretrain on
        reproduce.main(["--quick", "--train-sizes", "100,718", "--out", str(tmp_path)])
    assert e.value.code == 2 and "leave no digits for public data" in capsys.readouterr().err
    for bad in ("1,x", "0", "2,2", "-1"):  # the main seed is 0
        with pytest.raises(SystemExit) as e:
            reproduce.main(["--quick", "--extra-seeds", bad, "--out", str(tmp_path)])
        assert e.value.code == 2 and "--extra-seeds must" in capsys.readouterr().err


def _settings(*argv):
    return reproduce.settings(reproduce.build_parser().parse_args(list(argv)))


def test_warm_pair_shares_start_and_budget_each_with_its_scripts_recipe(tmp_path):
    s = _settings("--data-root", str(tmp_path), "--train-sizes", "1000,250")
    plan = {m.name: m for m in reproduce.model_plan(s, public=tmp_path / "pub")}
    assert [name for name, m in plan.items() if m.warm] == [f"n{n}-{m}-warm" for n in (1000, 250)
                                                            for m in ("non-private", "dp-eps8")]
    assert [name for name, m in plan.items() if m.kind == "dp" and not m.warm] == [
        f"n{n}-dp-eps{e}" for n in (1000, 250) for e in (8, 1)]  # --epsilons 8,1 from scratch, --warm-epsilons 8
    s = _settings("--data-root", str(tmp_path), "--train-sizes", "1000,250", "--warm-epsilons", "8,1")
    plan = {m.name: m for m in reproduce.model_plan(s, public=tmp_path / "pub")}
    npv, dp, dp1 = plan["n250-non-private-warm"], plan["n250-dp-eps8-warm"], plan["n250-dp-eps1-warm"]
    assert (npv.script, dp.script, dp1.script) == ("train_dcgan", "train_dcgan_dp", "train_dcgan_dp")
    assert dp1.flags["--epsilon"] == "1" and dp1.epsilon == 1 and npv.kind == "non-private" and dp.kind == "dp"
    for m in (npv, dp, dp1):
        assert m.flags["--init-from"] == tmp_path / "pub"
        assert m.flags["--ndf"] == reproduce._dp_default("ndf")  # the pretraining's width
        assert m.flags["--epochs"] == 480  # the same budget as every row at N = 250
    assert "--lr" not in npv.flags and dp.flags["--lr"] == reproduce.WARM_LR
    quick = _settings("--quick")  # digits: their DP width
    plan = {m.name: m for m in reproduce.model_plan(quick, public=tmp_path / "pub")}
    assert [name for name, m in plan.items() if m.warm] == ["n100-dp-eps8-warm", "n500-dp-eps8-warm"]
    assert {plan[f"n{n}-dp-eps8-warm"].flags["--ndf"] for n in (100, 500)} == {8}


def test_extra_seeds_retrain_the_smallest_non_private_model_only(tmp_path):
    args = ["--data-root", str(tmp_path), "--train-sizes", "1000,250"]
    plan = {m.name: m for m in reproduce.model_plan(_settings(*args))}
    assert [n for n in plan if "seed" in n] == ["n250-non-private-seed1", "n250-non-private-seed2"]  # the default
    base, seeded = plan["n250-non-private"], plan["n250-non-private-seed2"]
    assert (base.flags["--seed"], base.seed, seeded.flags["--seed"], seeded.seed) == (0, 0, 2, 2)
    assert {k: v for k, v in seeded.flags.items() if k != "--seed"} == {k: v for k, v in base.flags.items()
                                                                          if k != "--seed"}  # the same otherwise
    assert not any("seed" in m.name for m in reproduce.model_plan(_settings("--quick")))
    assert not any("seed" in m.name for m in reproduce.model_plan(_settings(*args, "--extra-seeds", "")))


def test_dp_discriminator_shrinks_below_small_n_only(tmp_path):
    s = _settings("--data-root", str(tmp_path), "--train-sizes", "250,1999,2000")
    ndf = {m.name: m.flags.get("--ndf", 0) for m in reproduce.model_plan(s)}
    assert ndf["n250-dp-eps8"] == ndf["n1999-dp-eps1"] == reproduce.SMALL_NDF != reproduce._dp_default("ndf")
    assert ndf["n2000-dp-eps8"] == ndf["n250-non-private"] == 0  # not given: the script defaults


def test_sample_panels_keep_one_row_per_size_with_blanks(tmp_path):
    import matplotlib.image
    import torch

    path = tmp_path / "p.png"
    panel = torch.full((4, 1, 8, 8), 128, dtype=torch.uint8)
    plots.plot_image_panels({"a": panel, "blank": None, "c": panel, "d": panel}, path, "t", ncols=2)
    img = matplotlib.image.imread(str(path))[..., :3]
    h, w = img.shape[:2]

    def grey(part):  # does the region hold a pixel of the panels' grey?
        return bool((abs(part - 128 / 255) < 0.02).all(-1).any())

    assert grey(img[h // 4:h // 2, : w // 2]) and not grey(img[h // 4:h // 2, w // 2:])  # row 1: "a", then the blank
    assert grey(img[h // 2 + h // 8:, w // 2:])  # row 2: "c", "d"


def test_frontier_reuses_the_study_and_puts_every_defence_on_it(tmp_path, inception_weights, monkeypatch):
    """--frontier at the smallest N: the study's non-private and DP runs under the study's names and arguments
    (a finished study is reused), DP at every ε, memorization rejection, augmentation, and early stopping from a
    snapshot run whose training is the non-private run's (snapshots change nothing); one table row per model and
    checkpoint."""
    monkeypatch.setattr(reproduce, "MR_QUANTILES", (0.5,))
    monkeypatch.setattr(reproduce, "AUGMENTATIONS", ("translation,flip",))
    monkeypatch.setattr(reproduce, "CHECKPOINTS", 2)
    out = tmp_path / "study"
    argv = [a for a in _argv(out, inception_weights)] + ["--frontier", "--epsilons", "8,64", "--jobs", "2"]
    argv[argv.index("--train-sizes") + 1] = "40"
    s = reproduce.settings(reproduce.build_parser().parse_args(argv), epsilons=reproduce.FRONTIER_EPSILONS)
    study = {m.name: m for m in reproduce.model_plan(s)}
    models, every = reproduce.frontier_plan(s)
    for m in models:
        if m.name in study:
            assert m.flags == study[m.name].flags  # the same stage as the study's: reused when the study ran
    assert {m.defence for m in models} == {"none", "DP-SGD", "memorization rejection", "augmentation",
                                           "early stopping"}
    assert every == 10 * 1 // 2  # 10 epochs x 1 step (40 + 2 x 2 canary copies < 64) / 2 checkpoints

    res = reproduce.main(argv)
    for f in ("frontier.md", "frontier.json", "frontier.png", "frontier_samples.png"):
        assert (out / f).stat().st_size > 0, f
    rows = res["rows"]
    assert [r["defence"] for r in rows] == ["none", "DP-SGD", "DP-SGD", "memorization rejection", "augmentation",
                                            "early stopping", "early stopping"]
    for r in rows:
        assert r["fid_train"] > 0 and 0 <= r["mia_auc_white"] <= 1 and 0 <= r["copying_rate"] <= 1
    assert [r["target_epsilon"] for r in rows if r["defence"] == "DP-SGD"] == [8, 64]
    assert rows[3]["mr_rejected"] is not None and "none" in rows[3]["guarantee"]
    assert [r["step"] for r in rows if r["defence"] == "early stopping"] == [5, 10]
    from utils import safe_load

    a, b = (safe_load(out / "runs" / f"n40-{m}" / "ckpt.pt") for m in ("non-private", "non-private-snapshots"))
    for k in a["D"]:  # taking snapshots does not change the training
        assert torch.equal(a["D"][k], b["D"][k])
    md = (out / "frontier.md").read_text()
    assert "memorization rejection" in md and "--snapshot-every 5" in md


def test_dp_cost_decomposes_the_price_one_step_at_a_time(tmp_path):
    """--dp-cost at every N: the study's non-private model, the non-private script with the DP recipe, the DP script
    with σ = 0 and no effective clipping (Poisson), with σ = 0 (clipping), then the study's DP models at each ε (the
    same flags as the study's and the frontier's: reused); the same data, coins, budget and width throughout."""
    import dp_cost

    s = _settings("--data-root", str(tmp_path), "--dp-cost", "--train-sizes", "250,2300", "--epsilons", "64,8")
    plan = dp_cost.dp_cost_plan(s)
    study = {m.name: m for m in reproduce.model_plan({**s, "extra_seed_list": []})}
    assert [m.name for m in plan] == [f"n{n}-{x}" for n in (250, 2300) for x in (
        "non-private", "dpcost-recipe", "dpcost-poisson", "dpcost-clip", "dp-eps64", "dp-eps8")]
    for m in plan:
        if m.name in study:
            assert m.flags == study[m.name].flags  # reused from the study
        base = study[f"n{m.size}-non-private"].flags
        assert all(m.flags[k] == base[k] for k in ("--train-size", "--epochs", "--coin-subset", "--seed"))
    by = {m.name: m for m in plan}
    recipe, poisson, clip = (by[f"n250-dpcost-{x}"] for x in ("recipe", "poisson", "clip"))
    assert recipe.script == "train_dcgan" and recipe.flags["--batch-size"] == 256 and recipe.flags["--ndf"] == 8
    assert recipe.flags["--augment"] == "translation,flip" and recipe.flags["--lr"] == 1e-3
    assert (poisson.script, poisson.flags["--noise-multiplier"], poisson.flags["--max-grad-norm"]) == (
        "train_dcgan_dp", 0, "1e6")
    assert clip.flags["--noise-multiplier"] == 0 and "--max-grad-norm" not in clip.flags
    assert by["n2300-dpcost-recipe"].flags["--ndf"] == reproduce._dp_default("ndf") == by["n2300-dp-eps8"].flags.get(
        "--ndf", reproduce._dp_default("ndf"))  # at N >= 2,000 the DP width is the recipe's own
    cfg = reproduce.SCRIPTS["train_dcgan_dp"].parse(report.argv_of({**clip.flags, "--out": str(tmp_path / "c")}))
    assert cfg.noise_multiplier == 0 and cfg.epsilon is None and cfg.ndf == 8  # a valid clip-only DP run


def test_stage_keys_do_not_depend_on_how_the_environment_named_an_input(tmp_path, monkeypatch):
    """An evaluation keys alike with --inception-weights W and with INCEPTION_WEIGHTS=W (other weights: another
    input), and with or without a $CELEBA_ROOT that only relocates the run's data; the audit, which reads no
    Inception weights by default, does not take them from the environment."""
    from stages import Stage, effective

    weights, other = tmp_path / "w.pth", tmp_path / "other.pth"
    weights.write_bytes(b"weights")
    other.write_bytes(b"other weights")
    run, out = str(tmp_path / "run"), str(tmp_path / "eval")

    def key(script, *argv):
        return Stage("x", "work", reproduce.SCRIPTS[script], list(argv), tmp_path, "done").key()

    monkeypatch.delenv("CELEBA_ROOT", raising=False)
    monkeypatch.delenv("INCEPTION_WEIGHTS", raising=False)
    given = key("evaluate_mifid", "--gen", run, "--out", out, "--inception-weights", str(weights))
    audit = key("audit", "--run", run, "--out", out)
    monkeypatch.setenv("INCEPTION_WEIGHTS", str(weights))
    monkeypatch.setenv("CELEBA_ROOT", str(tmp_path / "celeba"))
    assert key("evaluate_mifid", "--gen", run, "--out", out) == given
    assert key("audit", "--run", run, "--out", out) == audit
    monkeypatch.setenv("INCEPTION_WEIGHTS", str(other))
    changed = key("evaluate_mifid", "--gen", run, "--out", out)
    assert changed["inputs"]["inception_weights"] != given["inputs"]["inception_weights"]
    root = {"data_root": "/celeba", "gen": run}
    assert effective({**root, "real": "celeba"})["data_root"] == "/celeba"  # there the root is the data
    assert effective(root)["data_root"] is None

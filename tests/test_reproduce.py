import json

import pytest

import reproduce


def _argv(out, weights):
    # the --quick pipeline, shrunk further so that it fits the test suite
    return ["--quick", "--epochs", "1", "--epsilons", "8", "--num-samples", "32", "--max-real", "40",
            "--canaries", "2", "--inception-weights", str(weights), "--no-progress", "--cache-dir", str(out.parent / "cache"),
            "--out", str(out)]


def test_quick_pipeline_end_to_end_idempotent_and_resumable(tmp_path, inception_weights, capsys):
    out = tmp_path / "study"
    res = reproduce.main(_argv(out, inception_weights))
    for f in ("results.md", "results.json", "fid_vs_epsilon.png", "memorization_hist.png", "samples.png",
              "nn_galleries.png", "roc.png", "exposure.png"):
        assert (out / f).stat().st_size > 0, f
    rows = {r["model"]: r for r in res["rows"]}
    assert set(rows) == {"non-private", "dp-eps8"}
    npv, dp = rows["non-private"], rows["dp-eps8"]
    assert npv["epsilon"] is None and npv["steps"] == dp["steps"] > 0  # the same step budget
    assert 7 < dp["epsilon"] <= 8.0 and dp["sigma"] > 0
    for r in (npv, dp):
        assert r["fid_train"] > 0 and r["mifid"] >= r["fid_train"] * (1 - 1e-9) and 0 <= r["mia_auc_white"] <= 1
        assert r["epsilon_lower_bound"] >= 0 and r["max_exposure"] is not None
    assert dp["epsilon_lower_bound"] <= dp["epsilon"]
    md = (out / "results.md").read_text()
    assert "| dp-eps8 |" in md and "2460" in md and "reversed" in md
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"][1]["fid_train"] == dp["fid_train"]

    capsys.readouterr()
    again = reproduce.main(_argv(out, inception_weights))  # everything finished: all stages reused
    log = capsys.readouterr().out
    assert log.count("reused") == 6 and "running" not in log and "training" not in log
    assert again["rows"] == res["rows"]

    # an interrupted DP run (checkpoint, no final artefacts) resumes; only its later stages are redone
    run = out / "runs" / "dp-eps8"
    (run / "results.json").unlink()
    (run / "samples.npz").unlink()
    third = reproduce.main(_argv(out, inception_weights))
    log = capsys.readouterr().out
    assert "[dp-eps8] resuming" in log and "[dp-eps8] evaluation: running" in log and "[non-private] evaluation found" in log
    assert {r["model"]: r["epsilon"] for r in third["rows"]} == {r["model"]: r["epsilon"] for r in res["rows"]}


def test_bad_settings_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CELEBA_ROOT", raising=False)
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--out", str(tmp_path)])
    assert e.value.code == 2 and "--data-root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--quick", "--epsilons", "8,zero", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--epsilons" in capsys.readouterr().err

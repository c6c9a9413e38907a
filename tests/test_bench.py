"""bench.py's plumbing at tiny sizes (benchmarks assert no timings)."""
import json

import pytest

import bench


def test_d_step_jobs_run_the_training_step_for_every_mode():
    for mode in ("non-private", "ghost", "hooks", "functorch", "ew"):
        r = bench.job_d_step(mode, 4, 1, "cpu", 1)
        assert r["mode"] == mode and r["sec_per_step"] > 0 and r["images_per_s"] > 0
        assert ("g_step_sec_d_frozen" in r) == (mode == "hooks")
        assert ("slowdown_paired" in r) == (mode != "non-private")


def test_memorization_and_data_jobs(tmp_path):
    r = bench.job_memorization(50, 120, "cpu", 1)
    assert (r["n_gen"], r["n_train"]) == (50, 120) and r["sec"] > 0
    r = bench.job_data("digits", None, 16, 3, 1, cache_dir=tmp_path)
    assert r["images"] == 1797 and r["batch_images_per_s"] > 0


def test_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--only", "data", "--data", "digits", "--iters", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["data"]["images"] == 1797 and res["device"] == "cpu"


def test_train_step_job_alternates_dp_and_non_private():
    r = bench.job_train_step(2, 4, 2, "cpu", 1, width=8)
    sp = r["slowdown_paired"]
    assert r["k"] == 2 and r["sec_dp"] > 0 and r["sec_non_private"] > 0
    assert sp["pairs"] == 2 and sp["min"] <= sp["median"] <= sp["max"]


def test_threads_job_runs_alone_and_beside_a_busy_process(tmp_path):
    for busy in (False, True):  # as bench() runs it: in a spawned (daemonic) pool worker
        r = bench.isolated(bench.job_threads, 8, 2, "1", busy, str(tmp_path / f"run{busy}"))
        assert r["busy_neighbour"] is busy and r["sec_per_step"] > 0 and r["threads_used"] == "1"


def test_profile_job_times_every_phase_of_the_dp_step():
    r = bench.job_profile(4, 1, "cpu", 1, width=8)
    assert set(r["norms_ms"]) == {"main.0", "main.2", "main.5", "main.8"}  # D's four convolutions
    assert {"non_private_step", "forward_backward_weight_grads", "clipper", "dp_step"} <= set(r["ms"])
    assert all(v > 0 for v in r["ms"].values()) and r["matmul_gmacs"] > 0 and r["conv_gmacs"] > 0


def test_inception_job_times_batch_sizes_torch_fidelity_and_bf16(inception_weights):
    r = bench.job_inception(str(inception_weights), 8, "cpu", 1)
    assert set(r["ours_images_per_s_by_batch"]) == {"32", "64", "128"} and r["torch_fidelity_images_per_s"] > 0
    assert r["max_abs_feature_diff"] < 1e-3 < r["bf16_max_abs_feature_diff"]  # fp32 exact, bf16 not


def test_metrics_job_times_both_routes_to_the_same_numbers():
    r = bench.job_metrics(60, 90, 1)
    assert r["fid"] == pytest.approx(r["fid_covariances"], rel=1e-6)
    assert r["kid"] == pytest.approx(r["kid_per_subset"], rel=1e-9) and r["kid_s"] > 0

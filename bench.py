"""Benchmarks (not tests): DP step overhead, feature throughput, memorization-distance scaling, data loading.

  python bench.py                       # everything, prints a table and writes outputs/bench.json
  python bench.py --quick               # smaller sizes, a few minutes

Every measurement runs in a fresh subprocess, so "peak extra memory" is that process's peak resident memory
(CUDA: peak allocated) above what it held after building its inputs. Times are medians over --iters
repetitions after warm-up; DP slowdowns are measured from alternating private and non-private steps in one
process (the median of the per-pair ratios, with their range), which is robust to machine drift. "profile"
times the phases of the DP step (job_profile) and the CPU's matmul and convolution throughput. "trainstep"
times the loop's unit, K D steps and one G step, for K = 1 and 5. "threads" times short training runs alone and
beside a busy process, with --threads auto and with one thread per core. Figures are ratios where the question is one
("how much slower is DP?"), so they transfer across machines better than raw numbers; the device is in the JSON.
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from utils import Parser, keep_freed_memory, pick_device, run_cli, versions, write_json


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _timed(fn, iters: int, warmup: int = 2) -> float:
    """Median seconds of fn() over iters calls after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _mem_start(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    return _peak_rss_mb()


def _mem_extra(device, start) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20 - start, 1)
    return round(_peak_rss_mb() - start, 1)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- jobs (each in its own process)
def _paired(step_a, step_b, iters: int, device) -> dict:
    """Alternate a and b iters times (after warm-up); per-pair ratios b / a are robust to machine drift."""
    for _ in range(2):
        step_a(), step_b()
    ratios, ta, tb = [], [], []
    for _ in range(iters):
        ta.append(_timed(lambda: (step_a(), _sync(device)), 1, warmup=0))
        tb.append(_timed(lambda: (step_b(), _sync(device)), 1, warmup=0))
        ratios.append(tb[-1] / ta[-1])
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "q25": float(np.quantile(ratios, 0.25)), "q75": float(np.quantile(ratios, 0.75)),
            "sec_a": statistics.median(ta), "sec_b": statistics.median(tb), "pairs": iters}


def _setup(mode: str, batch: int, device, width: int = 64):
    """(G, D, optD, privacy strategy, real, fake) as train_dcgan.train builds them."""
    import privacy as privacy_mod
    from models import build_models

    torch.manual_seed(0)
    G, D = build_models(100, width, width, 1, 32)
    G, D = G.to(device), D.to(device)
    optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    if mode == "non-private":
        privacy = privacy_mod.NonPrivate()
    else:
        import train_dcgan_dp

        args = train_dcgan_dp.parse_config(["--noise-multiplier", "1.0", "--grad-sample-mode", mode])
        privacy = privacy_mod.DPSGD(args)
        D, optD = privacy.make_private(D, optD, n_train=batch * 100, batch_size=batch, steps_per_epoch=100,
                                       total_steps=100)
    real = torch.rand(batch, 1, 32, 32, device=device) * 2 - 1
    fake = torch.rand(batch, 1, 32, 32, device=device) * 2 - 1
    return G, D, optD, privacy, real, fake


def job_d_step(mode: str, batch: int, iters: int, device: str, threads: int) -> dict:
    """One discriminator step (real + fake pairs, one backward, optimizer step) as in training."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    bce = torch.nn.BCEWithLogitsLoss()
    G, D, optD, privacy, real, fake = _setup(mode, batch, device)
    _, D_np, opt_np, np_priv, _, _ = _setup("non-private", batch, device)

    def step():
        privacy.d_step(D, optD, real, fake)

    start = _mem_start(device)
    sec = _timed(lambda: (step(), _sync(device)), iters)
    res = {"mode": mode, "batch": batch, "sec_per_step": sec, "images_per_s": batch / sec,
           "peak_extra_mb": _mem_extra(device, start)}
    if mode != "non-private":  # the ratio from alternating steps in one process: robust to machine drift
        res["slowdown_paired"] = _paired(lambda: np_priv.d_step(D_np, opt_np, real, fake), step, iters, device)
    if mode == "hooks":  # lever: freezing D in the generator step (no per-sample work for D's parameters)
        z = torch.randn(batch, 100, device=device)

        def g_step(freeze):
            ctx = privacy.frozen(D) if freeze else torch.enable_grad()
            with ctx:
                bce(D(G(z)), torch.ones(batch, device=device)).backward()
            G.zero_grad(set_to_none=True)
            D.zero_grad(set_to_none=True)
            for p in D.parameters():
                p.grad_sample = None
        res["g_step_sec_d_frozen"] = _timed(lambda: (g_step(True), _sync(device)), iters)
        res["g_step_sec_d_not_frozen"] = _timed(lambda: (g_step(False), _sync(device)), iters)
    return res


def job_profile(batch: int, iters: int, device: str, threads: int, width: int = 64) -> dict:
    """Where the DP (ghost) D step's time goes: the non-private step; the clipper's forward, backward to the
    layer outputs and weight gradients without any norm; the same plus one convolution's per-pair norms (for
    each); the whole clipper (norms, GroupNorm, clipping); the whole DP step (+ Opacus' noise and optimizer).
    The variants run round-robin in one process, so drift hits them alike; medians in ms. Also the fp32
    throughput (G multiply-adds/s) of a plain matrix product (torch.mm: the BLAS, MKL in PyTorch's x86 wheels)
    and of D's second convolution (oneDNN), which is why the ratio depends on the CPU (README, Performance)."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    _, D, optD, privacy, real, fake = _setup("ghost", batch, device, width)
    _, D_np, opt_np, np_priv, _, _ = _setup("non-private", batch, device, width)
    from ghost_clipping import Units

    clipper, pairs = privacy.clipper, Units(len(real))
    convs = {name: m for name, m in D.named_modules() if m in clipper.layers and isinstance(m, torch.nn.Conv2d)}

    def skeleton(norm_of=None):
        _, _, acts, grads = clipper.forward_backward(D, real, fake)
        for m, a, g in zip(clipper.layers, acts, grads):
            if isinstance(m, torch.nn.Conv2d):
                if m is norm_of:
                    clipper._conv_sq_norms(m, a, g, pairs)
                clipper._conv_weight_grad(m, a, g)

    phases = {"non_private_step": lambda: np_priv.d_step(D_np, opt_np, real, fake),
              "forward_backward_weight_grads": skeleton,
              **{f"+norms {name}": (lambda m=m: skeleton(m)) for name, m in convs.items()},
              "clipper": lambda: clipper.backward(D, real, fake),
              "dp_step": lambda: privacy.d_step(D, optD, real, fake)}
    times = {k: [] for k in phases}
    for rep in range(2 + iters):
        for k, fn in phases.items():
            t = _timed(lambda: (fn(), _sync(device)), 1, warmup=0)
            if rep >= 2:  # two rounds of warm-up
                times[k].append(t)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    res = {"batch": batch, "width": width, "ms": ms,
           "norms_ms": {name: ms[f"+norms {name}"] - ms["forward_backward_weight_grads"] for name in convs}}
    x = torch.randn(1024, 1024, device=device)
    conv = list(convs.values())[1]
    a = clipper.forward_backward(D, real, fake)[2][clipper.layers.index(conv)]  # its input in training
    with torch.no_grad():
        macs = conv(a).numel() * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        res["matmul_gmacs"] = 1024 ** 3 / _timed(lambda: (x @ x, _sync(device)), iters) / 1e9
        res["conv_gmacs"] = macs / _timed(lambda: (conv(a), _sync(device)), iters) / 1e9
    return res


def job_train_step(k: int, batch: int, iters: int, device: str, threads: int, width: int = 64) -> dict:
    """The loop's unit: k D steps (each with fresh fakes) and one G step, DP (ghost) vs non-private, alternating."""
    torch.set_num_threads(threads)
    import gan

    device = torch.device(device)

    def unit(mode):
        G, D, optD, privacy, real, _ = _setup(mode, batch, device, width)
        optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))

        def run():
            for _ in range(k):
                with torch.no_grad():
                    fake = G(torch.randn(batch, 100, device=device))
                privacy.d_step(D, optD, real, fake)
            gan.g_step(G, D, optG, privacy, batch, 100, device)
        return run
    r = _paired(unit("non-private"), unit("ghost"), iters, device)
    return {"k": k, "batch": batch, "width": width, "sec_non_private": r["sec_a"], "sec_dp": r["sec_b"],
            "slowdown_paired": r}


def job_inception(weights: str, n: int, device: str, threads: int) -> dict:
    """Our feature pipeline (channels_last, inference_mode) at batch 32, 64 (the default) and 128, vs
    torch-fidelity's own extractor (NCHW, as torch-fidelity runs it); and bf16 autocast, the speed a reduced
    precision would buy and the feature error it would cost (not offered: FID must stay exact)."""
    torch.set_num_threads(threads)
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    import metrics

    device = torch.device(device)
    imgs = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = {b: metrics.InceptionFeatures(weights, device, batch_size=b, progress=False) for b in (32, 64, 128)}
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                         feature_extractor_weights_path=str(ours[64].path)).to(device).eval()

    def run_theirs():
        with torch.no_grad():
            return torch.cat([theirs(metrics.to_uint8_rgb(imgs[i:i + 64]).to(device))[0].cpu()
                              for i in range(0, n, 64)]).numpy()

    def run_bf16():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            return torch.cat([ours[64].model(metrics.to_uint8_rgb(imgs[i:i + 64]).to(device).contiguous(
                memory_format=torch.channels_last))[0].float().cpu() for i in range(0, n, 64)]).numpy()
    start = _mem_start(device)
    t_ours = {b: _timed(lambda e=e: e(imgs, progress=False), 1, warmup=1) for b, e in ours.items()}
    t_theirs = _timed(run_theirs, 1, warmup=1)
    t_bf16 = _timed(run_bf16, 1, warmup=1)
    feats = ours[64](imgs, progress=False)
    return {"images": n, "threads": threads, "ours_images_per_s": n / t_ours[64],
            "ours_images_per_s_by_batch": {str(b): n / t for b, t in t_ours.items()},
            "torch_fidelity_images_per_s": n / t_theirs, "speedup": t_theirs / t_ours[64],
            "max_abs_feature_diff": float(np.abs(feats - run_theirs()).max()),
            "bf16_images_per_s": n / t_bf16, "bf16_max_abs_feature_diff": float(np.abs(feats - run_bf16()).max()),
            "mean_abs_feature": float(np.abs(feats).mean()), "peak_extra_mb": _mem_extra(device, start)}


def job_memorization(n_gen: int, n_train: int, device: str, threads: int) -> dict:
    """metrics.nearest_cosine on synthetic 2048-d features (the memorization distance d)."""
    torch.set_num_threads(threads)
    import metrics

    device = torch.device(device)
    rng = np.random.default_rng(0)
    gen = rng.standard_normal((n_gen, 2048), dtype=np.float32)
    train = rng.standard_normal((n_train, 2048), dtype=np.float32)
    start = _mem_start(device)
    t = time.perf_counter()
    metrics.nearest_cosine(gen, train, device=device, progress=False)
    _sync(device)
    return {"n_gen": n_gen, "n_train": n_train, "sec": time.perf_counter() - t,
            "peak_extra_mb": _mem_extra(device, start)}


def job_metrics(n_gen: int, n_train: int, threads: int) -> dict:
    """FID and KID of n_gen vs n_train synthetic 2048-d features, as metrics.py computes them and by the textbook
    route (FID from the two covariances; KID from each subset's own kernel products): seconds and both values."""
    import metrics
    from utils import Threads

    Threads(threads)  # torch's and numpy's BLAS threads
    rng = np.random.default_rng(0)
    gen, train = (rng.standard_normal((n, 2048)).astype(np.float32) for n in (n_gen, n_train))

    def kid_per_subset(f1, f2, subsets=100, m=1000, seed=0):
        f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
        m, r, vals = min(m, len(f1), len(f2)), np.random.default_rng(seed), []
        for _ in range(subsets):
            x, y = f1[r.choice(len(f1), m, replace=False)], f2[r.choice(len(f2), m, replace=False)]
            kxx, kyy, kxy = ((a @ b.T / 2048 + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
            vals.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
        return float(np.mean(vals))
    out = {"n_gen": n_gen, "n_train": n_train, "threads": threads}
    for name, fn in (("fid", lambda: metrics.fid(gen, train)),
                     ("fid_covariances", lambda: metrics.frechet_distance(*metrics.feature_stats(gen),
                                                                          *metrics.feature_stats(train))),
                     ("kid", lambda: metrics.kid(train, gen)[0]), ("kid_per_subset", lambda: kid_per_subset(train, gen))):
        t = time.perf_counter()
        out[name] = fn()
        out[f"{name}_s"] = time.perf_counter() - t
    return out


def job_data(data: str, root, batch: int, iters: int, threads: int, cache_dir=None) -> dict:
    """Loading the decoded set from the cache, and serving training batches (index + to [-1, 1])."""
    torch.set_num_threads(threads)
    import data as data_mod

    cache_dir = cache_dir or data_mod.DEFAULT_CACHE_DIR
    data_mod.load_images(data, root, 32, 1, cache_dir, progress=False)  # fills the cache if cold
    t = time.perf_counter()
    imgs = data_mod.load_images(data, root, 32, 1, cache_dir, progress=False)
    load_s = time.perf_counter() - t
    train = imgs.split("train")
    gen = torch.Generator().manual_seed(0)
    sec = _timed(lambda: data_mod.to_float(train[torch.randint(0, len(train), (batch,), generator=gen)]), iters)
    return {"data": imgs.source, "images": len(imgs), "cache_load_s": load_s, "batch_images_per_s": batch / sec}


def job_threads(width: int, steps: int, threads: str, busy: bool, tmp: str) -> dict:
    """Seconds per training step of a short digits run (--threads as given), alone or beside a busy process."""
    import train_dcgan

    # a plain subprocess, not multiprocessing: this job runs inside a (daemonic) pool worker, which may not fork
    other = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    if other is not None:
        time.sleep(1.0)
    try:
        args = train_dcgan.build_parser().parse_args(
            ["--ngf", str(width), "--ndf", str(width), "--max-steps", str(steps), "--num-samples", "0",
             "--no-progress", "--cache-dir", "", "--threads", threads, "--out", tmp])
        with contextlib.redirect_stdout(io.StringIO()):  # the run's own log is not the benchmark's output
            res = train_dcgan.train(args)
    finally:
        if other is not None:
            other.kill()
            other.wait()
    return {"width": width, "threads": threads, "busy_neighbour": busy, "sec_per_step": res["wall_s"] / res["steps"],
            "threads_used": res["threads"]}


def isolated(fn, *args):
    """Run fn(*args) in a fresh spawned process (clean peak memory, no state shared between jobs)."""
    with mp.get_context("spawn").Pool(1, initializer=keep_freed_memory) as pool:  # as training does
        res = pool.apply(fn, args)
        pool.close()  # let the worker exit normally: terminating it leaks the semaphores its tqdm bars made
        pool.join()
    return res


# ----------------------------------------------------------------------------- main
def build_parser():
    p = Parser(prog="bench.py", description=__doc__.split("\n")[0], epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    p.add_argument("--only", default="dstep,profile,trainstep,threads,inception,memorization,metrics,data",
                   help="comma-separated subset of: dstep, profile, trainstep, threads, inception, memorization, "
                        "metrics, data")
    p.add_argument("--batch-size", type=int, default=128, help="D-step batch (pairs of real + fake)")
    p.add_argument("--iters", type=int, default=None, help="timed repetitions (default 10, --quick 3)")
    p.add_argument("--data", default="celeba" if os.environ.get("CELEBA_ROOT") else "digits",
                   help="data source of the loading benchmark (default celeba when $CELEBA_ROOT is set)")
    p.add_argument("--data-root", default=os.environ.get("CELEBA_ROOT"), help="CelebA root (default $CELEBA_ROOT)")
    p.add_argument("--inception-weights", default=os.environ.get("INCEPTION_WEIGHTS"),
                   help="FID Inception weights of the feature benchmark (default $INCEPTION_WEIGHTS; none: skipped)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads per job")
    p.add_argument("--out", default="outputs/bench.json", help="the JSON of every figure")
    return p


def bench(args) -> dict:
    device = str(pick_device(args.device))
    only = {s.strip() for s in args.only.split(",")}
    iters = args.iters or (3 if args.quick else 10)
    res = {"device": device, "threads": args.threads, "cpu_count": os.cpu_count(), "versions": versions(),
           "quick": args.quick}
    if device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if "dstep" in only:
        from privacy import GRAD_SAMPLE_MODES

        rows = [isolated(job_d_step, m, args.batch_size, iters, device, args.threads)
                for m in ("non-private",) + GRAD_SAMPLE_MODES]
        base = rows[0]["sec_per_step"]
        for r in rows:
            r["slowdown_vs_non_private"] = r["sec_per_step"] / base
            sp = r.get("slowdown_paired")
            paired = f"  alternating: x{sp['median']:.2f} (range {sp['min']:.2f}-{sp['max']:.2f})" if sp else ""
            print(f"D step {r['mode']:<12} {r['images_per_s']:8.1f} img/s  "
                  f"x{r['slowdown_vs_non_private']:.2f}{paired}  "
                  f"peak +{r['peak_extra_mb']} MB")
        res["d_step"] = rows
    if "profile" in only:
        r = isolated(job_profile, args.batch_size, iters, device, args.threads)
        ms, norms = r["ms"], ", ".join(f"{k} {v:.1f}" for k, v in r["norms_ms"].items())
        print(f"DP step phases (ms): non-private step {ms['non_private_step']:.1f}; DP forward + backward + weight "
              f"gradients {ms['forward_backward_weight_grads']:.1f}; + per-pair norms: {norms}; clipper "
              f"{ms['clipper']:.1f}; DP step {ms['dp_step']:.1f}. fp32 matmul {r['matmul_gmacs']:.0f} "
              f"G multiply-adds/s, convolution {r['conv_gmacs']:.0f}")
        res["profile"] = r
    if "trainstep" in only:
        rows = [isolated(job_train_step, k, args.batch_size, iters, device, args.threads) for k in (1, 5)]
        for r in rows:
            sp = r["slowdown_paired"]
            print(f"full step (K = {r['k']} D steps + 1 G step): DP {r['sec_dp']:.3f} s vs non-private "
                  f"{r['sec_non_private']:.3f} s, x{sp['median']:.2f} (range {sp['min']:.2f}-{sp['max']:.2f})")
        res["train_step"] = rows
    if "threads" in only:
        import tempfile

        rows = []
        for width in (8, 32):
            for threads in ("auto", str(os.cpu_count() or 1)):
                pair = {}
                for busy in (False, True):
                    with tempfile.TemporaryDirectory() as tmp:
                        pair[busy] = isolated(job_threads, width, 60 if args.quick else 200, threads, busy,
                                              str(Path(tmp) / "run"))
                ratio = pair[True]["sec_per_step"] / pair[False]["sec_per_step"]
                rows.append({"width": width, "threads": threads, "alone": pair[False], "beside_busy": pair[True],
                             "slowdown_beside_busy": ratio})
                print(f"training, ngf = ndf = {width}, --threads {threads}: "
                      f"{pair[False]['sec_per_step'] * 1e3:.0f} ms/step alone, "
                      f"{pair[True]['sec_per_step'] * 1e3:.0f} ms/step beside a busy process (x{ratio:.2f})")
        res["threads"] = rows
    if "inception" in only:
        if args.inception_weights:
            r = isolated(job_inception, args.inception_weights, 64 if args.quick else 256, device, args.threads)
            by_batch = ", ".join(f"batch {k} {v:.1f}" for k, v in r["ours_images_per_s_by_batch"].items())
            print(f"Inception ({args.threads} threads): ours {by_batch} img/s; torch-fidelity "
                  f"{r['torch_fidelity_images_per_s']:.1f} img/s (x{r['speedup']:.2f}), max |Δ feature| "
                  f"{r['max_abs_feature_diff']:.2e}; bf16 autocast {r['bf16_images_per_s']:.1f} img/s, max |Δ feature| "
                  f"{r['bf16_max_abs_feature_diff']:.2e} (features average {r['mean_abs_feature']:.2f})")
            res["inception"] = r
        else:
            res["inception"] = "skipped: no --inception-weights / $INCEPTION_WEIGHTS"
            print("Inception: " + res["inception"])
    if "memorization" in only:
        sizes = (1000, 10000, 40000) if args.quick else (1000, 10000, 40000, 160000)
        rows = []
        for n in sizes:
            rows.append(isolated(job_memorization, 10000, n, device, args.threads))
            print(f"memorization 10k x {n // 1000}k: {rows[-1]['sec']:.1f} s, peak +{rows[-1]['peak_extra_mb']} MB")
        res["memorization"] = rows
    if "metrics" in only:
        r = isolated(job_metrics, 1000, 2328 if not args.quick else 1200, args.threads)
        print(f"metrics, {r['n_gen']} vs {r['n_train']} features: FID {r['fid_s']:.2f} s (covariance route "
              f"{r['fid_covariances_s']:.2f} s, same value to {abs(r['fid'] / r['fid_covariances'] - 1):.1e}); KID "
              f"{r['kid_s']:.2f} s (per-subset products {r['kid_per_subset_s']:.2f} s)")
        res["metrics"] = r
    if "data" in only:
        r = isolated(job_data, args.data, args.data_root, args.batch_size, iters * 10, args.threads)
        if "d_step" in res:
            fastest = max(x["images_per_s"] for x in res["d_step"])
            r["batches_vs_fastest_d_step"] = r["batch_images_per_s"] / fastest
        print(f"data: cache load {r['cache_load_s']:.2f} s for {r['images']} images, batches "
              f"{r['batch_images_per_s']:.0f} img/s")
        res["data"] = r
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, res)
    print(f"wrote {args.out}")
    return res


def main(argv=None):
    return run_cli(lambda a: bench(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    main()

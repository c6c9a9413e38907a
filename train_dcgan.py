"""Train a DCGAN (GroupNorm) on CelebA, an image folder, or the embedded digits set.

This file holds the ONE training loop of the toolkit. ``train_dcgan_dp.py`` calls :func:`train` with a
privacy object that wraps the discriminator in Opacus; everything else (data, sampling of batches,
checkpoints, logs, grids, samples) is shared.

Run artefacts in ``--out`` (default outputs/<run-name>/):
  config.json        all arguments, library versions and the device
  ckpt.pt            atomic checkpoint (G, D, optimizers, step, RNG states, privacy ledger)
  log.jsonl          one JSON record per step (losses, D(x), D(G(z)), epsilon for DP) + per-epoch records
  loss_curve.png     losses (and epsilon for DP) against steps
  grids/epoch_NNN.png  64 samples from a fixed noise batch after every epoch
  generator.pt       final generator weights + the config needed to rebuild it
  samples.npz        --num-samples generated uint8 images (N, C, H, W), for evaluate_mifid.py
  results.json       steps, time, images/s, final losses (+ epsilon, delta, sigma, ... for DP)
  canaries.json      with --canaries: which held-out images were inserted and how often (read by audit.py)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import data as data_mod
from models import build_models
from utils import (UserError, all_gather, atomic_torch_save, average_grads, broadcast_params, init_distributed,
                   run_cli, safe_load, state_hash, versions, write_json)

# Arguments that must not change when a run is resumed (everything that shapes the trajectory).
RESUME_LOCKED = ("data", "data_root", "image_size", "channels", "nz", "ngf", "ndf", "batch_size", "lr",
                 "beta1", "seed", "split_seed", "random_split", "canaries", "canary_repeats", "canary_split",
                 "canary_seed")


def build_parser(prog="train_dcgan.py", description=None, default_lr=2e-4) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", help="celeba | folder:PATH | digits (offline, bundled)")
    g.add_argument("--data-root", default=os.environ.get("CELEBA_ROOT"),
                   help="CelebA root (holds img_align_celeba/, list_eval_partition.txt); default $CELEBA_ROOT")
    g.add_argument("--image-size", type=int, default=32, choices=[32, 64])
    g.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale, 3 = RGB")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the 80/10/10 split when no partition file")
    g.add_argument("--random-split", action="store_true", help="CelebA: ignore list_eval_partition.txt and split "
                   "images at random (seeded 80/10/10); needed for membership audits (see audit.py)")
    g.add_argument("--cache-dir", default=data_mod.DEFAULT_CACHE_DIR, help="decoded-image cache ('' disables)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--epochs", type=int, default=5)
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=default_lr, help="Adam learning rate (G and D)")
    g.add_argument("--beta1", type=float, default=0.5, help="Adam beta1")
    g.add_argument("--nz", type=int, default=100, help="latent size")
    g.add_argument("--ngf", type=int, default=64, help="generator width")
    g.add_argument("--ndf", type=int, default=64, help="discriminator width")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("canaries (memorization audit, see audit.py)")
    g.add_argument("--canaries", type=int, default=0, metavar="K",
                   help="insert K held-out images per repeat count into the training set")
    g.add_argument("--canary-repeats", type=_int_list, default=[1], metavar="R[,R...]",
                   help="how often each canary is repeated in training, e.g. 1,4,16 (K canaries for each)")
    g.add_argument("--canary-split", default="val", choices=["val", "test"],
                   help="held-out split the canaries (and audit.py's exposure references) come from")
    g.add_argument("--canary-seed", type=int, default=0)
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    g.add_argument("--out", default=None, help="run folder (default outputs/<run-name>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--ckpt-every", type=int, default=0, help="checkpoint every N steps (0: every epoch)")
    g.add_argument("--num-samples", type=int, default=10000, help="images written to samples.npz at the end")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p


def _int_list(text: str) -> list:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def default_out(args, private: bool) -> Path:
    name = args.data.replace("folder:", "folder-").replace("/", "_").strip("_")
    return Path("outputs") / f"dcgan{'-dp' if private else ''}-{name}-{args.image_size}px-{args.channels}ch"


def check_args(args) -> None:
    for k in ("epochs", "batch_size", "nz", "ngf", "ndf"):
        if getattr(args, k) <= 0:
            raise UserError(f"--{k.replace('_', '-')} must be positive, got {getattr(args, k)}")
    if args.lr <= 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    if not 0 <= args.beta1 < 1:
        raise UserError(f"--beta1 must be in [0, 1), got {args.beta1}")
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max-steps must be positive, got {args.max_steps}")
    if args.num_samples < 0:
        raise UserError("--num-samples must be >= 0")
    if args.canaries < 0:
        raise UserError(f"--canaries must be >= 0, got {args.canaries}")


def canary_plan(imgs, k: int, repeats, split: str, seed: int) -> dict:
    """Pick k canaries per repeat count from a held-out split (seeded). Indices refer to ``imgs.images``;
    the split's other images are the exposure references (audit.py)."""
    pool = imgs.splits.get(split, torch.zeros(0, dtype=torch.long))
    need = k * len(repeats)
    if need > len(pool) - 2:
        raise UserError(f"--canaries {k} x {len(repeats)} repeat counts needs {need} images, but the {split} "
                        f"split has {len(pool)} (and must keep at least 2 as references); use fewer canaries")
    chosen = pool[torch.from_numpy(np.random.default_rng(seed).permutation(len(pool))[:need])]
    return {"split": split, "seed": seed, "indices": chosen.tolist(), "names": [imgs.names[i] for i in chosen],
            "repeats": [r for r in repeats for _ in range(k)], "split_key": imgs.split_key(split)}


def load_training_data(args):
    """(ImageSet, uint8 training tensor, canary plan or None). With --canaries the training tensor is the
    train split followed by each canary repeated R times."""
    imgs = data_mod.load_images(args.data, args.data_root, args.image_size, args.channels,
                                args.cache_dir or None, args.split_seed, progress=not args.no_progress,
                                random_split=args.random_split)
    train = imgs.split("train")
    if len(train) == 0:
        raise UserError(f"the train split of {imgs.source} is empty")
    if not args.canaries:
        return imgs, train, None
    plan = canary_plan(imgs, args.canaries, args.canary_repeats, args.canary_split, args.canary_seed)
    reps = torch.tensor(plan["repeats"])
    extra = imgs.images[torch.tensor(plan["indices"])].repeat_interleave(reps, dim=0)
    return imgs, torch.cat([train, extra]), plan


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Batch order of epoch e depends on (seed, e) only, so a resumed run sees the same batches."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def shuffled_batches(gen: torch.Generator, n: int, batch_size: int):
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


@contextlib.contextmanager
def frozen(module: nn.Module, privacy=None):
    """Freeze D for the generator step: no parameter gradients, no Opacus per-sample work."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    if privacy is not None:
        privacy.disable_hooks(module)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        if privacy is not None:
            privacy.enable_hooks(module)


def d_forward_backward(D, real, fake, bce):
    """D's loss on real and fake, with ONE backward pass.

    Under Opacus the two forward passes share one backward, so pair i's gradient (real_i + fake_i) is summed
    into ONE per-sample gradient and clipped as a unit: one real example moves D's update by at most C.
    """
    out_r, out_f = D(real), D(fake)
    loss = bce(out_r, torch.ones_like(out_r)) + bce(out_f, torch.zeros_like(out_f))
    with warnings.catch_warnings():  # Opacus' hooks on D's first layer see no input gradient: expected
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    return loss.item(), torch.sigmoid(out_r).mean().item(), torch.sigmoid(out_f).mean().item()


def plot_losses(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r.get("kind") == "step"]
    if not recs:
        return
    steps = [r["step"] for r in recs]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss_d"] for r in recs], lw=0.8, label="D loss")
    ax.plot(steps, [r["loss_g"] for r in recs], lw=0.8, label="G loss")
    ax.set_xlabel("step")
    ax.set_ylabel("BCE loss")
    if "epsilon" in recs[-1]:
        ax2 = ax.twinx()
        ax2.plot(steps, [r.get("epsilon", float("nan")) for r in recs], color="k", ls="--", lw=1, label="ε")
        ax2.set_ylabel("ε spent")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(png.parent.name)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def save_grid(G, z, path: Path) -> None:
    from torchvision.utils import save_image

    with torch.no_grad():
        x = G(z).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x, path, nrow=8, normalize=True, value_range=(-1, 1))


@torch.no_grad()
def generate(G, n: int, nz: int, device, seed: int = 12345, batch_size: int = 500) -> torch.Tensor:
    """n generated images as uint8 (N, C, H, W), from a dedicated seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        z = torch.randn(min(batch_size, n - i), nz, generator=gen).to(device)
        out.append(data_mod.to_uint8(G(z)).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)


def load_generator(path, device="cpu"):
    """Rebuild the generator from generator.pt or ckpt.pt. Returns (G, config)."""
    from models import Generator

    blob = safe_load(path, map_location="cpu")
    if "G" not in blob or "config" not in blob:
        raise UserError(f"{path} is not a generator checkpoint of this toolkit (no 'G'/'config')")
    c = blob["config"]
    G = Generator(c["nz"], c["ngf"], c["channels"], c["image_size"])
    G.load_state_dict(blob["G"])
    return G.to(device).eval(), c


def _rng_state(device):
    st = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        st["mps"] = torch.mps.get_rng_state()
    return st


def _set_rng_state(st, device):
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)
    if device.type == "mps" and "mps" in st:
        torch.mps.set_rng_state(st["mps"])


def train(args, privacy=None) -> dict:
    """Train G and D. ``privacy`` (see train_dcgan_dp.DPPrivacy) makes the D step DP-SGD; None = non-private."""
    check_args(args)
    if privacy is not None:
        privacy.check_args(args)
    out = Path(args.out) if args.out else default_out(args, privacy is not None)
    ckpt_path = out / "ckpt.pt"
    if ckpt_path.exists() and not args.resume:
        raise UserError(f"{out} already holds a run (ckpt.pt); pass --resume to continue it or choose another --out")
    if args.resume and not ckpt_path.exists():
        raise UserError(f"--resume: no checkpoint at {ckpt_path}")
    ckpt = safe_load(ckpt_path) if args.resume else None
    if ckpt is not None:
        changed = [f"--{k.replace('_', '-')} {ckpt['args'].get(k)!r} -> {getattr(args, k, None)!r}"
                   for k in RESUME_LOCKED + (privacy.locked_args if privacy else ())
                   if ckpt["args"].get(k) != getattr(args, k, None)]
        if changed:
            raise UserError(f"cannot resume {out} with different settings: {'; '.join(changed)}")

    rank, world, device = init_distributed(args.device)  # torchrun: one process per CPU group / GPU
    main_rank = rank == 0
    if ckpt is not None and ckpt.get("world_size", 1) != world:
        raise UserError(f"{out} was trained with {ckpt.get('world_size', 1)} process(es); resume it with as many")
    torch.manual_seed(args.seed)
    imgs, train_u8, canaries = load_training_data(args)
    n = len(train_u8)
    train_u8 = train_u8.to(device)
    steps_per_epoch = math.ceil(n / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)

    G, D = build_models(args.nz, args.ngf, args.ndf, args.channels, args.image_size)
    G, D = G.to(device), D.to(device)
    optG = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    optD = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    if ckpt is not None:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
    if world > 1:  # every rank starts from rank 0's weights; each draws its own latent noise
        broadcast_params(G, D)
        torch.manual_seed(args.seed + 7919 * rank)
        if privacy is not None:
            D = privacy.distribute(D)  # noise on rank 0 only, clipped sums all-reduced -> one DP step
    g_batch = math.ceil(args.batch_size / world)  # the generator's fixed batch, split over ranks
    if privacy is not None:
        D, optD = privacy.make_private(D, optD, n_train=n, batch_size=args.batch_size,
                                       steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                       state=ckpt["privacy"] if ckpt else None)
    if ckpt is not None:
        optG.load_state_dict(ckpt["optG"])
        optD.load_state_dict(ckpt["optD"])
    step = ckpt["step"] if ckpt else 0
    raw_D = privacy.unwrap(D) if privacy else D

    def log_main(*a):
        if main_rank:
            print(*a)

    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
    config = {"args": vars(args), "device": str(device), "versions": versions(), "data": imgs.source,
              "n_train": n, "n_val": len(imgs.splits.get("val", [])), "n_test": len(imgs.splits.get("test", [])),
              "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
              "private": privacy is not None, "world_size": world}
    if privacy is not None:
        config["privacy"] = privacy.describe()
    if canaries is not None:
        config["canaries"] = {"count": len(canaries["indices"]), "copies": sum(canaries["repeats"]),
                              "split": canaries["split"]}
        if main_rank:
            write_json(out / "canaries.json", canaries)
    if main_rank:
        write_json(out / "config.json", config)
    model_cfg = {"nz": args.nz, "ngf": args.ngf, "ndf": args.ndf, "channels": args.channels,
                 "image_size": args.image_size}
    log_main(f"{'DP-SGD' if privacy else 'non-private'} DCGAN | data {imgs.source}: {n} train images "
             f"({args.image_size}px, {args.channels}ch) | device {device}"
             f"{f' x {world} processes' if world > 1 else ''} | batch {args.batch_size} | lr {args.lr} | "
             f"{total_steps} steps ({steps_per_epoch}/epoch) | out {out}")
    if canaries is not None:
        log_main(f"canaries: {len(canaries['indices'])} {canaries['split']} images inserted, repeats "
                 f"{args.canary_repeats} x {args.canaries} each ({sum(canaries['repeats'])} extra training images)")
    if privacy is not None:
        log_main(privacy.summary())

    log_path = out / "log.jsonl"
    if main_rank and ckpt is not None and log_path.exists():  # drop records written after the checkpoint
        keep = [line for line in log_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        log_path.write_text("".join(line + "\n" for line in keep))
    elif main_rank and ckpt is None and log_path.exists():
        log_path.unlink()
    fixed_z = torch.randn(64, args.nz, generator=torch.Generator().manual_seed(args.seed + 7)).to(device)
    bce = nn.BCEWithLogitsLoss()

    def checkpoint(epoch, step_in_epoch):
        rng = all_gather(_rng_state(device))  # every rank's RNG (collective: all ranks call checkpoint)
        if main_rank:
            atomic_torch_save({"G": G.state_dict(), "D": raw_D.state_dict(), "optG": optG.state_dict(),
                               "optD": optD.state_dict(), "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
                               "rng": rng[0], "rng_ranks": rng, "world_size": world, "args": vars(args),
                               "config": model_cfg, "privacy": privacy.state_dict() if privacy else None,
                               "wall_s": wall_before + time.time() - t0}, ckpt_path)

    if ckpt is not None:
        _set_rng_state(ckpt.get("rng_ranks", [ckpt["rng"]])[rank], device)
        log_main(f"resumed from {ckpt_path} at step {step}" + (f", ε = {privacy.epsilon():.3f}" if privacy else ""))
    start_epoch = ckpt["epoch"] if ckpt else 0
    start_k = ckpt["step_in_epoch"] if ckpt else 0
    if start_k >= steps_per_epoch:
        start_epoch, start_k = start_epoch + 1, 0

    t0, real_seen, rec = time.time(), 0, {}
    wall_before = ckpt.get("wall_s", 0.0) if ckpt else 0.0  # training time of earlier invocations
    log = open(log_path if main_rank else os.devnull, "a")
    try:
        for epoch in range(start_epoch, args.epochs):
            if step >= total_steps:
                break
            gen = epoch_generator(args.seed, epoch)
            batches = (privacy.poisson_batches(gen, n, steps_per_epoch) if privacy
                       else shuffled_batches(gen, n, args.batch_size))
            bar = tqdm(total=min(steps_per_epoch, total_steps - step + start_k), initial=start_k,
                       desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress or not main_rank, leave=False)
            done_k = start_k  # batches of this epoch applied so far
            for k, idx in enumerate(batches):
                if k < start_k:
                    continue  # resumed mid-epoch: these batches were already used
                if step >= total_steps:
                    break
                idx = idx[rank::world]  # this rank's share of the (global) batch
                b = len(idx)
                real = data_mod.to_float(train_u8[idx.to(device)]) if b else None
                with torch.set_grad_enabled(privacy is None):
                    fake = G(torch.randn(b, args.nz, device=device))
                # --- D step (see d_forward_backward for the per-sample unit under DP)
                if not b:  # empty (Poisson or shard) batch: the (noisy) step must still happen on every rank
                    optD.zero_grad(set_to_none=True)
                    if privacy is not None:
                        privacy.empty_batch(D)
                    else:
                        average_grads(D)
                    optD.step()
                    loss_d = d_x = d_gz = float("nan")
                elif privacy is not None:
                    loss_d, d_x, d_gz = privacy.d_step(D, optD, real, fake.detach(), bce)
                else:
                    optD.zero_grad(set_to_none=True)
                    loss_d, d_x, d_gz = d_forward_backward(D, real, fake.detach(), bce)
                    if world > 1:
                        average_grads(D)
                    optD.step()
                # --- G step: D frozen (no param grads, no per-sample work). Under DP the fake batch has the
                # fixed size --batch-size (split over ranks), so G's update depends on the private D's weights only.
                with frozen(D, privacy):
                    if privacy is not None or not b:
                        fake = G(torch.randn(g_batch, args.nz, device=device))
                    out_g = D(fake)
                    loss_g = bce(out_g, torch.ones_like(out_g))
                    optG.zero_grad(set_to_none=True)
                    loss_g.backward()
                    if world > 1:
                        average_grads(G)
                    optG.step()
                step += 1
                done_k = k + 1
                real_seen += b
                rec = {"kind": "step", "step": step, "epoch": epoch + 1, "batch": b, "loss_d": loss_d,
                       "loss_g": loss_g.item(), "d_x": d_x, "d_g_z": d_gz}
                if privacy is not None and (step % 20 == 0 or k == steps_per_epoch - 1 or step == total_steps):
                    privacy.last_eps = privacy.epsilon()
                if privacy is not None:
                    rec["epsilon"] = privacy.last_eps
                log.write(json.dumps(rec) + "\n")
                post = {"D": f"{rec['loss_d']:.3f}", "G": f"{rec['loss_g']:.3f}", "D(x)": f"{d_x:.2f}"}
                if privacy is not None:
                    post["ε"] = f"{privacy.last_eps:.2f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
                if args.ckpt_every and step % args.ckpt_every == 0:
                    log.flush()
                    checkpoint(epoch, done_k)
            bar.close()
            start_k = 0
            epoch_done = done_k >= steps_per_epoch
            erec = {"kind": "epoch", "step": step, "epoch": epoch + 1, "loss_d": rec.get("loss_d"),
                    "loss_g": rec.get("loss_g")}
            if privacy is not None:
                erec["epsilon"] = privacy.epsilon()
            log.write(json.dumps(erec) + "\n")
            log.flush()
            checkpoint(epoch + 1 if epoch_done else epoch, 0 if epoch_done else done_k)
            if main_rank:
                save_grid(G, fixed_z, out / "grids" / f"epoch_{epoch + 1:03d}.png")
                plot_losses(log_path, out / "loss_curve.png")
            msg = f"epoch {epoch + 1}: step {step}, D {rec.get('loss_d', float('nan')):.3f}, G {rec.get('loss_g', float('nan')):.3f}"
            log_main(msg + (f", ε = {erec['epsilon']:.3f}" if privacy else ""))
    finally:  # on Ctrl-C the last checkpoint (a consistent state) stays; --resume continues from it
        log.close()

    elapsed = time.time() - t0
    real_seen = sum(all_gather(real_seen))  # real images over all ranks
    results = {"run": str(out), "private": privacy is not None, "steps": step, "epochs": args.epochs,
               "n_train": n, "batch_size": args.batch_size, "wall_s": round(wall_before + elapsed, 2),
               "images_per_s": round(real_seen / elapsed, 1) if elapsed > 0 and real_seen else None,
               "final_loss_d": rec.get("loss_d"), "final_loss_g": rec.get("loss_g"), "device": str(device),
               "world_size": world}
    if privacy is not None:
        results.update(privacy.results())
    if world > 1:  # the ranks must hold the same models: each DP step is one synchronized update
        hashes = all_gather(state_hash(G, raw_D))
        results["ranks_identical"] = len(set(hashes)) == 1
        if not results["ranks_identical"]:
            warnings.warn(f"ranks ended with different weights ({hashes}); the run is inconsistent", stacklevel=2)
        import torch.distributed as dist

        dist.destroy_process_group()
    if not main_rank:
        return results
    atomic_torch_save({"G": G.state_dict(), "config": model_cfg, "args": vars(args)}, out / "generator.pt")
    if args.num_samples:
        data_mod.save_npz(out / "samples.npz", generate(G.eval(), args.num_samples, args.nz, device, seed=args.seed + 1))
    plot_losses(log_path, out / "loss_curve.png")
    write_json(out / "results.json", results)
    if real_seen:
        print(f"done: {step} steps in {elapsed:.1f}s ({results['images_per_s']} real images/s); artefacts in {out}")
    else:
        print(f"done: nothing left to train (step {step}/{total_steps}); artefacts in {out}")
    return results


def main(argv=None):
    return run_cli(lambda a: train(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    main()

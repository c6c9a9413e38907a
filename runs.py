"""A training run's folder and its bookkeeping, apart from the training loop (train_dcgan.train).

  Run            the run folder (--out), the checkpoint to resume (--resume; settings that shape the trajectory
                 are locked), the processes (torchrun), the device and the CPU threads
  RunLog         log.jsonl (one record per D step and per epoch; cut back to the checkpoint on resume), progress
                 bars, the per-epoch line, sample grids and the loss curve
  Checkpointer   ckpt.pt, written atomically (temp file + rename) with every rank's RNG state, at epoch ends at
                 least CKPT_MIN_STEPS D steps apart, at the end, and every --ckpt-every D steps on top; the
                 models alone every --snapshot-every D steps (snapshots/)
  finish         results.json, generator.pt, samples.npz, loss_curve.png
  warm_start     --init-from: another run's weights, and whether its data was disjoint from this run's
  run_training_data  a finished run's training set, rebuilt from its config.json (audit.py, evaluate_mifid.py)

Run artefacts in --out:
  config.json        all arguments, library versions, the device, data sizes (and the privacy settings)
  ckpt.pt            G, its EMA, D, optimizers, D/G step counts, the K schedule, RNG states, the privacy ledger
  log.jsonl          one JSON record per D step (losses, D(x), D(G(z)), K, ε for DP) + per-epoch records
  loss_curve.png     losses (and ε, K) against D steps
  grids/epoch_NNN.png  64 samples of the released generator (the EMA, if any) from a fixed noise batch (every
                     ceil(epochs / 25)-th epoch and the last)
  generator.pt       the released generator (EMA weights with --ema-decay) + the config to rebuild it
  samples.npz        --num-samples generated uint8 images (N, C, H, W), for evaluate_mifid.py
  results.json       steps, time, images/s, final losses (+ ε, δ, σ, ... for DP)
  canaries.json      with --canaries: which held-out images were inserted and how often (read by audit.py)
  coins.json         with --coin-subset / --audit-canaries: the audit candidates and their coins (audit.py)
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

import torch
from tqdm.auto import tqdm

import data as data_mod
from gan import generate
from training_set import TrainingData
from config import BEFORE, NEUTRAL, RESUMABLE, normal, recorded
from utils import (Threads, UserError, all_gather, atomic_torch_save, atomic_write_text, folder_lock, init_distributed,
                   keep_freed_memory, plt, read_json, resolved, safe_load, sha256_file, state_hash, write_json)

# Epoch-end checkpoints at least this many D steps apart: at small N an epoch is a couple of steps, and saving G, D,
# the EMA and both optimizers after each of them was a large share of the run. An interrupted run loses less.
CKPT_MIN_STEPS = 50
LOSS_PLOT_EVERY_S = 30.0  # the loss curve is redrawn with a grid at most this often (and at the end)
GRIDS = 25  # sample grids per run, at most (and the last epoch's)


def default_out(args, private: bool) -> Path:
    name = args.data.replace("folder:", "folder-").replace("/", "_").strip("_")
    return Path("outputs") / f"dcgan{'-dp' if private else ''}-{name}-{args.image_size}px-{args.channels}ch"


def _same_path(a, b) -> bool:
    return bool(a) and bool(b) and resolved(a) == resolved(b)


def _root(data, data_root):
    """The folder of an image source (None for the bundled digits)."""
    return data_root if data == "celeba" else str(data or "").partition("folder:")[2] or None


def run_training_data(run, data_root=None, cache_dir=None) -> TrainingData:
    """A finished run's TrainingData, rebuilt from its config.json exactly as the run saw it."""
    run = Path(run)
    if not (run / "config.json").is_file():
        raise UserError(f"{run} is not a run folder (no config.json); pass the --out folder of a training run")
    a = argparse.Namespace(**recorded(read_json(run / "config.json")["args"]))
    a = argparse.Namespace(**{**vars(a), "data_root": data_root or a.data_root,
                              "cache_dir": cache_dir if cache_dir is not None else a.cache_dir})
    td = TrainingData(a, progress=False)
    for name, built in (("canaries.json", td.canaries), ("coins.json", td.coins)):
        saved = read_json(run / name) if (run / name).is_file() else None
        if (saved is None) != (built is None) or (saved and any(saved.get(k) != built.get(k)
                                                                for k in ("indices", "repeats", "included"))):
            raise UserError(f"{run / name} does not match the data as it loads now (files or split changed?); "
                            "the run's images cannot be located")
    td.args = a
    return td


# ----------------------------------------------------------------------------- warm start
def warm_start(G, D, args, model_cfg: dict, private: bool) -> dict:
    """--init-from: load G's and D's weights from another run; what was loaded, for config.json. G starts from the
    source's released generator (its EMA when it kept one; the raw G of a GAN oscillates around it and samples
    worse), D from the source's D. A DP run refuses a source trained on its own data: ε would not cover it."""
    src = Path(args.init_from)
    path = src / "ckpt.pt" if src.is_dir() else src
    blob = safe_load(path)
    if not {"G", "D", "config", "args"} <= set(blob):
        raise UserError(f"--init-from {src}: not a training checkpoint of this toolkit (need G, D, config)")
    diffs = [f"--{k} {blob['config'].get(k)} there, {v} here" for k, v in model_cfg.items()
             if blob["config"].get(k) != v]
    if diffs:
        raise UserError(f"--init-from {src}: different architecture ({'; '.join(diffs)}); use the same "
                        "--nz/--ngf/--ndf/--image-size/--channels")
    ema = blob.get("G_ema")
    G.load_state_dict(ema or blob["G"])  # the source's released generator (its EMA, if it had one)
    D.load_state_dict(blob["D"])
    a = blob["args"]
    here = _root(args.data, args.data_root)
    same = args.data == "digits" == a.get("data") or _same_path(_root(a.get("data"), a.get("data_root")), here)
    disjoint = bool(a.get("exclude_from")) and _same_path(a.get("exclude_from"), here)
    source_config = src / "config.json" if src.is_dir() else src.parent / "config.json"
    excluded = read_json(source_config).get("dedup", {}) if source_config.is_file() else {}
    by_person = disjoint and excluded.get("excluded_by_identity") is not None  # identity labels on both sides
    # --skip-subset M there, --train-size N here with the same pool and order: the source never saw this run's
    # draw (N, or 2N coin candidates, <= M); the source had no canaries or audit canaries (held-out images) and
    # this run has no audit canaries (this run's --canaries are held-out images the source never drew)
    draw = (args.train_size or 0) * (2 if args.coin_subset else 1)
    by_subset = (same and args.train_size is not None and 0 < draw <= (a.get("skip_subset") or 0)
                 and all(a.get(k, BEFORE.get(k)) == getattr(args, k)
                         for k in ("split_seed", "subset_seed", "random_split", "dedup_threshold"))
                 and not (a.get("canaries") or a.get("audit_canaries") or args.audit_canaries))
    if same and not by_subset and private:
        raise UserError(f"--init-from {args.init_from} was trained on this run's data: ε would not cover that "
                        "pretraining; pretrain on public data (--exclude-from the private root, or "
                        "--skip-subset M of the same source with M >= this run's --train-size draw)")
    return {"run": str(src), "ckpt_sha256": sha256_file(path), "data": a.get("data"), "data_root": a.get("data_root"),
            "exclude_from": a.get("exclude_from"), "skip_subset": a.get("skip_subset", 0), "steps": blob.get("step"),
            "generator": "EMA" if ema else "raw",
            "private": blob.get("privacy") is not None,
            "same_data_as_this_run": same, "disjoint_by_file_name": disjoint, "disjoint_by_identity": by_person,
            "disjoint_by_subset": by_subset}


def _disjointness(warm: dict) -> str:
    if warm.get("disjoint_by_subset"):
        return f"disjoint from this run's draw: --skip-subset {warm['skip_subset']} there"
    if warm.get("disjoint_by_identity"):
        return "disjoint by file name and by person"
    return "disjoint by file name" if warm.get("disjoint_by_file_name") else "overlap not checked"


# ----------------------------------------------------------------------------- the run
class Run:
    """The run folder, the checkpoint it resumes (or None), its processes, device and threads. A context manager:
    the folder is locked while the run is open (a second process gets a one-line error). Refuses to overwrite a
    run, or to resume one with a setting changed that is not config.RESUMABLE (or result-neutral)."""

    def __init__(self, args, privacy):
        self.out = Path(args.out) if args.out else default_out(args, privacy.private)
        # one process per run folder (under torchrun: rank 0 holds the lock for all ranks)
        self._lock = folder_lock(self.out) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
        self._lock.__enter__()
        try:
            self._open(args, privacy)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._lock.__exit__(*exc)

    def _open(self, args, privacy):
        ckpt_path = self.out / "ckpt.pt"
        if ckpt_path.exists() and not args.resume:
            raise UserError(f"{self.out} already holds a run (ckpt.pt); pass --resume to continue it or choose "
                            "another --out")
        if args.resume and not ckpt_path.exists():
            raise UserError(f"--resume: no checkpoint at {ckpt_path}")
        self.ckpt = safe_load(ckpt_path) if args.resume else None
        if self.ckpt is not None:  # every field but the resumable and result-neutral ones is locked
            was, now = self.ckpt["args"], vars(args)
            changed = [f"--{k.replace('_', '-')} {normal(k, was.get(k, BEFORE.get(k)))!r} -> "
                       f"{normal(k, now.get(k, BEFORE.get(k)))!r}" for k in sorted(set(was) | set(now))
                       if k not in NEUTRAL | RESUMABLE
                       and normal(k, was.get(k, BEFORE.get(k))) != normal(k, now.get(k, BEFORE.get(k)))]
            if changed:
                raise UserError(f"cannot resume {self.out} with different settings: {'; '.join(changed)}")
        self.rank, self.world, self.device = init_distributed(args.device)  # torchrun: one process per CPU group/GPU
        self.main = self.rank == 0
        self.threads = Threads(args.threads)
        keep_freed_memory()
        if self.ckpt is not None and self.ckpt.get("world_size", 1) != self.world:
            raise UserError(f"{self.out} was trained with {self.ckpt.get('world_size', 1)} process(es); resume it "
                            "with as many")
        self.progress = not args.no_progress and self.main

    def finished(self, total_steps: int) -> bool:
        """Is this a --resume of a finished run (results.json written, nothing left of the plan)? Then it says so;
        its config and artefacts are left as they are."""
        if self.ckpt is None or not (self.out / "results.json").is_file():
            return False
        if self.ckpt["step"] < total_steps and read_json(self.out / "results.json").get("stopped_at_heldout") \
                != self.ckpt["step"]:  # --forget-until-heldout ends a run before its plan
            return False
        self.print(f"done: {self.out} finished at D step {self.ckpt['step']}; nothing left to train, its config and "
                   "artefacts are unchanged")
        return True

    def print(self, *a):
        if self.main:
            print(*a)

    def write_config(self, config: dict, td) -> None:
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if td.canaries is not None:
                write_json(self.out / "canaries.json", td.canaries)
            if td.coins is not None:
                write_json(self.out / "coins.json", td.coins)
            write_json(self.out / "config.json", config)

    def banner(self, args, td, privacy, warm, plan: dict, d_trained: int, g_batch: int, k: int) -> None:
        """What the run does, printed once at its start."""
        imgs = td.imgs
        k_desc = (f"K adaptive from {k} (D's accuracy on fakes <= {args.adaptive_d_steps})"
                  if args.adaptive_d_steps is not None else f"K = {args.d_steps}")
        g_lr = f" (G {args.lr * args.g_lr_scale:g})" if args.g_lr_scale != 1 else ""
        self.print(
            f"{'DP-SGD' if privacy.private else 'non-private'} DCGAN | data {imgs.source}: {td.n} train images "
            f"({args.image_size}px, {args.channels}ch) | device {self.device}"
            f"{f' x {self.world} processes' if self.world > 1 else ''}, threads {self.threads.describe()} | batch "
            f"{args.batch_size} | lr {args.lr}{g_lr} | ngf {args.ngf} ndf {args.ndf} ({d_trained:,} D parameters "
            f"trained) | {plan['total_steps']} D steps ({plan['steps_per_epoch']}/epoch), {args.g_steps} G step(s) of "
            f"{g_batch * self.world} fakes per K D steps, {k_desc} | G EMA {args.ema_decay or 'off'}"
            + (f" | mode-seeking {args.mode_seeking:g}" if args.mode_seeking else "")
            + (f" | augment {args.augment}" if args.augment else "") + f" | out {self.out}")
        if imgs.dedup.get("groups_merged"):
            self.print(f"near-duplicates: {imgs.dedup['groups_merged']} groups of "
                       f"{imgs.dedup['images_in_merged_groups']} images (correlation >= {imgs.dedup['threshold']}) "
                       "kept together")
        if warm is not None:
            self.print(f"initialised G and D from {warm['run']} (data {warm['data']} {warm['data_root'] or ''}; "
                       f"{_disjointness(warm)})")
        if td.canaries is not None:
            self.print(f"canaries: {len(td.canaries['indices'])} {td.canaries['split']} images inserted, repeats "
                       f"{args.canary_repeats} x {args.canaries} each ({sum(td.canaries['repeats'])} extra training "
                       "images)")
        if td.coins is not None:
            c = td.describe()["coins"]
            self.print(f"audit coins ({c['kind']}): {c['included']} of {c['candidates']} candidates included "
                       "(coins.json)")
        if privacy.private:
            self.print(privacy.summary())


def _rng_state(device):
    st = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        st["mps"] = torch.mps.get_rng_state()
    return st


def set_rng_state(ckpt, rank: int, device) -> None:
    """Restore this rank's RNG state from a checkpoint."""
    st = ckpt.get("rng_ranks", [ckpt["rng"]])[rank]
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)
    if device.type == "mps" and "mps" in st:
        torch.mps.set_rng_state(st["mps"])


class Checkpointer:
    """Atomic checkpoints of the training state (state.state_dict()) with the run's bookkeeping: every rank's RNG,
    the arguments, the privacy ledger and the training time so far."""

    def __init__(self, run: Run, args, privacy, model_cfg: dict):
        self.run, self.args, self.privacy, self.model_cfg = run, args, privacy, model_cfg
        self.path = run.out / "ckpt.pt"
        self.wall_before = run.ckpt.get("wall_s", 0.0) if run.ckpt else 0.0  # training time of earlier invocations
        self.t0 = time.time()
        self.last_step = run.ckpt["step"] if run.ckpt else 0

    def wall_s(self) -> float:
        return self.wall_before + time.time() - self.t0

    def save(self, state, epoch: int, step_in_epoch: int) -> None:
        rng = all_gather(_rng_state(self.run.device))  # every rank's RNG (collective: all ranks call save)
        if self.run.main:
            atomic_torch_save({**state.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch, "rng": rng[0],
                               "rng_ranks": rng, "world_size": self.run.world, "args": self.args.as_dict(),
                               "config": self.model_cfg, "privacy": self.privacy.state_dict(),
                               "wall_s": self.wall_s()}, self.path)
        self.last_step = state.step

    def snapshot(self, state) -> None:
        """RUN/snapshots/step<S>.pt: the models at D step S (G, its EMA, D, the architecture and ε so far), what
        audit.py --over-training reads (load_generator / load_discriminator take it too)."""
        if self.run.main:
            sd = state.state_dict()
            (self.run.out / "snapshots").mkdir(exist_ok=True)
            atomic_torch_save({**{k: sd[k] for k in ("G", "G_ema", "D", "step", "g_steps")}, "config": self.model_cfg,
                               "epsilon": self.privacy.epsilon(state.step)},
                              self.run.out / "snapshots" / f"step{state.step:07d}.pt")

    def epoch_end(self, state, epoch: int, epoch_done: bool, last: bool) -> None:
        """Checkpoint at an epoch end if CKPT_MIN_STEPS D steps have passed since the last one, or at the end."""
        if state.step - self.last_step >= CKPT_MIN_STEPS or last:
            self.save(state, epoch + 1 if epoch_done else epoch, 0 if epoch_done else state.step_in_epoch)


class RunLog:
    """log.jsonl, the progress bar of each epoch, the per-epoch line, sample grids and the loss curve."""

    def __init__(self, run: Run, args, step: int, fixed_z):
        self.run, self.args, self.fixed_z = run, args, fixed_z
        self.path = run.out / "log.jsonl"
        if run.main and run.ckpt is not None and self.path.exists():  # drop records written after the checkpoint
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _record(line).get("step", math.inf) <= step]  # a cut last line: dropped
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        elif run.main and run.ckpt is None and self.path.exists():
            self.path.unlink()
        self.grid_every = math.ceil(args.epochs / GRIDS)  # small N: many short epochs, and a grid costs a G pass
        self.file = open(self.path if run.main else os.devnull, "a")
        self.bar, self.last_plot = None, -math.inf
        self.last_loss_d, self.last_loss_g = None, math.nan  # of the last D step and G step (results.json)

    def epoch_start(self, epoch: int, total: int, initial: int) -> None:
        self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{self.args.epochs}",
                        disable=not self.run.progress, leave=False)

    def step(self, rec: dict, loss_g: float, g_steps: int) -> None:
        self.last_loss_d, self.last_loss_g = rec["loss_d"], loss_g
        self.file.write(json.dumps(rec) + "\n")
        post = {"D": f"{rec['loss_d']:.3f}", "G": f"{loss_g:.3f}", "D(x)": f"{rec['d_x']:.2f}", "K": rec["k"],
                "G steps": g_steps}
        if "epsilon" in rec:
            post["ε"] = f"{rec['epsilon']:.2f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def flush(self) -> None:
        self.file.flush()

    def epoch_end(self, rec: dict) -> None:
        self.bar.close()
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()

    def pictures(self, epoch: int, last: bool, released) -> None:
        """The epoch's sample grid (every grid_every epochs and at the end) and, at most every LOSS_PLOT_EVERY_S
        seconds, the loss curve (redrawing it reads the whole log: at small N it cost more than the grids)."""
        if not self.run.main or not ((epoch + 1) % self.grid_every == 0 or last):
            return
        save_grid(released, self.fixed_z, self.run.out / "grids" / f"epoch_{epoch + 1:03d}.png")
        if last or time.monotonic() - self.last_plot >= LOSS_PLOT_EVERY_S:
            plot_losses(self.path, self.run.out / "loss_curve.png")
            self.last_plot = time.monotonic()

    def epoch_line(self, rec: dict) -> None:
        self.run.print(f"epoch {rec['epoch']}: D step {rec['step']}, G step {rec['g_step']} (K {rec['k']}), "
                       f"D {rec['loss_d'] if rec['loss_d'] is not None else math.nan:.3f}, G {rec['loss_g']:.3f}"
                       + (f", ε = {rec['epsilon']:.3f}" if "epsilon" in rec else ""))

    def close(self) -> None:
        self.file.close()


def _record(line: str) -> dict:
    """A log.jsonl record; {} for a line cut short by a killed process."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return {}


def plot_losses(log_path: Path, png: Path) -> None:
    recs = [_record(line) for line in log_path.read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r.get("kind") == "step"]
    if not recs:
        return
    pyplot = plt()
    steps = [r["step"] for r in recs]
    g = [r for r in recs if "loss_g" in r]
    extra = "epsilon" in recs[-1] or len({r.get("k") for r in recs}) > 1
    fig, axes = pyplot.subplots(2 if extra else 1, 1, figsize=(7, 6 if extra else 4), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, [r["loss_d"] for r in recs], lw=0.8, label="D loss")
    ax.plot([r["step"] for r in g], [r["loss_g"] for r in g], lw=0.8, label="G loss")
    ax.set_ylabel("BCE loss")
    ax.legend(loc="upper left")
    ax.set_title(png.parent.name)
    if extra:
        ax = axes[1, 0]
        if "epsilon" in recs[-1]:
            ax.plot(steps, [r.get("epsilon", float("nan")) for r in recs], color="k", lw=1, label="ε spent")
            ax.set_ylabel("ε")
            ax.legend(loc="upper left")
        ax2 = ax.twinx()
        ax2.step(steps, [r.get("k", 1) for r in recs], color="C2", lw=1, where="post", label="K (D steps per G step)")
        ax2.set_ylabel("K")
        ax2.legend(loc="lower right")
    axes[-1, 0].set_xlabel("D step")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    pyplot.close(fig)


def save_grid(G, z, path: Path) -> None:
    from torchvision.utils import save_image

    with torch.no_grad():
        x = G(z).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x, path, nrow=8, normalize=True, value_range=(-1, 1))


# ----------------------------------------------------------------------------- the end of a run
def finish(run: Run, args, state, privacy, td, model_cfg: dict, log: RunLog, wall_s: float, elapsed: float,
           real_seen: int, extra: dict | None = None) -> dict:
    """results.json (with ``extra``) and the artefacts (rank 0), the ranks' weight check, leaving the process
    group."""
    real_seen = sum(all_gather(real_seen))  # real images over all ranks
    results = {"run": str(run.out), "private": privacy.private, "steps": state.step, "g_steps": state.g_steps,
               "k_final": state.sched.k, "epochs": args.epochs, "n_train": td.n, "batch_size": args.batch_size,
               "ema_decay": args.ema_decay, "wall_s": round(wall_s, 2),
               "images_per_s": round(real_seen / elapsed, 1) if elapsed > 0 and real_seen else None,
               "final_loss_d": log.last_loss_d, "final_loss_g": log.last_loss_g, "device": str(run.device),
               "world_size": run.world, "threads": run.threads.describe()}
    results.update(privacy.results(), **(extra or {}))
    if state.reject is not None and run.main:  # over the whole run, resumed invocations included (the log)
        rates = [_record(line).get("mr_rejected") for line in log.path.read_text().splitlines() if line.strip()]
        rates = [r for r in rates if r is not None]
        results["memorization_rejection"] = {"tau": state.reject.tau,
                                             "rejected_mean": sum(rates) / len(rates) if rates else None}
    if run.world > 1:  # the ranks must hold the same models: each DP step is one synchronized update
        hashes = all_gather(state_hash(*[m for m in (state.G, state.raw_D, state.G_ema) if m is not None]))
        results["ranks_identical"] = len(set(hashes)) == 1
        if not results["ranks_identical"]:
            warnings.warn(f"ranks ended with different weights ({hashes}); the run is inconsistent", stacklevel=2)
    if run.main:
        released = state.released
        atomic_torch_save({"G": released.state_dict(), "config": model_cfg, "args": args.as_dict(),
                           "ema": bool(args.ema_decay)}, run.out / "generator.pt")
        if args.num_samples:
            data_mod.save_npz(run.out / "samples.npz", generate(released.eval(), args.num_samples, args.nz,
                                                                run.device, seed=args.seed + 1))
        elif (run.out / "samples.npz").is_file():  # a resumed run asked for none: no samples of another model
            (run.out / "samples.npz").unlink()
        privacy.write_artefacts(run.out, state.raw_D)
        plot_losses(log.path, run.out / "loss_curve.png")
        # what the run released, by content: results.json (written last) identifies the finished run
        results["artefacts_sha256"] = {f: sha256_file(run.out / f) for f in ("ckpt.pt", "generator.pt", "samples.npz",
                                                                             "gradient_canaries.npz")
                                       if (run.out / f).is_file()}
        write_json(run.out / "results.json", results)
        print(f"done: {state.step} D steps, {state.g_steps} G steps in {elapsed:.1f}s ({results['images_per_s']} "
              f"real images/s); artefacts in {run.out}")
    if run.world > 1:  # every rank stays in the group until rank 0's artefacts are written, then all leave it
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return results

"""The stages of a study and the scheduler that runs them, one after another or in N worker processes.

A stage is one call of a toolkit script's function (train, evaluate, audit, ...) with a command line. It is
reused when its result is on disk for the same settings: a training run whose config.json records the same
arguments (and results.json exists), or a stage whose stamp.json records the same argv and input files. Stages
form a graph (the public pretraining before the warm-started runs, a training run before its evaluation and
audit, the real-data features before the evaluations that read them); :func:`run_stages` runs every stage once
its dependencies are done, longest remaining chain first, in ``jobs`` worker processes (concurrent.futures, spawn)
with ``--threads`` CPU threads each, so a parallel study computes what a sequential one with the same --threads
does. A stage's own output goes to OUT/logs/<stage>.log; the terminal shows which stages run and finish.
Ctrl-C stops the workers; every finished stage stays reused and an interrupted training run resumes from its
checkpoint when the command is run again.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import multiprocessing as mp
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from utils import UserError, keep_freed_memory, read_json, resolved, write_json

_VOLATILE = {"out", "resume", "no_progress", "device", "cache_dir", "threads"}  # do not change what a run computes
_PATH_FLAGS = ("--gen", "--run", "--out", "--train-of", "--reference-of", "--inception-weights")  # flags naming files
_STABLE_SKIP = ("--device", "--cache-dir", "--threads")  # flags (with a value) that do not change a stage's result


@dataclass
class Stage:
    """One unit of work: ``fn`` ("module:function") called with the module's parsed ``argv`` (a training stage:
    the script's train(), its run folder --out). ``label`` names the model or set it belongs to and ``what`` the
    work ("training", "evaluation", ...). ``out_dir``/``result``: where the stamp and the result live; ``inputs``:
    files whose modification times go into the stamp; ``cost``: relative run time, for scheduling."""

    label: str
    what: str
    fn: str
    argv: list
    deps: tuple = ()
    out_dir: Path | None = None
    result: str | None = None
    inputs: dict = field(default_factory=dict)
    cost: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.label} {self.what}"

    @property
    def is_training(self) -> bool:
        return self.fn.endswith(":train")

    def stamp(self) -> dict:
        return {"argv": _stable(self.argv), **{k: _mtime(Path(p)) for k, p in self.inputs.items()}}

    def result_path(self) -> Path:
        return (_arg(self.argv, "--out") / "results.json") if self.is_training else self.out_dir / self.result

    def reusable(self) -> bool:
        """Is this stage's result on disk for the same settings (and input files)?"""
        if self.is_training:
            return _trained_run_matches(self)
        return _stamp_ok(self.out_dir / "stamp.json", self.stamp()) and (self.out_dir / self.result).is_file()


def _arg(argv, flag) -> Path:
    return Path(argv[len(argv) - 1 - argv[::-1].index(flag) + 1])


def _stable(argv):
    """argv without the flags that do not change results (device, threads, cache, bars), for stage stamps."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--no-progress":
            pass
        elif a in _STABLE_SKIP:
            skip = True
        else:
            out.append(a)
    return out


def _mtime(p: Path):
    return p.stat().st_mtime_ns if p.exists() else None


def _stamp_ok(path: Path, stamp: dict) -> bool:
    """A stage's stamp matches: the same argv (its paths compared resolved, however they were spelled) and inputs."""

    def canonical(st):
        argv = list(st.get("argv", []))
        for i in range(len(argv) - 1):
            if argv[i] in _PATH_FLAGS:
                argv[i + 1] = resolved(argv[i + 1])
        return {**st, "argv": argv}
    return path.is_file() and canonical(read_json(path)) == canonical(stamp)


def _training_args(stage: Stage):
    mod = importlib.import_module(stage.fn.split(":")[0])
    parse = mod.parse_args if hasattr(mod, "parse_args") else mod.build_parser().parse_args
    args = parse(list(stage.argv))
    from train_dcgan import check_args

    check_args(args)  # normalises as train() does, so the comparison below sees what the run recorded
    return args


def _trained_run_matches(stage: Stage) -> bool:
    from runs import as_recorded, resolved_paths

    run = _arg(stage.argv, "--out")
    if not ((run / "results.json").is_file() and (run / "config.json").is_file()):
        return False
    want = {k: v for k, v in vars(_training_args(stage)).items() if k not in _VOLATILE}
    have = as_recorded({k: v for k, v in read_json(run / "config.json")["args"].items() if k not in _VOLATILE}, want)
    return resolved_paths(have) == resolved_paths(want)


# ----------------------------------------------------------------------------- running one stage
def execute(stage: Stage, log_dir: Path | None) -> float:
    """Run one stage (in this process), its output appended to its log file; returns its wall time in seconds. A
    stage's error is raised as a one-line UserError naming the stage and its log (the traceback is in the log)."""
    t0 = time.time()
    path = log_dir / (re.sub(r"[^A-Za-z0-9._-]+", "-", stage.name).strip("-") + ".log") if log_dir else None
    try:
        _execute(stage, path)
    except KeyboardInterrupt:
        raise
    except (UserError, SystemExit) as e:
        raise UserError(f"{stage.name}: {e if isinstance(e, UserError) else 'bad arguments'} (log: {path})") from None
    except Exception as e:
        if path is not None:
            with open(path, "a") as f:
                traceback.print_exc(file=f)
        raise UserError(f"{stage.name} failed: {type(e).__name__}: {e} (traceback in {path})") from None
    return time.time() - t0


def _execute(stage: Stage, path: Path | None) -> None:
    log = open(path, "a") if path else None
    with contextlib.ExitStack() as stack:
        if log is not None:
            stack.enter_context(log)
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        module, fn = stage.fn.split(":")
        mod = importlib.import_module(module)
        if stage.is_training:
            args = _training_args(stage)
            args.resume = (Path(args.out) / "ckpt.pt").is_file()  # an interrupted run continues
            privacy = None
            if module == "train_dcgan_dp":
                from privacy import DPSGD

                privacy = DPSGD(args)
            from train_dcgan import train

            train(args, privacy)
        else:
            getattr(mod, fn)(mod.build_parser().parse_args(list(stage.argv)))
            write_json(stage.out_dir / "stamp.json", stage.stamp())


def _worker_init(threads: int) -> None:
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle: it stops the workers
    tqdm.set_lock(threading.RLock())  # not a multiprocessing lock: a stopped worker would leak its semaphore
    torch.set_num_threads(threads)
    keep_freed_memory()


# ----------------------------------------------------------------------------- the scheduler
def _priorities(stages: dict) -> dict:
    """Each stage's cost plus the costliest chain of stages that wait for it (run the longest chains first)."""
    children = {name: [] for name in stages}
    for s in stages.values():
        for d in s.deps:
            if d in children:
                children[d].append(s.name)
    memo = {}

    def chain(name):
        if name not in memo:
            memo[name] = stages[name].cost + max((chain(c) for c in children[name]), default=0.0)
        return memo[name]
    return {name: chain(name) for name in stages}


def run_stages(stages: list, jobs: int = 1, threads: int = 1, log_dir: Path | None = None,
               progress: bool = True) -> dict:
    """Run every stage once its dependencies are done (reusing what is on disk); returns {name: wall seconds of
    this invocation, or None where reused}. ``jobs`` > 1: that many spawned worker processes."""
    by_name = {s.name: s for s in stages}
    missing = {d for s in stages for d in s.deps} - set(by_name)
    if missing:
        raise ValueError(f"stages depend on unknown stages {sorted(missing)}")
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    prio, done, running, times = _priorities(by_name), set(), {}, {}
    bar = tqdm(total=len(stages), desc="stages", unit="stage", disable=not progress, dynamic_ncols=True)

    def say(msg):
        (bar.write if progress else print)(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stdout)
        sys.stdout.flush()

    def ready():
        return sorted((s for s in stages if s.name not in done and s.name not in running
                       and all(d in done for d in s.deps)), key=lambda s: -prio[s.name])

    def finish(stage, secs):
        done.add(stage.name)
        times[stage.name] = secs
        bar.update(1)
        bar.set_postfix_str(", ".join(running.values()) or "-")

    pool = None if jobs <= 1 else cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                                                          initializer=_worker_init, initargs=(threads,))
    futures = {}
    try:
        while len(done) < len(stages):
            launched = False
            for stage in ready():
                if stage.reusable():
                    say(f"[{stage.label}] {stage.what} found: reused")
                    finish(stage, None)
                    launched = True
                    continue
                if pool is not None and len(running) >= jobs:
                    break
                say(f"[{stage.label}] {stage.what}: running")
                running[stage.name] = stage.name
                bar.set_postfix_str(", ".join(running.values()))
                if pool is None:
                    secs = execute(stage, log_dir)
                    del running[stage.name]
                    say(f"[{stage.label}] {stage.what}: done in {secs / 60:.1f} min")
                    finish(stage, secs)
                else:
                    futures[pool.submit(execute, stage, log_dir)] = stage
                launched = True
            if pool is None:
                if not launched and len(done) < len(stages):
                    raise RuntimeError("stage graph has a cycle")
                continue
            if not futures:
                if not launched:
                    raise RuntimeError("stage graph has a cycle")
                continue
            finished, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                stage = futures.pop(fut)
                del running[stage.name]
                secs = fut.result()  # a stage's error (UserError: one line) stops the study
                say(f"[{stage.label}] {stage.what}: done in {secs / 60:.1f} min")
                finish(stage, secs)
    except BaseException:  # Ctrl-C or a stage's error: stop the workers (checkpoints are written atomically)
        if pool is not None:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return times

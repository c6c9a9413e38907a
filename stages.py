"""The stages of a study: what each one computes, when it is reused, and the scheduler that runs them.

A stage is one call of a toolkit script (a training run, an evaluation, an audit) with a command line; it writes
into one folder (a training: its run folder). Before a stage runs, its key is computed (Stage.key):

  args    the script's parsed arguments (a training's frozen Config, the DP recipe's defaults included) minus the
          result-neutral ones (config.NEUTRAL: device, threads, cache, bars, --out), paths resolved, as the script
          uses them whatever the environment says (effective: $INCEPTION_WEIGHTS filled in);
  inputs  the content of what it reads: a run folder it names (--init-from, --gen, --train-of, --reference-of,
          --run, --reference-runs) by the sha256 of that run's results.json (written last; it holds the sha256 of
          the run's checkpoint, generator and samples), a file (--inception-weights, --checkpoint, --identity-file)
          by its sha256, a data source (--data and --data-root, --exclude-from, --real) by data.fingerprint: file
          names and sizes, partition and identity files;
  code    the sha256 of the source of every project module the script imports, directly or not (read from its
          import statements): a docs-only change reruns nothing, a change to metrics.py reruns the evaluations
          and audits (which import it), not the trainings (which do not).

decide() compares the key with the one recorded in the stage's folder (a training's RUN/stage.json, written before
it starts; any other stage's stamp.json, written after it finished) and says what happens and why: reuse (the
result is there and the keys are equal), resume (an interrupted training with the same key), or run. A training
folder holding a run with another key is moved aside (into .stale/ beside it) and trained anew: a run is never
resumed under new settings. --reuse-stale keeps a finished stage whose only difference is the code, and says so.

run_stages runs every stage once its dependencies are done, longest remaining chain first, in ``jobs`` worker
processes (concurrent.futures, spawn) with ``threads`` CPU threads each, so a parallel study computes what a
sequential one does. Each stage holds the lock of its folder while it runs (utils.folder_lock): another process on
the same folder, e.g. a second --only machine, waits for it and then reuses its result. A stage's output goes to
LOGS/<stage>.log; the terminal says which stages run and why. After Ctrl-C or a kill, finished stages are reused
and an interrupted training resumes from its checkpoint when the command is run again.
"""
from __future__ import annotations

import ast
import concurrent.futures as cf
import contextlib
import functools
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from config import BEFORE, identity, normal
from utils import UserError, folder_lock, keep_freed_memory, read_json, sha256_file, write_json

PROJECT = Path(__file__).resolve().parent
RUN_INPUTS = ("init_from", "gen", "train_of", "reference_of", "run", "reference_runs", "checkpoint")
FILE_INPUTS = ("inception_weights", "identity_file")


@dataclass(frozen=True)
class Script:
    """How a stage's command line is read and run: ``parse(argv)`` gives its arguments (a training's Config),
    ``run(args)`` computes; ``training``: it trains a run in its folder (resumable from a checkpoint)."""

    module: str
    parse: Callable
    run: Callable
    training: bool = False


@dataclass(eq=False)
class Stage:
    """One unit of work: ``script`` run on ``argv``, writing into ``out`` (a training: the run folder, its --out),
    done when ``out / result`` exists. ``label``: the model or image set it belongs to; ``what``: the work
    ("training", "evaluation", ...); ``deps``: the Stages it waits for; ``cost``: relative run time, for
    scheduling."""

    label: str
    what: str
    script: Script
    argv: list
    out: Path
    result: str
    deps: tuple = ()
    cost: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.label} {self.what}"

    @property
    def stamp_path(self) -> Path:
        return self.out / ("stage.json" if self.script.training else "stamp.json")

    def args(self):
        return self.script.parse(list(self.argv))

    def key(self) -> dict:
        """What this stage computes from (module docstring), as JSON would store it."""
        args = effective(vars(self.args()))
        key = {"args": identity(args), "inputs": inputs_of(args), "code": code_of(self.script.module)}
        return json.loads(json.dumps(key, default=str))

    def decide(self, key: dict, reuse_stale: bool = False) -> tuple[str, str]:
        """(action, why): "reuse", "reuse-stale", "resume" or "run"."""
        done = (self.out / self.result).is_file()
        try:
            stored = read_json(self.stamp_path)
        except (OSError, ValueError):
            stored = None
        if stored is None:
            return "run", ("new" if not _holds_anything(self.out) else
                           "no key recorded (made by an older toolkit or by hand)")
        why = differences(stored, key)
        if not why:
            if done:
                return "reuse", ""
            if self.script.training and (self.out / "ckpt.pt").is_file():
                return "resume", "interrupted: resumes from its checkpoint"
            return "run", "interrupted"
        if done and reuse_stale and all(w.startswith("code") for w in why):
            return "reuse-stale", "; ".join(why)
        return "run", "; ".join(why)


def effective(args: dict) -> dict:
    """A stage's arguments as its script uses them, whatever the environment says: Inception weights left to
    $INCEPTION_WEIGHTS are that file when the stage reads them (other weights are another input), and a
    --data-root that only relocates the named run's recorded data (a stage with neither --data nor --real of its
    own) is no setting: the run's content is the input. So a study keys alike with --inception-weights W and with
    INCEPTION_WEIGHTS=W, with or without $CELEBA_ROOT."""
    args = dict(args)
    reads_weights = args.get("space", "inception") == "inception"  # audit.py: only its --space inception
    if "inception_weights" in args and not args["inception_weights"] and reads_weights:
        args["inception_weights"] = os.environ.get("INCEPTION_WEIGHTS") or None
    if args.get("data_root") and not args.get("data") and not args.get("real"):
        args["data_root"] = None
    return args


def differences(stored: dict, key: dict) -> list:
    """What differs between two keys, by component: the settings, the inputs and the modules that changed. A
    setting one key lacks counts as its config.BEFORE value (an option added since does not change old stages)."""
    out = []
    for part, what in (("args", "settings changed"), ("inputs", "input changed"), ("code", "code changed")):
        a, b = stored.get(part) or {}, key.get(part) or {}
        get = _setting if part == "args" else dict.get
        changed = sorted(k for k in set(a) | set(b) if get(a, k) != get(b, k))
        if changed:
            out.append(f"{what}: {', '.join(changed)}")
    return out


def _setting(args: dict, k: str):
    """A stage key's setting k, or for a key written before the option existed, the value it had then."""
    if k in args or k not in BEFORE:
        return args.get(k)
    return json.loads(json.dumps(normal(k, BEFORE[k]), default=str))


# ----------------------------------------------------------------------------- what a stage reads
@functools.lru_cache(maxsize=None)
def _imports(module: str) -> frozenset:
    """The project modules that ``module``'s source imports anywhere (also inside functions)."""
    tree = ast.parse((PROJECT / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return frozenset(n for n in names if (PROJECT / f"{n}.py").is_file())


@functools.lru_cache(maxsize=None)
def _source_sha(module: str) -> str:
    return sha256_file(PROJECT / f"{module}.py")


def code_of(module: str) -> dict:
    """{file: sha256} of ``module`` and every project module it imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_imports(m))
    return {f"{m}.py": _source_sha(m) for m in sorted(seen)}


@functools.lru_cache(maxsize=256)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:  # memoised while the file is unchanged
    return sha256_file(path)


def content_of(path) -> str | None:
    """A run folder by its results.json (it must have finished), a file by its sha256, another folder by its
    images' names and sizes; None if nothing is there (the script itself then says what is missing)."""
    import data

    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "results.json").is_file():
            return "run " + sha256_file(p / "results.json")
        if (p / "config.json").is_file():
            raise UserError(f"{p} is a training run that has not finished (no results.json); finish it first")
        return "folder " + data.fingerprint(f"folder:{p}")
    if p.is_file():
        st = p.stat()
        return "file " + _file_sha(str(p.resolve()), st.st_size, st.st_mtime_ns)
    return None


def _source(kind: str, root) -> str:
    import data

    if kind == "any":  # --exclude-from: a CelebA root or an image folder
        kind = "celeba" if any((Path(root) / b / "img_align_celeba").is_dir() for b in (".", "celeba")) \
            else f"folder:{root}"
    return data.fingerprint(kind, root)


def inputs_of(args: dict) -> dict:
    """The content of everything a stage's arguments name (module docstring)."""
    out = {k: [content_of(v) for v in str(args[k]).split(",")] if k == "reference_runs" else content_of(args[k])
           for k in RUN_INPUTS + FILE_INPUTS if args.get(k)}
    if args.get("data") and (args["data"] != "celeba" or args.get("data_root")):
        out["data"] = _source(args["data"], args.get("data_root"))
    if args.get("real") and not str(args["real"]).endswith(".npz"):
        out["real"] = _source(args["real"], args.get("data_root"))
    if args.get("exclude_from"):
        out["exclude_from"] = _source("any", args["exclude_from"])
    if args.get("forget") and args["forget"] != "heads":
        out["forget"] = content_of(args["forget"])
    return out


# ----------------------------------------------------------------------------- running one stage
def _holds_anything(folder: Path) -> bool:
    return folder.is_dir() and any(p.name != ".lock" for p in folder.iterdir())


def _move_aside(folder: Path) -> Path:
    """Move what ``folder`` holds (all but its lock, which this process holds) into .stale/ beside it."""
    dest = folder.parent / ".stale" / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if p.name != ".lock":
            shutil.move(str(p), str(dest / p.name))
    return dest


def log_path(stage: Stage, log_dir: Path | None) -> Path | None:
    return log_dir / (re.sub(r"[^A-Za-z0-9._-]+", "-", stage.name).strip("-") + ".log") if log_dir else None


def execute(stage: Stage, key: dict, log_dir: Path | None, reuse_stale: bool = False) -> float | None:
    """Run one stage in this process, holding its folder's lock (waiting for another process that holds it), its
    output appended to its log file. Returns its wall time in seconds, or None when, once the lock was ours, its
    result was there (another process made it). A stage's error is a one-line UserError naming the stage and its
    log (the traceback is in the log)."""
    path = log_path(stage, log_dir)
    with folder_lock(stage.out, wait=True, on_wait=lambda: print(
            f"{time.strftime('%H:%M:%S')} [{stage.label}] {stage.what}: waiting for another process on {stage.out}",
            flush=True)):
        action, _ = stage.decide(key, reuse_stale)
        if action.startswith("reuse"):
            return None
        t0 = time.time()
        try:
            _execute(stage, key, action, path)
        except KeyboardInterrupt:
            raise
        except UserError as e:
            raise UserError(f"{stage.name}: {e} (log: {path})") from None
        except BaseException as e:  # an unexpected error (or exit) of the stage's code
            if path is not None:
                with open(path, "a") as f:
                    traceback.print_exc(file=f)
            raise UserError(f"{stage.name} failed: {type(e).__name__}: {e} (traceback in {path})") from None
        return time.time() - t0


def _execute(stage: Stage, key: dict, action: str, path: Path | None) -> None:
    with contextlib.ExitStack() as stack:
        if path is not None:
            log = stack.enter_context(open(path, "a"))
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        args = stage.args()
        if stage.script.training:
            if action == "run" and _holds_anything(stage.out):
                print(f"moved the old contents of {stage.out} to {_move_aside(stage.out)}")
            write_json(stage.stamp_path, {**key, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
            stage.script.run(args.replace(resume=(stage.out / "ckpt.pt").is_file()))
        else:
            stage.stamp_path.unlink(missing_ok=True)
            stage.script.run(args)
            write_json(stage.stamp_path, key)


_PREPARED = []  # this worker process was set up (threads, memory) for stages


def _prepare_worker(threads: int, ignore_sigint: bool = True) -> None:
    """A worker process's set-up, once: its CPU threads, freed memory kept mapped, a thread lock for the bars."""
    if _PREPARED:
        return
    import signal

    import torch

    if ignore_sigint:  # Ctrl-C is the main process's to handle: it stops the workers
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())  # not a multiprocessing lock: a stopped worker would leak its semaphore
    torch.set_num_threads(threads)
    keep_freed_memory()
    _PREPARED.append(True)


def _worker_init(threads: int) -> None:  # the process pool's initializer
    _prepare_worker(threads)


def _on_dask_worker(threads: int, *args):
    """A stage on a Dask worker (in its task thread, where signals cannot be set: Dask handles them)."""
    _prepare_worker(threads, ignore_sigint=False)
    return execute(*args)


class _InProcess:
    """--jobs 1: each stage in this process, one after another."""

    slots = 1

    def submit(self, *args):
        f = cf.Future()
        try:
            f.set_result(execute(*args))
        except BaseException as e:  # noqa: B902 (Ctrl-C included: it reaches the caller through result())
            f.set_exception(e)
        return f

    def wait(self, futures):
        return set(futures), set()

    def stop(self):
        pass


class _Pool:
    """Stages in ``jobs`` spawned worker processes (concurrent.futures)."""

    def __init__(self, jobs: int, threads: int):
        self.slots = jobs
        self.pool = cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                           initargs=(threads,))

    def submit(self, *args):
        return self.pool.submit(execute, *args)

    def wait(self, futures):
        return cf.wait(futures, return_when=cf.FIRST_COMPLETED)

    def stop(self, now: bool = False):
        if now:  # Ctrl-C: the running stages end at once (their checkpoints are atomic)
            for proc in mp.active_children():
                proc.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Dask:
    """Stages as tasks of a Dask cluster: a running scheduler (``scheduler``: its address, e.g. a dask-jobqueue
    SLURMCluster's) or a LocalCluster with one worker process per job slot. A worker that dies mid-stage has the
    stage run again elsewhere (Dask reschedules it; the training resumes from its checkpoint). Every worker must see
    the study folder ``out`` (a shared file system): checked at the start."""

    def __init__(self, jobs: int, threads: int, scheduler: str | None, out: Path):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise UserError("--executor dask needs Dask: pip install -e \".[cluster]\"") from None
        self.threads, self.cluster, self.submitted = threads, None, []
        if scheduler is None:
            import dask

            # a stage runs in a worker's task thread, and glibc gives each thread but the main one its own arena,
            # whose heaps (64 MB at most) hand large blocks back to the OS on free: MALLOC_ARENA_MAX=1 keeps every
            # thread on the main arena, where keep_freed_memory() holds them (Inception: 1.3x, performance.md);
            # Dask's statistical profiler (a stack sample every 10 ms) off
            # (set before the worker process starts: glibc reads it once, so Nanny's env=, set later, is too late)
            with dask.config.set({"distributed.worker.profile.enabled": False,
                                  "distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": 1}):
                self.cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
        try:
            self.client = Client(scheduler or self.cluster, timeout=30)
        except OSError as e:
            raise UserError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({e})") from None
        self.slots = max(1, len(self.client.scheduler_info()["workers"]))
        out.mkdir(parents=True, exist_ok=True)
        blind = [w for w, ok in self.client.run(os.path.isdir, str(out.resolve())).items() if not ok]
        if blind:
            self.stop()
            raise UserError(f"{len(blind)} Dask worker(s) cannot see the study folder {out.resolve()} (e.g. {blind[0]}): "
                            "put --out on a file system every worker mounts at the same path")

    def submit(self, *args):
        f = self.client.submit(_on_dask_worker, self.threads, *args, pure=False)
        self.submitted.append(f)
        return f

    def wait(self, futures):
        from distributed import wait

        done, pending = wait(list(futures), return_when="FIRST_COMPLETED")
        return set(done), set(pending)

    def stop(self, now: bool = False):
        if now:  # Ctrl-C: nothing more starts (a stage already running on a remote worker runs to its end)
            self.client.cancel(self.submitted, force=True)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# ----------------------------------------------------------------------------- the scheduler
def _priorities(stages: list) -> dict:
    """Each stage's cost plus the costliest chain of stages that wait for it (run the longest chains first)."""
    children = {s: [] for s in stages}
    for s in stages:
        for d in s.deps:
            children[d].append(s)
    memo = {}

    def chain(s):
        if s not in memo:
            memo[s] = s.cost + max((chain(c) for c in children[s]), default=0.0)
        return memo[s]
    return {s: chain(s) for s in stages}


def _check_graph(stages: list) -> None:
    missing = {d.name for s in stages for d in s.deps if d not in stages}
    if missing:
        raise ValueError(f"stages depend on stages that are not in the graph: {sorted(missing)}")
    folders = {}
    for s in stages:
        if folders.setdefault(s.out.resolve(), s) is not s:
            raise ValueError(f"{s.name} and {folders[s.out.resolve()].name} write into the same folder {s.out}")
    for s in stages:
        try:
            s.args()  # every command line is checked before anything runs
        except UserError as e:
            raise UserError(f"{s.name}: {e}") from None


def plan_stages(stages: list, reuse_stale: bool = False) -> dict:
    """{stage: (action, why)} without running anything: a stage after one that runs runs too (its input changes)."""
    _check_graph(stages)
    plan, todo = {}, list(stages)
    while todo:
        ready = [s for s in todo if all(d in plan for d in s.deps)]
        if not ready:
            raise RuntimeError("stage graph has a cycle")
        for s in ready:
            after = [d for d in s.deps if not plan[d][0].startswith("reuse")]
            plan[s] = ("run", f"after {after[0].name}") if after else s.decide(s.key(), reuse_stale)
            todo.remove(s)
    return plan


def run_stages(stages: list, jobs: int = 1, threads: int = 1, log_dir: Path | None = None,
               progress: bool = True, reuse_stale: bool = False, executor: str = "local",
               scheduler: str | None = None, out: Path | None = None) -> dict:
    """Run every stage once its dependencies are done (reusing what is on disk); returns {stage name: {"action",
    "why", "seconds" (this invocation's wall time, None where reused)}}. ``executor`` "local": ``jobs`` > 1 spawned
    worker processes (1: this process); "dask": Dask tasks (``scheduler``, or a LocalCluster of ``jobs`` workers;
    ``out``: the folder every worker must see). A stage that fails stops the stages that need it, not the others;
    the failures are then one UserError that names each stage's log. Ctrl-C stops everything."""
    _check_graph(stages)
    for s in {s.script.module for s in stages}:
        code_of(s)  # the code as it is now, loaded by this process (later edits to a file do not count)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    prio, done, running, outcome, failed = _priorities(stages), set(), {}, {}, {}
    bar = tqdm(total=len(stages), desc="stages", unit="stage", disable=not progress, dynamic_ncols=True)

    def say(msg):
        (bar.write if progress else print)(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stdout)
        sys.stdout.flush()

    def ready():
        return sorted((s for s in stages if s not in done and s not in running and s not in failed
                       and all(d in done for d in s.deps)), key=lambda s: -prio[s])

    def finish(stage, secs):
        done.add(stage)
        outcome[stage.name]["seconds"] = secs
        if secs is None and outcome[stage.name]["action"] in ("run", "resume"):
            outcome[stage.name].update(action="reuse", why="made by another process meanwhile")
        say(f"[{stage.label}] {stage.what}: " + ("found: reused" if secs is None else f"done in {secs / 60:.1f} min"))
        bar.update(1)
        bar.set_postfix_str(", ".join(s.name for s in running) or "-")

    ex = _Dask(jobs, threads, scheduler, out or Path(".")) if executor == "dask" else \
        _Pool(jobs, threads) if jobs > 1 else _InProcess()
    futures, stopped = {}, False
    try:
        while True:
            for stage in ready():
                key = stage.key()
                action, why = stage.decide(key, reuse_stale)
                outcome[stage.name] = {"action": action, "why": why, "seconds": None}
                if action.startswith("reuse"):
                    if action == "reuse-stale":
                        say(f"[{stage.label}] {stage.what}: STALE, reused (--reuse-stale): {why}")
                    finish(stage, None)
                    continue
                if len(running) >= ex.slots:
                    break
                say(f"[{stage.label}] {stage.what}: {'resuming' if action == 'resume' else 'running'}"
                    + (f" ({why})" if why and action == "run" else ""))
                running[stage] = True
                bar.set_postfix_str(", ".join(s.name for s in running))
                futures[ex.submit(stage, key, log_dir, reuse_stale)] = stage
            if not futures:
                if ready():  # stages that the reuses of this pass made ready
                    continue
                break
            finished, _ = ex.wait(futures)
            for fut in finished:
                stage = futures.pop(fut)
                del running[stage]
                try:
                    finish(stage, fut.result())
                except UserError as e:  # a stage's own error: it and what needs it stop, the rest goes on
                    failed[stage] = str(e)
                    say(f"[{stage.label}] {stage.what}: FAILED: {e}")
    except BaseException:  # Ctrl-C (or an error of the scheduler itself): stop the workers; checkpoints are atomic
        ex.stop(now=True)
        stopped = True
        raise
    finally:
        bar.close()
        if not stopped:
            ex.stop()
    left = [s for s in stages if s not in done and s not in failed]
    if failed:
        skipped = f"; {len(left)} stage(s) that need them did not run" if left else ""
        raise UserError(f"{len(failed)} stage(s) failed{skipped}: " + " | ".join(failed.values()))
    if left:
        raise RuntimeError(f"stage graph has a cycle: {', '.join(s.name for s in left)}")
    return outcome

"""Small shared helpers: the command-line parser and user-facing errors, devices and threads, seeded permutations,
atomic file IO, hashing, multi-process helpers."""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


class UserError(Exception):
    """A problem with the user's input. ``main()`` prints it as one line and exits 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every flag's default and keeps the description's line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if flag or action.default is None or "(default" in text or action.default is argparse.SUPPRESS:
            return text  # no "(default: None)" / "(default: False)" noise; a help text that names its default
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with the toolkit's conventions: defaults in --help, and a bad flag is a UserError (run_cli: one line
    on stderr, exit 2), not the whole usage block."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def run_cli(fn, argv=None, interrupted="interrupted: the last checkpoint is intact; rerun with --resume to continue"):
    """Call ``fn(argv)``; turn a UserError into a one-line message and exit code 2, Ctrl-C into ``interrupted``
    and exit code 130."""
    try:
        return fn(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        raise SystemExit(130) from None


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda > mps > cpu; an explicit device that is absent is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} requested but CUDA is not available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps requested but MPS is not available; use --device auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None


def resolved(path) -> str:
    """The file or folder a path names: ~ expanded, relative to the current directory, symlinks followed."""
    return str(Path(path).expanduser().resolve())


def seeded_perm(n: int, seed) -> torch.Tensor:
    """A permutation of range(n) that depends on the seed only (numpy's PCG64): the one source of every seeded
    choice of images (subsets, coins' candidates, canaries, audit members, evaluation caps)."""
    return torch.from_numpy(np.random.default_rng(seed).permutation(n))


def seeded_subset(idx: torch.Tensor, n: int | None, seed) -> torch.Tensor:
    """At most n of the indices ``idx``: a seeded random subset, sorted (all of them when n is None or large)."""
    if n is None or len(idx) <= n:
        return idx
    return idx[seeded_perm(len(idx), seed)[:n]].sort().values


def plt():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


# ----------------------------------------------------------------------------- CPU threads
def _proc_cpu_sample():
    """(busy jiffies of the whole machine, all jiffies, this process's jiffies, CPUs counted) from /proc; None
    where /proc is not Linux's."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        vals = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
        ncpu = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        own = int(fields[11]) + int(fields[12])  # utime + stime of all threads of this process
        total = sum(vals)
        return total - vals[3] - vals[4], total, own, ncpu
    except (OSError, ValueError, IndexError):
        return None


class Threads:
    """``--threads``: torch's CPU thread count, fixed (N) or ``auto``.

    ``auto`` uses as many threads as there are cores that OTHER processes leave idle, re-measured every
    ``every`` seconds from /proc (machine busy time minus this process's own CPU time). Why: with one thread
    per core, a second busy process makes OpenMP's spinning threads wait on each other; a small-model step
    then runs 3-4x slower than with one thread (measured on a 2-core CPU, see the README's performance
    section). Off Linux, ``auto`` keeps torch's default. Call :meth:`refresh` often; it is cheap.
    """

    def __init__(self, spec="auto", every: float = 10.0, first_after: float = 0.5, sampler=_proc_cpu_sample):
        self.auto, self.every, self.sampler = str(spec) == "auto", every, sampler
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if not self.auto:
            try:
                n = int(spec)
            except ValueError:
                n = 0
            if n < 1:
                raise UserError(f"--threads must be 'auto' or a positive integer, got {spec!r}")
            self._set(n)
            return
        self.last = sampler()
        if self.last is None:
            self.auto, self.n = False, torch.get_num_threads()
            return
        self._set(self.cores)
        self.next_check = time.monotonic() + first_after
        self.history = []  # (time, others' busy cores, threads) of each decision

    def _set(self, n: int) -> None:
        if getattr(self, "n", None) != n:  # numpy's BLAS too (FID, KID): as many threads as torch, no more
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=n, user_api="blas")
        self.n = n
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def refresh(self) -> int:
        if not self.auto or time.monotonic() < self.next_check:
            return self.n
        cur = self.sampler()
        self.next_check = time.monotonic() + self.every
        if cur is None:
            return self.n
        d_busy, d_total, d_own = cur[0] - self.last[0], cur[1] - self.last[1], cur[2] - self.last[2]
        self.last = cur
        if d_total <= 0:
            return self.n
        others = max(0.0, (d_busy - d_own) / d_total * cur[3])
        self._set(min(self.cores, max(1, round(self.cores - others))))
        self.history.append((round(time.monotonic(), 1), round(others, 2), self.n))
        return self.n

    def describe(self) -> str:
        return f"auto (now {self.n} of {self.cores} cores)" if self.auto else str(self.n)


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Keep freed blocks of up to ``limit`` bytes in the process for reuse (Linux glibc; elsewhere a no-op).

    By default glibc serves every allocation above 128 KiB with fresh pages (mmap) and returns them to the OS on
    free, so a training step that allocates tens of MB of temporaries pays a page fault for every 4 KiB of
    them, every step. Raising M_MMAP_THRESHOLD and M_TRIM_THRESHOLD keeps those pages mapped (what PyTorch's
    CPU tuning guide gets from jemalloc or tcmalloc). The DP step allocates more temporaries than the
    non-private one (the per-pair norms), so it gains most among training steps; Inception's 299 px activations
    gain 1.3x (docs/performance.md). True if the setting took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
    mmap_ok = mallopt(M_MMAP_THRESHOLD, ctypes.c_int(limit))
    trim_ok = mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2 * limit - 1))
    return bool(mmap_ok and trim_ok)


# ----------------------------------------------------------------------------- multi-process (torchrun)
def init_distributed(device_arg: str = "auto"):
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: gloo on CPU, nccl on
    CUDA (one GPU per process, cuda:LOCAL_RANK). A plain process returns (0, 1, pick_device(device_arg))."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_arg)
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"multi-process runs use CPU (gloo) or CUDA (nccl), not {device.type}; pass --device cpu")
    if not dist.is_initialized():
        # Imported after the group exists, torch._dynamo (which torchvision imports) keeps extra references to
        # it, so destroy_process_group() leaves gloo's threads running into interpreter shutdown, where their
        # teardown can abort the process ("terminate called without an active exception"; seen in CI).
        import torch._dynamo as _dynamo  # noqa: F401  (as a name of its own: `import torch.x` would make torch local)

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def dist_world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather(obj) -> list:
    """Every rank's obj, in rank order ([obj] outside a process group)."""
    import torch.distributed as dist

    if dist_world()[1] == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_params(*modules) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    import torch.distributed as dist

    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, 0)


def average_grads(module) -> None:
    """Average parameter gradients over ranks (a missing gradient counts as zero)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in module.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def state_hash(*modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def versions() -> dict:
    import numpy
    import opacus
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "opacus": opacus.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        # float results (and so a GAN's trajectory) depend on the CPU's kernels: runs are bit-identical on the
        # same CPU and versions, not across machines
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    _atomic_write(Path(path), write)


_HELD_LOCKS: dict = {}  # resolved lock file -> depth: the locks this process holds


@contextlib.contextmanager
def file_lock(path, wait: bool = False, on_wait=None, what=None):
    """Hold an exclusive lock on the file ``path`` (POSIX flock; the kernel releases it when the process ends,
    however it ends; the file holds the holder's pid). Re-entrant within a process. Held by another process: a
    UserError naming ``what`` (default the file), or with ``wait`` block until it is free (``on_wait()`` first).
    Without fcntl (Windows): no lock."""
    path = Path(path)
    key = resolved(path)
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
        return
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            if not wait:
                raise UserError(f"{what or path} is in use by another process (pid {holder}): wait for it to finish, "
                                "or choose another --out") from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD_LOCKS[key] = 1
        try:
            yield
        finally:
            del _HELD_LOCKS[key]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def folder_lock(folder, wait: bool = False, on_wait=None):
    """file_lock on FOLDER/.lock: one process at a time in a run or stage folder."""
    return file_lock(Path(folder) / ".lock", wait, on_wait, what=folder)


def atomic_write_bytes(path, data: bytes) -> None:
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_save_npy(path, array) -> None:
    """np.save, atomically."""
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def atomic_savez(path, **arrays) -> None:
    """np.savez, atomically."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def safe_load(path, map_location="cpu"):
    """Load a checkpoint without executing pickled code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # corrupt file, or a pickle with arbitrary objects
        raise UserError(f"cannot load {path} safely ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                        "is it a checkpoint written by this toolkit?") from None


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()

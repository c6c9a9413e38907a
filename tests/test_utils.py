import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils import Threads, UserError


def test_auto_threads_follow_other_processes_load(monkeypatch):
    """auto: cores minus what OTHER processes keep busy (machine busy time minus this process's own)."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    clock = {"t": 0.0}
    monkeypatch.setattr("utils.time.monotonic", lambda: clock["t"])
    # samples: (machine busy jiffies, all jiffies, own jiffies, CPUs); 100 jiffies per CPU per step
    state = {"busy": 0, "total": 0, "own": 0}

    def sampler():
        return state["busy"], state["total"], state["own"], 2

    def advance(busy_others, own):
        state["busy"] += int(100 * (busy_others + own))
        state["total"] += 200
        state["own"] += int(100 * own)
        clock["t"] += 11.0

    before = torch.get_num_threads()
    try:
        th = Threads("auto", sampler=sampler)
        assert th.n == 2 and torch.get_num_threads() == 2  # starts with every core
        advance(busy_others=1.0, own=1.0)  # another process keeps one core busy
        assert th.refresh() == 1 and torch.get_num_threads() == 1
        advance(busy_others=0.05, own=1.0)  # it stopped
        assert th.refresh() == 2
        advance(busy_others=2.0, own=0.0)  # both cores busy elsewhere: never fewer than one thread
        assert th.refresh() == 1 and [h[2] for h in th.history] == [1, 2, 1]
        clock["t"] += 1.0  # re-measured only every `every` seconds
        advance_no_time = state.copy()
        assert th.refresh() == 1 and state == advance_no_time
    finally:
        torch.set_num_threads(before)


def test_fixed_threads_and_bad_values():
    before = torch.get_num_threads()
    try:
        assert Threads("1").n == 1 and torch.get_num_threads() == 1
        assert Threads("auto", sampler=lambda: None).auto is False  # no /proc: torch's default, untouched
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "-2", "many"):
        with pytest.raises(UserError, match="--threads must be"):
            Threads(bad)


_RSS_DROP = """
import os, sys, torch, utils
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page / 2 ** 20  # noqa: E731
if sys.argv[1] == "keep":
    assert utils.keep_freed_memory()
x = torch.ones(16 * 2 ** 20)  # 64 MB, every page touched
before = rss()
del x
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the malloc setting is for Linux glibc only")
def test_keep_freed_memory_keeps_freed_blocks_mapped():
    """By default glibc unmaps a freed 64 MB block at once (so the next step page-faults it in again); after
    keep_freed_memory() the block stays in the process for reuse."""
    root = Path(__file__).resolve().parents[1]
    drop = {how: float(subprocess.run([sys.executable, "-c", _RSS_DROP, how], cwd=root, check=True,
                                      capture_output=True, text=True).stdout) for how in ("default", "keep")}
    assert drop["default"] > 50 and drop["keep"] < 5, drop

"""A run's configuration: its arguments parsed once, validated, and frozen (never assigned to afterwards).

  Config      argparse.Namespace that refuses assignment; ``replace(**changes)`` returns a new one
  freeze      a parsed Namespace (or a dict) as a Config
  NEUTRAL     fields that do not change what a run or stage computes: left out of its identity (stage keys) and
              free to change on --resume
  RESUMABLE   fields that --resume may change (they extend or shorten the plan, or only shape the final artefacts);
              every other field is locked on resume
  BEFORE      the value a field had in configs written before the field existed (old run folders)
  identity    the fields that define what a run or stage computes, paths resolved

train_dcgan.check_args and train_dcgan_dp.parse_config build a training run's Config (the DP recipe's data-dependent
defaults included); it is stored in config.json and in every checkpoint, and stages.py keys each stage on its
identity.
"""
from __future__ import annotations

import argparse

from utils import resolved

NEUTRAL = frozenset({"out", "resume", "no_progress", "device", "threads", "cache_dir", "ckpt_every",
                     "cache_generated"})
RESUMABLE = frozenset({"epochs", "max_steps", "num_samples", "snapshot_every"})
BEFORE = {"dedup_threshold": None, "exclude_from": None, "train_size": None, "coin_subset": False,
          "audit_canaries": 0, "subset_seed": 0, "d_steps": 1, "g_steps": 1, "g_batch_size": None, "freeze_d": 0,
          "adaptive_d_steps": None, "adaptive_grace": 50, "ema_decay": 0.0, "ema_warmup": 10.0, "init_from": None,
          "mode_seeking": 0.0, "augment": "", "clipping": "flat", "g_lr_scale": 1.0, "skip_subset": 0,
          "identity_file": None, "split_unit": "image", "memorization_rejection": None, "mr_quantile": None,
          "privacy_unit": "image", "attack_photos": 0, "max_photos_per_unit": None, "dp_unit": None,
          "forget": None, "forget_as_fake": False, "forget_until_heldout": False, "forget_check_every": 10}
# fields that name a file or folder: compared as what they name, however spelled
PATHS = frozenset({"data_root", "exclude_from", "init_from", "identity_file", "gen", "run", "train_of",
                   "reference_of", "inception_weights", "checkpoint"})


class Config(argparse.Namespace):
    """A frozen namespace: read like the parsed arguments, never assigned to (``replace`` makes a new one)."""

    def __init__(self, **fields):
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        raise AttributeError(f"a run's configuration is frozen: use .replace({name}=...) for a new one")

    def __delattr__(self, name):
        raise AttributeError("a run's configuration is frozen")

    def replace(self, **changes) -> Config:
        return Config(**{**vars(self), **changes})

    def as_dict(self) -> dict:
        return dict(vars(self))


def freeze(fields, **changes) -> Config:
    """A Config of ``fields`` (a Namespace or a dict) with ``changes`` applied."""
    return Config(**{**(vars(fields) if not isinstance(fields, dict) else fields), **changes})


def normal(key: str, value):
    """A field's value as its identity compares it: paths resolved (also the folder of --data folder:PATH, and a
    --real features file), lists as lists."""
    if value is None:
        return None
    if key in PATHS:
        return resolved(value)
    if key == "forget" and value != "heads":  # --forget heads, or a file
        return resolved(value)
    if key == "reference_runs":  # a comma-separated list of run folders
        return ",".join(resolved(v) for v in str(value).split(","))
    if key in ("data", "real") and str(value).startswith("folder:"):
        return "folder:" + resolved(str(value)[len("folder:"):])
    if key == "real" and str(value).endswith(".npz"):
        return resolved(value)
    return list(value) if isinstance(value, tuple) else value


def identity(fields) -> dict:
    """The fields that define what a run or stage computes (all but NEUTRAL), normalised, sorted by name."""
    d = vars(fields) if not isinstance(fields, dict) else fields
    return {k: normal(k, d[k]) for k in sorted(d) if k not in NEUTRAL}


def recorded(fields: dict) -> dict:
    """A config read from an older run folder, completed with BEFORE for the fields it predates."""
    return {**BEFORE, **fields}

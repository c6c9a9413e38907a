"""An audit's plots (audit.py): roc.png, one_run.png, over_training.png. Apart from plots.py (the studies'
figures), so that a study's audits do not depend on the code of its reports.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils import plt


def plot_over_training(res: dict, path) -> None:
    pyplot = plt()
    pts = res["points"]
    steps = [p["step"] for p in pts]
    fig, (ax1, ax2) = pyplot.subplots(1, 2, figsize=(10, 3.6))
    if all("fid_train" in p for p in pts):
        ax1.plot(steps, [p["fid_train"] for p in pts], "o-", color="k", label="FID vs train")
        ax1.set_ylabel(f"FID vs the training set ({res['fid_samples']} samples)")
        if res["early_stopping"]:
            ax1.axvline(res["early_stopping"]["step"], color="tab:green", ls="--",
                        label=f"early stop (white-box AUC ≤ {res['stop_auc']})")
        ax1.legend(fontsize=8)
    ax1.set_xlabel("D step")
    black = "auc_black_calibrated" if all(p.get("auc_black_calibrated") is not None for p in pts) else "auc_black"
    bb_label = "black-box AUC, calibrated" if black == "auc_black_calibrated" else "black-box AUC"
    for key, label in (("auc_white", "white-box AUC"), (black, bb_label), ("copying_rate", "pixel copy rate")):
        ax2.plot(steps, [p[key] for p in pts], "o-", label=label)
    ax2.axhline(0.5, color="grey", lw=0.8)
    ax2.set_ylim(0.3, 1.02)
    ax2.set_xlabel("D step")
    if any(p["epsilon_lb_one_run"] is not None for p in pts):
        tw = ax2.twinx()
        tw.plot(steps, [p["epsilon_lb_one_run"] or 0 for p in pts], "s:", color="tab:red", label="ε_lb one-run")
        tw.set_ylabel("one-run ε lower bound", color="tab:red")
        tw.legend(fontsize=8, loc="lower right")
    ax2.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"memorization over training: {Path(res['run']).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


ATTACK_TITLES = {"white_box": "white-box (discriminator logit)",
                 "white_box_augmented": "white-box, averaged over the training augmentations",
                 "white_box_lira": "white-box LiRA (offline, reference models)",
                 "white_box_rmia": "white-box RMIA (offline, reference models)",
                 "black_box_reference": "black-box, calibrated by reference models' samples",
                 "black_box": "black-box (distance to nearest sample)",
                 "black_box_calibrated": "black-box, calibrated (÷ distance to held-out)"}


def plot_roc(named_scores: dict, path) -> None:
    """ROC curves (log-log) of every attack for one or more models ({name: scores of audit()})."""
    from sklearn.metrics import roc_curve

    pyplot = plt()
    from audit import ATTACKS

    atts = [a for a in ATTACKS if any(f"{a}_members" in sc for sc in named_scores.values())]
    fig, axes = pyplot.subplots(1, len(atts), figsize=(5 * len(atts), 4.2), squeeze=False)
    for ax, attack in zip(axes[0], atts):
        for name, scores in named_scores.items():
            if f"{attack}_members" not in scores:
                continue
            s_in, s_out = scores[f"{attack}_members"], scores[f"{attack}_nonmembers"]
            fpr, tpr, _ = roc_curve(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out])
            ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=name)
        ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(ATTACK_TITLES[attack], fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def plot_one_run(named_audits: dict, path) -> None:
    """The one-run ε lower bound (f-DP analysis) against the number of guesses r, per model: each model's strongest
    attack; the pre-declared grid's bounds (both analyses) as dots, the ceiling as a dashed line."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4.2))
    for i, (name, res) in enumerate(named_audits.items()):
        runs = {a: r["one_run"] for a, r in res["attacks"].items() if r.get("one_run")}
        if not runs:
            continue
        att, o = max(runs.items(), key=lambda kv: kv[1]["epsilon_lb"])
        ax.plot([c["r"] for c in o["curve"]], [c["epsilon_lb_uncorrected"] for c in o["curve"]], "-", color=f"C{i}",
                lw=1, label=f"{name} ({att})")
        for key, marker in (("epsilon_lb_fdp", "o"), ("epsilon_lb_steinke", "x")):
            ax.plot([g["r"] for g in o["grid"]], [g[key] for g in o["grid"]], marker, color=f"C{i}", ms=4)
        ax.axhline(o["ceiling"]["epsilon_lb"], color=f"C{i}", ls="--", lw=0.6)
        eps = res.get("claimed_epsilon")
        if eps is not None:
            ax.axhline(eps, color=f"C{i}", lw=0.8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("guesses r (the r top scores guessed in, the rest abstain)")
    ax.set_ylabel("ε lower bound")
    ax.set_title("one-run audit: lines = f-DP bound at α for each r (uncorrected); dots = the pre-declared grid at\n"
                 "α / (2 grid size x attacks): o f-DP, x Steinke et al.; dashed = ceiling; thin = claimed ε", fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)

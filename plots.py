"""The studies' plots and the docs' figures (reproduce.py --figures): every figure is drawn from a finished study's
files, never edited by hand (an audit's own plots: audit_plots.py).

  memorization_vs_n.png        white-box AUC, memorization distance d and FID against N, every model
  fid_vs_epsilon.png           FID against ε
  samples.png, *_samples.png   samples of every model side by side (the same latent noise)
  nn_galleries.png, copy_galleries.png, exposure.png, frontier.png
  docs/figures/*.png           figure_sources() and the README's headline figure
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from report import Layout
from utils import plt, read_json

def _finish(pyplot, fig, ax, path, xlabel, ylabel, title, legend_outside=False):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **({"loc": "center left", "bbox_to_anchor": (1.02, 0.5)} if legend_outside else {}))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def _eps_label(r):
    warm = ", public warm start" if r["warm"] else ""
    return ("non-private (ε = ∞)" if r["kind"] == "non-private" else f"DP, ε = {r['target_epsilon']:g}") + warm


def plot_memorization_vs_n(rows, refs, path, extra_seed_rows=()):
    """Memorization against N: the strongest white-box attack's TPR at 1% FPR (log scale: the low-FPR regime
    where calibrated attacks see what the raw logit misses), the one-run ε lower bound, and FID."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(15, 4.2))
    groups = {}
    for r in rows:
        groups.setdefault(_eps_label(r), []).append(r)
    keys = ("mia_tpr_1pct_white", "epsilon_lb_one_run", "fid_train")
    for i, (label, rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: r["size"])
        others = [r for r in extra_seed_rows if _eps_label(r) == label]
        for ax, key in zip(axes, keys):
            floor = 1e-3 if key == "mia_tpr_1pct_white" else 0  # a TPR of 0 on the log axis
            ax.plot([r["size"] for r in rs], [max(r.get(key) or 0, floor) for r in rs], "o-", color=f"C{i}",
                    label=label)
            if others:
                ax.plot([r["size"] for r in others], [max(r.get(key) or 0, floor) for r in others], "x",
                        color=f"C{i}", ms=8, label=f"{label}, other seeds")
    ref = sorted(refs, key=lambda r: r["size"])
    axes[2].plot([r["size"] for r in ref], [r["fid_train"] for r in ref], "s--", color="k",
                 label="held-out real images")
    axes[0].axhline(0.01, color="k", ls=":", lw=1, label="chance")
    axes[0].set_yscale("log")
    for ax, title in zip(axes, ("TPR at 1% FPR, strongest white-box attack (higher: more memorization)",
                                "one-run ε lower bound (95%)", "FID vs the training set (lower: better)")):
        ax.set_xscale("log")
        ax.set_xlabel("training-set size N")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def plot_fid_vs_epsilon(rows, path):
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(8, 4))
    for i, n in enumerate(sorted({r["size"] for r in rows})):
        for warm, style in ((False, "o-"), (True, "s:")):
            same = [r for r in rows if r["size"] == n and r["warm"] == warm]
            dp = sorted([r for r in same if r["kind"] == "dp"], key=lambda r: r["epsilon"])
            if dp:
                ax.plot([r["epsilon"] for r in dp], [r["fid_train"] for r in dp], style, color=f"C{i}",
                        label=f"DP, N = {n}" + (", public warm start" if warm else ""))
        npv = next((r for r in rows if r["size"] == n and r["kind"] == "non-private" and not r["warm"]), None)
        if npv is not None:
            ax.axhline(npv["fid_train"], color=f"C{i}", ls="--", lw=1, label=f"non-private, N = {n}")
    ax.set_xscale("log")
    eps = sorted({r["target_epsilon"] for r in rows if r["kind"] == "dp"})  # the spent ε lie within 1%
    ax.set_xticks(eps, [f"{e:g}" for e in eps], minor=False)
    ax.minorticks_off()
    _finish(pyplot, fig, ax, path, "ε (δ fixed; log scale)", "FID vs training set (lower is better)",
            "privacy–utility trade-off", legend_outside=True)


def plot_image_panels(named_images: dict, path, title: str, ncols=None):
    """One panel per entry; each value is a PNG path, a uint8 (N, C, H, W) tensor (first 64 shown) or None (blank)."""
    from torchvision.utils import make_grid

    pyplot = plt()
    n = len(named_images)
    ncols = ncols or n
    nrows = math.ceil(n / ncols)
    fig, axes = pyplot.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (name, img) in zip(axes.flat, named_images.items()):
        if img is None:  # a blank panel
            continue
        if isinstance(img, (str, Path)):
            ax.imshow(pyplot.imread(str(img)))
        else:
            grid = make_grid(img[:64].float() / 255, nrow=8, padding=1, pad_value=1.0)
            ax.imshow(grid.permute(1, 2, 0).numpy().squeeze(), cmap="gray" if grid.shape[0] == 1 else None)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def plot_galleries(named_paths: dict, path):
    pyplot = plt()
    n = len(named_paths)
    fig, axes = pyplot.subplots(n, 1, figsize=(12, 2.6 * n), squeeze=False)
    for ax, (name, p) in zip(axes[:, 0], named_paths.items()):
        ax.imshow(pyplot.imread(str(p)))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def plot_exposure(named_audits: dict, path):
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6, 4))
    m = None
    for i, (name, au) in enumerate(named_audits.items()):
        exp = au["attacks"]["white_box"].get("exposure") or {}
        if not exp:
            continue
        reps = sorted(exp, key=int)
        ax.plot([int(r) for r in reps], [exp[r]["mean"] for r in reps], "o-", color=f"C{i % 10}", label=name)
        m = au["canaries"]["references"]
    if m:
        ax.axhline(math.log2(m), color="k", ls=":", lw=1, label=f"maximum log2(M), M = {m}")
    ax.set_xscale("log", base=2)
    _finish(pyplot, fig, ax, path, "times each canary was repeated in training",
            "mean exposure (bits), white-box score",
            "canary exposure")


FRONTIER_AXES = (("mia_auc_white", "white-box membership AUC"), ("epsilon_lb_one_run", "one-run ε lower bound"),
                 ("copying_rate", "pixel copying rate"))


def plot_frontier(rows, ref, n: int, path) -> None:
    """FID against each memorization measure, one curve per defence (DP by ε, rejection by τ, early stopping by
    step); no defence a star; the real held-out images' FID a dotted line."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(15, 4.4))
    defences = list(dict.fromkeys(r["defence"] for r in rows))
    for ax, (key, label) in zip(axes, FRONTIER_AXES):
        for i, d in enumerate(defences):
            rs = [r for r in rows if r["defence"] == d and r.get(key) is not None and r.get("fid_train") is not None]
            if d == "DP-SGD":
                rs.sort(key=lambda r: r["epsilon"])
            xs, ys = [r[key] for r in rs], [r["fid_train"] for r in rs]
            ax.plot(xs, ys, "*" if d == "none" else "o-", ms=14 if d == "none" else 5, color=f"C{i}", label=d)
            for r, x, y in zip(rs, xs, ys):
                if d != "none":
                    tag = (f"ε={r['target_epsilon']:g}" if d == "DP-SGD" else f"{r['step']}" if d == "early stopping"
                           else r["setting"].split(" of ")[0].replace("τ = ", "") if d.startswith("memo") else
                           r["setting"].replace("translation", "tr").replace(",", "+"))
                    ax.annotate(tag, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points", color=f"C{i}")
        ax.axhline(ref["fid_train"], color="k", ls=":", lw=1, label="real held-out images")
        ax.set_xlabel(label + (" (0.5: chance)" if key != "epsilon_lb_one_run" else ""))
        ax.set_ylabel("FID vs the training set (lower: better)")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"defences at N = {n}: utility against memorization (lower left is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def frontier_samples(rows, layout: Layout) -> dict:
    """The first 64 samples of each model (samples.npz: the same latent noise for all) and of the early-stopping
    checkpoint (drawn from it with that noise)."""
    from data import load_npz
    from gan import generate
    from models import load_generator

    panels = {}
    for r in rows:
        if r["defence"] != "early stopping":
            panels[f"{r['defence']}, {r['setting']}"] = load_npz(layout.run(r["run"]) / "samples.npz")[:64]
        elif r.get("early_stop"):
            G, cfg = load_generator(r["checkpoint"])
            with torch.no_grad():
                panels[f"early stopping, D step {r['step']}"] = generate(G, 64, cfg["nz"], "cpu")
    return panels


def plot_dp_cost(rows, refs: dict, path) -> None:
    """FID at each step of the DP decomposition (dp_cost.py), one line per N; the real held-out images' FID (the
    floor) dashed."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(9, 4.2))
    for i, n in enumerate(sorted({r["size"] for r in rows})):
        rs = [r for r in rows if r["size"] == n]
        ax.plot(range(len(rs)), [r["fid_train"] for r in rs], "o-", color=f"C{i}", label=f"N = {n}")
        ax.axhline(refs[n]["fid_train"], color=f"C{i}", ls="--", lw=0.8, label=f"real held-out images, N = {n}")
    steps = [r["defence"] for r in rows if r["size"] == rows[0]["size"]]
    ax.set_xticks(range(len(steps)), [s.replace("+ noise: ", "").replace(" (σ = 0)", "\n(σ = 0)") for s in steps],
                  fontsize=7, rotation=20)
    ax.set_yscale("log")
    _finish(pyplot, fig, ax, path, "", "FID vs the training set (lower: better)",
            "what DP costs: each step adds one part of DP-SGD", legend_outside=True)


def plot_unlearning(rows, path) -> None:
    """The unlearning trade-off (unlearn_study.py): each method's cost (x retrain) against its one-run bound on the
    forgotten candidates (left) and its FID (right); the original (no unlearning, cost 0) and the DP row as
    horizontal references."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "epsilon_lb_one_run", "one-run ε_lb of the forgotten candidates"),
                           (axes[1], "fid_train", "FID vs the retained training set")):
        for i, r in enumerate(rows):
            if r["kind"] == "unlearned":
                ax.plot(r["x_retrain"], r[key], "o", color=f"C{i}", ms=8, label=r["defence"])
                ax.annotate(r["defence"], (r["x_retrain"], r[key]), textcoords="offset points", xytext=(5, 5),
                            fontsize=8)
            else:
                ax.axhline(r[key], color=f"C{i}", ls="--", lw=1, label=r["defence"])
        ax.set_xlabel("cost (x retraining from scratch)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("forgetting the heads: cost against what the audit still finds, and sample quality")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


# ----------------------------------------------------------------------------- the docs' figures
FIGURE_MAX_BYTES = 300_000
STUDY, QUICK, IDENTITY, UNLEARNING = (Layout(Path(f"outputs/{name}")) for name in (
    "reproduce", "reproduce-quick", "reproduce-identity", "reproduce-unlearning"))
QUICKSTART = {"quickstart-non-private.png": Path("outputs/dcgan-digits-32px-1ch"),  # the README's quickstart runs
              "quickstart-dp-eps8.png": Path("outputs/dcgan-dp-digits-32px-1ch")}


def figure_sources() -> dict:
    """{figure: the file it is drawn from}: the last sample grid of each quickstart run, the studies' plots (their
    folders' Layout) and the frontier's over-training plot (of the run frontier.json names)."""
    out = {name: max(run.glob("grids/epoch_*.png"), key=lambda g: int(g.stem[6:]), default=run / "grids" / "(none)")
           for name, run in QUICKSTART.items()}
    out.update({"quick-memorization-vs-n.png": QUICK.file("memorization_vs_n.png"),
                "quick-samples.png": QUICK.file("samples.png")})
    out.update({f"study-{f.replace('_', '-')}": STUDY.file(f) for f in (
        "memorization_vs_n.png", "samples.png", "nn_galleries.png", "copy_galleries.png", "roc.png", "one_run.png",
        "fid_vs_epsilon.png", "exposure.png", "frontier.png", "frontier_samples.png", "dp_cost.png",
        "dp_cost_samples.png")})
    frontier = STUDY.file("frontier.json")
    stops = [r["run"] for r in read_json(frontier)["rows"] if r["defence"] == "early stopping"] \
        if frontier.is_file() else []
    out["study-over-training.png"] = (STUDY.over_training(stops[0]) if stops else STUDY.file("(frontier)")) \
        / "over_training.png"
    out["identity-samples.png"] = IDENTITY.file("identity_samples.png")
    out["unlearning.png"] = UNLEARNING.file("unlearning.png")
    return out


def small_png(src: Path, dst: Path, max_width: int = 1400, max_bytes: int = FIGURE_MAX_BYTES) -> int:
    """Copy a PNG as a small PNG (at most max_width pixels wide, under max_bytes: fewer colours if needed)."""
    from PIL import Image

    img = Image.open(src)
    img.load()
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    for colours in (None, 256, 64, 16):
        out = img.convert("RGB") if colours is None and img.mode not in ("L", "RGB") else img
        if colours is not None:
            out = img.convert("RGB").quantize(colours)
        out.save(dst, optimize=True)
        if dst.stat().st_size <= max_bytes:
            return dst.stat().st_size
    raise ValueError(f"{src} does not fit in {max_bytes} bytes as a PNG")


def headline(study: Layout, dst: Path) -> int:
    """The README's headline figure: samples of the smallest N's non-private and DP models beside the strongest
    white-box attack's TPR at 1% FPR and the one-run ε lower bound against N, from a finished study's
    results.json."""
    from data import load_npz
    from torchvision.utils import make_grid

    res = read_json(study.file("results.json"))
    rows = [r for r in res["rows"] if r.get("seed", 0) == res["settings"]["seed"]]
    n0 = min(r["size"] for r in rows)
    pyplot = plt()
    fig = pyplot.figure(figsize=(12, 4.4))
    grid = fig.add_gridspec(1, 5, width_ratios=[1, 1, 1, 1.25, 1.25], wspace=0.25)
    shown = [(("non-private", False, None), "non-private"), (("dp", False, 8), "DP ε = 8, from scratch"),
             (("dp", True, 8), "DP ε = 8, public warm start")]
    for i, (which, title) in enumerate(shown):
        ax = fig.add_subplot(grid[0, i])
        ax.set_axis_off()
        found = [r["model"] for r in rows
                 if r["size"] == n0 and (r["kind"], r["warm"], r.get("target_epsilon")) == which]
        if found and (study.run(found[0]) / "samples.npz").is_file():
            g = make_grid(load_npz(study.run(found[0]) / "samples.npz")[:36].float() / 255, nrow=6, padding=1,
                          pad_value=1.0)
            ax.imshow(g.permute(1, 2, 0).numpy().squeeze(), cmap="gray")
        ax.set_title(f"{title}\nN = {n0} training images", fontsize=9)
    sizes = sorted({r["size"] for r in rows})
    groups = {}
    for r in rows:
        groups.setdefault(_eps_label(r), []).append(r)
    for j, (key, label) in enumerate((("mia_tpr_1pct_white", "TPR at 1% FPR, strongest white-box attack"),
                                      ("epsilon_lb_one_run", "one-run ε lower bound (95%)"))):
        ax = fig.add_subplot(grid[0, 3 + j])
        floor = 1e-3 if key == "mia_tpr_1pct_white" else 0  # a TPR of 0 on the log axis
        for k, (lab, rs) in enumerate(groups.items()):
            rs = sorted(rs, key=lambda r: r["size"])
            ax.plot([r["size"] for r in rs], [max(r.get(key) or 0, floor) for r in rs], "o-", color=f"C{k}",
                    label=lab, ms=4)
        if key == "mia_tpr_1pct_white":
            ax.axhline(0.01, color="k", ls=":", lw=1, label="chance")
            ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training images N")
        ax.set_title(label, fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.3)
    fig.savefig(dst, dpi=90)
    pyplot.close(fig)
    return small_png(dst, dst)


def figures(dst: Path) -> dict:
    """Write the docs' figures (figure_sources() and the headline) from the finished runs under outputs/; a missing
    source is reported, not an error, so the command refreshes what exists."""
    written, missing = {}, []
    for name, src in figure_sources().items():
        if src.is_file():
            written[name] = small_png(src, dst / name)
        else:
            missing.append(str(src))
    if STUDY.file("results.json").is_file():
        written["headline.png"] = headline(STUDY, dst / "headline.png")
    else:
        missing.append(str(STUDY.file("results.json")))
    for name, size in written.items():
        print(f"wrote {dst / name} ({size / 1000:.0f} kB)")
    for src in missing:
        print(f"not found (run its command first): {src}")
    return {"written": written, "missing": missing}

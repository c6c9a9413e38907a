"""The study's report: the results table, its plots and the figures of the docs.

  results.md, results.json       every number, setting, version and wall time (written by reproduce.py)
  memorization_vs_n.png          white-box AUC, memorization distance d and FID against N, every model
  samples.png                    samples of every model (the same latent noise)
  nn_galleries.png, copy_galleries.png   nearest training images of the most "memorised" samples at the smallest N
  memorization_hist.png, fid_vs_epsilon.png, roc.png, one_run.png, exposure.png
"""
from __future__ import annotations

import math
import os
import shlex
import time
from pathlib import Path

import torch

from utils import plt

SEED_ROWS = [{"model": "seed project, non-private (reported)", "epsilon": None, "fid_train": 1.58, "mifid": 2460.0},
             {"model": "seed project, DP (reported)", "epsilon": "?", "fid_train": 4.80, "mifid": 535.0}]
SEED_NOTE = """\
The seed project's numbers are not comparable with ours and are not reproducible as FID/MiFID:
they were computed on 64-d features (an early Inception block, not the standard 2048-d pool3), with
generator outputs in [-1, 1] fed to a network expecting [0, 1] (halving contrast and shifting the mean),
on only 1,000 samples (FID is biased upward at small N, and the 64-d covariance is a different quantity),
and with MiFID's memorization term in the reversed direction (for each real image its nearest generated
image, as torchmetrics does, instead of the Kaggle definition: for each generated image its nearest
training image). A FID of 1.58 between a DCGAN and CelebA is an artefact of those features, not a
near-perfect model. Our rows use the standard features, the Kaggle direction and report N."""



# ----------------------------------------------------------------------------- table
def row(name, n, train_res, ev, au) -> dict:
    r = {"model": name, "size": n, "epsilon": train_res.get("epsilon"),
         "target_epsilon": train_res.get("target_epsilon"),
         "delta": train_res.get("delta"), "sigma": train_res.get("noise_multiplier"),
         "epochs": train_res["epochs"], "steps": train_res["steps"], "g_steps": train_res.get("g_steps"),
         "n_train": train_res["n_train"], "wall_s": {"train": train_res.get("wall_s"), "eval": ev.get("wall_s"),
                                                      "audit": au.get("wall_s") if au else None}}
    r.update(eval_columns(ev))
    if au:
        att, copies = au["attacks"], au.get("copies") or {}
        wb, bb = att["white_box"], att.get("black_box_calibrated", att["black_box"])
        exposures = [e["max"] for a in att.values() for e in a.get("exposure", {}).values()]
        one_run = {k: a["one_run"] for k, a in att.items() if a.get("one_run")}
        r.update({"mia_auc_white": wb["auc"], "mia_tpr_1pct_white": wb["tpr_at_fpr"]["0.01"],
                  "mia_auc_black": bb["auc"], "mia_tpr_1pct_black": bb["tpr_at_fpr"]["0.01"],
                  "mia_auc_black_raw": att["black_box"]["auc"],
                  "copying_rate": copies.get("copying_rate"), "copying_p": copies.get("p_value"),
                  "max_exposure": max(exposures) if exposures else None,
                  "epsilon_lb_heuristic": max(a["epsilon_lower_bound"]["epsilon_lb"] for a in att.values()),
                  "epsilon_lb_one_run": au.get("one_run_epsilon_lb"),  # max over attacks, valid at alpha
                  "one_run": {k: {f: o[f] for f in ("epsilon_lb", "r", "v", "m", "delta", "alpha")}
                              for k, o in one_run.items()}})
    return r


def eval_columns(ev) -> dict:
    return {"fid_train": ev["fid_train"], "fid_heldout": ev["fid_heldout"], "fid_gap": ev["fid_gap"],
            "mifid": ev["mifid"], "memorization_d": ev["memorization_d"], "frac_below_eps": ev["fraction_below_eps"],
            "kid": ev["kid_mean"], "precision": ev["precision"], "recall": ev["recall"], "n_gen": ev["n_gen"]}


COLUMNS = [("N", "size", "d"), ("model", "model", None), ("train images", "n_train", "d"), ("ε", "epsilon", ".2f"),
           ("σ", "sigma", ".2f"),
           ("epochs", "epochs", "d"), ("D / G steps", "steps", "dg"), ("FID train", "fid_train", ".1f"),
           ("FID held-out", "fid_heldout", ".1f"), ("MiFID", "mifid", ".1f"), ("d", "memorization_d", ".3f"),
           ("d < 0.1", "frac_below_eps", ".1%"), ("precision", "precision", ".2f"), ("recall", "recall", ".2f"),
           ("AUC white-box", "mia_auc_white", ".3f"), ("TPR@1%FPR white-box", "mia_tpr_1pct_white", ".3f"),
           ("AUC black-box", "mia_auc_black", ".3f"), ("copying rate, pixel (p)", "copying_rate", "copy"),
           ("max exposure (bits)", "max_exposure", ".1f"),
           ("ε_lb one-run", "epsilon_lb_one_run", ".2f"), ("ε_lb heuristic", "epsilon_lb_heuristic", ".2f")]


def _cell(r, key, fmt):
    v = r.get(key)
    if key == "epsilon" and v is None and not r["model"].startswith(("seed", "real data")):
        return "∞"
    if v is None:
        return "n/a" if r["model"].startswith("real data") else "—"
    if isinstance(v, str) or fmt is None:
        return str(v)
    if fmt == "dg":
        return f"{v} / {r.get('g_steps', v)}"
    if fmt == "copy":
        return f"{v:.1%} ({r['copying_p']:.3f})"
    return format(v, fmt)


def markdown_table(rows, columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(c for c, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r, k, f) for _, k, f in columns) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
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
    warm = ", public warm start" if r["model"].endswith("-warm") else ""
    return ("non-private (ε = ∞)" if r["epsilon"] is None else f"DP, ε = {r['target_epsilon']:g}") + warm


def plot_memorization_vs_n(rows, refs, path, extra_seed_rows=()):
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(15, 4.2))
    groups = {}
    for r in rows:
        groups.setdefault(_eps_label(r), []).append(r)
    for i, (label, rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: r["size"])
        others = [r for r in extra_seed_rows if _eps_label(r) == label]
        for ax, key in zip(axes, ("mia_auc_white", "memorization_d", "fid_train")):
            ax.plot([r["size"] for r in rs], [r.get(key) for r in rs], "o-", color=f"C{i}", label=label)
            if others:
                ax.plot([r["size"] for r in others], [r.get(key) for r in others], "x", color=f"C{i}", ms=8,
                        label=f"{label}, other seeds")
    ref = sorted(refs, key=lambda r: r["size"])
    for ax, key in zip(axes[1:], ("memorization_d", "fid_train")):
        ax.plot([r["size"] for r in ref], [r[key] for r in ref], "s--", color="k", label="held-out real images")
    axes[0].axhline(0.5, color="k", ls=":", lw=1, label="chance")
    for ax, title in zip(axes, ("white-box membership AUC (higher: more memorization)",
                                "memorization distance d (lower: closer to training images)",
                                "FID vs the training set (lower: better)")):
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
            same = [r for r in rows if r["size"] == n and r["model"].endswith("-warm") == warm]
            dp = sorted([r for r in same if r["epsilon"] is not None], key=lambda r: r["epsilon"])
            if dp:
                ax.plot([r["epsilon"] for r in dp], [r["fid_train"] for r in dp], style, color=f"C{i}",
                        label=f"DP, N = {n}" + (", public warm start" if warm else ""))
        npv = next((r for r in rows if r["size"] == n and r["model"].endswith("-non-private")), None)
        if npv is not None:
            ax.axhline(npv["fid_train"], color=f"C{i}", ls="--", lw=1, label=f"non-private, N = {n}")
    ax.set_xscale("log")
    eps = sorted({r["target_epsilon"] for r in rows if r["epsilon"] is not None})  # the spent ε lie within 1%
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


def hardware(device) -> str:
    from utils import cpu_model

    cpu = f"{os.cpu_count()} CPU cores ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()})"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {cpu}"
    return f"{device.type}, {cpu}"


def render_markdown(res: dict, table, args) -> str:
    s = res["settings"]
    cmd = " ".join(["python reproduce.py"] + [shlex.quote(a) for a in getattr(args, "argv", [])])
    md = [f"# Results ({'quick preset' if args.quick else 'full study'})", "",
          f"Command: `{cmd}` (see results.json for every setting). Data: {res['data']}. "
          f"Hardware: {res['hardware']}. Compute: {res['compute_s'] / 60:.1f} min for all stages.", "",
          "## Headline", "", headline_table(table, s["seed"]), "",
          "The table the README shows: every model of the main seed and the real-data reference at each N. "
          "White-box AUC: D's logit as the membership score; TPR at 1% FPR; ε_lb: the one-run lower bound (95%); "
          "copy test: the share of samples nearer a training image than every held-out one in pixel space (50% "
          "without copying) and its permutation p-value. The full table follows.", "",
          "## Every row", "", markdown_table(table), "",
          f"Every model: 32px grayscale, the default recipe of its script, D sees {s['budget']:,} real images "
          f"(epochs = budget / N); training subsets of N = {s['train_sizes']} drawn by coins from 2N candidates "
          f"(every candidate is a trial of the one-run ε bound); {s['canaries']} canaries for each repeat count "
          f"{s['canary_repeats']}. FID/MiFID/precision/recall on Inception-v3 pool3 features of "
          f"{res['rows'][0]['n_gen']} generated images against the run's own training set; MiFID ε_mem = 0.1, "
          "Kaggle direction. Real-data rows: held-out (val) images scored like samples. ε is the spent budget "
          "(PRV accountant); ε_lb one-run: Steinke et al. (2023), 95% confidence; the black-box AUC is the "
          "calibrated attack; copying rate: samples nearer a member than every non-member in pixel space (50% without "
          "copying), with its permutation p-value."
          + (" `-warm` rows start from the public pretraining (the DP fine-tune at lr "
             f"{s['warm_lr']}); 'public pretraining only' scores that start against N's training set, which it never "
             "saw (ε = 0 with respect to it)." if res["pretraining_rows"] else ""), "",
          "## The seed project's numbers", "", markdown_table(SEED_ROWS, [c for c in COLUMNS if c[1] in
                                                                          ("model", "fid_train", "mifid")]), "",
          SEED_NOTE, "",
          "## Plots", "",
          "- memorization vs N: ![](memorization_vs_n.png)",
          "- privacy–utility: ![](fid_vs_epsilon.png)",
          "- samples side by side: ![](samples.png)",
          "- nearest-neighbour galleries at the smallest N: ![](nn_galleries.png) (Inception space), "
          "![](copy_galleries.png) (pixel space)",
          "- memorization distances at the smallest N: ![](memorization_hist.png)",
          "- membership inference ROC at the smallest N: ![](roc.png)",
          "- one-run ε lower bound: ![](one_run.png)",
          "- canary exposure: ![](exposure.png)", ""]
    return "\n".join(md)


HEADLINE_COLUMNS = [("N", "size", "d"), ("model", "model", None), ("ε", "epsilon", ".2f"), ("FID", "fid_train", ".1f"),
                    ("precision", "precision", ".2f"), ("white-box AUC", "mia_auc_white", ".3f"),
                    ("TPR@1%FPR", "mia_tpr_1pct_white", ".3f"), ("ε_lb one run", "epsilon_lb_one_run", ".2f"),
                    ("copy test (p)", "copying_rate", "copy")]


def headline_table(table, seed: int) -> str:
    """The compact table (the README's): the main seed's models and each N's real-data reference."""
    keep = [r for r in table if r.get("seed", seed) == seed and not r["model"].startswith("public pretraining")]
    return markdown_table(keep, HEADLINE_COLUMNS)


# ----------------------------------------------------------------------------- the study's report

def study_report(s: dict, out: Path, models: list, public, args, t0: float, times: dict) -> dict:
    """Rows, plots, results.json and results.md of a finished study. ``models``: [(N, name, seed)]; the artefacts
    are read from each run folder (results.json, eval/, audit/), the references from OUT/reference/."""
    import numpy as np

    from audit import plot_one_run, plot_roc
    from data import load_npz
    from metrics import distance_histogram
    from utils import pick_device, read_json, versions, write_json

    smallest = min(s["size_list"])  # the size of the galleries, ROC and histogram
    rows, refs, pre, audits, scores, samples, galleries, copy_galleries, dists = [], [], [], {}, {}, {}, {}, {}, {}
    for n, name, seed in models:
        run = out / "runs" / name
        train_res, ev = read_json(run / "results.json"), read_json(run / "eval" / "eval.json")
        au = read_json(run / "audit" / "audit.json")
        rows.append({**row(name, n, train_res, ev, au), "seed": seed})
        if seed != s["seed"]:
            continue  # --extra-seeds: table rows only; the plots and galleries show the main seed
        audits[name] = au
        with np.load(run / "audit" / "scores.npz") as z:
            scores[name] = {k: z[k] for k in z.files}
        samples[name] = load_npz(run / "samples.npz")
        galleries[name] = run / "eval" / "nn_gallery.png"
        copy_galleries[name] = run / "audit" / "copies.png"
        dists[name] = np.load(run / "eval" / "nearest_distances.npy")
        if name.endswith("non-private"):
            ref_dir = out / "reference" / f"n{n}" / "eval"
            ref = read_json(ref_dir / "eval.json")
            refs.append({"model": f"real data (held-out, N = {n})", "size": n, "epsilon": None,
                         "wall_s": {"eval": ref.get("wall_s")}, **eval_columns(ref)})
            galleries[f"n{n}-real data (held-out)"] = ref_dir / "nn_gallery.png"
            dists[f"n{n}-real data"] = np.load(ref_dir / "nearest_distances.npy")
            if public is not None:  # the baseline of the warm pair, scored against this N's training set
                pre_dir = out / "reference" / f"n{n}" / "public-pretraining"
                ev = read_json(pre_dir / "eval.json")
                pre.append({"model": "public pretraining only (no private data)", "size": n, "epsilon": 0.0,
                            "wall_s": {"eval": ev.get("wall_s")}, **eval_columns(ev)})
                samples["public pretraining only"] = load_npz(public / "samples.npz")
                galleries[f"n{n}-public pretraining only"] = pre_dir / "nn_gallery.png"
                dists[f"n{n}-public pretraining"] = np.load(pre_dir / "nearest_distances.npy")

    at_small = lambda d: {k: v for k, v in d.items() if k.startswith(f"n{smallest}-")}  # noqa: E731
    main = [r for r in rows if r["seed"] == s["seed"]]
    plot_memorization_vs_n(main, refs, out / "memorization_vs_n.png", [r for r in rows if r["seed"] != s["seed"]])
    plot_fid_vs_epsilon(main, out / "fid_vs_epsilon.png")
    distance_histogram(at_small(dists), out / "memorization_hist.png",
                       title=f"memorization distance at N = {smallest}: models vs held-out real images")
    by_size = {n: [name for m, name, _ in models if m == n and name in samples]
               + (["public pretraining only"] if pre and n == smallest else []) for n in s["size_list"]}
    ncols = max(map(len, by_size.values()))
    panels = {}  # one row per size, padded with blank panels
    for n, names in by_size.items():
        panels.update({name: samples[name] for name in names})
        panels.update({f"blank {n}-{i}": None for i in range(ncols - len(names))})
    plot_image_panels(panels, out / "samples.png", "samples (the same latent noise for every model)", ncols=ncols)
    plot_galleries({k: v for k, v in at_small(galleries).items() if v.is_file()}, out / "nn_galleries.png")
    plot_galleries({k: v for k, v in at_small(copy_galleries).items() if v.is_file()}, out / "copy_galleries.png")
    plot_roc(at_small(scores), out / "roc.png")
    plot_one_run(audits, out / "one_run.png")
    plot_exposure(audits, out / "exposure.png")

    pretrain_s = read_json(public / "results.json").get("wall_s") or 0 if public is not None else 0
    overlap = public_overlap(public, [out / "runs" / name for _, name, _ in models]) if public is not None else None
    breakdown = stage_breakdown(rows, refs, pre, pretrain_s, out)
    table = [r for n in s["size_list"] for r in refs + pre + rows if r["size"] == n]
    first_eval = read_json(out / "runs" / models[0][1] / "eval" / "eval.json")
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "rows": rows, "reference_rows": refs,
              "pretraining_rows": pre, "public_pretraining": overlap, "seed_rows": SEED_ROWS,
              "hardware": hardware(pick_device(s["device"])),
              "versions": versions(), "compute_s": breakdown["total_s"], "stage_times": breakdown,
              "this_invocation_s": round(time.time() - t0, 1),
              "this_invocation_stages_s": {k: round(v, 1) for k, v in times.items() if v is not None},
              "data": first_eval["real"], "inception": first_eval["inception"]}
    write_json(out / "results.json", result)
    (out / "results.md").write_text(render_markdown(result, table, args))
    print(markdown_table(table))
    print(f"wrote {out / 'results.md'}, results.json and plots (stages' compute {breakdown['total_s'] / 60:.1f} min, "
          f"this invocation {result['this_invocation_s'] / 60:.1f} min of wall time)")
    return result


def public_overlap(public: Path, private_runs) -> dict:
    """What the public pretraining trained on, and what it shares with the images the private runs could train on
    (their training sets, every coin candidate and canary): file names, and people where both sides have identity
    labels (CelebA: identity_CelebA.txt)."""
    from data import read_identities
    from runs import run_training_data

    pub = run_training_data(public)
    pub_names = {Path(pub.imgs.names[i]).name for i in torch.unique(pub.index).tolist()}
    private, id_files = set(), set()
    for run in private_runs:
        td = run_training_data(run)
        private |= {Path(td.imgs.names[i]).name for i in torch.cat([td.index, td.special()]).tolist()}
        id_files.add(td.imgs.identity_file)
    out = {"run": str(public), "images": len(pub_names),
           "exclusion": {k: pub.imgs.dedup.get(k) for k in ("exclude_from", "excluded", "excluded_by_identity")
                         if k in pub.imgs.dedup} or None,
           "private_candidate_images": len(private), "file_names_shared": len(pub_names & private)}
    if pub.imgs.identity_file and len(id_files) == 1 and None not in id_files:
        here, there = read_identities(pub.imgs.identity_file), read_identities(id_files.pop())
        people = {there[n] for n in private if n in there}
        out["private_candidate_identities"] = len(people)
        out["identities_shared"] = len({here[n] for n in pub_names if n in here} & people)
    else:
        out["identities_shared"] = None  # not checkable: a side has no identity labels
    return out


def stage_breakdown(rows, refs, pre, pretrain_s: float, out: Path) -> dict:
    """Compute by stage kind (seconds of each stage's own wall time, summed), and the images pushed through
    Inception-v3 (generated and real, counted where they were computed, not where a cache served them)."""
    from utils import read_json

    kinds = {"public pretraining": pretrain_s, "training": 0.0, "evaluation": 0.0, "audit": 0.0,
             "real-data references": 0.0, "pretraining evaluations": 0.0}
    for r in rows:
        kinds["training"] += r["wall_s"]["train"] or 0
        kinds["evaluation"] += r["wall_s"]["eval"] or 0
        kinds["audit"] += r["wall_s"]["audit"] or 0
    kinds["real-data references"] = sum(r["wall_s"]["eval"] or 0 for r in refs)
    kinds["pretraining evaluations"] = sum(r["wall_s"]["eval"] or 0 for r in pre)
    inception = {"images": 0, "seconds": 0.0}
    for ev_path in list(out.glob("runs/*/eval/eval.json")) + list(out.glob("reference/*/eval/eval.json")) \
            + list(out.glob("reference/*/public-pretraining/eval.json")):
        f = read_json(ev_path).get("features") or {}
        inception["images"] += f.get("images_computed", 0)
        inception["seconds"] += f.get("seconds", 0.0)
    kinds = {k: round(v, 1) for k, v in kinds.items()}
    return {"by_kind_s": kinds, "total_s": round(sum(kinds.values()), 1), "inception": inception}


# ----------------------------------------------------------------------------- the levers study's report
def command(script, argv) -> str:
    """A training run's command line as the docs print it (without the flags that do not change the result)."""
    drop = {"--device", "--threads", "--cache-dir", "--num-samples"}
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        elif a != "--no-progress":
            keep.append(shlex.quote(a))
    return f"python {script}.py " + " ".join(keep)


def _recorded_argv(run: Path) -> list:
    """A finished run's main arguments as a command line (for a run the levers study did not train itself)."""
    from utils import read_json

    a = read_json(run / "config.json")["args"]
    out = []
    for k in ("data", "data_root", "exclude_from", "ngf", "ndf", "epochs", "batch_size", "lr"):
        if a.get(k) is not None:
            out += [f"--{k.replace('_', '-')}", str(a[k])]
    return out


LEVER_COLUMNS = [("run", "model", None), ("ε", "epsilon", ".2f"), ("σ", "sigma", ".2f"), ("batch", "batch", "d"),
                 ("lr", "lr", "g"), ("G lr / lr", "g_lr_scale", "g"), ("β1", "beta1", "g"), ("EMA", "ema", "g"),
                 ("D / G steps", "steps", "dg"), ("K at end", "k_final", "d"), ("FID train", "fid_train", ".1f"),
                 ("precision", "precision", ".2f"), ("recall", "recall", ".2f"), ("train min", "train_min", ".1f")]


def levers_report(s: dict, out: Path, models: list, t0: float) -> dict:
    """levers.md, levers.json and samples.png of the levers study; ``models``: [(name, script or None, argv, run
    folder, train_of)] (script None: a run trained elsewhere, e.g. the public pretraining)."""
    from data import load_npz
    from utils import pick_device, read_json, versions, write_json

    rows, samples = [], {}
    for name, script, argv, run, train_of in models:
        res, ev = read_json(run / "results.json"), read_json((run / "eval") / "eval.json")
        cfg = read_json(run / "config.json")["args"]
        rows.append({"model": name, "epsilon": res.get("epsilon"), "target_epsilon": res.get("target_epsilon"),
                     "sigma": res.get("noise_multiplier"), "steps": res["steps"], "g_steps": res.get("g_steps"),
                     "k_final": res.get("k_final"), "batch": cfg["batch_size"], "lr": cfg["lr"],
                     "g_lr_scale": cfg.get("g_lr_scale", 1.0), "beta1": cfg["beta1"], "ema": cfg["ema_decay"],
                     "train_min": res["wall_s"] / 60,
                     "command": command(script, argv) if script else command("train_dcgan", _recorded_argv(run)),
                     **eval_columns(ev)})
        label = name if res.get("epsilon") is None else f"{name}, ε = {res['target_epsilon']:g}"
        samples[label] = load_npz(run / "samples.npz")
    plot_image_panels(samples, out / "samples.png", "samples of every levers run", ncols=5)
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "rows": rows,
              "hardware": hardware(pick_device(s["device"])), "versions": versions(),
              "this_invocation_s": round(time.time() - t0, 1)}
    write_json(out / "levers.json", result)
    md = "\n".join([markdown_table(rows, LEVER_COLUMNS), "", "Commands:", ""] +
                   [f"- {r['model']}: `{r['command']}`" for r in rows])
    (out / "levers.md").write_text(md + "\n")
    print(markdown_table(rows, LEVER_COLUMNS))
    print(f"wrote {out / 'levers.md'}, levers.json, samples.png ({(time.time() - t0) / 60:.1f} min this invocation)")
    return result


# ----------------------------------------------------------------------------- the frontier of defences
FRONTIER_COLUMNS = [("defence", "defence", None), ("setting", "setting", None), ("guarantee", "guarantee", None),
                    ("FID train", "fid_train", ".1f"), ("precision", "precision", ".2f"), ("recall", "recall", ".2f"),
                    ("AUC white-box", "mia_auc_white", ".3f"), ("AUC black-box", "mia_auc_black", ".3f"),
                    ("ε_lb one-run", "epsilon_lb_one_run", ".2f"), ("copying rate, pixel (p)", "copying_rate", "copy"),
                    ("MR rejected", "mr_rejected", ".1%"), ("train min", "train_min", ".1f")]
FRONTIER_AXES = (("mia_auc_white", "white-box membership AUC"), ("epsilon_lb_one_run", "one-run ε lower bound"),
                 ("copying_rate", "pixel copying rate"))


def frontier_report(s: dict, out: Path, entries: list, n: int, t0: float) -> dict:
    """frontier.md, frontier.json, frontier.png and frontier_samples.png: one row per model (and per checkpoint of
    the snapshot run), read from its run folder; ``entries``: [(defence, setting, run name, script, argv)]."""
    from utils import pick_device, read_json, versions, write_json

    rows = []
    for defence, setting, name, script, argv in entries:
        run = out / "runs" / name
        res = read_json(run / "results.json")
        base = {"defence": defence, "setting": setting, "run": name, "command": command(script, argv),
                "guarantee": f"(ε = {res['epsilon']:.2f}, δ = {res['delta']:g})-DP per image"
                if res.get("epsilon") is not None else "none", "train_min": res["wall_s"] / 60,
                "mr_rejected": (res.get("memorization_rejection") or {}).get("rejected_mean")}
        if defence != "early stopping":
            rows.append({**row(name, n, res, read_json(run / "eval" / "eval.json"),
                               read_json(run / "audit" / "audit.json")), **base})
            continue
        over = read_json(run / "audit-over-training" / "over_training.json")
        for p in over["points"]:
            rows.append({**base, "model": name, "setting": f"D step {p['step']} of {res['steps']}", "step": p["step"],
                         "checkpoint": p["checkpoint"],
                         "fid_train": p.get("fid_train"), "precision": p.get("precision"), "recall": p.get("recall"),
                         "mia_auc_white": p["auc_white"],
                         "mia_auc_black": p["auc_black"] if p.get("auc_black_calibrated") is None
                         else p["auc_black_calibrated"],
                         "epsilon_lb_one_run": p["epsilon_lb_one_run"], "copying_rate": p["copying_rate"],
                         "copying_p": p["copying_p"],
                         "early_stop": bool(over["early_stopping"]) and p["step"] == over["early_stopping"]["step"]})
            if rows[-1]["early_stop"]:
                rows[-1]["setting"] += " (early stop)"
    ref = read_json(out / "reference" / f"n{n}" / "eval" / "eval.json")
    plot_frontier(rows, ref, n, out / "frontier.png")
    plot_image_panels(frontier_samples(rows, out), out / "frontier_samples.png",
                      f"samples of every defence at N = {n} (the same latent noise)", ncols=5)
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "size": n, "rows": rows,
              "reference": {"model": f"real data (held-out, N = {n})", **eval_columns(ref)},
              "hardware": hardware(pick_device(s["device"])), "versions": versions(),
              "this_invocation_s": round(time.time() - t0, 1)}
    write_json(out / "frontier.json", result)
    md = [f"Defences at N = {n}: utility against memorization ({s['num_samples']} samples per model; the real "
          f"held-out images score FID {ref['fid_train']:.1f}, precision {ref['precision']:.2f}).", "",
          markdown_table(rows, FRONTIER_COLUMNS), "", "Commands:", ""]
    md += [f"- {d} ({r}): `{c}`" for d, r, c in dict.fromkeys((r["defence"], r["run"], r["command"]) for r in rows)]
    (out / "frontier.md").write_text("\n".join(md) + "\n")
    print(markdown_table(rows, FRONTIER_COLUMNS))
    print(f"wrote {out / 'frontier.md'}, frontier.json, frontier.png, frontier_samples.png "
          f"({(time.time() - t0) / 60:.1f} min this invocation)")
    return result


IDENTITY_COLUMNS = [("model", "model", None), ("DP unit", "dp_unit", None), ("ε", "epsilon", ".2f"),
                    ("ε for a person (bound)", "person_bound", None), ("people / photos trained", "trained", None),
                    ("image AUC white-box", "image_auc_white", ".3f"),
                    ("image AUC white-box calibrated", "image_auc_white_cal", ".3f"),
                    ("identity AUC white-box", "id_auc_white", ".3f"),
                    ("identity AUC white-box calibrated", "id_auc_white_cal", ".3f"),
                    ("identity AUC black-box calibrated", "id_auc_black_cal", ".3f"),
                    ("identity TPR@1%FPR (best attack)", "id_tpr_1pct", ".3f"),
                    ("identity AUC, control (reference model)", "id_auc_control", ".3f"),
                    ("identity ε_lb one-run", "id_epsilon_lb", ".2f"),
                    ("copying rate, pixel (p)", "copying_rate", "copy"),
                    ("train min", "train_min", ".1f")]


def identity_row(name: str, run: Path) -> dict:
    """One model of the identity study: its guarantee per image and per person and both levels' audits."""
    from utils import read_json

    res, cfg, au = (read_json(run / f) for f in ("results.json", "config.json", "audit/audit.json"))
    eps, unit = res.get("epsilon"), res.get("privacy_unit")
    photos = cfg["identities"]["images_per_identity"]["max"]  # a trained person's photos (at most)
    att, idn = au["attacks"], au["identity"]["attacks"]
    get = lambda a, k: (a.get(k) or {}).get("auc")  # noqa: E731
    best = max(idn.values(), key=lambda a: a["auc"])
    bound = "none" if eps is None else f"{eps:.2f} (person-level DP)" if unit == "identity" else \
        f"{photos} x {eps:.2f} = {photos * eps:.0f} (group privacy, {photos} photos)"
    return {"model": name, "dp_unit": unit or "—", "epsilon": eps, "delta": res.get("delta"),
            "person_bound": bound, "photos_per_person_max": photos,
            "trained": f"{cfg['identities']['identities']} / {cfg['n_train']}",
            "image_auc_white": get(att, "white_box"), "image_auc_white_cal": get(att, "white_box_calibrated"),
            "image_auc_black_cal": get(att, "black_box_calibrated"),
            "id_auc_white": get(idn, "white_box"), "id_auc_white_cal": get(idn, "white_box_calibrated"),
            "id_auc_black_cal": get(idn, "black_box_calibrated"), "id_tpr_1pct": best["tpr_at_fpr"]["0.01"],
            "id_epsilon_lb": au["identity"]["one_run_epsilon_lb"], "id_people": au["identity"]["people"],
            "id_auc_control": au["identity"].get("control_reference_model_auc"),
            "copying_rate": au["copies"]["copying_rate"], "copying_p": au["copies"]["p_value"],
            "train_min": res["wall_s"] / 60, "identity_audit": au["identity"]}


def identity_report(s: dict, out: Path, entries: list, reference, t0: float) -> dict:
    """identity.md and identity.json: each model's guarantee for a person and its image- and identity-level
    audits; ``entries``: [(model, script, argv)]."""
    from data import load_npz
    from utils import pick_device, versions, write_json

    rows = [identity_row(name, out / "runs" / name) for name, _, _ in entries]
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "rows": rows,
              "commands": {name: command(script, argv) for name, script, argv in entries},
              "reference_run": None if reference is None else command("train_dcgan", reference),
              "hardware": hardware(pick_device(s["device"])), "versions": versions(),
              "this_invocation_s": round(time.time() - t0, 1)}
    write_json(out / "identity.json", result)
    unit = {"image": "image", "identity": "person"}
    plot_image_panels({r["model"] + (f" (ε = {r['epsilon']:.2f} per {unit[r['dp_unit']]})" if r["epsilon"] else ""):
                       load_npz(out / "runs" / r["model"] / "samples.npz")[:64] for r in rows},
                      out / "identity_samples.png", "samples of every model of the identity study (the same noise)",
                      ncols=len(rows))
    m = rows[0]["id_people"]
    md = [f"The person as the privacy unit: {m} candidate people (one coin each), identity-level attacks over their "
          "held-back photos; image-level attacks over training photos against held-out photos of other people.", "",
          markdown_table(rows, IDENTITY_COLUMNS), "", "Commands:", ""]
    md += [f"- {name}: `{c}`" for name, c in result["commands"].items()]
    if reference is not None:
        md.append(f"- reference model of the calibrated white-box attack: `{result['reference_run']}`")
    (out / "identity.md").write_text("\n".join(md) + "\n")
    print(markdown_table(rows, IDENTITY_COLUMNS))
    print(f"wrote {out / 'identity.md'}, identity.json, identity_samples.png ({(time.time() - t0) / 60:.1f} min this "
          "invocation)")
    return result


def frontier_samples(rows, out: Path) -> dict:
    """The first 64 samples of each model (samples.npz: the same latent noise for all) and of the early-stopping
    checkpoint (drawn from it with that noise)."""
    from data import load_npz
    from gan import generate
    from models import load_generator

    panels = {}
    for r in rows:
        if r["defence"] != "early stopping":
            panels[f"{r['defence']}, {r['setting']}"] = load_npz(out / "runs" / r["run"] / "samples.npz")[:64]
        elif r.get("early_stop"):
            G, cfg = load_generator(r["checkpoint"])
            with torch.no_grad():
                panels[f"early stopping, D step {r['step']}"] = generate(G, 64, cfg["nz"], "cpu")
    return panels


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


# ----------------------------------------------------------------------------- the docs' figures
FIGURE_MAX_BYTES = 300_000
# (figure, source folder, file in it): written by `reproduce.py --figures DIR` from the finished runs
FIGURE_SOURCES = [
    ("quickstart-non-private.png", "outputs/dcgan-digits-32px-1ch", "grids/epoch_060.png"),
    ("quickstart-dp-eps8.png", "outputs/dcgan-dp-digits-32px-1ch", "grids/epoch_060.png"),
    ("quick-memorization-vs-n.png", "outputs/reproduce-quick", "memorization_vs_n.png"),
    ("quick-samples.png", "outputs/reproduce-quick", "samples.png"),
    ("study-memorization-vs-n.png", "outputs/reproduce", "memorization_vs_n.png"),
    ("study-samples.png", "outputs/reproduce", "samples.png"),
    ("study-nn-galleries.png", "outputs/reproduce", "nn_galleries.png"),
    ("study-copy-galleries.png", "outputs/reproduce", "copy_galleries.png"),
    ("study-roc.png", "outputs/reproduce", "roc.png"),
    ("study-one-run.png", "outputs/reproduce", "one_run.png"),
    ("study-fid-vs-epsilon.png", "outputs/reproduce", "fid_vs_epsilon.png"),
    ("study-exposure.png", "outputs/reproduce", "exposure.png"),
    ("study-frontier.png", "outputs/reproduce", "frontier.png"),
    ("study-over-training.png", "outputs/reproduce/runs/n250-non-private-snapshots/audit-over-training",
     "over_training.png"),
    ("study-frontier-samples.png", "outputs/reproduce", "frontier_samples.png"),
    ("identity-samples.png", "outputs/reproduce-identity", "identity_samples.png"),
]


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


def headline(study: Path, dst: Path) -> int:
    """The README's headline figure: samples of the smallest N's non-private and DP models beside white-box
    membership AUC and the one-run ε lower bound against N, from a finished study's results.json."""
    from data import load_npz
    from torchvision.utils import make_grid
    from utils import read_json

    res = read_json(study / "results.json")
    rows = [r for r in res["rows"] if r.get("seed", 0) == res["settings"]["seed"]]
    n0 = min(r["size"] for r in rows)
    pyplot = plt()
    fig = pyplot.figure(figsize=(12, 4.4))
    grid = fig.add_gridspec(1, 5, width_ratios=[1, 1, 1, 1.25, 1.25], wspace=0.25)
    shown = [(f"n{n0}-non-private", "non-private"), (f"n{n0}-dp-eps8", "DP ε = 8, from scratch"),
             (f"n{n0}-dp-eps8-warm", "DP ε = 8, public warm start")]
    for i, (name, title) in enumerate(shown):
        ax = fig.add_subplot(grid[0, i])
        ax.set_axis_off()
        if (study / "runs" / name / "samples.npz").is_file():
            g = make_grid(load_npz(study / "runs" / name / "samples.npz")[:36].float() / 255, nrow=6, padding=1,
                          pad_value=1.0)
            ax.imshow(g.permute(1, 2, 0).numpy().squeeze(), cmap="gray")
        ax.set_title(f"{title}\nN = {n0} training images", fontsize=9)
    sizes = sorted({r["size"] for r in rows})
    groups = {}
    for r in rows:
        groups.setdefault(_eps_label(r), []).append(r)
    for j, (key, label) in enumerate((("mia_auc_white", "white-box membership AUC"),
                                      ("epsilon_lb_one_run", "one-run ε lower bound (95%)"))):
        ax = fig.add_subplot(grid[0, 3 + j])
        for k, (lab, rs) in enumerate(groups.items()):
            rs = sorted(rs, key=lambda r: r["size"])
            ax.plot([r["size"] for r in rs], [r.get(key) for r in rs], "o-", color=f"C{k}", label=lab, ms=4)
        if key == "mia_auc_white":
            ax.axhline(0.5, color="k", ls=":", lw=1, label="chance")
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
    """Write the docs' figures (FIGURE_SOURCES and the headline) from the finished runs under outputs/; a missing
    source is reported, not an error, so the command refreshes what exists."""
    written, missing = {}, []
    for name, folder, file in FIGURE_SOURCES:
        src = Path(folder) / file
        if src.is_file():
            written[name] = small_png(src, dst / name)
        else:
            missing.append(str(src))
    if (Path("outputs/reproduce") / "results.json").is_file():
        written["headline.png"] = headline(Path("outputs/reproduce"), dst / "headline.png")
    else:
        missing.append("outputs/reproduce/results.json")
    for name, size in written.items():
        print(f"wrote {dst / name} ({size / 1000:.0f} kB)")
    for src in missing:
        print(f"not found (run its command first): {src}")
    return {"written": written, "missing": missing}

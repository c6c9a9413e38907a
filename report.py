"""The study's folder layout, its models and its reports (reproduce.py builds the stages, this module reads what
they wrote; plots.py draws the figures).

  Layout          where every stage of a study writes (one object for reproduce.py's stage builders and for the
                  reports): runs/<model>/ (eval/, audit/, audit-over-training/), reference/n<N>/, logs/, reports
  Model           one trained model of a study: name, N, kind, script and its command line as flags
  study_report    results.md, results.json (every number, setting, version, wall time) and the plots
  levers_report, frontier_report, identity_report   the other studies' tables
"""
from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from config import NEUTRAL
from utils import atomic_write_text


@dataclass(frozen=True)
class Layout:
    """Where a study (--out) keeps everything; the one place that knows the folder names."""

    out: Path

    def file(self, name: str) -> Path:
        return self.out / name

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def run(self, name: str) -> Path:
        return self.out / "runs" / name

    def folder(self, m: Model) -> Path:
        """Where Model ``m`` trains."""
        return m.folder or self.run(m.name)

    def eval(self, name: str) -> Path:
        return self.run(name) / "eval"

    def audit(self, name: str) -> Path:
        return self.run(name) / "audit"

    def over_training(self, name: str) -> Path:
        return self.run(name) / "audit-over-training"

    def reference(self, n: int) -> Path:
        """The real-data reference at N: held-out images scored like samples."""
        return self.out / "reference" / f"n{n}" / "eval"

    def pretraining_eval(self, n: int) -> Path:
        """The public pretraining scored against N's training set."""
        return self.out / "reference" / f"n{n}" / "public-pretraining"

    def public_pretraining(self, data: str, ndf: int) -> Path:
        """Digits: inside the study (its public data is what the study's coins leave). CelebA: beside the studies'
        folders, shared by reproduce.py and --levers (the same public data)."""
        return self.out / "public-pretraining" if data == "digits" else self.out.parent / f"public-pretraining-ndf{ndf}"


@dataclass
class Model:
    """One model of a study: ``kind`` "non-private" or "dp" (identity study: also "image-dp", "person-dp"),
    ``warm``: fine-tuned from the public pretraining; ``flags``: its training command line ({flag: value}, True for a
    bare flag) without --out; ``defence``/``setting``: its place on the frontier; ``extra["label"]``: its name in a
    table, if not ``name``."""

    name: str
    size: int
    kind: str
    script: str
    flags: dict
    seed: int = 0
    warm: bool = False
    epsilon: float | None = None  # the target ε of a DP model
    defence: str = ""
    setting: str = ""
    folder: Path | None = None  # where it trains, if not in the study's runs/ (the public pretraining)
    cost: float | None = None  # relative training time, for the scheduler (default: by script)
    extra: dict = field(default_factory=dict)


def argv_of(flags: dict) -> list:
    """A command line from {flag: value}: True is a bare flag, None and False leave the flag out."""
    out = []
    for k, v in flags.items():
        if v is not None and v is not False:
            out += [k] if v is True else [k, str(v)]
    return out


def command(script: str, flags: dict) -> str:
    """A training command line as the docs print it: without the result-neutral flags (config.NEUTRAL) and
    --num-samples."""
    keep = {k: v for k, v in flags.items() if k[2:].replace("-", "_") not in NEUTRAL | {"num_samples"}}
    return f"python {script}.py " + " ".join(shlex.quote(a) for a in argv_of(keep))


SEED_ROWS = [{"model": "seed project, non-private (reported)", "kind": "seed project", "epsilon": None,
              "fid_train": 1.58, "mifid": 2460.0},
             {"model": "seed project, DP (reported)", "kind": "seed project", "epsilon": "?", "fid_train": 4.80,
              "mifid": 535.0}]


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


def row(m: Model, train_res, ev, au) -> dict:
    """A model's table row: its training, evaluation and audit results."""
    r = {"model": m.name, "size": m.size, "kind": m.kind, "warm": m.warm, "seed": m.seed,
         "epsilon": train_res.get("epsilon"),
         "target_epsilon": train_res.get("target_epsilon"),
         "delta": train_res.get("delta"), "sigma": train_res.get("noise_multiplier"),
         "epochs": train_res["epochs"], "steps": train_res["steps"], "g_steps": train_res.get("g_steps"),
         "n_train": train_res["n_train"], "wall_s": {"train": train_res.get("wall_s"), "eval": ev.get("wall_s"),
                                                      "audit": au.get("wall_s") if au else None}}
    r.update(eval_columns(ev))
    if au:
        from audit import strongest

        att, copies = au["attacks"], au.get("copies") or {}
        wb, bb = strongest(att, "white_box"), strongest(att, "black_box")
        exposures = [e["max"] for a in att.values() for e in a.get("exposure", {}).values()]
        one_run = {k: a["one_run"] for k, a in att.items() if a.get("one_run")}
        r.update({"mia_white_attack": wb, "mia_auc_white": att[wb]["auc"],
                  "mia_tpr_1pct_white": att[wb]["tpr_at_fpr"]["0.01"],
                  "mia_tpr_01pct_white": att[wb]["tpr_at_fpr"]["0.001"],
                  "mia_auc_white_raw": att["white_box"]["auc"],
                  "mia_tpr_1pct_white_raw": att["white_box"]["tpr_at_fpr"]["0.01"],
                  "mia_black_attack": bb, "mia_auc_black": att[bb]["auc"],
                  "mia_tpr_1pct_black": att[bb]["tpr_at_fpr"]["0.01"], "mia_auc_black_raw": att["black_box"]["auc"],
                  "copying_rate": copies.get("copying_rate"), "copying_p": copies.get("p_value"),
                  "max_exposure": max(exposures) if exposures else None,
                  "epsilon_lb_heuristic": max(a["epsilon_lower_bound"]["epsilon_lb"] for a in att.values()),
                  "epsilon_lb_one_run": au.get("one_run_epsilon_lb"),  # max over attacks, valid at alpha
                  "epsilon_lb_ceiling": max((o["ceiling"]["epsilon_lb"] for o in one_run.values()), default=None),
                  "one_run": {k: {**{f: o[f] for f in ("epsilon_lb", "epsilon_lb_fdp", "epsilon_lb_steinke", "r", "v",
                                                       "m", "delta", "alpha")},
                                  "ceiling": o["ceiling"]["epsilon_lb"],
                                  "idealised": (o.get("idealised") or {}).get("epsilon_lb")}
                              for k, o in one_run.items()}})
    return r


def eval_columns(ev) -> dict:
    return {"fid_train": ev["fid_train"], "fid_heldout": ev["fid_heldout"], "fid_gap": ev["fid_gap"],
            "mifid": ev["mifid"], "memorization_d": ev["memorization_d"], "frac_below_eps": ev["fraction_below_eps"],
            "kid": ev["kid_mean"], "precision": ev["precision"], "recall": ev["recall"], "n_gen": ev["n_gen"],
            "features": ev.get("features") or {}}


COLUMNS = [("N", "size", "d"), ("model", "model", None), ("train images", "n_train", "d"), ("ε", "epsilon", ".2f"),
           ("σ", "sigma", ".2f"),
           ("epochs", "epochs", "d"), ("D / G steps", "steps", "dg"), ("FID train", "fid_train", ".1f"),
           ("FID held-out", "fid_heldout", ".1f"), ("MiFID", "mifid", ".1f"), ("d", "memorization_d", ".3f"),
           ("d < 0.1", "frac_below_eps", ".1%"), ("precision", "precision", ".2f"), ("recall", "recall", ".2f"),
           ("white-box attack (strongest)", "mia_white_attack", None),
           ("AUC white-box", "mia_auc_white", ".3f"), ("TPR@1%FPR white-box", "mia_tpr_1pct_white", ".3f"),
           ("TPR@0.1%FPR white-box", "mia_tpr_01pct_white", ".3f"),
           ("AUC raw logit", "mia_auc_white_raw", ".3f"), ("TPR@1%FPR raw logit", "mia_tpr_1pct_white_raw", ".3f"),
           ("AUC black-box (strongest)", "mia_auc_black", ".3f"), ("copying rate, pixel (p)", "copying_rate", "copy"),
           ("max exposure (bits)", "max_exposure", ".1f"),
           ("ε_lb one-run", "epsilon_lb_one_run", ".2f"), ("ε_lb ceiling", "epsilon_lb_ceiling", ".2f"),
           ("ε_lb heuristic", "epsilon_lb_heuristic", ".2f")]


def _cell(r, key, fmt):
    v = r.get(key)
    if key == "epsilon" and v is None and r.get("kind") not in ("seed project", "reference"):
        return "∞"
    if v is None:
        return "n/a" if r.get("kind") == "reference" else "—"
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


def write_study_files(layout: Layout, name: str, result: dict, intro: str, table_md: str, commands: list,
                      figures: str, t0: float) -> dict:
    """A side study's NAME.json (``result``) and NAME.md (``intro``, the table, the commands), the table printed."""
    from utils import write_json

    write_json(layout.file(f"{name}.json"), result)
    md = [intro, "", table_md, "", "Commands:", ""] + [f"- {c}" for c in commands]
    atomic_write_text(layout.file(f"{name}.md"), "\n".join(md) + "\n")
    print(table_md)
    print(f"wrote {layout.file(name + '.md')}, {name}.json, {figures} ({(time.time() - t0) / 60:.1f} min this "
          "invocation)")
    return result


def hardware(device) -> str:
    from utils import cpu_model

    cpu = f"{os.cpu_count()} CPU cores ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()})"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {cpu}"
    return f"{device.type}, {cpu}"


def render_markdown(res: dict, table, argv: list) -> str:
    s = res["settings"]
    cmd = " ".join(["python reproduce.py"] + [shlex.quote(a) for a in argv])
    stale = res["stale_stages"]
    md = [f"# Results ({'quick preset' if s['quick'] else 'full study'})", "",
          f"Command: `{cmd}` (see results.json for every setting). Data: {res['data']}. "
          f"Hardware: {res['hardware']}. Compute: {res['compute_s'] / 60:.1f} min for all stages.", ""]
    if stale:
        md += [f"**Stale: {len(stale)} stage(s) were computed by other code and kept on purpose (--reuse-stale):** "
               + "; ".join(f"{k} ({v})" for k, v in stale.items()), ""]
    md += [
          "## Headline", "", headline_table(table, s["seed"]), "",
          "The table the README shows: every model of the main seed and the real-data reference at each N. "
          "White-box AUC and TPR at 1% FPR: the strongest white-box attack of the row (D's raw logit; averaged over "
          "the training augmentations; LiRA or RMIA with the study's reference models: the full table names it and "
          "gives the raw logit's too); ε_lb: the one-run lower bound (95%, the larger of the f-DP and Steinke et al. "
          "analyses, Bonferroni over both and every attack); "
          "copy test: the share of samples nearer a training image than every held-out one in pixel space (50% "
          "without copying) and its permutation p-value. The full table follows.", "",
          "## Every row", "", markdown_table(table), "",
          f"Every model: 32px grayscale, the default recipe of its script, D sees {s['budget']:,} real images "
          f"(epochs = budget / N); training subsets of N = {s['train_sizes']} drawn by coins from 2N candidates "
          f"(every candidate is a trial of the one-run ε bound); {s['canaries']} canaries for each repeat count "
          f"{s['canary_repeats']}. FID/MiFID/precision/recall on Inception-v3 pool3 features of "
          f"{res['rows'][0]['n_gen']} generated images against the run's own training set; MiFID ε_mem = 0.1, "
          "Kaggle direction. Real-data rows: held-out (val) images scored like samples. ε is the spent budget "
          "(PRV accountant); ε_lb one-run: 95% confidence, and its ceiling (the bound if every pre-declared guess "
          "were right: the most these candidates can prove); the black-box AUC is the strongest black-box attack; "
          "copying rate: samples nearer a member than every non-member in pixel space (50% without "
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
                    ("copy test (p)", "copying_rate", "copy")]  # white-box: the strongest attack of each row


def headline_table(table, seed: int) -> str:
    """The compact table (the README's): the main seed's models and each N's real-data reference."""
    keep = [r for r in table if r.get("seed", seed) == seed and r["kind"] != "pretraining"]
    return markdown_table(keep, HEADLINE_COLUMNS)


# ----------------------------------------------------------------------------- the study's report


def study_report(s: dict, layout: Layout, models: list, public: Model | None, argv: list, t0: float,
                 outcome: dict) -> dict:
    """Rows, plots, results.json and results.md of a finished study. ``models``: its Models; the artefacts are read
    from each run folder (results.json, eval/, audit/) and the references; ``outcome``: run_stages' (what ran, what
    was reused, and why)."""
    import numpy as np

    from audit_plots import plot_one_run, plot_roc
    from data import load_npz
    from metrics import distance_histogram
    from plots import plot_exposure, plot_fid_vs_epsilon, plot_galleries, plot_image_panels, plot_memorization_vs_n
    from utils import pick_device, read_json, versions, write_json

    smallest = min(s["size_list"])  # the size of the galleries, ROC and histogram
    rows, refs, pre, audits, scores, samples, galleries, copy_galleries, dists = [], [], [], {}, {}, {}, {}, {}, {}
    for m in models:
        run = layout.run(m.name)
        train_res, ev = read_json(run / "results.json"), read_json(layout.eval(m.name) / "eval.json")
        au = read_json(layout.audit(m.name) / "audit.json")
        rows.append(row(m, train_res, ev, au))
        if m.seed != s["seed"]:
            continue  # --extra-seeds: table rows only; the plots and galleries show the main seed
        tag = f"n{m.size}-"  # panels of the smallest N are picked by this prefix
        audits[m.name] = au
        with np.load(layout.audit(m.name) / "scores.npz") as z:
            scores[tag + m.name] = {k: z[k] for k in z.files}
        samples[m.name] = load_npz(run / "samples.npz")
        galleries[tag + m.name] = layout.eval(m.name) / "nn_gallery.png"
        copy_galleries[tag + m.name] = layout.audit(m.name) / "copies.png"
        dists[tag + m.name] = np.load(layout.eval(m.name) / "nearest_distances.npy")
        if m.kind == "non-private" and not m.warm:  # each N's references come with its non-private model
            ref = read_json(layout.reference(m.size) / "eval.json")
            refs.append({"model": f"real data (held-out, N = {m.size})", "kind": "reference", "size": m.size,
                         "epsilon": None, "wall_s": {"eval": ref.get("wall_s")}, **eval_columns(ref)})
            galleries[f"{tag}real data (held-out)"] = layout.reference(m.size) / "nn_gallery.png"
            dists[f"{tag}real data"] = np.load(layout.reference(m.size) / "nearest_distances.npy")
            if public is not None:  # the baseline of the warm pair, scored against this N's training set
                ev = read_json(layout.pretraining_eval(m.size) / "eval.json")
                pre.append({"model": "public pretraining only (no private data)", "kind": "pretraining",
                            "size": m.size, "epsilon": 0.0, "wall_s": {"eval": ev.get("wall_s")}, **eval_columns(ev)})
                samples["public pretraining only"] = load_npz(layout.folder(public) / "samples.npz")
                galleries[f"{tag}public pretraining only"] = layout.pretraining_eval(m.size) / "nn_gallery.png"
                dists[f"{tag}public pretraining"] = np.load(layout.pretraining_eval(m.size) / "nearest_distances.npy")

    at_small = lambda d: {k[len(f"n{smallest}-"):]: v for k, v in d.items() if k.startswith(f"n{smallest}-")}  # noqa
    main = [r for r in rows if r["seed"] == s["seed"]]
    plot_memorization_vs_n(main, refs, layout.file("memorization_vs_n.png"),
                           [r for r in rows if r["seed"] != s["seed"]])
    plot_fid_vs_epsilon(main, layout.file("fid_vs_epsilon.png"))
    distance_histogram(at_small(dists), layout.file("memorization_hist.png"),
                       title=f"memorization distance at N = {smallest}: models vs held-out real images")
    by_size = {n: [m.name for m in models if m.size == n and m.name in samples]
               + (["public pretraining only"] if pre and n == smallest else []) for n in s["size_list"]}
    ncols = max(map(len, by_size.values()))
    panels = {}  # one row per size, padded with blank panels
    for n, names in by_size.items():
        panels.update({name: samples[name] for name in names})
        panels.update({f"blank {n}-{i}": None for i in range(ncols - len(names))})
    plot_image_panels(panels, layout.file("samples.png"), "samples (the same latent noise for every model)",
                      ncols=ncols)
    plot_galleries({k: v for k, v in at_small(galleries).items() if v.is_file()}, layout.file("nn_galleries.png"))
    plot_galleries({k: v for k, v in at_small(copy_galleries).items() if v.is_file()},
                   layout.file("copy_galleries.png"))
    plot_roc(at_small(scores), layout.file("roc.png"))
    plot_one_run(audits, layout.file("one_run.png"))
    plot_exposure(audits, layout.file("exposure.png"))

    pub_run = layout.folder(public) if public is not None else None
    pretrain_s = read_json(pub_run / "results.json").get("wall_s") or 0 if public is not None else 0
    overlap = public_overlap(pub_run, [layout.run(m.name) for m in models]) if public is not None else None
    breakdown = stage_breakdown(rows, refs, pre, pretrain_s)
    table = [r for n in s["size_list"] for r in refs + pre + rows if r["size"] == n]
    first_eval = read_json(layout.eval(models[0].name) / "eval.json")
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "rows": rows, "reference_rows": refs,
              "pretraining_rows": pre, "public_pretraining": overlap, "seed_rows": SEED_ROWS,
              "hardware": hardware(pick_device(s["device"])),
              "versions": versions(), "compute_s": breakdown["total_s"], "stage_times": breakdown,
              "this_invocation_s": round(time.time() - t0, 1),
              "this_invocation_stages_s": {k: round(o["seconds"], 1) for k, o in outcome.items()
                                           if o["seconds"] is not None},
              "stages": outcome, "stale_stages": {k: o["why"] for k, o in outcome.items()
                                                  if o["action"] == "reuse-stale"},
              "data": first_eval["real"], "inception": first_eval["inception"]}
    write_json(layout.file("results.json"), result)
    atomic_write_text(layout.file("results.md"), render_markdown(result, table, argv))
    print(markdown_table(table))
    print(f"wrote {layout.file('results.md')}, results.json and plots (stages' compute {breakdown['total_s'] / 60:.1f} "
          f"min, this invocation {result['this_invocation_s'] / 60:.1f} min of wall time)")
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


def stage_breakdown(rows, refs, pre, pretrain_s: float) -> dict:
    """Compute by stage kind (seconds of each stage's own wall time, summed), and the images pushed through
    Inception-v3 (generated and real, counted where they were computed, not where a cache served them)."""
    kinds = {"public pretraining": pretrain_s, "training": 0.0, "evaluation": 0.0, "audit": 0.0,
             "real-data references": 0.0, "pretraining evaluations": 0.0}
    for r in rows:
        kinds["training"] += r["wall_s"]["train"] or 0
        kinds["evaluation"] += r["wall_s"]["eval"] or 0
        kinds["audit"] += r["wall_s"]["audit"] or 0
    kinds["real-data references"] = sum(r["wall_s"]["eval"] or 0 for r in refs)
    kinds["pretraining evaluations"] = sum(r["wall_s"]["eval"] or 0 for r in pre)
    inception = {"images": 0, "seconds": 0.0}
    for r in rows + refs + pre:
        inception["images"] += r["features"].get("images_computed", 0)
        inception["seconds"] += r["features"].get("seconds", 0.0)
    kinds = {k: round(v, 1) for k, v in kinds.items()}
    return {"by_kind_s": kinds, "total_s": round(sum(kinds.values()), 1), "inception": inception}


# ----------------------------------------------------------------------------- the frontier of defences


FRONTIER_COLUMNS = [("defence", "defence", None), ("setting", "setting", None), ("guarantee", "guarantee", None),
                    ("FID train", "fid_train", ".1f"), ("precision", "precision", ".2f"), ("recall", "recall", ".2f"),
                    ("AUC white-box", "mia_auc_white", ".3f"), ("AUC black-box", "mia_auc_black", ".3f"),
                    ("ε_lb one-run", "epsilon_lb_one_run", ".2f"), ("copying rate, pixel (p)", "copying_rate", "copy"),
                    ("MR rejected", "mr_rejected", ".1%"), ("train min", "train_min", ".1f")]


def frontier_report(s: dict, layout: Layout, models: list, n: int, t0: float) -> dict:
    """frontier.md, frontier.json, frontier.png and frontier_samples.png: one row per model (and per checkpoint of
    the snapshot run), read from its run folder; ``models``: the frontier's Models (defence and setting set)."""
    from plots import frontier_samples, plot_frontier, plot_image_panels
    from utils import pick_device, read_json, versions, write_json

    rows = []
    for m in models:
        res = read_json(layout.run(m.name) / "results.json")
        base = {"defence": m.defence, "setting": m.setting, "run": m.name, "command": command(m.script, m.flags),
                "guarantee": f"(ε = {res['epsilon']:.2f}, δ = {res['delta']:g})-DP per image"
                if res.get("epsilon") is not None else "none", "train_min": res["wall_s"] / 60,
                "mr_rejected": (res.get("memorization_rejection") or {}).get("rejected_mean")}
        if m.defence != "early stopping":
            rows.append({**row(m, res, read_json(layout.eval(m.name) / "eval.json"),
                               read_json(layout.audit(m.name) / "audit.json")), **base})
            continue
        over = read_json(layout.over_training(m.name) / "over_training.json")
        for p in over["points"]:
            rows.append({**base, "model": m.name, "kind": m.kind, "setting": f"D step {p['step']} of {res['steps']}",
                         "step": p["step"], "checkpoint": p["checkpoint"],
                         "fid_train": p.get("fid_train"), "precision": p.get("precision"), "recall": p.get("recall"),
                         "mia_auc_white": p["auc_white"],
                         "mia_auc_black": p["auc_black"] if p.get("auc_black_calibrated") is None
                         else p["auc_black_calibrated"],
                         "epsilon_lb_one_run": p["epsilon_lb_one_run"], "copying_rate": p["copying_rate"],
                         "copying_p": p["copying_p"],
                         "early_stop": bool(over["early_stopping"]) and p["step"] == over["early_stopping"]["step"]})
            if rows[-1]["early_stop"]:
                rows[-1]["setting"] += " (early stop)"
    ref = read_json(layout.reference(n) / "eval.json")
    plot_frontier(rows, ref, n, layout.file("frontier.png"))
    plot_image_panels(frontier_samples(rows, layout), layout.file("frontier_samples.png"),
                      f"samples of every defence at N = {n} (the same latent noise)", ncols=5)
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "size": n, "rows": rows,
              "reference": {"model": f"real data (held-out, N = {n})", **eval_columns(ref)},
              "hardware": hardware(pick_device(s["device"])), "versions": versions(),
              "this_invocation_s": round(time.time() - t0, 1)}
    write_json(layout.file("frontier.json"), result)
    md = [f"Defences at N = {n}: utility against memorization ({s['num_samples']} samples per model; the real "
          f"held-out images score FID {ref['fid_train']:.1f}, precision {ref['precision']:.2f}).", "",
          markdown_table(rows, FRONTIER_COLUMNS), "", "Commands:", ""]
    md += [f"- {d} ({r}): `{c}`" for d, r, c in dict.fromkeys((r["defence"], r["run"], r["command"]) for r in rows)]
    atomic_write_text(layout.file("frontier.md"), "\n".join(md) + "\n")
    print(markdown_table(rows, FRONTIER_COLUMNS))
    print(f"wrote {layout.file('frontier.md')}, frontier.json, frontier.png, frontier_samples.png "
          f"({(time.time() - t0) / 60:.1f} min this invocation)")
    return result


IDENTITY_COLUMNS = [("model", "model", None), ("DP unit", "dp_unit", None), ("ε", "epsilon", ".2f"),
                    ("ε for a person (bound)", "person_bound", None), ("people / photos trained", "trained", None),
                    ("image AUC white-box", "image_auc_white", ".3f"),
                    ("image AUC white-box LiRA", "image_auc_white_cal", ".3f"),
                    ("identity AUC white-box", "id_auc_white", ".3f"),
                    ("identity AUC white-box LiRA", "id_auc_white_cal", ".3f"),
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
            "image_auc_white": get(att, "white_box"), "image_auc_white_cal": get(att, "white_box_lira"),
            "image_auc_black_cal": get(att, "black_box_calibrated"),
            "id_auc_white": get(idn, "white_box"), "id_auc_white_cal": get(idn, "white_box_lira"),
            "id_auc_black_cal": get(idn, "black_box_calibrated"), "id_tpr_1pct": best["tpr_at_fpr"]["0.01"],
            "id_epsilon_lb": au["identity"]["one_run_epsilon_lb"], "id_people": au["identity"]["people"],
            "id_auc_control": au["identity"].get("control_reference_model_auc"),
            "copying_rate": au["copies"]["copying_rate"], "copying_p": au["copies"]["p_value"],
            "train_min": res["wall_s"] / 60, "identity_audit": au["identity"]}


def identity_report(s: dict, layout: Layout, models: list, reference: Model | None, t0: float) -> dict:
    """identity.md and identity.json: each model's guarantee for a person and its image- and identity-level
    audits; ``models``: the study's Models, ``reference``: the reference model of the LiRA attack."""
    from data import load_npz
    from plots import plot_image_panels
    from utils import pick_device, versions, write_json

    rows = [identity_row(m.name, layout.run(m.name)) for m in models]
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "rows": rows,
              "commands": {m.name: command(m.script, m.flags) for m in models},
              "reference_run": None if reference is None else command(reference.script, reference.flags),
              "hardware": hardware(pick_device(s["device"])), "versions": versions(),
              "this_invocation_s": round(time.time() - t0, 1)}
    write_json(layout.file("identity.json"), result)
    unit = {"image": "image", "identity": "person"}
    plot_image_panels({r["model"] + (f" (ε = {r['epsilon']:.2f} per {unit[r['dp_unit']]})" if r["epsilon"] else ""):
                       load_npz(layout.run(r["model"]) / "samples.npz")[:64] for r in rows},
                      layout.file("identity_samples.png"),
                      "samples of every model of the identity study (the same noise)", ncols=len(rows))
    m = rows[0]["id_people"]
    md = [f"The person as the privacy unit: {m} candidate people (one coin each), identity-level attacks over their "
          "held-back photos; image-level attacks over training photos against held-out photos of other people.", "",
          markdown_table(rows, IDENTITY_COLUMNS), "", "Commands:", ""]
    md += [f"- {name}: `{c}`" for name, c in result["commands"].items()]
    if reference is not None:
        md.append(f"- reference model of the white-box LiRA attack: `{result['reference_run']}`")
    atomic_write_text(layout.file("identity.md"), "\n".join(md) + "\n")
    print(markdown_table(rows, IDENTITY_COLUMNS))
    print(f"wrote {layout.file('identity.md')}, identity.json, identity_samples.png ({(time.time() - t0) / 60:.1f} "
          "min this invocation)")
    return result

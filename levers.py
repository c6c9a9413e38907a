"""The levers study (reproduce.py --levers, docs/levers.md): how the DP recipe was chosen. Every LEVERS row changes
one thing of a recipe and is trained at its ε on the CelebA subset against the same non-private model; the table
(levers.md, levers.json) and samples.png go to the study folder (default outputs/reproduce-levers).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from report import Layout, Model, command, eval_columns, hardware, markdown_table
from utils import UserError, atomic_write_text

# Fine-tuning a pretrained GAN with DP: small steps keep what it learned. Measured with the DP defaults at ε = 8,
# G starting from the pretraining's EMA generator (FID vs the private training set; the pretraining alone scores
# 73.2, see the levers table): lr 5e-5 310.4, 2e-5 164.7, 5e-6 80.6, 1e-6 71.6.
WARM_LR = "1e-6"
WARM = ["--lr", WARM_LR]  # the study's warm DP rows use it too (reproduce.py)

# Every run: the CelebA subset at 32px grayscale, --random-split, delta = 1e-6, ngf = 32. "Old recipe" pins the
# DP defaults before issue #12 (D sees 30 epochs, the compute of the old study's DP runs); each lever changes one
# thing of it. "Recipe A" (batch 256, lr 1e-3, ndf 16, EMA) was the default before the two G-side / augmentation
# levers; "recipe B" (A + mode-seeking + augmentation) was the default before G's lr doubling, and the "DP
# defaults" rows are train_dcgan_dp.py's defaults (B + G's lr 2x), alone, with other seeds, at epsilon = 1 and
# with G's lr changed. "Previous defaults" are the defaults of an earlier session. Rows 0-26 predate the G lr
# lever and pin it off (G1). Row numbers name the run folders, so new rows go at the end.
G1 = ["--g-lr-scale", "1"]  # G's lr = D's, as before the two time-scale lever
OFF = ["--mode-seeking", "0", "--augment", "none"] + G1  # the levers added last, off
OLD_RECIPE = ["--lr", "5e-5", "--batch-size", "64", "--beta1", "0.5", "--ndf", "32", "--freeze-d", "0",
              "--d-steps", "1", "--adaptive-d-steps", "0", "--g-steps", "1", "--g-batch-size", "64", "--ema-decay", "0",
              "--ema-warmup", "10", "--epochs", "30"] + OFF
PREVIOUS_DEFAULTS = ["--lr", "2e-4", "--batch-size", "512", "--epochs", "60", "--ndf", "16", "--freeze-d", "2",
                     "--adaptive-d-steps", "0.6", "--adaptive-grace", "20", "--g-batch-size", "128",
                     "--ema-decay", "0.999", "--ema-warmup", "10"] + OFF
LEVERS = [  # (name, epsilon, DP arguments; "@public" = --init-from the public pretraining of the same width)
    ("old recipe", 8, OLD_RECIPE),
    ("K = 5 D steps per G step", 8, OLD_RECIPE + ["--d-steps", "5"]),
    ("adaptive K (acc <= 0.6)", 8, OLD_RECIPE + ["--adaptive-d-steps", "0.6", "--adaptive-grace", "20"]),
    ("G EMA 0.999", 8, OLD_RECIPE + ["--ema-decay", "0.999"]),
    ("batch 256, lr 1e-3", 8, OLD_RECIPE + ["--batch-size", "256", "--lr", "1e-3"]),
    ("small D (ndf 16)", 8, OLD_RECIPE + ["--ndf", "16"]),
    ("public warm start", 8, OLD_RECIPE + ["@public"] + WARM),
    ("previous defaults (ndf 16, 2 convs frozen, batch 512, adaptive K)", 8, PREVIOUS_DEFAULTS),
    ("recipe A (batch 256, lr 1e-3, ndf 16, EMA)", 8, OFF),
    ("A, EMA warm-up 10 instead of 3", 8, OFF + ["--ema-warmup", "10"]),
    ("A, K = 5", 8, OFF + ["--d-steps", "5"]),
    ("A + public warm start", 8, OFF + ["@public"] + WARM),
    ("recipe A", 1, OFF),
    ("A + public warm start", 1, OFF + ["@public"] + WARM),
    ("A + mode-seeking G loss (λ = 1)", 8, ["--augment", "none"] + G1),
    ("A + mode-seeking G loss (λ = 1)", 1, ["--augment", "none"] + G1),
    ("recipe B: A + mode-seeking + augmentation (translation, flip)", 8, G1),
    ("recipe B", 1, G1),
    ("B, seed 1", 8, G1 + ["--seed", "1"]),
    ("B, seed 2", 8, G1 + ["--seed", "2"]),
    ("A + mode-seeking, seed 1", 8, ["--augment", "none", "--seed", "1"] + G1),
    ("A + mode-seeking, seed 2", 8, ["--augment", "none", "--seed", "2"] + G1),
    ("A + augmentation, no mode-seeking", 8, ["--mode-seeking", "0"] + G1),
    ("B + public warm start", 8, ["@public"] + WARM + G1),
    ("B, batch 512, 60 epochs", 8, ["--batch-size", "512", "--epochs", "60"] + G1),
    ("B, batch 512, 60 epochs, seed 1", 8, ["--batch-size", "512", "--epochs", "60", "--seed", "1"] + G1),
    ("B, batch 512, 60 epochs, seed 2", 8, ["--batch-size", "512", "--epochs", "60", "--seed", "2"] + G1),
    ("the DP defaults: B + G's lr 2x D's (two time-scale)", 8, []),
    ("the DP defaults, seed 1", 8, ["--seed", "1"]),
    ("the DP defaults, seed 2", 8, ["--seed", "2"]),
    ("the DP defaults", 1, []),
    ("the DP defaults + public warm start", 8, ["@public"] + WARM),
    ("the DP defaults + public warm start", 1, ["@public"] + WARM),
    ("the DP defaults with G's lr 0.5x D's", 8, ["--g-lr-scale", "0.5"]),
    ("the DP defaults with G's lr 4x D's", 8, ["--g-lr-scale", "4"]),
]


def levers(args) -> dict:
    """Every LEVERS row (or --rows) trained and evaluated at ε against the same non-private model, as stages."""
    from reproduce import (_dp_default, common_flags, eval_stage, flags_of, public_pretraining, run_study_stages,
                           settings, training_stage)

    t0 = time.time()
    s = settings(args)
    if s["data"] != "celeba":
        raise UserError("--levers runs on CelebA: pass --data-root (the private set) and --public-root")
    picked = _rows(args.rows)
    layout = Layout(Path(args.out or "outputs/reproduce-levers"))
    common = {**common_flags(s), "--ngf": 32}
    s["max_real"] = None
    print(f"levers study -> {layout.out}")
    stages, models, public = [], [], {}  # public: ndf -> (its Model, its training stage)

    def model(m, deps=()):
        train = training_stage(m, layout, deps)
        stages.extend([train, eval_stage(m.name, layout.run(m.name), layout.eval(m.name), s, (train,))])
        models.append(m)
        return train

    np_train = model(Model("non-private", 0, "non-private", "train_dcgan", {**common, "--epochs": 30},
                           extra={"label": "non-private, 30 epochs"}))
    for i in picked:
        name, eps, extra = LEVERS[i]
        flags = {**common, "--epsilon": f"{eps:g}", "--delta": f"{s['delta']:g}",
                 **flags_of([a for a in extra if a != "@public"])}
        deps = ()
        if "@public" in extra:
            ndf = int(flags.get("--ndf", _dp_default("ndf")))
            if ndf not in public:
                pm = public_pretraining(s, layout, ndf)
                public[ndf] = (pm, training_stage(pm, layout))
                stages.append(public[ndf][1])
            flags["--init-from"] = layout.folder(public[ndf][0])
            deps = (public[ndf][1],)
        model(Model(f"{i:02d}-eps{eps:g}", 0, "dp", "train_dcgan_dp", flags, epsilon=eps,  # the run folder's name
                    extra={"label": name}), deps)
    for ndf, (pm, st) in public.items():  # the pretrained models themselves, scored against the private training set
        label = f"public pretraining only, ndf {ndf} (no private data)"
        stages.append(eval_stage(label, layout.folder(pm), layout.folder(pm) / "eval", s, (st, np_train),
                                 train_of=layout.run("non-private")))
        models.append(replace(pm, script="", extra={"label": label}))
    outcome = run_study_stages(stages, s, layout, args)
    if args.dry_run:
        return outcome
    return levers_report(s, layout, models, t0)


def _rows(text) -> list:
    """--rows as sorted indices into LEVERS (all of them if not given)."""
    if text is None:
        return list(range(len(LEVERS)))
    try:
        rows = sorted({int(e) for e in str(text).split(",") if e.strip()})
    except ValueError:
        rows = []
    if not rows or rows[0] < 0 or rows[-1] >= len(LEVERS):
        raise UserError(f"--rows must be comma-separated row numbers 0-{len(LEVERS) - 1}, got {text!r}")
    return rows




def _recorded_flags(run: Path) -> dict:
    """A finished run's main arguments as flags (for a run the levers study did not train itself)."""
    from utils import read_json

    a = read_json(run / "config.json")["args"]
    return {f"--{k.replace('_', '-')}": a[k] for k in ("data", "data_root", "exclude_from", "ngf", "ndf", "epochs",
                                                        "batch_size", "lr") if a.get(k) is not None}


LEVER_COLUMNS = [("run", "model", None), ("ε", "epsilon", ".2f"), ("σ", "sigma", ".2f"), ("batch", "batch", "d"),
                 ("lr", "lr", "g"), ("G lr / lr", "g_lr_scale", "g"), ("β1", "beta1", "g"), ("EMA", "ema", "g"),
                 ("D / G steps", "steps", "dg"), ("K at end", "k_final", "d"), ("FID train", "fid_train", ".1f"),
                 ("precision", "precision", ".2f"), ("recall", "recall", ".2f"), ("train min", "train_min", ".1f")]


def levers_report(s: dict, layout: Layout, models: list, t0: float) -> dict:
    """levers.md, levers.json and samples.png of the levers study; ``models``: its Models (script "": trained
    elsewhere, e.g. the public pretraining, its command line read from its config.json)."""
    from data import load_npz
    from plots import plot_image_panels
    from utils import pick_device, read_json, versions, write_json

    rows, samples = [], {}
    for m in models:
        run = layout.folder(m)
        res, ev = read_json(run / "results.json"), read_json(run / "eval" / "eval.json")
        cfg = read_json(run / "config.json")["args"]
        rows.append({"model": m.extra.get("label", m.name), "epsilon": res.get("epsilon"),
                     "target_epsilon": res.get("target_epsilon"),
                     "sigma": res.get("noise_multiplier"), "steps": res["steps"], "g_steps": res.get("g_steps"),
                     "k_final": res.get("k_final"), "batch": cfg["batch_size"], "lr": cfg["lr"],
                     "g_lr_scale": cfg.get("g_lr_scale", 1.0), "beta1": cfg["beta1"], "ema": cfg["ema_decay"],
                     "train_min": res["wall_s"] / 60,
                     "command": command(m.script or "train_dcgan", m.flags if m.script else _recorded_flags(run)),
                     **eval_columns(ev)})
        label = rows[-1]["model"] + ("" if res.get("epsilon") is None else f", ε = {res['target_epsilon']:g}")
        samples[label] = load_npz(run / "samples.npz")
    plot_image_panels(samples, layout.file("samples.png"), "samples of every levers run", ncols=5)
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "rows": rows,
              "hardware": hardware(pick_device(s["device"])), "versions": versions(),
              "this_invocation_s": round(time.time() - t0, 1)}
    write_json(layout.file("levers.json"), result)
    md = "\n".join([markdown_table(rows, LEVER_COLUMNS), "", "Commands:", ""] +
                   [f"- {r['model']}: `{r['command']}`" for r in rows])
    atomic_write_text(layout.file("levers.md"), md + "\n")
    print(markdown_table(rows, LEVER_COLUMNS))
    print(f"wrote {layout.file('levers.md')}, levers.json, samples.png ({(time.time() - t0) / 60:.1f} min this "
          "invocation)")
    return result

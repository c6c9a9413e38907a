"""What DP costs, and why (reproduce.py --dp-cost, docs/privacy.md#what-dp-costs): at each N (default 250 and
2,300), the price of DP-SGD decomposed one step at a time, every model with the study's data, coins, budget,
evaluation, reference models and audit (the study's and the frontier's runs are reused where they match):

  non-private             train_dcgan.py's recipe (the study's model)
  DP recipe, no DP        train_dcgan.py with the DP recipe's architecture, batch, learning rates and schedule
  + Poisson sampling      train_dcgan_dp.py with σ = 0 and C = 10^6: Poisson batches and the DP step's
                          normalisation by the expected batch, nothing clipped, no noise
  + clipping              train_dcgan_dp.py with σ = 0: each pair clipped to C = 1, no noise (ε = ∞)
  + noise: DP at ε        train_dcgan_dp.py at each --epsilons value (default 64, 16, 8, 2)

Writes dp_cost.md, dp_cost.json, dp_cost.png (FID at each step, one line per N) and dp_cost_samples.png to the
study folder.
"""
from __future__ import annotations

import time
from dataclasses import replace

from report import Model, command, eval_columns, hardware, markdown_table, row, write_study_files
from utils import UserError

DP_COST_SIZES = "250,2300"
DP_COST_EPSILONS = "64,16,8,2"
STEPS = ("non-private", "DP recipe, no DP", "+ Poisson sampling", "+ clipping (σ = 0)")


def dp_cost_plan(s: dict) -> list:
    """[Model] of the decomposition at every N: the study's non-private and DP models (the same Models, so their
    runs are reused) and the three steps between them."""
    from reproduce import SMALL_N, SMALL_NDF, _dp_default, model_plan

    plan = []
    for m in model_plan({**s, "extra_seed_list": []}):
        if m.kind == "dp" and not m.warm:
            plan.append(replace(m, defence=f"+ noise: DP at ε = {m.epsilon:g}", setting=f"ε = {m.epsilon:g}"))
        if m.kind != "non-private" or m.warm:
            continue
        plan.append(replace(m, defence=STEPS[0], setting="train_dcgan.py's recipe"))
        ndf = SMALL_NDF if m.size < SMALL_N else _dp_default("ndf", s["data"])  # the study's DP width
        recipe = {f"--{k.replace('_', '-')}": _dp_default(k, s["data"]) for k in (
            "lr", "batch_size", "freeze_d", "d_steps", "adaptive_grace", "g_batch_size", "ema_decay", "ema_warmup",
            "mode_seeking", "g_lr_scale")}
        recipe.update({"--ndf": ndf, "--augment": _dp_default("augment", s["data"]) or "none"})
        plan.append(Model(f"n{m.size}-dpcost-recipe", m.size, "non-private", "train_dcgan", {**m.flags, **recipe},
                          m.seed, defence=STEPS[1], setting="train_dcgan.py with the DP recipe"))
        dp = {**m.flags, "--ndf": ndf}  # train_dcgan_dp.py brings the rest of its recipe itself
        plan.append(Model(f"n{m.size}-dpcost-poisson", m.size, "dp", "train_dcgan_dp",
                          {**dp, "--noise-multiplier": 0, "--max-grad-norm": "1e6"}, m.seed, defence=STEPS[2],
                          setting="σ = 0, C = 10^6"))
        plan.append(Model(f"n{m.size}-dpcost-clip", m.size, "dp", "train_dcgan_dp", {**dp, "--noise-multiplier": 0},
                          m.seed, defence=STEPS[3], setting="σ = 0, C = 1"))
    order = {n: i for i, n in enumerate(s["size_list"])}  # each N: the steps in order, the DP models by ε (large first)
    return sorted(plan, key=lambda m: (order[m.size], m.kind == "dp" and m.epsilon is not None,
                                       -(m.epsilon or 0)))


COLUMNS = [("N", "size", "d"), ("step", "defence", None), ("model", "model", None), ("ε", "epsilon", ".2f"),
           ("σ", "sigma", ".2f"), ("FID", "fid_train", ".1f"), ("precision", "precision", ".2f"),
           ("recall", "recall", ".2f"), ("white-box AUC (strongest)", "mia_auc_white", ".3f"),
           ("TPR@1%FPR", "mia_tpr_1pct_white", ".3f"), ("ε_lb one run", "epsilon_lb_one_run", ".2f"),
           ("copy test (p)", "copying_rate", "copy"), ("train min", "train_min", ".1f")]


def dp_cost(args) -> dict:
    from reproduce import (Layout, model_stages, print_settings, reference_stage, reference_stages,
                           run_study_stages, settings)
    from pathlib import Path

    t0 = time.time()
    if args.only is not None or args.rows is not None:
        raise UserError("--only and --rows select models of the study and the levers study, not of --dp-cost")
    s = settings(args, train_sizes=DP_COST_SIZES, epsilons=DP_COST_EPSILONS)
    layout = Layout(Path(args.out or ("outputs/reproduce-quick" if args.quick else "outputs/reproduce")))
    plan = dp_cost_plan(s)
    print_settings(f"what DP costs ({'quick' if args.quick else 'full'} preset) -> {layout.out}", s,
                   ("data", "data_root", "train_sizes", "budget", "epsilons", "references", "num_samples", "jobs",
                    "threads"))
    refs = reference_stages(s, layout, s["size_list"])
    stages, first = [r for rs in refs.values() for r in rs], {}
    for m in plan:  # each N's non-private model first: its evaluation computes the real features the others share
        train, ev, aud = model_stages(m, layout, s, first.get(m.size), refs=refs[m.size])
        stages += [train, ev, aud]
        if m.size not in first:
            first[m.size] = ev
            stages.append(reference_stage(m.size, layout.run(m.name), layout, s, (ev,)))
    print(f"  {len(stages)} stages; each stage's output in {layout.logs}/")
    outcome = run_study_stages(stages, s, layout, args)
    if args.dry_run:
        return outcome
    return dp_cost_report(s, layout, plan, t0)


def dp_cost_report(s: dict, layout, plan: list, t0: float) -> dict:
    from data import load_npz
    from plots import plot_dp_cost, plot_image_panels
    from utils import pick_device, read_json, versions

    rows = []
    for m in plan:
        res = read_json(layout.run(m.name) / "results.json")
        rows.append({**row(m, res, read_json(layout.eval(m.name) / "eval.json"),
                           read_json(layout.audit(m.name) / "audit.json")),
                     "defence": m.defence, "train_min": res["wall_s"] / 60, "command": command(m.script, m.flags)})
    refs = {n: {"model": f"real data (held-out, N = {n})", "kind": "reference", "size": n,
                **eval_columns(read_json(layout.reference(n) / "eval.json"))} for n in s["size_list"]}
    plot_dp_cost(rows, refs, layout.file("dp_cost.png"))
    panels = {f"N = {r['size']}: {r['defence']}": load_npz(layout.run(r["model"]) / "samples.npz")[:64] for r in rows}
    plot_image_panels(panels, layout.file("dp_cost_samples.png"), "samples at each step of the decomposition (the "
                      "same latent noise)", ncols=len(rows) // len(s["size_list"]))
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "rows": rows,
              "reference_rows": list(refs.values()), "hardware": hardware(pick_device(s["device"])),
              "versions": versions(), "this_invocation_s": round(time.time() - t0, 1)}
    table = [r for n in s["size_list"] for r in [refs[n]] + [r for r in rows if r["size"] == n]]
    return write_study_files(
        layout, "dp_cost", result, "What DP costs, one step at a time (FID against the model's own training set; the "
        "real held-out images are the floor).", markdown_table(table, COLUMNS),
        [f"N = {r['size']}, {r['defence']}: `{r['command']}`" for r in rows], "dp_cost.png, dp_cost_samples.png", t0)

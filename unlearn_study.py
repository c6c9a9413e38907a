"""Can a photo be forgotten without retraining, and how do we know? (reproduce.py --unlearning,
docs/unlearning.md). At the study's smallest N (CelebA: 250, where the non-private GAN memorizes), by image:

  original      train_dcgan.py on 0.8 N fixed training images plus 0.4 N coin-flipped held-out candidates
                (--audit-canaries: about 0.2 N heads join training, m = 0.4 N one-run trials), the study's budget
  retrain       unlearn.py --forget heads --method retrain: the same recipe and seed without the heads (exact)
  finetune      unlearn.py --method finetune (15% of the original's D steps on the retained images)
  neggrad       unlearn.py --method neggrad (the same, D learns the forgotten images as fakes)
  heldout       unlearn.py --method heldout (neggrad until the forgotten images score like never-seen ones; at
                most 15% of the original's steps)
  DP ε = 8      train_dcgan_dp.py on the same design: nothing to unlearn, its ε covers every image

Every row is evaluated (FID against its own training set: the retained images) and audited with the study's
reference models: the one-run bound on the candidates (two-sided for the unlearned rows: forgotten heads against
never-trained tails; a perfect unlearner leaves them indistinguishable), the forgotten-vs-never-seen AUC and the
retained members' AUC (the model must stay the same model for everyone else). The original is the study's
design, not one of its runs; the reference models are the study's (reused from its folder).

Writes unlearning.md, unlearning.json, unlearning.png (cost against the one-run bound and FID) and
unlearning_samples.png to the study folder.
"""
from __future__ import annotations

import time
from pathlib import Path

from report import Model, command, hardware, markdown_table, row, write_study_files
from unlearn import DEFAULT_STEPS
from utils import UserError

FIXED, CANDIDATES = 0.8, 0.4  # of N: fixed training images, coin-flipped candidates
# each method's D steps as a share of the original's (unlearn.py's default --steps; heldout: its cap)
METHODS = {"retrain": None, "finetune": DEFAULT_STEPS, "neggrad": DEFAULT_STEPS, "heldout": DEFAULT_STEPS}
UNLEARN_EPSILON = 8.0


def unlearning_plan(s: dict, layout) -> list:
    """[Model]: the original, one per unlearning method (script "unlearn", flags: unlearn.py's on the original's
    run folder) and the DP row."""
    from reproduce import SMALL_N, SMALL_NDF, common_flags

    n = min(s["size_list"])
    fixed, cand = round(FIXED * n), round(CANDIDATES * n)
    design = {**common_flags(s), "--train-size": fixed, "--audit-canaries": cand,
              "--epochs": max(1, round(s["budget"] / n))}
    original = Model(f"n{n}-unlearn-original", n, "non-private", "train_dcgan", design, s["seed"],
                     defence="original", setting="no unlearning")
    plan = [original]
    for method, share in METHODS.items():
        flags = {"--run": layout.run(original.name), "--forget": "heads", "--method": method, "--device": s["device"], "--threads": s["threads"],
                 "--no-progress": True}
        plan.append(Model(f"n{n}-unlearn-{method}", n, "unlearned", "unlearn", flags, s["seed"], defence=method,
                          setting="exact" if share is None else f"≤ {share:.0%} of the original's D steps",
                          cost=1.0 if share is None else share * 1.3))
    small = {"--ndf": SMALL_NDF} if n < SMALL_N else {}
    plan.append(Model(f"n{n}-unlearn-dp-eps{UNLEARN_EPSILON:g}", n, "dp", "train_dcgan_dp",
                      {**design, **small, "--epsilon": f"{UNLEARN_EPSILON:g}", "--delta": f"{s['delta']:g}"},
                      s["seed"], epsilon=UNLEARN_EPSILON, defence=f"DP-SGD, ε = {UNLEARN_EPSILON:g}",
                      setting="trained with the heads; nothing unlearned"))
    return plan


def unlearning_stages(s: dict, layout, plan: list) -> list:
    from reproduce import audit_stage, eval_stage, reference_stage, reference_stages, training_stage

    n = plan[0].size
    refs = reference_stages(s, layout, [n])[n]
    stages = list(refs)
    original = training_stage(plan[0], layout)
    first = None
    for m in plan:
        train = original if m is plan[0] else training_stage(m, layout, (original,) if m.script == "unlearn" else ())
        ev = eval_stage(m.name, layout.run(m.name), layout.eval(m.name), s,
                        (train,) + ((first,) if first is not None else ()))
        extra = {"--reference-runs": ",".join(str(r.out) for r in refs)} if refs else {}
        stages += [train, ev, audit_stage(m.name, layout.run(m.name), layout.audit(m.name), s, (train, *refs),
                                          **extra)]
        if first is None:
            first = ev
            stages.append(reference_stage(n, layout.run(m.name), layout, s, (ev,)))
    return stages


def unlearning(args) -> dict:
    from reproduce import Layout, print_settings, run_study_stages, settings

    t0 = time.time()
    if args.only is not None or args.rows is not None:
        raise UserError("--only and --rows select models of the study and the levers study, not of --unlearning")
    s = settings(args)
    layout = Layout(Path(args.out or ("outputs/reproduce-quick" if args.quick else "outputs/reproduce")))
    plan = unlearning_plan(s, layout)
    print_settings(f"unlearning ({'quick' if args.quick else 'full'} preset) -> {layout.out}", s,
                   ("data", "data_root", "budget", "references", "num_samples", "jobs", "threads"))
    n = plan[0].size
    print(f"  N = {n}: {round(FIXED * n)} fixed training images, {round(CANDIDATES * n)} coin-flipped candidates; "
          f"forget the heads by {', '.join(METHODS)}")
    stages = unlearning_stages(s, layout, plan)
    print(f"  {len(stages)} stages; each stage's output in {layout.logs}/")
    outcome = run_study_stages(stages, s, layout, args)
    if args.dry_run:
        return outcome
    return unlearning_report(s, layout, plan, t0)


def _forgotten(au: dict) -> tuple:
    """(attack, AUC) of the attack whose forgotten-vs-never-seen AUC lies farthest from 0.5 (either side)."""
    got = {k: a["forgotten"]["auc"] for k, a in au["attacks"].items() if a.get("forgotten")}
    if not got:
        return None, None
    att = max(got, key=lambda k: abs(got[k] - 0.5))
    return att, got[att]


COLUMNS = [("method", "defence", None), ("model", "model", None), ("cost s", "cost_s", ".0f"),
           ("x retrain", "x_retrain", ".2f"), ("D steps", "steps", "d"), ("FID", "fid_train", ".1f"),
           ("precision", "precision", ".2f"),
           ("ε_lb one run, forgotten (two-sided)", "epsilon_lb_one_run", ".2f"),
           ("forgotten vs never-seen AUC", "forgotten_auc", ".3f"), ("(attack)", "forgotten_attack", None),
           ("retained members AUC (strongest)", "mia_auc_white", ".3f"), ("copy test (p)", "copying_rate", "copy")]


def unlearning_report(s: dict, layout, plan: list, t0: float) -> dict:
    from data import load_npz
    from plots import plot_image_panels, plot_unlearning
    from utils import pick_device, read_json, versions

    rows = []
    for m in plan:
        res, au = read_json(layout.run(m.name) / "results.json"), read_json(layout.audit(m.name) / "audit.json")
        r = row(m, res, read_json(layout.eval(m.name) / "eval.json"), au)
        un = read_json(layout.run(m.name) / "unlearning.json") if m.script == "unlearn" else {}
        r["forgotten_attack"], r["forgotten_auc"] = _forgotten(au)
        r.update(defence=m.defence, setting=m.setting, cost_s=res["wall_s"],
                 stopped_at_heldout=un.get("stopped_at_heldout"), forgotten_images=un.get("forgotten_images"),
                 command=command(m.script, m.flags))
        rows.append(r)
    retrain = next(r for r in rows if r["defence"] == "retrain")
    for r in rows:
        r["x_retrain"] = r["cost_s"] / retrain["cost_s"] if r["kind"] == "unlearned" else None
    plot_unlearning(rows, layout.file("unlearning.png"))
    panels = {r["defence"]: load_npz(layout.run(r["model"]) / "samples.npz")[:64] for r in rows}
    plot_image_panels(panels, layout.file("unlearning_samples.png"), "samples of each unlearning method (the same "
                      "latent noise)", ncols=len(rows))
    result = {"settings": {k: v for k, v in s.items() if not k.endswith("_list")}, "rows": rows,
              "hardware": hardware(pick_device(s["device"])), "versions": versions(),
              "this_invocation_s": round(time.time() - t0, 1)}
    return write_study_files(
        layout, "unlearning", result, "Unlearning the coin-flipped heads at N = %d (FID against each model's own "
        "training set; ε_lb: the one-run bound of the candidates, two-sided for the unlearned rows)." % plan[0].size,
        markdown_table(rows, COLUMNS), [f"{r['defence']}: `{r['command']}`" for r in rows],
        "unlearning.png, unlearning_samples.png", t0)

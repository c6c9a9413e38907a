"""Forget images or people a trained GAN saw. Writes a NEW run folder (the original is only read) with the unlearned
G and D and a training run's artefacts (samples, grids, results.json, config.json), so audit.py and
evaluate_mifid.py work on it unchanged.

  python unlearn.py --run outputs/RUN --forget heads --method neggrad       # the coins' heads (one-run audit)
  python unlearn.py --run outputs/RUN --forget forget.txt --method retrain  # file names and person:ID lines

--forget: ``heads`` (every audit coin of the run that came up heads: train it with --audit-canaries M, or by
person with --privacy-unit identity) or a text file, one line per image file name or ``person:ID`` (every photo of
that CelebA identity); near-duplicates of a forgotten image go with it.

Methods (docs/unlearning.md):
  retrain   train from scratch on the retained data with the original's recipe and seed: the exact answer, and the
            unit of the cost column
  finetune  continue the GAN game on the retained data only, from the original's G (its EMA) and D, for --steps D
            steps (fresh Adam states)
  neggrad   finetune, and D also learns the forgotten images as fakes (Sun et al. 2023, "Generative Adversarial
            Networks Unlearning"; Kong & Chaudhuri 2023, "Data Redaction from Pre-trained GANs")
  heldout   neggrad that stops as soon as D scores the forgotten images no higher than never-seen val images: the
            held-out level, not below it (images pushed below non-members stand out again); --steps is its cap

The unlearned run's config.json records the original's checkpoint (sha256), the forget set and the method;
unlearning.json adds the cost (seconds and D steps, and as a multiple of the original's training). Check the
forgetting with audit.py: on a run unlearned with --forget heads, its one-run bound is two-sided and compares
the forgotten candidates with the never-trained ones (docs/unlearning.md).
"""
from __future__ import annotations

import math
from pathlib import Path

import train_dcgan
from config import freeze, recorded
from privacy import DPSGD
from utils import Parser, UserError, read_json, run_cli, sha256_file, write_json

METHODS = ("retrain", "finetune", "neggrad", "heldout")
DEFAULT_STEPS = 0.15  # of the original's D steps: the approximate methods' default budget


def build_parser():
    p = Parser(prog="unlearn.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the finished training run to unlearn from (only read)")
    p.add_argument("--forget", required=True, metavar="SPEC",
                   help="heads (the run's audit coins that came up heads) or a text file of image file names and "
                        "person:ID lines")
    p.add_argument("--method", choices=METHODS, default="retrain",
                   help="retrain (exact), finetune, neggrad or heldout (see above)")
    p.add_argument("--steps", type=int, default=None, metavar="S",
                   help=f"D steps of finetune / neggrad (heldout: at most S) (default: {DEFAULT_STEPS:.0%} of the "
                        "original's)")
    p.add_argument("--check-every", type=int, default=10, metavar="N",
                   help="heldout: D steps between two comparisons with never-seen images")
    p.add_argument("--out", default=None, help="the new run folder (default: RUN-unlearn-METHOD beside RUN)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted unlearning in --out")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", default="auto", help="CPU threads: N, or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_config(argv=None):
    """unlearn.py's command line, checked and frozen (a stage of reproduce.py --unlearning parses it so)."""
    args = freeze(build_parser().parse_args(argv))
    if args.steps is not None and args.steps <= 0:
        raise UserError(f"--steps must be positive, got {args.steps}")
    if args.check_every <= 0:
        raise UserError(f"--check-every must be positive, got {args.check_every}")
    return args


def plan(args) -> tuple:
    """(the unlearning run's Config, DP or not, the record for config.json): the original's configuration with
    the forget set, the method's changes and this invocation's run settings."""
    run = Path(args.run)
    if not (run / "results.json").is_file() or not (run / "ckpt.pt").is_file():
        raise UserError(f"--run {run}: not a finished training run (no results.json and ckpt.pt); train it first")
    config, results = read_json(run / "config.json"), read_json(run / "results.json")
    original = recorded(config["args"])
    if original.get("forget"):
        raise UserError(f"--run {run} is itself an unlearned run (--forget {original['forget']}); unlearn from the "
                        "original run, with everything to forget")
    private = bool(config.get("private"))
    out = Path(args.out) if args.out else run.parent / f"{run.name}-unlearn-{args.method}"
    if out.resolve() == run.resolve():
        raise UserError("--out is the original run; the unlearned model goes to a new folder")
    forget_sha = None if args.forget == "heads" else sha256_file(args.forget) if Path(args.forget).is_file() else None
    changes = {"forget": args.forget, "out": str(out), "resume": args.resume, "device": args.device,
               "threads": args.threads, "no_progress": args.no_progress}
    steps = None
    if args.method != "retrain":
        if private:
            raise UserError(f"--method {args.method} fine-tunes without DP; a DP run's ε covers every image already "
                            "(a person needs person-level DP: --privacy-unit identity), and --method retrain keeps it DP")
        steps = args.steps if args.steps is not None else max(1, round(DEFAULT_STEPS * results["steps"]))
        changes.update(init_from=str(run), max_steps=steps, epochs=math.ceil(steps / config["steps_per_epoch"]),
                       forget_as_fake=args.method in ("neggrad", "heldout"),
                       forget_until_heldout=args.method == "heldout", forget_check_every=args.check_every)
    fields = freeze(original, **changes)
    cfg = train_dcgan.check_args(fields)
    if private:
        DPSGD(cfg).check_args(cfg)
    record = {"method": args.method, "original": str(run), "original_ckpt_sha256": sha256_file(run / "ckpt.pt"),
              "original_steps": results["steps"], "original_wall_s": results.get("wall_s"), "forget": args.forget,
              "forget_sha256": forget_sha, "steps": steps}
    if args.resume and (out / "config.json").is_file():
        was = read_json(out / "config.json").get("unlearning") or {}
        for k in ("method", "original_ckpt_sha256", "forget_sha256"):
            if was.get(k) != record[k]:
                raise UserError(f"--resume {out}: it unlearned with another {k.replace('_', ' ')} ({was.get(k)}); "
                                "resume with the same --run, --forget and --method, or choose another --out")
    return cfg, private, record


def unlearn(args) -> dict:
    cfg, private, record = plan(args)
    print(f"unlearning {record['original']} by {record['method']} (forget {record['forget']}"
          + (f", {record['steps']} D steps" if record["steps"] else "") + f") -> {cfg.out}")
    results = train_dcgan.train(cfg, privacy=DPSGD(cfg) if private else None, record={"unlearning": record})
    cost = {"wall_s": results["wall_s"], "d_steps": results["steps"],
            "x_original_wall": results["wall_s"] / record["original_wall_s"] if record["original_wall_s"] else None,
            "x_original_steps": results["steps"] / record["original_steps"]}
    forgotten = read_json(Path(cfg.out) / "config.json").get("forget", {})
    out = {**record, "forgotten_entries": forgotten.get("entries"), "forgotten_images": forgotten.get("images"),
           "stopped_at_heldout": results.get("stopped_at_heldout"), "cost": cost}
    write_json(Path(cfg.out) / "unlearning.json", out)
    print(f"forgot {out['forgotten_images']} images by {record['method']}: {cost['d_steps']} D steps in "
          f"{cost['wall_s']:.0f} s" + (f" ({cost['x_original_wall']:.2f}x the original's training)"
                                       if cost["x_original_wall"] else "") + f"; audit it: python audit.py --run {cfg.out}")
    return out


def main(argv=None):
    return run_cli(lambda a: unlearn(parse_config(a)), argv)


if __name__ == "__main__":
    main()

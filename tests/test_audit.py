import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, mannwhitneyu

import audit
import audit_stats
import data
import train_dcgan
from training_set import TrainingData
from conftest import tiny_args
from models import Discriminator


# ----------------------------------------------------------------------------- statistics vs references
def test_roc_summary_matches_mann_whitney_and_brute_force():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(0.5, 1, 300), rng.normal(0, 1, 400)
    s_in[:20] = s_out[:20]  # ties
    r = audit_stats.roc_summary(s_in, s_out)
    u = mannwhitneyu(s_in, s_out).statistic  # counts ties as 1/2, like the AUC
    assert r["auc"] == pytest.approx(u / (len(s_in) * len(s_out)), abs=1e-12)
    for level in (0.01, 0.001):
        best = 0.0  # best TPR over all thresholds "score >= t" whose FPR is within the level
        for t in np.r_[s_in, s_out, np.inf]:
            if (s_out >= t).mean() <= level:
                best = max(best, (s_in >= t).mean())
        assert r["tpr_at_fpr"][str(level)] == pytest.approx(best)


def test_clopper_pearson_and_bound_by_hand():
    # k = 0: the one-sided upper limit has the closed form 1 - a^(1/n)
    assert audit_stats.clopper_pearson_upper(0, 20, 0.025) == pytest.approx(1 - 0.025 ** (1 / 20))
    assert audit_stats.clopper_pearson_upper(5, 50, 0.05) == pytest.approx(beta.ppf(0.95, 6, 45))
    assert audit_stats.clopper_pearson_upper(7, 7, 0.05) == 1.0
    u = 1 - 0.025 ** (1 / 20)  # a perfect test on 20 + 20 trials
    assert audit_stats.epsilon_lb_from_counts(0, 20, 0, 20, 0.0, 0.05) == pytest.approx(math.log((1 - u) / u))
    fpr, fnr = beta.ppf(0.975, 11, 90), beta.ppf(0.975, 31, 70)  # 10/100 false positives, 30/100 false negatives
    want = max(math.log((1 - 1e-5 - fpr) / fnr), math.log((1 - 1e-5 - fnr) / fpr))
    assert audit_stats.epsilon_lb_from_counts(10, 100, 30, 100, 1e-5, 0.05) == pytest.approx(want)
    assert audit_stats.epsilon_lb_from_counts(50, 100, 50, 100, 1e-5, 0.05) == 0.0  # a coin flip proves nothing


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_bound_on_an_eps_dp_mechanism_stays_below_eps_and_approaches_it(eps):
    """Randomized response is exactly eps-DP: the audit must never claim more, and with many trials gets close."""
    rng = np.random.default_rng(1)
    p = math.exp(eps) / (1 + math.exp(eps))
    n = 20000
    s_in = (rng.random(n) < p).astype(float)  # a member answers "member" with probability p
    s_out = (rng.random(n) < 1 - p).astype(float)
    lb = audit_stats.empirical_epsilon(s_in, s_out, delta=0.0, alpha=0.05)["epsilon_lb"]
    assert lb <= eps
    assert lb > 0.85 * eps


# ----------------------------------------------------------------------------- one-run audit
def _randomized_response(eps, m, rng):
    """m canaries with fair coins; the 'attack' reports each coin truthfully with probability e^eps / (1 + e^eps):
    exactly eps-DP with respect to each coin."""
    inc = rng.random(m) < 0.5
    truthful = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
    return np.where(truthful, inc, ~inc).astype(float), inc


@pytest.mark.parametrize("eps", [1.0, 2.0, 4.0])
def test_one_run_bound_on_randomized_response_is_valid_and_tight(eps):
    """The bound exceeds the true eps with probability <= alpha (that is all "valid" can mean for a bound that
    holds with probability 1 - alpha), and with m = 10,000 canaries it comes within 0.55 eps. Pure ε-DP (δ = 0):
    Steinke et al.'s analysis alone (no Gaussian mechanism is (ε, 0)-DP)."""
    rng = np.random.default_rng(7)
    audits = [audit_stats.one_run_audit(*_randomized_response(eps, 10_000, rng), delta=0.0, alpha=0.05, seed=s,
                                        curve=False) for s in range(200)]
    bounds = np.array([a["epsilon_lb"] for a in audits])
    assert (bounds > eps).mean() <= 0.05 and "epsilon_lb_fdp" not in audits[0]
    assert np.quantile(bounds, 0.05) >= 0.55 * eps


def test_fdp_bound_on_a_gaussian_mechanism_is_valid_and_beats_steinke():
    """m canaries scored N(μ, 1) if included, N(0, 1) if not: a mechanism exactly on the Gaussian trade-off curve of
    (ε, δ) = (2, 1e-5). The f-DP bound of 200 top guesses exceeds ε = 2 in at most alpha of 200 draws, and it
    certifies more than Steinke et al.'s on the same guesses (their Table 1's point)."""
    rng = np.random.default_rng(11)
    eps, delta, m, r = 2.0, 1e-5, 2000, 200
    mu = audit_stats.gaussian_mu(eps, delta)
    fdp, steinke = [], []
    for _ in range(200):
        inc = rng.random(m) < 0.5
        v = int(inc[np.argsort(-(rng.standard_normal(m) + mu * inc))[:r]].sum())
        fdp.append(audit_stats.one_run_epsilon_fdp(m, r, v, delta, 0.05, tol=1e-3))
        steinke.append(audit_stats.one_run_epsilon(m, r, v, delta, 0.05, tol=1e-3))
    fdp, steinke = np.array(fdp), np.array(steinke)
    assert (fdp > eps).mean() <= 0.05 and np.median(fdp) > 0.3 * eps
    assert np.all(fdp >= steinke - 1e-3) and np.median(fdp - steinke) > 0.1


# jax-privacy's CanaryScoreAuditor (google-deepmind/jax_privacy 2.0.0, an implementation independent of this one)
# on in/out scores with v of r guesses right at threshold 0: (m, r, v, δ, α, epsilon_one_run, epsilon_one_run_fdp).
# Computed 2026-12-07 with `pip install jax-privacy==2.0.0` in a separate venv, for each case:
#   CanaryScoreAuditor(np.r_[np.ones(v), -np.ones(m // 2 - v)], np.r_[np.ones(r - v), -np.ones(m - m // 2 - r + v)])
#       .epsilon_one_run(α, δ, threshold_strategy=Explicit(0.0))   (and .epsilon_one_run_fdp, the same arguments)
JAX_PRIVACY = [(200, 25, 25, 1e-5, 0.05, 2.055124, 3.393318), (200, 100, 89, 1e-5, 0.05, 1.546244, 2.979327),
               (1000, 100, 97, 1e-5, 0.05 / 12, 2.059643, 2.860625), (1000, 200, 188, 1e-5, 0.05 / 12, 1.983163, 2.77137),
               (500, 250, 250, 1e-6, 0.05 / 12, 3.804051, 6.919353), (1000, 50, 40, 1e-6, 0.05, 0.773516, 1.169284),
               (2000, 100, 70, 1e-6, 0.05, 0.471166, 0.684321), (200, 20, 12, 1e-5, 0.05, 0.0, 0.0)]


@pytest.mark.parametrize("m,r,v,delta,alpha,steinke,fdp", JAX_PRIVACY)
def test_one_run_bounds_equal_jax_privacys(m, r, v, delta, alpha, steinke, fdp):
    assert audit_stats.one_run_epsilon(m, r, v, delta, alpha) == pytest.approx(steinke, abs=1e-3)
    assert audit_stats.one_run_epsilon_fdp(m, r, v, delta, alpha) == pytest.approx(fdp, abs=1e-3)


def test_one_run_ceiling_and_idealised_value():
    """The ceiling is the bound with every guess right; the idealised value, that of a Gaussian mechanism exactly
    at the claimed ε: far below ε at m = 1,000 (about 2.9 at ε = 8, about 0.4 at ε = 2), which is why a correct
    DP-SGD's bound is small and a broken one's large."""
    rng = np.random.default_rng(5)
    inc = rng.random(1000) < 0.5
    o8 = audit_stats.one_run_audit(rng.standard_normal(1000) + inc, inc, 1e-5, 0.05, claimed_epsilon=8.0, curve=False)
    o2 = audit_stats.one_run_audit(rng.standard_normal(1000) + inc, inc, 1e-5, 0.05, claimed_epsilon=2.0, curve=False)
    assert o8["ceiling"] == o2["ceiling"] and o8["ceiling"]["epsilon_lb"] >= o8["epsilon_lb"]
    assert o8["ceiling"]["epsilon_lb"] == pytest.approx(max(
        audit_stats.one_run_epsilon_fdp(1000, r, r, 1e-5, o8["alpha_per_test"]) for r in audit_stats.guess_grid(1000)))
    assert 2.6 < o8["idealised"]["epsilon_lb"] < 3.2 and 0.25 < o2["idealised"]["epsilon_lb"] < 0.6
    # the expected correct guesses of a μ-GDP mechanism, by hand: the threshold t puts r of m above it
    from scipy.stats import norm
    mu, r = o2["idealised"]["mu"], 100
    xs = np.linspace(-5, 5, 200001)
    t = xs[np.argmax(0.5 * (norm.sf(xs - mu) + norm.sf(xs)) <= r / 1000)]
    assert abs(audit_stats.idealised_guesses(1000, r, mu) - r * 0.5 * norm.sf(t - mu) / (r / 1000)) < 1.01


def test_one_run_p_value_is_a_p_value():
    """Under the null (the true eps), P[p <= a] <= a: the bound's error probability is what it claims."""
    rng = np.random.default_rng(3)
    eps, r, m = 1.5, 400, 400
    q = math.exp(eps) / (1 + math.exp(eps))
    pvals = np.array([audit_stats.one_run_p_value(m, r, int(v), eps, 0.0) for v in rng.binomial(r, q, 2000)])
    for a in (0.05, 0.1, 0.2):
        assert (pvals <= a).mean() <= a + 3 * math.sqrt(a * (1 - a) / 2000)
    assert (pvals <= 0.5).mean() > 0.4  # not vacuous (a p-value that is always 1 would pass the line above)


def test_one_run_bound_by_hand_and_monotone():
    from scipy.stats import binom

    # delta = 0, all 100 guesses right: p = q^100 < alpha  <=>  eps < log(q / (1 - q)) with q = alpha^(1/100)
    q = 0.05 ** (1 / 100)
    assert audit_stats.one_run_epsilon(100, 100, 100, 0.0, 0.05) == pytest.approx(math.log(q / (1 - q)), abs=1e-3)
    assert audit_stats.one_run_epsilon(1000, 1000, 1000, 0.0, 0.05) == pytest.approx(5.81, abs=0.01)  # the figure
    # p-value with delta > 0, summed by hand: tail + 2 m delta max_i P[v - i <= Bin < v] / i
    m, r, v, eps, delta = 50, 30, 24, 1.0, 1e-3
    qq = math.exp(eps) / (1 + math.exp(eps))
    tail = sum(binom.pmf(k, r, qq) for k in range(v, r + 1))
    extra = max(sum(binom.pmf(k, r, qq) for k in range(v - i, v)) / i for i in range(1, v + 1))
    assert audit_stats.one_run_p_value(m, r, v, eps, delta) == pytest.approx(tail + 2 * m * delta * extra, rel=1e-9)
    assert audit_stats.one_run_p_value(m, r, v, eps, 0.0) == pytest.approx(tail, rel=1e-9)
    bounds = [audit_stats.one_run_epsilon(500, 200, v, 1e-6, 0.05) for v in range(90, 201, 5)]
    assert bounds == sorted(bounds) and bounds[0] == 0.0 and bounds[-1] > 3  # monotone in v
    # more delta can only weaken the bound
    assert audit_stats.one_run_epsilon(500, 200, 190, 1e-3, 0.05) < audit_stats.one_run_epsilon(500, 200, 190, 0.0, 0.05)


def test_one_run_audit_counts_guesses_and_ignores_coin_order():
    scores = np.r_[np.array([5.0, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6]), np.full(8, -9.0)]
    inc = np.r_[np.array([1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0], bool), np.zeros(8, bool)]
    r = audit_stats.one_run_audit(scores, inc, 1e-5, 0.05, fractions=(0.5,))
    # 10 guesses "in" for the 10 top scores: 5 of them members
    assert (r["r"], r["v"], r["m"], r["included"]) == (10, 5, 20, 6)
    assert r["alpha_per_test"] == 0.025 and r["grid"][0]["v"] == 5 and set(r["grid"][0]) >= {
        "epsilon_lb_steinke", "epsilon_lb_fdp"}


def test_exposure_by_hand():
    refs = np.arange(10.0)  # M = 10 references
    e = audit_stats.exposure([9.5, 4.5, -1.0, 9.0], refs)
    # ranks: 1 (beats all), 6 (refs 5..9 score >= 4.5), 11 (all refs above), 2 (ties count against the canary)
    np.testing.assert_allclose(e, [math.log2(10), math.log2(10) - math.log2(6), math.log2(10) - math.log2(11),
                                   math.log2(10) - 1])


def test_nearest_l2_matches_numpy():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8, generator=g)
    r = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8, generator=g)
    qn, rn = q.flatten(1).numpy() / 255.0, r.flatten(1).numpy() / 255.0
    want = np.sqrt(((qn[:, None] - rn[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(audit.nearest_l2(q, r, "cpu", chunk=3), want, rtol=1e-5)


# ----------------------------------------------------------------------------- attacks on controlled models
def _fit(D, pos, neg, steps=150):
    opt = torch.optim.Adam(D.parameters(), lr=2e-3)
    x = data.to_float(torch.cat([pos, neg]))
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(D(x), y).backward()
        opt.step()
    return D


def test_white_box_attack_detects_an_overfitted_discriminator_only():
    torch.manual_seed(0)
    imgs = data.load_images("digits", image_size=32, channels=1)
    pool = imgs.split("train")[torch.randperm(len(imgs.split("train")))]
    members, others, unseen = pool[:48], pool[48:96], pool[96:192]
    nonmembers = imgs.split("test")[:48]
    # trained to say "1" on the members only, against other images of the same distribution: memorisation
    over = _fit(Discriminator(16, 1, 32), members, others)
    r = audit_stats.roc_summary(audit.discriminator_scores(over, members, "cpu"),
                          audit.discriminator_scores(over, nonmembers, "cpu"))
    assert r["auc"] > 0.8
    # the same training on images that exclude the members: no membership signal
    blind = _fit(Discriminator(16, 1, 32), unseen[:48], unseen[48:])
    r = audit_stats.roc_summary(audit.discriminator_scores(blind, members, "cpu"),
                          audit.discriminator_scores(blind, nonmembers, "cpu"))
    assert abs(r["auc"] - 0.5) < 0.15


def test_black_box_attack_detects_copies_of_members():
    imgs = data.load_images("digits", image_size=32, channels=1)
    pool = imgs.split("train")[torch.randperm(len(imgs.split("train")), generator=torch.Generator().manual_seed(1))]
    members, nonmembers, fresh = pool[:100], imgs.split("test")[:100], pool[200:1200]
    noise = torch.randint(-3, 4, members.shape, generator=torch.Generator().manual_seed(0))
    copies = (members.int() + noise).clamp(0, 255).to(torch.uint8)
    r = audit_stats.roc_summary(-audit.nearest_l2(members, copies, "cpu"), -audit.nearest_l2(nonmembers, copies, "cpu"))
    assert r["auc"] > 0.99
    # a "generator" that never saw the members (other images of the train split)
    r = audit_stats.roc_summary(-audit.nearest_l2(members, fresh, "cpu"), -audit.nearest_l2(nonmembers, fresh, "cpu"))
    assert abs(r["auc"] - 0.5) < 0.12


def test_pixel_copy_test_detects_copies_only(tmp_path):
    imgs = data.load_images("digits", image_size=32, channels=1)
    pool = imgs.splits["train"][torch.randperm(len(imgs.splits["train"]), generator=torch.Generator().manual_seed(2))]
    members, nonmembers, fresh = imgs.images[pool[:300]], imgs.images[pool[300:600]], imgs.images[pool[600:1200]]
    noise = torch.randint(-3, 4, (600, *members.shape[1:]), generator=torch.Generator().manual_seed(0))
    copies = (members[torch.arange(600) % 300].int() + noise).clamp(0, 255).to(torch.uint8)
    c = audit.pixel_copies(copies, members, nonmembers, "cpu", permutations=50, gallery=tmp_path / "copies.png")
    assert c["copying_rate"] > 0.99 and c["fraction_ratio_below_0.5"] > 0.9 and c["p_value"] == 1 / 51
    assert (tmp_path / "copies.png").stat().st_size > 0
    # a "generator" that draws other images of the same distribution: no nearer the members than the non-members
    c = audit.pixel_copies(fresh, members, nonmembers, "cpu", permutations=50)
    assert abs(c["copying_rate"] - 0.5) < 0.06 and c["fraction_ratio_below_0.5"] < 0.02 and c["p_value"] > 0.05
    d_in, d_out = audit.nearest_l2(fresh, members, "cpu"), audit.nearest_l2(fresh, nonmembers, "cpu")
    assert c["copying_rate"] == pytest.approx((d_in < d_out).mean() + 0.5 * (d_in == d_out).mean(), abs=1e-6)
    # a collapsed generator (one mode near one image) gets an extreme rate by luck: the permutation test knows it
    m = members[:1].float() * 0.5 + fresh.float().mean(0, keepdim=True) * 0.5
    collapsed = (m + torch.randn(200, *m.shape[1:], generator=torch.Generator().manual_seed(1))).round().clamp(0, 255)
    c = audit.pixel_copies(collapsed.to(torch.uint8), members, nonmembers, "cpu", permutations=50)
    assert c["copying_rate"] > 0.9 and c["p_value"] > 0.2


def test_pixel_copy_p_value_is_valid():
    """Under exchangeable members and non-members, P[p <= a] <= a (here over 40 random splits, a = 0.1, 0.25)."""
    imgs = data.load_images("digits", image_size=16, channels=1)
    real, gen = imgs.images[imgs.splits["train"][:80]], imgs.images[imgs.splits["train"][200:260]]
    ps = []
    for seed in range(40):
        perm = torch.randperm(80, generator=torch.Generator().manual_seed(seed))
        ps.append(audit.pixel_copies(gen, real[perm[:40]], real[perm[40:]], "cpu", permutations=19, seed=seed)["p_value"])
    ps = np.array(ps)
    assert (ps <= 0.1).mean() <= 0.1 + 0.1 and (ps <= 0.25).mean() <= 0.25 + 0.15


# ----------------------------------------------------------------------------- the CLI on a real run
@pytest.fixture(scope="module")
def canary_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("canary_run")
    train_dcgan.main(tiny_args(run, "--max-steps", "3", "--canaries", "2", "--canary-repeats", "1,3"))
    return run


def test_canaries_are_inserted_and_recorded(canary_run):
    plan = json.loads((canary_run / "canaries.json").read_text())
    assert plan["repeats"] == [1, 1, 3, 3] and plan["split"] == "val"
    imgs = data.load_images("digits", image_size=32, channels=1)
    assert set(plan["indices"]) <= set(imgs.splits["val"].tolist())
    cfg = json.loads((canary_run / "config.json").read_text())
    assert cfg["n_train"] == len(imgs.splits["train"]) + 8 and cfg["canaries"]["copies"] == 8
    args = train_dcgan.build_parser().parse_args(tiny_args(canary_run, "--canaries", "2", "--canary-repeats", "1,3"))
    td = TrainingData(args)
    train_u8 = td.imgs.images[td.index]
    for i, r in zip(plan["indices"], plan["repeats"]):  # each canary appears exactly R times in training
        assert int((train_u8 == imgs.images[i]).flatten(1).all(1).sum()) == r


def test_audit_cli_end_to_end(canary_run, tmp_path):
    audit.main(["--run", str(canary_run), "--num-samples", "64", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "audit.json").read_text())
    assert (tmp_path / "roc.png").stat().st_size > 0
    m = res["canaries"]["references"]
    assert m == 180 - 4  # the val split minus the canaries
    assert res["calibration_images"] == 60  # a third of the test split calibrates the black-box distance
    for att in ("white_box", "black_box", "black_box_calibrated"):
        a = res["attacks"][att]
        assert 0 <= a["auc"] <= 1 and a["n_members"] == a["n_nonmembers"] == 120
        assert set(a["exposure"]) == {"1", "3"}
        for e in a["exposure"].values():
            assert math.log2(m) - math.log2(m + 1) <= e["min"] <= e["max"] <= math.log2(m)
        assert a["epsilon_lower_bound"]["epsilon_lb"] >= 0
    with np.load(tmp_path / "scores.npz") as z:
        assert z["white_box_canaries"].shape == (4,) and z["black_box_references"].shape == (m,)
    assert res["copies"]["generated"] == 64 and res["copies"]["members"] == 120 and (tmp_path / "copies.png").is_file()
    # deterministic: the same audit twice gives the same numbers
    audit.main(["--run", str(canary_run), "--num-samples", "64", "--out", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "audit.json").read_text())
    assert again["attacks"] == res["attacks"]


def test_one_run_bound_over_attacks_holds_at_alpha_and_reference_models_give_lira_rmia(tmp_path):
    """Each attack's one-run bound is tested at alpha / #attacks (Bonferroni; inside, at alpha / (2 x grid) per
    analysis and guess count), so the reported maximum over the attacks holds at alpha. With --reference-runs, the
    LiRA, RMIA and reference-calibrated black-box attacks are computed from the reference models' logits and
    samples (here checked against audit_stats on the logits read back)."""
    run, refs = tmp_path / "coins", [tmp_path / "ref1", tmp_path / "ref2"]
    train_dcgan.main(tiny_args(run, "--max-steps", "2", "--train-size", "40", "--coin-subset"))
    for i, ref in enumerate(refs):
        train_dcgan.main(tiny_args(ref, "--max-steps", "2", "--seed", str(i + 1)))
    audit.main(["--run", str(run), "--num-samples", "32", "--out", str(tmp_path / "audit"), "--reference-runs",
                ",".join(map(str, refs))])
    res = json.loads((tmp_path / "audit" / "audit.json").read_text())
    scores = np.load(tmp_path / "audit" / "scores.npz")
    td, _ = audit.load_run(run)
    cand = td.imgs.images[td.coins["indices"]]
    ref_logits = np.stack([audit.discriminator_scores(audit.load_run(r)[1], cand, "cpu") for r in refs])
    diff = scores["white_box_candidates"] - ref_logits.mean(0)  # LiRA: this over σ pooled over every query
    lira = scores["white_box_lira_candidates"]
    k = float(lira @ diff / (diff @ diff))
    assert k > 0 and np.allclose(lira, k * diff, atol=1e-5)
    assert np.allclose(scores["reference_logit_candidates"], ref_logits.mean(0), atol=1e-5)
    per_attack = {k: a["one_run"] for k, a in res["attacks"].items()}
    assert set(per_attack) == set(audit.ATTACKS) - {"white_box_augmented"} and res["alpha"] == 0.05
    for o in per_attack.values():
        assert o["m"] == 80 and o["alpha"] == pytest.approx(0.05 / 6)
        assert o["alpha_per_test"] == pytest.approx(o["alpha"] / (2 * len(o["grid"])))
        assert o["ceiling"]["epsilon_lb"] >= o["epsilon_lb"]
    assert res["one_run_epsilon_lb"] == max(o["epsilon_lb"] for o in per_attack.values())
    assert 0 <= scores["white_box_rmia_members"].min() and scores["white_box_rmia_members"].max() <= 1


def test_lira_and_rmia_by_hand():
    target, ref = [3.0, 1.0, -1.0], [[1.0, 0.0, -2.0], [3.0, 0.0, 0.0]]
    # means 2, 0, -1; deviations ±1, 0, ±1: pooled variance 4 / (6 - 3)
    assert np.allclose(audit_stats.lira_offline(target, ref), np.array([1.0, 1.0, 0.0]) / math.sqrt(4 / 3))
    assert np.allclose(audit_stats.lira_offline(target, ref[:1]), [2.0, 1.0, 1.0])  # one model: the difference
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731

    def ratio(t, refs):  # Pr(x|θ) / Pr(x), Pr(x) = ((1 + a) mean Pr(x|θ_r) + 1 - a) / 2, a = 0.3
        p_out = sum(sig(r) for r in refs) / len(refs)
        return sig(t) / (0.5 * (1.3 * p_out + 0.7))

    pop_t, pop_ref = [-6.0, -3.0, -1.0, 1.0], [[0.0] * 4, [0.0] * 4]
    want = [sum(ratio(target[i], [r[i] for r in ref]) >= 2 * ratio(pop_t[j], [r[j] for r in pop_ref])
                for j in range(4)) / 4 for i in range(3)]
    assert np.allclose(audit_stats.rmia_offline(target, ref, pop_t, pop_ref), want) and len(set(want)) > 1


def test_augmentation_averaged_attack_equals_d_on_mirror_symmetric_images(tmp_path):
    """A run trained with --augment flip is attacked with E_T[D(T(x))]: on a left-right symmetric image every flip
    draw gives D(x) itself, so the averaged score equals the raw logit; on others it lies between D(x) and D of the
    mirror image. A run without augmentation has no such attack."""
    run = tmp_path / "aug"
    train_dcgan.main(tiny_args(run, "--max-steps", "2", "--augment", "flip"))
    _, D = audit.load_run(run)
    x = (torch.rand(6, 1, 32, 32) * 255).to(torch.uint8)
    sym = torch.cat([x[..., :16], x[..., :16].flip(3)], 3)
    raw, mirror = audit.discriminator_scores(D, x, "cpu"), audit.discriminator_scores(D, x.flip(3), "cpu")
    assert np.allclose(audit.augmented_scores(D, sym, "flip", "cpu"), audit.discriminator_scores(D, sym, "cpu"),
                       atol=1e-5)
    avg = audit.augmented_scores(D, x, "flip", "cpu")
    assert np.all(avg >= np.minimum(raw, mirror) - 1e-5) and np.all(avg <= np.maximum(raw, mirror) + 1e-5)
    assert not np.allclose(avg, raw)
    res = audit.audit(audit.parse_args(["--run", str(run), "--num-samples", "16", "--out", str(tmp_path / "a")]))
    assert "white_box_augmented" in res["attacks"]


@pytest.mark.parametrize("extra,msg", [
    ([], "not a run folder"),
    (["--alpha", "2"], "--alpha must be in (0, 1)"),  # was an endless loop in the one-run bound's search
    (["--alpha", "0"], "--alpha must be in (0, 1)"),
    (["--calibration-size", "-1"], "--calibration-size must be >= 0"),  # calibrated on all but 1 held-out image
    (["--max-members", "1"], "--max-members must be >= 2"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--delta", "1.5"], "--delta must be in [0, 1)"),
    (["--stop-auc", "2"], "--stop-auc is an AUC in [0, 1]"),
])
def test_audit_bad_input_is_one_line(tmp_path, capsys, extra, msg):
    with pytest.raises(SystemExit) as e:
        audit.main(["--run", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1


def test_too_many_canaries_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_dcgan.main(tiny_args(tmp_path / "r", "--canaries", "100", "--canary-repeats", "1,2"))
    assert e.value.code == 2 and "fewer canaries" in capsys.readouterr().err


def test_copy_rate_by_nearest_images_equals_the_direct_minima():
    """The copy test counts, per relabeling, the samples whose nearest real images all lie in the 'in' half (ties
    half): the same rate as comparing the two halves' minima directly, including exact ties."""
    g = torch.Generator().manual_seed(3)
    real = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8, generator=g)
    real[25] = real[3]  # an exact tie across the halves (a member and a non-member with the same pixels)
    gen = torch.cat([real[3:4], torch.randint(0, 256, (59, 1, 6, 6), dtype=torch.uint8, generator=g)])
    res = audit.pixel_copies(gen, real[:20], real[20:], "cpu", permutations=30, seed=1)
    d = torch.cdist(gen.flatten(1).float() / 255, real.flatten(1).float() / 255)
    a, b = d[:, :20].min(1).values, d[:, 20:].min(1).values
    assert res["copying_rate"] == pytest.approx(float((a < b).float().mean() + 0.5 * (a == b).float().mean()))
    perm = torch.Generator().manual_seed(1)
    null = []
    for _ in range(30):
        first = torch.randperm(40, generator=perm)[:20]
        other = torch.ones(40, dtype=torch.bool)
        other[first] = False
        a, b = d[:, first].min(1).values, d[:, other].min(1).values
        null.append(float((a < b).double().mean() + 0.5 * (a == b).double().mean()))
    assert res["p_value"] == (1 + sum(r >= res["copying_rate"] - 1e-9 for r in null)) / 31


def test_snapshots_and_the_audit_over_training(tmp_path, inception_weights, capsys):
    """--snapshot-every keeps the models every N D steps; audit.py --checkpoint audits one of them (its D and G,
    not the final ones), and --over-training audits and scores each checkpoint, with the early-stopping choice."""
    run = tmp_path / "run"
    train_dcgan.main(tiny_args(run, "--max-steps", "6", "--train-size", "40", "--coin-subset", "--snapshot-every", "2"))
    snaps = sorted(p.name for p in (run / "snapshots").iterdir())
    assert snaps == ["step0000002.pt", "step0000004.pt", "step0000006.pt"]
    from models import load_discriminator
    from utils import safe_load

    final, first = safe_load(run / "ckpt.pt"), safe_load(run / "snapshots" / "step0000002.pt")
    assert first["step"] == 2 and final["step"] == 6
    for k, v in final["D"].items():  # the last snapshot holds the final models
        assert torch.equal(safe_load(run / "snapshots" / "step0000006.pt")["D"][k], v)
    assert not all(torch.equal(first["D"][k], v) for k, v in final["D"].items())
    a2 = audit.audit(audit.build_parser().parse_args(
        ["--run", str(run), "--checkpoint", str(run / "snapshots" / "step0000002.pt"), "--num-samples", "32",
         "--out", str(tmp_path / "a2")]))
    with np.load(tmp_path / "a2" / "scores.npz") as z:  # the white-box scores are the snapshot's D's logits
        td, _ = audit.load_run(run)
        D2 = load_discriminator(run / "snapshots" / "step0000002.pt")
        want = audit.discriminator_scores(D2, td.imgs.images[torch.tensor(td.coins["indices"])], "cpu")
        np.testing.assert_allclose(z["white_box_candidates"], want, rtol=1e-5, atol=1e-6)
    assert a2["checkpoint"].endswith("step0000002.pt")

    out = tmp_path / "over"
    audit.main(["--run", str(run), "--over-training", "--num-samples", "32", "--fid-samples", "16", "--max-real", "24",
                "--inception-weights", str(inception_weights), "--cache-dir", "", "--threads", "1",
                "--stop-auc", "1.0", "--out", str(out)])
    res = json.loads((out / "over_training.json").read_text())
    assert [p["step"] for p in res["points"]] == [2, 4, 6]
    assert res["points"][0]["auc_white"] == a2["attacks"]["white_box"]["auc"]
    for p in res["points"]:
        assert p["n_gen"] == 16 and p["fid_train"] > 0 and 0 <= p["auc_white"] <= 1
        assert (out / f"step{p['step']:07d}" / "eval" / "eval.json").is_file()
    assert res["early_stopping"] == min(res["points"], key=lambda p: p["fid_train"])  # every AUC <= 1.0
    assert (out / "over_training.png").stat().st_size > 0
    (tmp_path / "none").mkdir()
    with pytest.raises(SystemExit) as e:  # a run without snapshots says how to get them
        audit.main(["--run", str(tmp_path / "none"), "--over-training"])
    assert e.value.code == 2 and "--snapshot-every" in capsys.readouterr().err

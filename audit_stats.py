"""The statistics of a privacy audit, on attack scores alone (no models, no data): ROC summaries, the heuristic
ε bound of a threshold test, the one-run ε lower bounds on coin-flipped candidates (Steinke, Nasr & Jagielski 2023;
the f-DP analysis of Mahloujifar, Melis & Chaudhuri 2024) with their ceilings and idealised values, and
Secret-Sharer exposure. audit.py computes the scores and calls these; each has a test against a hand computation
or an independent implementation.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from utils import seeded_perm

FPR_LEVELS = (0.01, 0.001)


def roc_summary(s_in, s_out, fpr_levels=FPR_LEVELS) -> dict:
    """ROC AUC and the best TPR at FPR <= each level (members positive, higher score = member)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in, s_out].astype(np.float64)
    fpr, tpr, _ = roc_curve(y, s)
    return {"auc": float(roc_auc_score(y, s)),
            "tpr_at_fpr": {str(f): float(tpr[fpr <= f].max()) for f in fpr_levels},
            "n_members": len(s_in), "n_nonmembers": len(s_out)}


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) upper confidence limit of a binomial proportion k / n."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(1 - alpha, k + 1, n - k))


def epsilon_from_rates(fpr: float, fnr: float, delta: float) -> float:
    """The largest epsilon that a test with these error rates rules out for (epsilon, delta)-DP."""
    best = 0.0
    for a, b in ((fpr, fnr), (fnr, fpr)):
        if b > 0 and 1 - delta - a > 0:
            best = max(best, math.log((1 - delta - a) / b))
        elif b <= 0 and 1 - delta - a > 0:
            return math.inf
    return best


def epsilon_lb_from_counts(fp: int, n_out: int, fn: int, n_in: int, delta: float, alpha: float) -> float:
    """Clopper-Pearson epsilon lower bound from a test's false positives / negatives (alpha/2 per rate)."""
    return epsilon_from_rates(clopper_pearson_upper(fp, n_out, alpha / 2),
                              clopper_pearson_upper(fn, n_in, alpha / 2), delta)


def _errors(s_in, s_out, thresholds):
    """False negatives (members below t) and false positives (non-members >= t) for each threshold t."""
    fn = np.searchsorted(np.sort(s_in), thresholds, side="left")
    fp = len(s_out) - np.searchsorted(np.sort(s_out), thresholds, side="left")
    return fn, fp


def empirical_epsilon(s_in, s_out, delta: float, alpha: float = 0.05, seed: int = 0) -> dict:
    """Threshold chosen on one half of members/non-members, Clopper-Pearson bound on the other half."""
    rng = np.random.default_rng(seed)
    s_in, s_out = np.asarray(s_in, np.float64), np.asarray(s_out, np.float64)
    pi, po = rng.permutation(len(s_in)), rng.permutation(len(s_out))
    a_in, b_in = s_in[pi[:len(pi) // 2]], s_in[pi[len(pi) // 2:]]
    a_out, b_out = s_out[po[:len(po) // 2]], s_out[po[len(po) // 2:]]
    if min(len(a_in), len(a_out), len(b_in), len(b_out)) == 0:
        return {"epsilon_lb": 0.0, "threshold": None, "note": "too few members/non-members"}
    cand = np.unique(np.r_[a_in, a_out, np.inf])
    fn, fp = _errors(a_in, a_out, cand)
    crit = [epsilon_lb_from_counts(int(p), len(a_out), int(n), len(a_in), delta, alpha) for n, p in zip(fn, fp)]
    t = float(cand[int(np.argmax(crit))])
    fn_b, fp_b = (int(v[0]) for v in _errors(b_in, b_out, np.array([t])))
    return {"epsilon_lb": epsilon_lb_from_counts(fp_b, len(b_out), fn_b, len(b_in), delta, alpha),
            "threshold": t, "fp": fp_b, "n_nonmembers": len(b_out), "fn": fn_b, "n_members": len(b_in),
            "delta": delta, "alpha": alpha}


# ----------------------------------------------------------------------------- one-run audit (Steinke et al. 2023)
def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[at least v of r guesses correct] under (eps, delta)-DP, for m candidates each included independently with
    probability 1/2 (Steinke, Nasr & Jagielski, NeurIPS 2023: their bound for approximate DP, as their code
    computes it):
    P[Binomial(r, q) >= v] + 2 m delta max_{i=1..v} P[v - i <= Binomial(r, q) < v] / i, q = e^eps / (1 + e^eps)."""
    from scipy.special import expit
    from scipy.stats import binom

    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = float(expit(eps))
    p = float(binom.sf(v - 1, r, q))
    if delta > 0 and v > 0:
        below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))  # [i-1]: P[v - i <= Bin < v]
        p += 2 * m * delta * float((below / np.arange(1, v + 1)).max())
    return min(p, 1.0)


def one_run_epsilon(m: int, r: int, v: int, delta: float, alpha: float, tol: float = 1e-4) -> float:
    """The largest eps whose p-value is still < alpha (0 if even eps = 0 is not rejected): with probability
    >= 1 - alpha over the coins, the training run is not (eps, delta)-DP for any eps below it."""
    if r == 0 or one_run_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < alpha and hi < 1e4:  # the p-value grows with eps
        lo, hi = hi, 2 * hi
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if one_run_p_value(m, r, v, mid, delta) < alpha else (lo, mid)
    return lo


# ----------------------------------------------------------------------------- one-run audit (f-DP: Mahloujifar et al.)
@functools.lru_cache(maxsize=4096)
def gaussian_mu(eps: float, delta: float) -> float:
    """μ of the Gaussian mechanism that is exactly (ε, δ)-DP: sensitivity 1 and noise 1/μ (the analytic Gaussian
    mechanism of Balle & Wang 2018, dp_accounting.get_sigma_gaussian). Its trade-off curve is μ-GDP's."""
    from dp_accounting import get_sigma_gaussian

    sigma = get_sigma_gaussian(eps, delta)
    return math.inf if sigma == 0 else 1.0 / sigma


def fdp_falsified(m: int, r: int, v: int, alpha: float, mu: float) -> bool:
    """Would v or more correct of r one-sided guesses ("in" for the r top-scored of m candidates, each included
    with probability 1/2) happen with probability below alpha if the run were μ-GDP? The bound of Mahloujifar,
    Melis & Chaudhuri (2024, "Auditing f-differential privacy in one run", their recursion with the cap at 1):
    starting from the probability mass alpha v / m on correct and alpha (r - v) / m on wrong guesses, it walks the
    count of correct guesses down from v, each step raising the wrong mass to what the trade-off curve forces,
    f^-1(correct mass) = Φ(Φ^-1(mass) - μ), and the correct mass by the share of guesses that step moves; the
    outcome is impossible at alpha when the total exceeds the fraction r / m of candidates guessed."""
    from scipy.special import ndtr, ndtri  # Φ and Φ^-1 (scipy.stats.norm's are 50x slower on scalars)

    if r == 0:
        return False
    right, wrong = alpha * v / m, alpha * (r - v) / m
    for i in range(v - 1, -1, -1):
        forced = max(wrong, float(ndtr(ndtri(right) - mu)) if math.isfinite(mu) else float(right >= 1))
        if forced == wrong:
            break  # nothing moves from here on
        right, wrong = min(right + i / (r - i) * (forced - wrong), 1.0), forced
    return right + wrong > r / m


def one_run_epsilon_fdp(m: int, r: int, v: int, delta: float, alpha: float, tol: float = 1e-4) -> float:
    """The largest ε such that v of r correct one-sided guesses falsify the Gaussian trade-off curve of (ε, δ)
    (gaussian_mu) at significance alpha; 0 if even ε = 0 is not falsified."""
    if not 0 < delta < 1:
        raise ValueError(f"the f-DP analysis needs 0 < δ < 1 (no Gaussian mechanism is (ε, 0)-DP), got {delta}")
    if r == 0 or not fdp_falsified(m, r, v, alpha, gaussian_mu(0.0, delta)):
        return 0.0
    lo, hi = 0.0, 1.0
    while fdp_falsified(m, r, v, alpha, gaussian_mu(hi, delta)) and hi < 1e4:  # a larger ε is harder to falsify
        lo, hi = hi, 2 * hi
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fdp_falsified(m, r, v, alpha, gaussian_mu(mid, delta)) else (lo, mid)
    return lo


ONE_RUN_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5)  # guesses r as fractions of m, fixed in advance (r >= 10)
ANALYSES = {"steinke": one_run_epsilon, "fdp": one_run_epsilon_fdp}


def guess_grid(m: int, fractions=ONE_RUN_FRACTIONS) -> list:
    """The pre-declared guess counts for m candidates: fractions of m, at least 10 guesses each."""
    return sorted({round(f * m) for f in fractions if round(f * m) >= 10})


def _analyses(delta: float) -> dict:
    """The analyses that apply: the f-DP one needs δ > 0 (no Gaussian mechanism is (ε, 0)-DP)."""
    return ANALYSES if delta > 0 else {"steinke": one_run_epsilon}


def _best(m: int, rows: list, delta: float, a: float) -> dict:
    """Each analysis' bound for each (r, v) of ``rows`` at per-test level ``a``; the best over both."""
    analyses = _analyses(delta)
    for row in rows:
        row.update({f"epsilon_lb_{k}": fn(m, row["r"], row["v"], delta, a) for k, fn in analyses.items()})
    best = {k: max((row[f"epsilon_lb_{k}"] for row in rows), default=0.0) for k in analyses}
    return {"epsilon_lb": max(best.values()), **{f"epsilon_lb_{k}": b for k, b in best.items()}}


def idealised_guesses(m: int, r: int, mu: float) -> int:
    """The expected correct guesses among the r top-scored of m candidates when each candidate's score is N(μ, 1)
    if included and N(0, 1) if not (coins 1/2): a μ-GDP mechanism audited exactly (rounded down)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    share = r / m
    t = brentq(lambda x: 0.5 * (norm.sf(x - mu) + norm.sf(x)) - share, -40, 40 + mu)
    return int(math.floor(r * 0.5 * norm.sf(t - mu) / share + 1e-9))


def one_run_audit(scores, included, delta: float, alpha: float = 0.05, seed: int = 0,
                  fractions=ONE_RUN_FRACTIONS, claimed_epsilon: float | None = None, curve: bool = True,
                  two_sided: bool = False) -> dict:
    """One-run ε lower bound from the attack scores of m coin-flipped candidates, by both analyses.

    For each pre-declared number of guesses r (guess_grid), guess "in" for the r highest scores (ties broken by a
    seeded permutation, independent of the coins); v = correct guesses. Two analyses: Steinke, Nasr & Jagielski
    (2023) and the f-DP analysis of Mahloujifar, Melis & Chaudhuri (2024) for the Gaussian trade-off curve of
    (ε, δ): the first holds for any (ε, δ)-DP mechanism, the second for one whose trade-off curve is no worse than
    the Gaussian mechanism's at that (ε, δ), as DP-SGD's is (it composes subsampled Gaussians; with δ = 0 only the
    first applies). Every (r, analysis) is tested at alpha / (2 |grid|) (Bonferroni), so the reported maximum holds
    with probability >= 1 - alpha. ``ceiling``: the bounds if all r guesses were right (what m candidates can prove at
    most); ``idealised``: for a mechanism exactly at the ``claimed_epsilon`` (a Gaussian one, audited with
    perfectly informative scores): how tight this audit could be. ``two_sided``: also guess "in" for the r
    LOWEST scores (an unlearned model may push what it forgot below what it never saw: that, too, tells the coins
    apart), each side a pre-declared test of its own (Bonferroni over both)."""
    s = np.asarray(scores, np.float64)
    inc = np.asarray(included, bool)
    m = len(s)
    perm = seeded_perm(m, seed).numpy()
    sides = ("high", "low") if two_sided else ("high",)
    # [side][r-1]: members among the r top (or bottom) scores; ties in a coin-independent order
    on_top = {side: np.cumsum(inc[np.lexsort((perm, -s if side == "high" else s))]) for side in sides}
    grid = guess_grid(m, fractions)
    a = alpha / max(1, len(_analyses(delta)) * len(grid) * len(sides))
    rows = [{"r": r, "v": int(on_top[side][r - 1]), **({"side": side} if two_sided else {})}
            for side in sides for r in grid]
    out = {**_best(m, rows, delta, a), "m": m, "included": int(inc.sum()), "delta": delta, "alpha": alpha,
           "alpha_per_test": a, "grid": rows}
    best = max(rows, key=lambda x: max(x[f"epsilon_lb_{k}"] for k in _analyses(delta)),
               default={"r": 0, "v": 0, "side": "high"})
    out.update(r=best["r"], v=best["v"])
    if two_sided:
        out.update(two_sided=True, side=best.get("side", "high"))
    members_on_top = on_top[best.get("side", "high")]
    out["ceiling"] = _best(m, [{"r": r, "v": r} for r in grid], delta, a)
    if claimed_epsilon is not None and math.isfinite(claimed_epsilon) and delta > 0:
        mu = gaussian_mu(claimed_epsilon, delta)
        out["idealised"] = {"claimed_epsilon": claimed_epsilon, "mu": mu,
                            **_best(m, [{"r": r, "v": idealised_guesses(m, r, mu)} for r in grid], delta, a)}
    curve_fn = _analyses(delta).get("fdp", one_run_epsilon)
    out["curve"] = [{"r": int(r), "v": int(members_on_top[r - 1]),
                     "epsilon_lb_uncorrected": curve_fn(m, int(r), int(members_on_top[r - 1]), delta, alpha,
                                                        tol=1e-3)}
                    for r in np.unique(np.geomspace(10, max(10, m // 2), 30).astype(int)) if r <= m] if curve else []
    return out


# ----------------------------------------------------------------------------- reference-model attacks
def lira_offline(target, reference) -> np.ndarray:
    """Offline LiRA with a global variance (Carlini et al. 2022, their offline attack): each query's logit under the
    target model against the Gaussian its reference models (none trained on it) fit, z = (φ(x) − μ_out(x)) / σ_out,
    with σ_out pooled over every query and reference model (one reference model: σ_out = 1, the calibrated
    difference). The test's p-value 1 − Φ(z) falls as z rises, so z is the membership score. ``target``: (n,)
    logits, ``reference``: (R, n)."""
    ref = np.atleast_2d(np.asarray(reference, np.float64))
    mu = ref.mean(0)
    sigma = math.sqrt(((ref - mu) ** 2).sum() / (ref.size - ref.shape[1])) if len(ref) > 1 else 1.0
    return (np.asarray(target, np.float64) - mu) / max(sigma, 1e-12)


RMIA_A, RMIA_GAMMA = 0.3, 2.0  # ML Privacy Meter's offline defaults


def rmia_offline(target, reference, population_target, population_reference, a: float = RMIA_A,
                 gamma: float = RMIA_GAMMA) -> np.ndarray:
    """Offline RMIA (Zarifzadeh, Liu & Shokri 2024): Pr(x|θ) = sigmoid(D(x)), D's probability that x is real;
    Pr(x) = ((1 + a) mean_r Pr(x|θ_r) + 1 − a) / 2 from the reference models (offline: none trained on x); the
    score of x is the share of population images z (never trained on) with
    (Pr(x|θ) / Pr(x)) / (Pr(z|θ) / Pr(z)) >= gamma. Logits as lira_offline's, ``population_*`` likewise."""
    from scipy.special import expit

    def ratio(t, ref):
        p_ref = expit(np.atleast_2d(np.asarray(ref, np.float64))).mean(0)
        return expit(np.asarray(t, np.float64)) / (0.5 * ((1 + a) * p_ref + 1 - a))

    x, z = ratio(target, reference), ratio(population_target, population_reference)
    return (x[:, None] >= gamma * z[None, :]).mean(1)


def exposure(canary_scores, ref_scores) -> np.ndarray:
    """Secret-Sharer exposure of each canary among M references: log2(M) - log2(rank)."""
    ref = np.asarray(ref_scores, np.float64)
    rank = 1 + (ref[None, :] >= np.asarray(canary_scores, np.float64)[:, None]).sum(1)
    return math.log2(len(ref)) - np.log2(rank)

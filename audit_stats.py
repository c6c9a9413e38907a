"""The statistics of a privacy audit, on attack scores alone (no models, no data): ROC summaries, the heuristic
ε bound of a threshold test, the one-run ε lower bound of Steinke, Nasr & Jagielski (2023) on coin-flipped
candidates, and Secret-Sharer exposure. audit.py computes the scores and calls these; each has a test against a
hand computation or an independent implementation.
"""
from __future__ import annotations

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
    while one_run_p_value(m, r, v, hi, delta) < alpha:  # the p-value grows with eps
        lo, hi = hi, 2 * hi
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if one_run_p_value(m, r, v, mid, delta) < alpha else (lo, mid)
    return lo


ONE_RUN_FRACTIONS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)  # guesses r as fractions of m, fixed in advance


def one_run_audit(scores, included, delta: float, alpha: float = 0.05, seed: int = 0,
                  fractions=ONE_RUN_FRACTIONS, curve: bool = True) -> dict:
    """One-run epsilon lower bound from the attack scores of m coin-flipped candidates.

    For each pre-declared number of guesses r = f m (f in ``fractions``, r >= 10), guess "in" for the r/2
    highest scores and "out" for the r/2 lowest (ties broken by a seeded permutation, independent of the
    coins), abstain on the rest; v = correct guesses. Each r is tested at alpha / len(grid) (Bonferroni), so
    the reported maximum over the grid holds with probability >= 1 - alpha."""
    s = np.asarray(scores, np.float64)
    inc = np.asarray(included, bool)
    m = len(s)
    tie = seeded_perm(m, seed).numpy()
    order = np.lexsort((tie, -s))  # descending score; ties in a coin-independent order
    correct_in = np.cumsum(inc[order])  # [k-1]: members among the k top scores
    correct_out = np.cumsum(~inc[order[::-1]])  # [k-1]: non-members among the k lowest
    grid = sorted({int(f * m) // 2 * 2 for f in fractions if int(f * m) >= 10}, reverse=True)
    a = alpha / max(1, len(grid))
    rows = []
    for r in grid:
        k = r // 2
        v = int(correct_in[k - 1] + correct_out[k - 1])
        rows.append({"r": r, "v": v, "epsilon_lb": one_run_epsilon(m, r, v, delta, a)})
    best = max(rows, key=lambda x: x["epsilon_lb"]) if rows else {"r": 0, "v": 0, "epsilon_lb": 0.0}
    points = []  # for the plot: the bound at alpha (uncorrected) for many r
    for r in np.unique(np.geomspace(10, max(10, m), 40).astype(int) // 2 * 2) if curve else ():
        if r <= m:
            v = int(correct_in[r // 2 - 1] + correct_out[r // 2 - 1])
            points.append({"r": int(r), "v": v, "epsilon_lb_uncorrected": one_run_epsilon(m, int(r), v, delta, alpha,
                                                                                          tol=1e-3)})
    return {"epsilon_lb": best["epsilon_lb"], "r": best["r"], "v": best["v"], "m": m, "included": int(inc.sum()),
            "delta": delta, "alpha": alpha, "alpha_per_test": a, "grid": rows, "curve": points}


def exposure(canary_scores, ref_scores) -> np.ndarray:
    """Secret-Sharer exposure of each canary among M references: log2(M) - log2(rank)."""
    ref = np.asarray(ref_scores, np.float64)
    rank = 1 + (ref[None, :] >= np.asarray(canary_scores, np.float64)[:, None]).sum(1)
    return math.log2(len(ref)) - np.log2(rank)

"""FID, MiFID, KID, precision/recall and memorization distances on Inception-v3 pool3 features.

Features: the standard FID network (TF inception-2015-12-05, the weights of pytorch-fid's
pt_inception-2015-12-05-6726825d.pth and torch-fidelity's weights-inception-2015-12-05-6726825d.pth) run by
torch-fidelity's ``FeatureExtractorInceptionV3``, which resizes uint8 RGB images to 299x299 exactly like
TensorFlow 1.x's bilinear resize. The 2048-d pool3 output is the feature of every metric here.

Inputs: uint8 images in [0, 255], or float images in [-1, 1] (generator outputs); grayscale is replicated
to RGB. Float images outside [-1, 1] are rejected (a [0, 1] image fed as [-1, 1] silently halves the
contrast: the bug of the seed project).

Definitions (N_g generated features g_i, N_t training features t_j, cos = cosine similarity):
  FID          |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2), float64, covariances with 1/(N-1)
  d (Kaggle)   mean_i min_j (1 - |cos(g_i, t_j)|)        -- for each GENERATED image, its nearest TRAINING image
  MiFID        FID / (d + 1e-14) if d < eps (0.1) else FID   (Bai et al., KDD 2021; Kaggle "I'm Something of a
               Painter Myself"). All-zero feature rows are dropped before d, as in the Kaggle code.
  d (torchmetrics direction)  mean_j min_i (1 - |cos(t_j, g_i)|) -- for each REAL image its nearest generated;
               torchmetrics' MemorizationInformedFrechetInceptionDistance uses this reversed direction.
  KID          unbiased MMD^2 with kernel k(x, y) = (x.y / 2048 + 1)^3, mean (std) over 100 subsets of 1,000
  precision / recall   improved P/R (Kynkaanniemi et al., 2019), k = 3 nearest-neighbour radii in feature space
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from utils import (UserError, all_gather, atomic_save_npy, dist_world, file_lock, keep_freed_memory, plt, sha256_file,
                   sha256_json)

OFFICIAL_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
KNOWN_WEIGHTS = {
    OFFICIAL_SHA256: "official FID Inception (inception-2015-12-05)",
    "d9b36da80a6304d8ab322478ec0416c4a40882483c18593cf29fbe0cc25e83cd":
        "FID Inception trunk with zeroed fc (pool3 features exact; no logits/IS)",
}
WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
               "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_NAMES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
FEATURE_DIM = 2048
MIN_SAMPLES_FOR_FID = 2048


# ----------------------------------------------------------------------------- weights
def resolve_inception_weights(path=None, download: bool = True) -> Path:
    """Find the FID Inception weights: PATH > $INCEPTION_WEIGHTS > torch hub cache > download (sha256-checked)."""
    path = path or os.environ.get("INCEPTION_WEIGHTS")
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"Inception weights not found at {p}; pass --inception-weights PATH to the "
                            "weights-inception-2015-12-05-6726825d.pth file")
        return p
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in WEIGHTS_NAMES:
        if (hub / name).is_file():
            return hub / name
    if not download:
        raise UserError("no Inception weights found; pass --inception-weights PATH or set INCEPTION_WEIGHTS")
    dst = hub / WEIGHTS_NAMES[0]
    hub.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(WEIGHTS_URL, str(dst), hash_prefix=OFFICIAL_SHA256[:8], progress=True)
    except Exception as e:
        raise UserError(f"could not download the FID Inception weights ({type(e).__name__}); offline? Download "
                        f"{WEIGHTS_URL} elsewhere and pass --inception-weights PATH (or set INCEPTION_WEIGHTS)") from None
    return dst


def verify_weights(path: Path, strict: bool = False) -> str:
    """sha256 of the weights; safe-load check (weights_only) before any other loader touches the file."""
    sha = sha256_file(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a loadable weights file ({type(e).__name__}); expected the FID Inception "
                        "state dict weights-inception-2015-12-05-6726825d.pth") from None
    if not isinstance(sd, dict) or "Mixed_7c.branch_pool.conv.weight" not in sd:
        raise UserError(f"{path} does not hold FID Inception-v3 weights (no Mixed_7c layers)")
    if sha not in KNOWN_WEIGHTS:
        msg = (f"{path} (sha256 {sha[:12]}...) is not the official FID Inception file "
               f"(sha256 {OFFICIAL_SHA256[:12]}...); scores will not be comparable with published FIDs")
        if strict:
            raise UserError(msg)
        warnings.warn(msg, stacklevel=2)
    return sha


# ----------------------------------------------------------------------------- features
def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N,C,H,W) or float in [-1, 1] -> uint8 RGB (N,3,H,W)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"images must be (N, 1|3, H, W), got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise UserError(f"images must be uint8 or float, got {x.dtype}")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.001 or hi > 1.001:
            raise UserError(f"float images must lie in [-1, 1] (generator range), got [{lo:.3g}, {hi:.3g}]")
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionFeatures:
    """Pool3 (2048-d) features of the FID Inception-v3 network, through torch-fidelity."""

    def __init__(self, weights=None, device="cpu", batch_size: int = 64, strict_weights: bool = False, threads=None,
                 progress: bool = True):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.path = resolve_inception_weights(weights)
        self.sha256 = verify_weights(self.path, strict=strict_weights)  # safe load first (see verify_weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                     feature_extractor_weights_path=str(self.path))
        self.device = torch.device(device)
        keep_freed_memory()  # each batch's activations (about 350 MB at 64) stay mapped: 1.3x on a CPU
        # channels_last: measured 1.6x faster on CPU, same features to float32 round-off
        self.model.to(self.device, memory_format=torch.channels_last).eval()
        self.batch_size = batch_size
        self.threads = threads  # utils.Threads: re-measured between batches
        self.progress = progress
        self.images_computed, self.seconds = 0, 0.0  # what this extractor pushed through the network

    @property
    def identity(self) -> dict:
        import torch_fidelity

        return {"net": "inception-v3-compat pool3", "weights_sha256": self.sha256,
                "torch_fidelity": torch_fidelity.__version__}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, desc: str = "features", progress: bool = True) -> np.ndarray:
        """Features of all images. Under torchrun each rank computes every world-th batch and all ranks get all."""
        rank, world = dist_world()
        starts = list(range(0, len(images), self.batch_size))[rank::world]
        out, t0 = [], time.perf_counter()
        for i in tqdm(starts, desc=desc, disable=not (progress and self.progress) or rank != 0,
                      leave=False, unit="batch"):
            if self.threads is not None:
                self.threads.refresh()
            x = to_uint8_rgb(images[i:i + self.batch_size]).to(self.device)
            x = x.contiguous(memory_format=torch.channels_last)
            out.append(self.model(x)[0].float().cpu())
        if world > 1:  # interleave the ranks' batches back into the original order
            shards = all_gather(out)
            out = [shards[k % world][k // world] for k in range(sum(len(sh) for sh in shards))]
        self.images_computed += len(images)
        self.seconds += time.perf_counter() - t0
        return torch.cat(out).numpy() if out else np.zeros((0, FEATURE_DIM), np.float32)

    def record(self) -> dict:
        """What this extractor computed (cache hits excluded): images, seconds, images/s."""
        return {"images_computed": self.images_computed, "seconds": round(self.seconds, 2),
                "images_per_s": round(self.images_computed / self.seconds, 2) if self.seconds else None,
                "batch_size": self.batch_size}


def cached_features(extractor: InceptionFeatures, images: torch.Tensor, cache_dir, desc="features"):
    """Features of an image set, cached on disk under a hash of its pixels, the preprocessing and the weights.
    Keyed by content, not by file names or dates: a dataset copied or restored with new mtimes keeps its cache.
    Processes sharing the cache (reproduce.py --jobs, several machines on one folder) compute a set once: the
    first takes a lock on it, the others wait and read its file."""
    images = images.contiguous()
    pixels = hashlib.sha256(images.numpy().tobytes()).hexdigest()
    full_key = sha256_json({"pixels": pixels, "shape": list(images.shape), "dtype": str(images.dtype),
                            **extractor.identity, "v": 2})
    path = Path(cache_dir) / f"features-{full_key[:20]}.npy" if cache_dir else None
    if path is None:
        return extractor(images, desc=desc)
    with file_lock(path.with_suffix(".lock"), wait=True) if dist_world()[0] == 0 else contextlib.nullcontext():
        hit = all_gather(path.is_file())[0]  # rank 0 decides, so all ranks extract or none
        if hit:
            feats = np.load(path, allow_pickle=False)
            print(f"using cached features {path} ({len(feats)} images)")
            return feats
        feats = extractor(images, desc=desc)
        if dist_world()[0] == 0:
            atomic_save_npy(path, feats)
    return feats


# ----------------------------------------------------------------------------- FID
def feature_stats(f: np.ndarray):
    f = np.asarray(f, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of two Gaussians in float64, via the symmetric form
    Tr((S1^1/2 S2 S1^1/2)^1/2) = Tr((S1 S2)^1/2), with eigh (stable for the rank-deficient covariances
    of small sample sets; negative round-off eigenvalues are clipped to 0)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    return max(value, 0.0)  # a distance; tiny negatives are float round-off (e.g. identical sets)


def fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID of two feature sets. Where one set has fewer rows than dimensions (1,000 samples of 2048-d features: a
    covariance of rank < 2048), the trace term is computed from that set's centred features A (d x n) instead of
    its covariance S_A = A Aᵀ / (n - 1): the nonzero eigenvalues of S_B S_A equal those of Aᵀ S_B A / (n - 1), an
    n x n symmetric matrix, so Tr((S_B S_A)^½) = Σ sqrt(eig(Aᵀ S_B A / (n - 1))). The same number as
    frechet_distance and pytorch-fid's sqrtm formula (tested to 1e-7 relative; where a covariance is singular those
    two carry about 1e-8 of their own, from square roots of round-off eigenvalues), without a 2048 x 2048
    eigendecomposition: 6x faster for 1,000 samples against 2,328 training images (bench.py --only metrics)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    small, other = (f1, f2) if len(f1) <= len(f2) else (f2, f1)
    if len(small) > small.shape[1] or len(small) < 2:
        return frechet_distance(*feature_stats(f1), *feature_stats(f2))
    mu_s, mu_o = small.mean(axis=0), other.mean(axis=0)
    a = (small - mu_s).T / np.sqrt(len(small) - 1)  # d x n, S_small = a aᵀ
    s_o = np.cov(other, rowvar=False)
    m = a.T @ (s_o @ a)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu_s - mu_o
    value = float(diff @ diff + np.einsum("ij,ij->", a, a) + np.trace(s_o) - 2 * tr_covmean)
    return max(value, 0.0)


def warn_small(n: int, what: str) -> None:
    if n < MIN_SAMPLES_FOR_FID:
        print(f"warning: {what} has {n} < {MIN_SAMPLES_FOR_FID} samples: its 2048x2048 covariance is rank-deficient "
              "and FID is biased upwards; compare only numbers computed with the same sample counts", file=sys.stderr)


# ----------------------------------------------------------------------------- memorization
def _nonzero_rows(f: np.ndarray) -> np.ndarray:
    return f[np.asarray(f).sum(axis=1) != 0]


def nearest_cosine(query: np.ndarray, ref: np.ndarray, chunk_q: int = 2048, chunk_r: int = 16384,
                   device="cpu", progress: bool = False):
    """For each query row: min_j (1 - |cos(q, r_j)|) and the argmin j, in chunks.

    Memory: one (chunk_q x chunk_r) float32 block and one normalised chunk of each side at a time, never the
    full N_q x N_r matrix (10k x 160k features take < 2 GB beyond the inputs). Uses ``device`` (e.g. cuda).
    """
    device = torch.device(device)
    q_all = torch.as_tensor(np.asarray(query, np.float32))
    r_all = torch.as_tensor(np.asarray(ref, np.float32))
    best = torch.full((len(q_all),), -1.0)
    arg = torch.zeros(len(q_all), dtype=torch.long)
    r_chunks = [(j, torch.nn.functional.normalize(r_all[j:j + chunk_r].to(device), dim=1))
                for j in range(0, len(r_all), chunk_r)] if len(r_all) <= 4 * chunk_r else None
    for i in tqdm(range(0, len(q_all), chunk_q), desc="nearest neighbours", disable=not progress, leave=False):
        q = torch.nn.functional.normalize(q_all[i:i + chunk_q].to(device), dim=1)
        b_val = torch.full((len(q),), -1.0, device=device)
        b_arg = torch.zeros(len(q), dtype=torch.long, device=device)
        chunks = r_chunks or ((j, torch.nn.functional.normalize(r_all[j:j + chunk_r].to(device), dim=1))
                              for j in range(0, len(r_all), chunk_r))
        for j, r in chunks:
            sim = (q @ r.T).abs_()
            v, a = sim.max(dim=1)
            better = v > b_val
            b_val = torch.where(better, v, b_val)
            b_arg = torch.where(better, a + j, b_arg)
        best[i:i + len(q)], arg[i:i + len(q)] = b_val.cpu(), b_arg.cpu()
    return (1.0 - best).clamp_(min=0).numpy().astype(np.float64), arg.numpy()


def mifid(fid_value: float, gen: np.ndarray, train: np.ndarray, eps: float = 0.1, direction: str = "kaggle",
          device="cpu", distances=None) -> dict:
    """MiFID and its memorization distance d. direction 'kaggle' (default): nearest TRAIN image of each generated
    one; 'torchmetrics': nearest GENERATED image of each train one (reversed, as torchmetrics computes it).
    ``distances``: nearest_cosine(gen, train) already computed (kaggle direction; reused where no row is zero)."""
    g, t = _nonzero_rows(gen), _nonzero_rows(train)
    if direction == "kaggle" and distances is not None and len(g) == len(gen) and len(t) == len(train):
        dists = np.asarray(distances)
    elif direction == "kaggle":
        dists, _ = nearest_cosine(g, t, device=device)
    elif direction == "torchmetrics":
        dists, _ = nearest_cosine(t, g, device=device)
    else:
        raise ValueError(f"unknown MiFID direction {direction!r}")
    d = float(dists.mean())
    d_thr = d if d < eps else 1.0
    return {"mifid": fid_value / (d_thr + 1e-14), "d": d, "d_thresholded": d_thr, "eps": eps, "direction": direction}


# ----------------------------------------------------------------------------- KID, precision/recall
def kid(f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 0):
    """Kernel Inception Distance: mean and std of the unbiased MMD^2 over random subsets (as torch-fidelity). The
    kernel matrices of the whole sets are computed once and each subset reads its block of them (the subsets
    overlap: a product per subset repeated the same dot products 100 times)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        return float("nan"), float("nan")
    gamma = gamma or 1.0 / f1.shape[1]
    k11, k22, k12 = ((a @ b.T * gamma + coef0) ** degree for a, b in ((f1, f1), (f2, f2), (f1, f2)))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        i = rng.choice(len(f1), m, replace=False)
        j = rng.choice(len(f2), m, replace=False)
        kxx, kyy, kxy = k11[np.ix_(i, i)], k22[np.ix_(j, j)], k12[np.ix_(i, j)]
        vals.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def _kth_radius(f: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    out = []
    for i in range(0, len(f), chunk):
        d = torch.cdist(f[i:i + chunk], f)
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(out)


def _coverage(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    inside = []
    for i in range(0, len(query), chunk):
        d = torch.cdist(query[i:i + chunk], ref)
        inside.append((d <= radii[None]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024):
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold)."""
    r = torch.as_tensor(np.asarray(real, np.float64))
    f = torch.as_tensor(np.asarray(fake, np.float64))
    if len(r) <= k or len(f) <= k:
        return float("nan"), float("nan")
    precision = _coverage(f, r, _kth_radius(r, k, chunk), chunk)
    recall = _coverage(r, f, _kth_radius(f, k, chunk), chunk)
    return precision, recall


# ----------------------------------------------------------------------------- plots
def nn_gallery(gen_u8: torch.Tensor, train_u8: torch.Tensor, dists: np.ndarray, nn_idx: np.ndarray, path,
               top: int = 16, title: str = "", distance: str = "d") -> None:
    """The `top` most-memorised generated images (smallest d) above their nearest training images."""
    from torchvision.utils import make_grid

    order = np.argsort(dists)[:top]
    g = gen_u8[torch.as_tensor(order)]
    t = train_u8[torch.as_tensor(nn_idx[order])]
    grid = make_grid(torch.cat([g, t]).float() / 255, nrow=len(order), padding=2, pad_value=1.0)
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(max(6, len(order) * 0.8), 2.4))
    ax.imshow(grid.permute(1, 2, 0).numpy().squeeze(), cmap="gray" if grid.shape[0] == 1 else None)
    ax.set_axis_off()
    ax.set_title((title + "\n" if title else "") + "top: generated (most memorised first); bottom: nearest "
                 f"training image; {distance} = " + ", ".join(f"{dists[i]:.3f}" for i in order[:6]) + "...", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


def distance_histogram(named: dict, path, eps: float = 0.1, title: str = "") -> None:
    """Histogram of per-generated-image memorization distances for one or more models."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.5, 4))
    hi = max(float(np.max(v)) for v in named.values())
    bins = np.linspace(0, max(hi, eps * 1.5), 60)
    for name, v in named.items():
        ax.hist(v, bins=bins, alpha=0.55, label=f"{name} (mean {np.mean(v):.3f})", density=True)
    ax.axvline(eps, color="k", ls="--", lw=1, label=f"MiFID threshold {eps}")
    ax.set_xlabel("1 - |cos| to the nearest training image (Inception pool3)")
    ax.set_ylabel("density")
    ax.set_title(title or "memorization distance of generated images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)

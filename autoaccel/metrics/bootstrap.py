"""How much of a difference between two FIDs is sampling noise: a paired bootstrap over the run's seeds.

Every plan is scored on the same seeds, so two plans' images (and the reference call's) are correlated seed by
seed: resampling each plan's images on its own overstates the noise of their difference, and a second, independent
reference set measures something else again. Each bootstrap round here draws one set of seed indices and uses it
for every plan scored on those seeds; the FID reference set is drawn with indices of its own, shared by every plan
in the round (or with the seeds' indices where the reference images are the reference call's own samples on the
same seeds). Differences and ratios of two figures are then taken round by round, and their percentile intervals
say whether the comparison resolves anything at this sample count.

FID is torch-fidelity's (mean and ``numpy.cov`` covariance of the features; the trace of the matrix square root
as the sum of the square roots of the eigenvalues of ``sigma1 @ sigma2``). A bootstrap evaluates it thousands of
times, so the trace term is computed from the same eigenvalues in their symmetric form,
``sqrt(sigma2) @ sigma1 @ sqrt(sigma2)`` (one ``eigh`` of the reference per round, one ``eigvalsh`` per plan):
five times faster on 192-d features, equal to torch-fidelity's figure to rounding. Where a round's set and
reference set both have fewer rows than features (tens of seeds, 192-d features), their covariances have rank below
the dimension and the same eigenvalues are those of the small cross-Gram matrix of their centred rows: the trace
term is its nuclear norm (``_centred_fid``), twenty times faster and without the square roots of rounding-error
eigenvalues the dimension-sized form adds.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

ROUNDS = 500  # 95% percentile endpoints move by a few % of the interval's width between bootstrap seeds
MIN_ROUNDS = 50
WORK = 1e12  # floating-point operations a bootstrap may take (a minute or so on one core): many images, wide features
LEVEL = 0.95
SEED = 0  # the report and ``plan`` draw the same rounds, so their intervals agree


@dataclass(frozen=True)
class Interval:
    """A figure on all seeds and its bootstrap percentile interval."""

    value: float
    lo: float
    hi: float

    def covers(self, bound: float) -> bool:
        """Whether ``bound`` lies inside the interval: the data cannot tell the figure from it."""
        return self.lo <= bound <= self.hi

    def text(self, signed: bool = False) -> str:
        """``1.31 [1.18, 1.45]`` (``+0.21 [-0.1, +0.52]`` for a difference; an unbounded end as ∞)."""
        return f"{_shown(self.value, signed)} {self.bounds(signed)}"

    def bounds(self, signed: bool = False) -> str:
        """``[1.18, 1.45]``."""
        return f"[{_shown(self.lo, signed)}, {_shown(self.hi, signed)}]"


def _shown(number: float, signed: bool) -> str:
    return "∞" if math.isinf(number) else f"{number:{'+.3g' if signed else '.3g'}}"


def rounds_for(dimensions: int, rows: int, sets: int) -> int:
    """Rounds for ``sets`` FIDs a round over ``rows`` resampled feature rows in all: ``ROUNDS`` where that costs
    less than ``WORK`` (64-d and 192-d features at thousands of samples), fewer (down to ``MIN_ROUNDS``) for tens of
    thousands of samples or Inception-wide features."""
    per_round = rows * dimensions**2 + sets * 10 * dimensions**3  # covariances, then one eigvalsh per FID
    return int(min(ROUNDS, max(MIN_ROUNDS, WORK // max(per_round, 1))))


def _statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torch-fidelity's FID statistics (``fid_features_to_statistics``): mean and ``numpy.cov`` covariance."""
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _root(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance (negative rounding-error eigenvalues as 0)."""
    values, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _fid(statistics: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    (mu1, sigma1), (mu2, sigma2, root2) = statistics, reference
    diff = mu1 - mu2
    eigenvalues = np.linalg.eigvalsh(root2 @ sigma1 @ root2)
    trace_covmean = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


Centred = tuple[np.ndarray, np.ndarray, float]


def _centred(features: np.ndarray) -> Centred:
    """The mean, the centred rows scaled so that ``rows.T @ rows`` is ``numpy.cov``'s covariance, and its trace."""
    mu = features.mean(axis=0)
    rows = (features - mu) / math.sqrt(len(features) - 1)
    return mu, rows, float(np.einsum("ij,ij->", rows, rows))


def _centred_fid(centred: Centred, reference: Centred) -> float:
    """FID from centred rows: the eigenvalues of ``sigma1 @ sigma2`` other than 0 are the squared singular values
    of ``rows1 @ rows2.T``, so the trace of the matrix square root is that matrix's nuclear norm."""
    (mu1, rows1, trace1), (mu2, rows2, trace2) = centred, reference
    diff = mu1 - mu2
    trace_covmean = np.linalg.svd(rows1 @ rows2.T, compute_uv=False).sum()
    return float(diff @ diff + trace1 + trace2 - 2.0 * trace_covmean)


def _resampled_fid(features: np.ndarray, reference: np.ndarray, summaries: dict) -> float:
    """FID of a round's resampled set against the round's reference set, whose summaries ``summaries`` keeps for
    the round's other sets: from centred rows where both have fewer rows than features, else from covariances."""
    if max(len(features), len(reference)) < features.shape[1]:
        if "centred" not in summaries:
            summaries["centred"] = _centred(reference)
        return _centred_fid(_centred(features), summaries["centred"])
    if "statistics" not in summaries:
        mu, sigma = _statistics(reference)
        summaries["statistics"] = (mu, sigma, _root(sigma))
    return _fid(_statistics(features), summaries["statistics"])


@threadpool_limits.wrap(limits=1, user_api="blas")  # as in the bootstrap: small matrices, contending BLAS threads
def fid(features: np.ndarray, reference: np.ndarray) -> float:
    """FID between two feature sets (float64), as the bootstrap computes it."""
    mu, sigma = _statistics(np.asarray(features, dtype=np.float64))
    mu_ref, sigma_ref = _statistics(np.asarray(reference, dtype=np.float64))
    return _fid((mu, sigma), (mu_ref, sigma_ref, _root(sigma_ref)))


def centred_interval(point: float, rounds: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of ``rounds`` moved so that their median falls on ``point``, the figure on all
    seeds. A resample repeats some images, which raises FID in every round (at 512 digits a reference FID of 0.44
    resamples to 0.7-1.9): the plain percentile interval would miss the figure it is for. Differences of two
    plans' FIDs need almost no shift, as their biases cancel."""
    tail = (1.0 - level) / 2 * 100
    lo, middle, hi = np.percentile(rounds, [tail, 50.0, 100 - tail])
    return float(point + lo - middle), float(point + hi - middle)


def mean_interval(
    values: np.ndarray, floor: float | None = None, rounds: int = ROUNDS, seed: int = SEED, level: float = LEVEL
) -> Interval:
    """The mean of per-seed figures (a CLIP or preference score per image) with the percentile interval of its
    bootstrap over the seeds; ``floor`` bounds the mean from below, round by round (CLIP score's floor at 0)."""
    values = np.asarray(values, dtype=np.float64)
    generator = np.random.default_rng(seed)
    means = np.array([values[generator.integers(0, len(values), len(values))].mean() for _ in range(rounds)])
    point = float(values.mean())
    if floor is not None:
        point, means = max(point, floor), np.maximum(means, floor)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return Interval(point, float(min(lo, point)), float(max(hi, point)))


class PairedBootstrap:
    """FIDs of feature sets against one reference set, over the same bootstrap rounds.

    ``paired``: name -> features (N, D) of images made from the run's N seeds, in seed order; each round resamples
    all of them with one set of seed indices. ``reference``: the FID reference set's features; with
    ``reference_paired`` it is the reference call's images on the same seeds (resampled with the seeds' indices),
    else a set of its own (real images; resampled with indices of its own). ``unpaired``: name -> features of sets
    that share no seeds with the plans (the real images held out for the floor), each resampled on its own.
    """

    def __init__(
        self,
        paired: Mapping[str, np.ndarray],
        reference: np.ndarray,
        reference_paired: bool,
        unpaired: Mapping[str, np.ndarray] | None = None,
        rounds: int | None = None,
        seed: int = SEED,
        level: float = LEVEL,
    ) -> None:
        self.paired = {name: np.asarray(values, dtype=np.float64) for name, values in paired.items()}
        self.unpaired = {name: np.asarray(values, dtype=np.float64) for name, values in (unpaired or {}).items()}
        self.reference = np.asarray(reference, dtype=np.float64)
        self.reference_paired = reference_paired
        self.level = level
        counts = {len(values) for values in self.paired.values()}
        if len(counts) > 1:
            raise ValueError(f"paired feature sets need one seed count each; got {sorted(counts)}")
        self.samples = counts.pop() if counts else len(self.reference)
        if reference_paired and len(self.reference) != self.samples:
            raise ValueError(f"a paired reference needs {self.samples} rows (one per seed); got {len(self.reference)}")
        rows = len(self.reference) + sum(len(values) for values in [*self.paired.values(), *self.unpaired.values()])
        sets = len(self.paired) + len(self.unpaired)
        self.rounds = rounds or rounds_for(self.reference.shape[1], rows, sets)
        with threadpool_limits(limits=1):  # small matrices: BLAS threads only contend (eigh runs 30x slower)
            self.point = self._point()
            self.draws = self._draw(seed)

    def _point(self) -> dict[str, float]:
        mu, sigma = _statistics(self.reference)
        reference = (mu, sigma, _root(sigma))
        sets = {**self.paired, **self.unpaired}
        return {name: _fid(_statistics(values), reference) for name, values in sets.items()}

    def _draw(self, seed: int) -> dict[str, np.ndarray]:
        """name -> FID in each round. The seeds' and the reference set's indices come from one generator, each
        unpaired set's from its own (seeded by its name), so the rounds do not depend on which sets are given."""
        generator = np.random.default_rng(seed)
        own = {name: np.random.default_rng([seed, zlib.crc32(name.encode())]) for name in sorted(self.unpaired)}
        draws = {name: np.empty(self.rounds) for name in [*self.paired, *self.unpaired]}
        for round_ in range(self.rounds):
            seeds = generator.integers(0, self.samples, self.samples)
            rows = seeds if self.reference_paired else generator.integers(0, len(self.reference), len(self.reference))
            reference, summaries = self.reference[rows], {}
            for name, values in self.paired.items():
                draws[name][round_] = _resampled_fid(values[seeds], reference, summaries)
            for name, values in self.unpaired.items():
                picked = own[name].integers(0, len(values), len(values))
                draws[name][round_] = _resampled_fid(values[picked], reference, summaries)
        return draws

    def __contains__(self, name: str) -> bool:
        return name in self.draws

    def interval(self, name: str) -> Interval:
        """The FID of ``name`` with its interval (FID is never negative)."""
        lo, hi = centred_interval(self.point[name], self.draws[name], self.level)
        return Interval(self.point[name], max(lo, 0.0), hi)

    def difference(self, name: str, other: str) -> Interval:
        """FID of ``name`` minus FID of ``other``, round by round (paired on the seeds)."""
        point = self.point[name] - self.point[other]
        return Interval(point, *centred_interval(point, self.draws[name] - self.draws[other], self.level))

    def ratio(self, name: str, other: str) -> Interval:
        """FID of ``name`` over FID of ``other`` with Fieller's interval: the ratios r for which the paired
        interval of ``FID(name) - r * FID(other)`` covers 0. Unbounded above where ``other``'s FID cannot be told
        from 0 (dividing by it is dividing by noise); NaN where ``other``'s FID is not positive."""
        a, b = self.draws[name], self.draws[other]
        point_a, point_b = self.point[name], self.point[other]
        if not point_b > 0:
            return Interval(math.nan, math.nan, math.nan)
        value = point_a / point_b

        def bounds(ratio: float) -> tuple[float, float]:
            return centred_interval(point_a - ratio * point_b, a - ratio * b, self.level)

        lower = 0.0 if bounds(0.0)[0] <= 0 else _bisect(lambda ratio: bounds(ratio)[0] <= 0, 0.0, value)
        ceiling = value * RATIO_CEILING
        upper = math.inf if bounds(ceiling)[1] >= 0 else _bisect(lambda ratio: bounds(ratio)[1] < 0, value, ceiling)
        return Interval(value, lower, upper)


RATIO_CEILING = 1e4  # a ratio interval reaching this many times the ratio is unbounded


def _bisect(reached, low: float, high: float, steps: int = 60) -> float:
    """The point in [low, high] where ``reached`` turns true (false at low, true at high)."""
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (low, middle) if reached(middle) else (middle, high)
    return (low + high) / 2

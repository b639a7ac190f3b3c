"""Local descriptor maps for the second (local) branch of the two-branch Swin (paper §2.2.2, Fig. 6).

Ji et al. (J. Zhengzhou Univ. Eng. Sci. 2026) compare LBP, energy and saliency maps and keep the bottom-up
saliency of Zhang et al. (2008) "SUN: A Bayesian framework for saliency using natural statistics" (ref. [18]).
All maps are ``[H, W]`` float32 in [0, 1], computed on the cropped face and vectorised over pixels.

* ``"sun"``: SUN bottom-up saliency. Features are the responses of a bank of difference-of-Gaussians (DoG)
  filters at several scales on the intensity channel (optionally also on the red-green / blue-yellow
  opponent channels). Each filter's responses are modelled by a zero-mean generalised Gaussian

  .. math::
      p_i(f) = \\frac{\\theta_i}{2\\sigma_i\\Gamma(1/\\theta_i)} \\exp\\left(-\\left|f/\\sigma_i\\right|^{\\theta_i}\\right)

  fitted (moment matching: :math:`E f^2 / (E|f|)^2 = \\Gamma(1/\\theta)\\Gamma(3/\\theta)/\\Gamma(2/\\theta)^2`)
  on the TRAINING images only. Assuming independent filters, the bottom-up saliency is the self-information

  .. math::
      s(x) = -\\log p(F = f_x) = \\sum_i \\left|f_i(x)/\\sigma_i\\right|^{\\theta_i} + \\text{const},

  min-max normalised to [0, 1] per image (the constant cancels).
* ``"spectral_residual"``: Hou & Zhang (2007) via ``cv2.saliency.StaticSaliencySpectralResidual_create``,
  min-max normalised.
* ``"lbp"``: ``skimage.feature.local_binary_pattern`` (method ``"uniform"``, codes 0..P+1) divided by P+1.
* ``"energy"``: local gradient energy :math:`E = G_\\sigma * (I_x^2 + I_y^2)` (Sobel derivatives, Gaussian
  window); the map is :math:`\\sqrt{E} / \\max\\sqrt{E}` (local RMS gradient magnitude). Not Laws' masks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np
from scipy.optimize import brentq
from scipy.special import gammaln

from common.choices import check_choices
from common.io import atomic_write

log = logging.getLogger(__name__)

Descriptor = Literal["sun", "spectral_residual", "lbp", "energy", "none"]
DESCRIPTORS = get_args(Descriptor)
SunChannels = Literal["intensity", "opponent"]
SUN_CHANNELS = get_args(SunChannels)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-12:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# LBP / energy / spectral residual
# ----------------------------------------------------------------------------------------------------------
def lbp_map(rgb: np.ndarray, points: int = 8, radius: float = 1.0) -> np.ndarray:
    """Uniform LBP codes scaled to [0, 1].

    Shapes:
        rgb: ``[H, W, 3]`` or ``[H, W]`` uint8 -> ``[H, W]`` float32.
    """
    from skimage.feature import local_binary_pattern

    if points < 1 or radius <= 0:
        raise ValueError(f"lbp_map: points must be >= 1 and radius > 0, got P={points}, R={radius}")
    codes = local_binary_pattern(_gray(rgb), P=points, R=radius, method="uniform")
    return (codes / float(points + 1)).astype(np.float32)


def energy_map(rgb: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Local gradient energy (RMS gradient magnitude in a Gaussian window), scaled to [0, 1] by its maximum.

    Shapes:
        rgb: ``[H, W, 3]`` or ``[H, W]`` uint8 -> ``[H, W]`` float32.
    """
    g = _gray(rgb).astype(np.float32) / 255.0
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    e = np.sqrt(np.maximum(cv2.GaussianBlur(gx * gx + gy * gy, (0, 0), sigma), 0.0))
    m = float(e.max())
    return (e / m).astype(np.float32) if m > 1e-12 else np.zeros_like(e)


def spectral_residual_map(rgb: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency (OpenCV contrib), min-max normalised.

    Shapes:
        rgb: ``[H, W, 3]`` or ``[H, W]`` uint8 -> ``[H, W]`` float32.
    """
    sal = cv2.saliency.StaticSaliencySpectralResidual_create()
    ok, s = sal.computeSaliency(_gray(rgb))
    if not ok:
        raise RuntimeError("spectral_residual_map: OpenCV computeSaliency failed")
    return _minmax(np.asarray(s, dtype=np.float32))


# ----------------------------------------------------------------------------------------------------------
# SUN
# ----------------------------------------------------------------------------------------------------------
def dog_responses(
    rgb: np.ndarray,
    sigmas: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    ratio: float = 1.6,
    channels: SunChannels = "intensity",
) -> np.ndarray:
    """Responses of the DoG filter bank, ``G_{k sigma} * c - G_{sigma} * c`` negated (centre minus surround).

    Args:
        rgb: face crop.
        sigmas: centre scales (pixels).
        ratio: surround / centre scale ratio.
        channels: ``"intensity"`` (grey) or ``"opponent"`` (intensity, red-green, blue-yellow).

    Shapes:
        rgb: ``[H, W, 3]`` uint8 -> ``[K, H, W]`` float32 with ``K = len(sigmas) * n_channels``.
    """
    check_choices(dog_responses, locals())
    x = (rgb.astype(np.float32) / 255.0) if rgb.ndim == 3 else (rgb.astype(np.float32)[:, :, None] / 255.0)
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    chans = [(r + g + b) / 3.0]
    if channels == "opponent":
        chans += [r - g, b - (r + g) / 2.0]
    out = []
    for c in chans:
        for s in sigmas:
            centre = cv2.GaussianBlur(c, (0, 0), s, borderType=cv2.BORDER_REFLECT)
            surround = cv2.GaussianBlur(c, (0, 0), s * ratio, borderType=cv2.BORDER_REFLECT)
            out.append(centre - surround)
    return np.stack(out)


def _ggd_ratio(theta: float) -> float:
    return float(np.exp(gammaln(1.0 / theta) + gammaln(3.0 / theta) - 2.0 * gammaln(2.0 / theta)))


def fit_generalized_gaussian(samples: np.ndarray) -> tuple[float, float]:
    """Zero-mean generalised Gaussian (shape ``theta``, scale ``sigma``) by moment matching.

    Solves ``E f^2 / (E|f|)^2 = G(1/t) G(3/t) / G(2/t)^2`` for ``t`` in [0.05, 20] (clamped at the ends),
    then ``sigma = sqrt(E f^2 * G(1/t) / G(3/t))``.

    Shapes:
        samples: ``[N]`` -> (theta, sigma).
    """
    f = np.asarray(samples, dtype=np.float64).ravel()
    m1, m2 = float(np.abs(f).mean()), float((f * f).mean())
    if m2 <= 1e-20 or m1 <= 1e-12:
        return 2.0, 1e-6  # constant responses (e.g. opponent channels of grey images): a narrow Gaussian
    rho = m2 / (m1 * m1)
    lo, hi = 0.05, 20.0
    if rho >= _ggd_ratio(lo):
        theta = lo
    elif rho <= _ggd_ratio(hi):
        theta = hi
    else:
        theta = brentq(lambda t: _ggd_ratio(t) - rho, lo, hi, xtol=1e-6)
    sigma = float(np.sqrt(m2 * np.exp(gammaln(1.0 / theta) - gammaln(3.0 / theta))))
    return float(theta), max(sigma, 1e-6)


@dataclass
class SUNParams:
    """Fitted SUN statistics: one (theta, sigma) per DoG filter.

    Attributes:
        sigmas / ratio / channels: the filter bank.
        theta / scale: generalised Gaussian shape and scale per filter (``[K]``).
        n_images: number of training images used.
        source: provenance (e.g. split file and its hash), for checking which split they came from.
    """

    sigmas: list[float]
    ratio: float
    channels: str
    theta: list[float]
    scale: list[float]
    n_images: int
    source: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Write the statistics as JSON (atomically: a reader never sees half a file)."""
        with atomic_write(path, "w") as f:
            f.write(json.dumps(self.__dict__, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> SUNParams:
        """Read statistics written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not such statistics (unreadable JSON, other fields), naming it.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"SUN statistics file {str(path)!r} is missing: they are fitted on the training images by "
                "FERDataModule.prepare_data (or pass sun_params_file=... pointing at a fitted file)"
            )
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
            raise ValueError(f"SUN statistics file {str(path)!r} is unreadable ({err})") from None


def fit_sun_params(
    images: Sequence[np.ndarray],
    sigmas: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    ratio: float = 1.6,
    channels: str = "intensity",
    max_pixels_per_image: int = 4096,
    seed: int = 0,
    source: dict | None = None,
) -> SUNParams:
    """Fit the per-filter generalised Gaussians on (a random pixel subsample of) the training crops.

    Args:
        images: training face crops ``[H, W, 3]`` uint8 (never val/test).
        sigmas / ratio / channels: DoG bank, see :func:`dog_responses`.
        max_pixels_per_image: random pixels kept per image (bounds memory on large sets).
        seed: RNG seed of the subsample.
        source: provenance stored with the parameters.
    """
    if len(images) == 0:
        raise ValueError("fit_sun_params: no training images to fit the SUN statistics on")
    rng = np.random.default_rng(seed)
    per_filter: list[list[np.ndarray]] = []
    for img in images:
        resp = dog_responses(img, sigmas, ratio, channels).reshape(
            len(sigmas) * (1 if channels == "intensity" else 3), -1
        )
        n = resp.shape[1]
        idx = rng.choice(n, size=min(n, max_pixels_per_image), replace=False)
        if not per_filter:
            per_filter = [[] for _ in range(resp.shape[0])]
        for k in range(resp.shape[0]):
            per_filter[k].append(resp[k, idx])
    fits = [fit_generalized_gaussian(np.concatenate(p)) for p in per_filter]
    return SUNParams(
        sigmas=[float(s) for s in sigmas],
        ratio=float(ratio),
        channels=channels,
        theta=[t for t, _ in fits],
        scale=[s for _, s in fits],
        n_images=len(images),
        source=dict(source or {}),
    )


def sun_map(rgb: np.ndarray, params: SUNParams) -> np.ndarray:
    """SUN bottom-up saliency ``sum_i |f_i / sigma_i|^theta_i`` (= -log p(F) + const), min-max to [0, 1].

    Shapes:
        rgb: ``[H, W, 3]`` uint8 -> ``[H, W]`` float32.
    """
    resp = dog_responses(rgb, params.sigmas, params.ratio, params.channels)
    theta = np.asarray(params.theta, dtype=np.float32)[:, None, None]
    scale = np.asarray(params.scale, dtype=np.float32)[:, None, None]
    if resp.shape[0] != theta.shape[0]:
        raise ValueError(f"sun_map: {resp.shape[0]} filter responses but {theta.shape[0]} fitted filters")
    s = (np.abs(resp / scale) ** theta).sum(axis=0)
    return _minmax(s)


@dataclass(frozen=True)
class DescriptorSettings:
    """Which descriptor to compute and its parameters (hashed into the descriptor cache key).

    Args:
        kind: ``"sun"`` (default), ``"spectral_residual"``, ``"lbp"``, ``"energy"`` or ``"none"`` (no map).
        lbp_points: LBP neighbours P.
        lbp_radius: LBP radius R.
        energy_sigma: Gaussian window of the energy map.
        sun_sigmas: DoG centre scales of the SUN filter bank.
        sun_ratio: DoG surround/centre ratio.
        sun_channels: ``"intensity"`` or ``"opponent"`` (adds red-green / blue-yellow channels).
    """

    kind: Descriptor = "sun"
    lbp_points: int = 8
    lbp_radius: float = 1.0
    energy_sigma: float = 2.0
    sun_sigmas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    sun_ratio: float = 1.6
    sun_channels: SunChannels = "intensity"

    def __post_init__(self) -> None:
        check_choices(DescriptorSettings, vars(self))
        if not self.sun_sigmas or min(self.sun_sigmas) <= 0 or self.sun_ratio <= 1.0:
            raise ValueError("DescriptorSettings: sun_sigmas must be positive and sun_ratio > 1")
        object.__setattr__(self, "sun_sigmas", tuple(float(v) for v in self.sun_sigmas))

    def as_dict(self) -> dict:
        d = {"descriptor": self.kind}  # the cache key's name of the kind (unchanged: existing caches stay valid)
        if self.kind == "lbp":
            d.update(points=self.lbp_points, radius=self.lbp_radius)
        elif self.kind == "energy":
            d.update(sigma=self.energy_sigma)
        elif self.kind == "sun":
            d.update(sigmas=list(self.sun_sigmas), ratio=self.sun_ratio, channels=self.sun_channels)
        return d


def compute_descriptor(
    rgb: np.ndarray, settings: DescriptorSettings, sun_params: SUNParams | None = None
) -> np.ndarray:
    """Descriptor map of a face crop in [0, 1].

    Shapes:
        rgb: ``[H, W, 3]`` uint8 -> ``[H, W]`` float32.

    Raises:
        ValueError: ``descriptor="sun"`` without fitted ``sun_params``, or ``descriptor="none"``.
    """
    name = settings.kind
    if name == "sun":
        if sun_params is None:
            raise ValueError(
                "compute_descriptor: the 'sun' descriptor needs SUN statistics fitted on the training images"
            )
        return sun_map(rgb, sun_params)
    if name == "spectral_residual":
        return spectral_residual_map(rgb)
    if name == "lbp":
        return lbp_map(rgb, settings.lbp_points, settings.lbp_radius)
    if name == "energy":
        return energy_map(rgb, settings.energy_sigma)
    raise ValueError(f"compute_descriptor: nothing to compute for descriptor {name!r}")


def to_uint8_map(m: np.ndarray) -> np.ndarray:
    """[0, 1] float map -> uint8 0..255 (the cache / in-memory format)."""
    return np.round(np.clip(m, 0.0, 1.0) * 255.0).astype(np.uint8)

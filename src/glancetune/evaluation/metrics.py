"""The numbers `glancetune eval` reports, each from a package that computes it offline (nothing is downloaded).

Against the reference image (same prompt, same initial noise):
  psnr, ssim   scikit-image's `peak_signal_noise_ratio` / `structural_similarity` (data range 255, SSIM over RGB)
  ms_ssim      pytorch-msssim's `ms_ssim` (Gaussian window 11, the standard 5 scales, data range 255); it needs
               both sides above MS_MIN_SIDE (160) px, and smaller images get null
  latent_mse   mean squared difference of the latents the pipeline handed its VAE to decode (its own layout)
No reference (a noise / blur alarm on every image): scikit-image's `estimate_sigma` (wavelet noise estimate, 0-255
scale, mean over RGB) and `blur_effect` (Crete-Roffet blur, 0 sharp .. 1 blurred). An image is flagged when its noise
is above the reference's by more than NOISE_MARGIN, or its blur above the reference's by more than BLUR_MARGIN.
Win-rates: the share of pairs where one sampler scores higher (ties half), with a 95% percentile bootstrap interval.
"""
from __future__ import annotations

import numpy as np

from ..errors import GlanceError

BOOTSTRAP = 2000
MS_MIN_SIDE = 160  # pytorch-msssim: (window 11 - 1) x 2^4 downsamplings
NOISE_MARGIN = 2.0  # noise sigma, 0-255 scale
BLUR_MARGIN = 0.1


def _skimage():
    try:
        from skimage.measure import blur_effect
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
        from skimage.restoration import estimate_sigma
    except ImportError:
        raise GlanceError("eval: scikit-image is not installed (PSNR/SSIM); pip install 'glancetune[eval]' "
                          "or pip install scikit-image") from None
    return peak_signal_noise_ratio, structural_similarity, estimate_sigma, blur_effect


def check_installed() -> None:
    """The metric packages, before any weights load."""
    _skimage()
    try:
        import pytorch_msssim  # noqa: F401
    except ImportError:
        raise GlanceError("eval: pytorch-msssim is not installed (MS-SSIM); pip install 'glancetune[eval]' or "
                          "pip install pytorch-msssim") from None


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM of two HxWx3 uint8 arrays, or None when the image is too small for its 5 scales."""
    if min(a.shape[:2]) <= MS_MIN_SIDE:
        return None
    import torch
    from pytorch_msssim import ms_ssim as msssim

    x, y = (torch.tensor(v, dtype=torch.float64).permute(2, 0, 1)[None] for v in (a, b))
    return float(msssim(x, y, data_range=255))


def scores(image, reference) -> dict[str, float]:
    """PSNR (dB; inf for identical images, written as null), SSIM and MS-SSIM of `image` against `reference` (PIL)."""
    psnr, ssim, _, _ = _skimage()
    a = np.asarray(image.convert("RGB"))
    b = np.asarray(reference.convert("RGB"))
    if a.shape != b.shape:
        raise GlanceError(f"eval: image sizes differ ({a.shape} vs {b.shape})")
    p = float("inf") if np.array_equal(a, b) else float(psnr(b, a, data_range=255))
    return {"psnr": p, "ssim": float(ssim(b, a, data_range=255, channel_axis=-1)), "ms_ssim": ms_ssim(a, b)}


def latent_mse(latent, reference) -> float:
    return float(((latent.float() - reference.float()) ** 2).mean())


def quality(image) -> dict[str, float]:
    """No-reference: noise sigma (0-255) and blur (0 sharp .. 1 blurred) of one image."""
    _, _, estimate_sigma, blur_effect = _skimage()
    a = np.asarray(image.convert("RGB")).astype(np.float64)
    noise = float(np.mean(estimate_sigma(a, channel_axis=-1)))
    blur = float(blur_effect(a, channel_axis=-1))
    return {"noise": noise, "blur": blur}


def alarm(q: dict[str, float], ref: dict[str, float]) -> list[str]:
    """What is wrong with an image against the reference's no-reference scores ([] when nothing)."""
    out = []
    if q["noise"] > ref["noise"] + NOISE_MARGIN:
        out.append(f"noise {q['noise']:.1f} vs {ref['noise']:.1f}")
    if q["blur"] > ref["blur"] + BLUR_MARGIN:
        out.append(f"blur {q['blur']:.2f} vs {ref['blur']:.2f}")
    return out


def win_rate(mine: list[float], other: list[float], seed: int = 0, n: int = BOOTSTRAP) -> dict:
    """Share of pairs where `mine` is higher (a tie counts half), with a 95% percentile bootstrap interval."""
    a, b = np.asarray(mine, dtype=float), np.asarray(other, dtype=float)
    wins = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    rng = np.random.default_rng(seed)
    boot = wins[rng.integers(0, len(wins), size=(n, len(wins)))].mean(axis=1)
    return {"rate": float(wins.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "pairs": int(len(wins))}

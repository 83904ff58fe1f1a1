"""Image work for the demo jobs: cartoon-style filtering of bundled photos and fractal art.

Every function here is pure CPU work on numpy arrays. Callers pass a ``progress`` callback
that receives a percentage (0 to 100) and a step name; the functions never touch the
database or the network.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import color, data, feature, morphology, restoration

Progress = Callable[[float, str], None]

# Photos that ship inside the scikit-image wheel, so loading them needs no download.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": data.astronaut,
    "chelsea": data.chelsea,
    "coffee": data.coffee,
    "motorcycle": lambda: data.stereo_motorcycle()[0],
    "rocket": data.rocket,
}

EDGE_RGB = np.array([24, 20, 28], dtype=np.uint8)
KMEANS_SAMPLE_PIXELS = 20_000
KMEANS_MAX_ITERATIONS = 12
ESCAPE_RADIUS = 4.0
SUPERSAMPLING = 2


def _no_progress(percent: float, step: str) -> None:
    return None


# Cartoon filter


def load_photo(name: str) -> np.ndarray:
    """Return the bundled photo ``name`` as an RGB uint8 array of shape (height, width, 3)."""
    try:
        loader = PHOTOS[name]
    except KeyError:
        raise ValueError(
            f"unknown photo {name!r}; choose one of: {', '.join(sorted(PHOTOS))}"
        ) from None
    image = np.asarray(loader())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale ``image`` so that its longer side is at most ``max_side`` pixels."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def smooth_preserving_edges(image: np.ndarray, sigma_spatial: float = 3.0) -> np.ndarray:
    """Smooth ``image`` with a bilateral filter, which flattens texture but keeps region edges.

    Returns floats in [0, 1]. ``sigma_spatial`` is in pixels.
    """
    as_float = image.astype(np.float64) / 255.0
    return restoration.denoise_bilateral(
        as_float, sigma_color=0.1, sigma_spatial=sigma_spatial, bins=4096, channel_axis=-1
    )


def _nearest_center(pixels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    # Squared distances via |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for every center.
    scores = -2.0 * pixels @ centers.T + (centers**2).sum(axis=1)
    return np.argmin(scores, axis=1)


def _initial_centers(sample: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    # k-means++ seeding: each new center is drawn with probability proportional to the
    # squared distance from the centers chosen so far.
    centers = [sample[rng.integers(len(sample))]]
    distances = ((sample - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = distances.sum()
        if total <= 0:
            break
        chosen = sample[rng.choice(len(sample), p=distances / total)]
        centers.append(chosen)
        distances = np.minimum(distances, ((sample - chosen) ** 2).sum(axis=1))
    return np.array(centers)


def kmeans_palette(
    pixels: np.ndarray, k: int, *, seed: int = 0, progress: Progress = _no_progress
) -> np.ndarray:
    """Fit ``k`` colour centers to ``pixels`` (shape (n, 3)) with Lloyd's k-means.

    Fewer than ``k`` centers come back when the pixels hold fewer distinct colours.
    """
    rng = np.random.default_rng(seed)
    if len(pixels) > KMEANS_SAMPLE_PIXELS:
        pixels = pixels[rng.choice(len(pixels), KMEANS_SAMPLE_PIXELS, replace=False)]
    centers = _initial_centers(pixels, k, rng)
    for iteration in range(KMEANS_MAX_ITERATIONS):
        labels = _nearest_center(pixels, centers)
        moved = centers.copy()
        for index in range(len(centers)):
            members = pixels[labels == index]
            if len(members):
                moved[index] = members.mean(axis=0)
        progress((iteration + 1) / KMEANS_MAX_ITERATIONS, f"k-means iteration {iteration + 1}")
        converged = np.abs(moved - centers).max() < 1e-4
        centers = moved
        if converged:
            break
    return centers


def quantize(image: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Replace each pixel of the float image by its nearest center; returns uint8 RGB."""
    flat = image.reshape(-1, 3)
    labels = _nearest_center(flat, centers)
    palette = np.clip(np.rint(centers * 255.0), 0, 255).astype(np.uint8)
    return palette[labels].reshape(image.shape)


def edge_mask(image: np.ndarray, sigma: float = 2.0, thickness: int = 1) -> np.ndarray:
    """Return the Canny edges of the float RGB image, dilated by a disk of ``thickness`` pixels."""
    edges = feature.canny(color.rgb2gray(image), sigma=sigma)
    if thickness > 0:
        edges = morphology.dilation(edges, morphology.disk(thickness))
    return edges


def cartoonize(
    photo: str,
    *,
    colors: int = 8,
    max_side: int = 512,
    edge_sigma: float = 2.0,
    seed: int = 0,
    progress: Progress = _no_progress,
) -> tuple[np.ndarray, int]:
    """Return the bundled ``photo`` as a cartoon (flat colour regions with dark outlines).

    The second value is the palette size, which is below ``colors`` when the photo has
    fewer distinct colours.
    """
    progress(5, "load photo")
    image = fit_within(load_photo(photo), max_side)
    progress(15, "smooth (bilateral filter)")
    smoothed = smooth_preserving_edges(image)

    def report_kmeans(fraction: float, step: str) -> None:
        progress(50 + 30 * fraction, f"quantize colours: {step}")

    progress(50, "quantize colours")
    centers = kmeans_palette(smoothed.reshape(-1, 3), colors, seed=seed, progress=report_kmeans)
    cartoon = quantize(smoothed, centers)
    progress(85, "draw edges")
    cartoon[edge_mask(smoothed, sigma=edge_sigma)] = EDGE_RGB
    return cartoon, len(centers)


# Procedural art


@dataclass(frozen=True)
class FractalParameters:
    """The parameters of a Julia set picture, derived from a prompt and a seed."""

    c_real: float
    c_imag: float
    zoom: float
    palette_phase: tuple[float, float, float]
    texture_seed: int


def parameters_for(prompt: str, seed: int) -> FractalParameters:
    """Hash ``prompt`` and ``seed`` into Julia set parameters; equal inputs give equal output."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    fractions = [int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in range(0, 32, 4)]
    # Points near the boundary of the Mandelbrot set's main cardioid give Julia sets with
    # spirals and fine detail. Points deep inside or far outside give plain pictures.
    t = 2 * math.pi * fractions[0]
    boundary = complex(math.cos(t), math.sin(t)) / 2 - complex(math.cos(2 * t), math.sin(2 * t)) / 4
    c = boundary * (0.97 + 0.06 * fractions[5])
    return FractalParameters(
        c_real=c.real,
        c_imag=c.imag,
        zoom=0.9 + 0.6 * fractions[1],
        palette_phase=(fractions[2], fractions[3], fractions[4]),
        texture_seed=int.from_bytes(digest[28:32], "big"),
    )


def julia_escape_times(
    params: FractalParameters,
    width: int,
    height: int,
    max_iterations: int,
    progress: Progress = _no_progress,
) -> np.ndarray:
    """Return the smooth escape time of every pixel, scaled to [0, 1].

    Points that do not escape within ``max_iterations`` get 1.
    """
    aspect = width / height
    xs = np.linspace(-1.6 * aspect, 1.6 * aspect, width) / params.zoom
    ys = np.linspace(-1.6, 1.6, height) / params.zoom
    z = (xs[None, :] + 1j * ys[:, None]).ravel()
    c = complex(params.c_real, params.c_imag)
    result = np.full(z.shape, float(max_iterations))
    active = np.arange(z.size)
    report_every = max(1, max_iterations // 10)
    for iteration in range(max_iterations):
        z = z * z + c
        escaped = np.abs(z) > ESCAPE_RADIUS
        if escaped.any():
            # Fractional iteration count removes the banding of integer escape times.
            modulus = np.abs(z[escaped])
            result[active[escaped]] = (
                iteration + 1 - np.log2(np.log(modulus) / math.log(ESCAPE_RADIUS))
            )
            keep = ~escaped
            z, active = z[keep], active[keep]
        if (iteration + 1) % report_every == 0:
            progress(
                (iteration + 1) / max_iterations, f"iteration {iteration + 1}/{max_iterations}"
            )
        if active.size == 0:
            break
    return np.clip(result / max_iterations, 0.0, 1.0).reshape(height, width)


def cosine_palette(values: np.ndarray, phase: tuple[float, float, float]) -> np.ndarray:
    """Map values in [0, 1] to RGB floats with one phase-shifted cosine per channel."""
    phases = np.array(phase)
    return 0.5 + 0.5 * np.cos(2 * math.pi * (values[..., None] * 3.0 + phases))


def fractal_noise(width: int, height: int, seed: int, octaves: int = 5) -> np.ndarray:
    """Return value noise summed over ``octaves`` scales, each at half the amplitude, in [0, 1]."""
    rng = np.random.default_rng(seed)
    total = np.zeros((height, width))
    amplitude, weight = 1.0, 0.0
    for octave in range(octaves):
        cells = 4 * 2**octave
        grid = rng.random((cells + 1, cells + 1))
        total += amplitude * _bilinear(grid, width, height)
        weight += amplitude
        amplitude /= 2
    return total / weight


def _bilinear(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    cells_y, cells_x = grid.shape[0] - 1, grid.shape[1] - 1
    y = np.linspace(0, cells_y, height, endpoint=False)
    x = np.linspace(0, cells_x, width, endpoint=False)
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def generate_image(
    prompt: str,
    *,
    seed: int = 0,
    width: int = 512,
    height: int = 512,
    max_iterations: int = 256,
    progress: Progress = _no_progress,
) -> tuple[np.ndarray, FractalParameters]:
    """Render a textured Julia set picture for ``prompt``; returns RGB uint8 and its parameters."""
    progress(5, "derive parameters from prompt")
    params = parameters_for(prompt, seed)

    def report_iterations(fraction: float, step: str) -> None:
        progress(10 + 60 * fraction, f"render fractal: {step}")

    progress(10, "render fractal")
    factor = SUPERSAMPLING
    escape = julia_escape_times(
        params, width * factor, height * factor, max_iterations, report_iterations
    )
    progress(75, "colour")
    rgb = cosine_palette(escape, params.palette_phase)
    rgb[escape >= 1.0] = 0.05
    # Averaging each factor x factor block anti-aliases the fractal's fine filaments.
    rgb = rgb.reshape(height, factor, width, factor, 3).mean(axis=(1, 3))
    progress(85, "add texture")
    texture = fractal_noise(width, height, params.texture_seed)
    rgb *= (0.8 + 0.4 * texture)[..., None]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), params


def write_png(image: np.ndarray, path: Path) -> Path:
    """Write the RGB uint8 ``image`` to ``path`` as PNG, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so readers never see a half-written file.
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(image).save(partial, format="PNG")
    partial.replace(path)
    return path

"""Data, captions and the judge of the toy model (issue 13): tinted Fashion-MNIST with colour x class captions.

Source: Debian's `dataset-fashion-mnist` (Zalando SE, MIT/Expat licence), `/usr/share/datasets/fashion-mnist/`.
`bench/toy/data/fashion-mnist-10k.npz` holds the first 1,000 training images of each class (uint8 [10000, 28, 28] and
labels; 4.4 MB), made by `python bench/toy/toy_data.py --make` on a machine with the package installed.

An image is 32x32 RGB: the garment (its grey level as coverage) in the caption's colour over a background drawn
from BACKGROUNDS, which the caption does NOT name, shifted by up to +-2 px (layout `centre`), or at half size in a
random one of the four 16x16 cells (layout `quadrant`: a harder, more multimodal set). Caption: "a <colour> <class>".
The uncaptioned background makes every caption's distribution multimodal (dark vs light vs grey ground), which
bends the flow: few-step Euler samplers average the modes (the effect a Glance pair is meant to fix).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATA = Path(__file__).resolve().parent / "data" / "fashion-mnist-10k.npz"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.9, 0.1),
           "cyan": (0.1, 0.85, 0.9), "magenta": (0.9, 0.15, 0.85), "orange": (1.0, 0.55, 0.05),
           "purple": (0.5, 0.15, 0.7)}
BACKGROUNDS = ((0.03, 0.03, 0.03), (0.97, 0.97, 0.95), (0.45, 0.45, 0.45))
SIZE = 32
LAYOUTS = ("centre", "quadrant")


def make_npz(out: Path = DATA, per_class: int = 1000) -> None:
    """The carried subset from the Debian package's training files."""
    images = np.frombuffer(gzip.open(DEBIAN / "train-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(DEBIAN / "train-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    images = images.reshape(-1, 28, 28)
    idx = np.sort(np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(10)]))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images[idx], labels=labels[idx])


def load(path: Path = DATA, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path) as z:
        images, labels = z["images"], z["labels"]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def captions() -> list[tuple[str, str, int, int]]:
    """(name, caption, class, colour) for every colour x class."""
    out = []
    for c, colour in enumerate(COLOURS):
        for k, cls in enumerate(CLASSES):
            out.append((f"{colour}-{cls.replace(' ', '-')}", f"a {colour} {cls}", k, c))
    return out


def caption_index(klass: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    return colour * len(CLASSES) + klass


def _shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Per-sample circular shift of [B, C, H, W] by (dy, dx) (the padding is background, so nothing wraps)."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None] - dy[:, None]) % h
    cols = (torch.arange(w, device=x.device)[None] - dx[:, None]) % w
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def compose(images: torch.Tensor, colour: torch.Tensor, background: torch.Tensor, dy: torch.Tensor,
            dx: torch.Tensor, layout: str = "centre") -> torch.Tensor:
    """uint8 [B, 28, 28] garments -> RGB [B, 3, 32, 32] in [-1, 1]. centre: the garment at full size, shifted by
    (dy, dx); quadrant: at half size (14x14) in the top-left 16x16 cell, then shifted by (dy, dx)."""
    alpha = images.float()[:, None] / 255.0
    if layout == "quadrant":
        alpha = F.pad(F.avg_pool2d(alpha, 2), (1, 17, 1, 17))
    elif layout == "centre":
        alpha = F.pad(alpha, (2, 2, 2, 2))
    else:
        raise ValueError(f"layout: {layout!r} is not one of {LAYOUTS}")
    alpha = _shift(alpha, dy, dx)
    col = torch.tensor(list(COLOURS.values()), device=images.device)[colour][:, :, None, None]
    bg = torch.tensor(BACKGROUNDS, device=images.device)[background][:, :, None, None]
    return (bg * (1 - alpha) + col * alpha) * 2 - 1


def random_batch(images: torch.Tensor, labels: torch.Tensor, n: int, gen: torch.Generator, layout: str = "centre"):
    """n random composed images: (pixels [-1, 1], class, colour, caption index); draws on `gen` (CPU). The
    position is not captioned: centre: shifted by up to +-2 px; quadrant: one of the 4 cells, +-1 px."""
    idx = torch.randint(len(images), (n,), generator=gen)
    colour = torch.randint(len(COLOURS), (n,), generator=gen)
    background = torch.randint(len(BACKGROUNDS), (n,), generator=gen)
    dy, dx = torch.randint(-2, 3, (2, n), generator=gen)
    if layout == "quadrant":
        q = torch.randint(4, (n,), generator=gen)
        dy, dx = dy.clamp(-1, 1) + 16 * (q // 2), dx.clamp(-1, 1) + 16 * (q % 2)
    dev = images.device
    klass = labels[idx.to(labels.device)]
    px = compose(images[idx.to(dev)], colour.to(dev), background.to(dev), dy.to(dev), dx.to(dev), layout)
    return px, klass, colour.to(dev), caption_index(klass, colour.to(dev))


class Judge(torch.nn.Module):
    """A small CNN with two heads: garment class (10) and garment colour (8), on [-1, 1] RGB 32x32."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, w, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(w, 2 * w, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(2 * w, 4 * w, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten())
        self.klass = torch.nn.Linear(4 * w, len(CLASSES))
        self.colour = torch.nn.Linear(4 * w, len(COLOURS))
        self.width = width

    def forward(self, x):
        h = self.body(x)
        return self.klass(h), self.colour(h)

    @torch.no_grad()
    def accuracy(self, pixels: torch.Tensor, klass: torch.Tensor, colour: torch.Tensor) -> dict:
        """Per-image correctness of both heads (lists of 0/1) on [-1, 1] images."""
        lk, lc = self(pixels)
        return {"class": (lk.argmax(1) == klass).float().tolist(), "colour": (lc.argmax(1) == colour).float().tolist()}


def train_judge(images, labels, steps: int, batch: int, device, seed: int = 0, width: int = 32,
                layout: str = "centre") -> Judge:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = Judge(width).to(device)
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3)
    for _ in range(steps):
        px, klass, colour, _ = random_batch(images, labels, batch, gen, layout)
        lk, lc = judge(px)
        loss = F.cross_entropy(lk, klass) + F.cross_entropy(lc, colour)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return judge.eval()


def load_judge(path: Path, device="cpu") -> Judge:
    saved = torch.load(path, map_location=device)
    judge = Judge(saved["width"]).to(device)
    judge.load_state_dict(saved["state"])
    return judge.eval()


def save_judge(judge: Judge, path: Path) -> None:
    torch.save({"width": judge.width, "state": {k: v.cpu() for k, v in judge.state_dict().items()}}, path)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--make"]:
        make_npz()
        print(f"wrote {DATA} ({DATA.stat().st_size} bytes)")
    else:
        sys.exit("usage: python bench/toy/toy_data.py --make")

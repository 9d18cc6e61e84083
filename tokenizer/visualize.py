"""Pictures of a tokenizer at work: input / reconstruction / Gaussians as ellipses."""

import math

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, S, S] in [-1, 1] -> uint8 [B, S, S, 3]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte() \
        .permute(0, 2, 3, 1).cpu().numpy()


def draw_gaussians(image: np.ndarray, xy, log_scale, rotation, splat_size: int,
                   zoom: int = 4) -> Image.Image:
    """The image enlarged ``zoom`` times with each Gaussian's 2-sigma ellipse drawn."""
    size = image.shape[0]
    canvas = Image.fromarray(image).resize((size * zoom, size * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    px_per_cell = size * zoom / splat_size
    t = np.linspace(0, 2 * math.pi, 24)
    colours = [(255, 64, 64), (64, 255, 64), (64, 160, 255), (255, 220, 64)]
    for i in range(len(xy)):
        cx = (float(xy[i, 0]) + 1) / 2 * size * zoom
        cy = (float(xy[i, 1]) + 1) / 2 * size * zoom
        sx, sy = (math.exp(float(s)) * 2 * px_per_cell for s in log_scale[i])
        c, s = math.cos(float(rotation[i])), math.sin(float(rotation[i]))
        pts = [(cx + c * sx * math.cos(a) - s * sy * math.sin(a),
                cy + s * sx * math.cos(a) + c * sy * math.sin(a)) for a in t]
        draw.line([*pts, pts[0]], fill=colours[i % len(colours)], width=1)
    return canvas


def grid(rows: list[list[Image.Image]], pad: int = 2) -> Image.Image:
    """Paste images into a grid (rows may hold images of different sizes per row)."""
    w = max(sum(im.width + pad for im in row) for row in rows)
    h = sum(max(im.height for im in row) + pad for row in rows)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    y = 0
    for row in rows:
        x = 0
        for im in row:
            out.paste(im, (x, y))
            x += im.width + pad
        y += max(im.height for im in row) + pad
    return out


def reconstruction_sheet(model, images: torch.Tensor, zoom: int = 4) -> Image.Image:
    """Rows: inputs, reconstructions, and (GaussianToken) the Gaussians over the inputs."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        recon, aux = model(images)
    model.train(was_training)
    inp, rec = to_uint8(images), to_uint8(recon)
    size = images.shape[-1] * zoom

    def big(a):
        return Image.fromarray(a).resize((size, size), Image.NEAREST)

    rows = [[big(a) for a in inp], [big(a) for a in rec]]
    if "geometry" in aux:
        geo = aux["geometry"]
        rows.append([draw_gaussians(inp[b], geo.xy[b], geo.log_scale[b], geo.rotation[b],
                                    model.cfg.gaussian.splat_size, zoom)
                     for b in range(len(inp))])
    return grid(rows)

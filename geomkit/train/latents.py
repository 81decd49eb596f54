"""The training images as VAE latents, with the crop each example was taken at.

Images are resized so their shorter side is the training resolution, then cropped to a square:

- `--crop center` (default): one crop per image (and one per mirror image when --flip-p > 0),
  encoded ONCE at the start. For a KL VAE the latent distribution's mean and standard deviation
  are kept and every step draws `mean + std * N(0, 1)` from the step's generator: exactly the
  distribution the public scripts sample by running the VAE encoder at every step. (DC-AE
  latents are deterministic: kept as they are.)
- `--crop random` (the DTI authors' setting): every example of every step gets a fresh crop, so
  the VAE encoder runs at every step, on that step's crops only. The crop offsets come from their
  own generator, a pure function of (seed, step, rank), so resuming stays exact and the other
  random draws are the same as under --crop center.

Mirror images are flipped BEFORE cropping, as the diffusers SDXL scripts do, and every example
carries (original height, original width, crop top, crop left): SDXL's micro-conditioning.
"""

from __future__ import annotations

import torch

from geomkit.train.data import center_crop_box, load_resized, step_generator

VAE_BATCH = 8
CROPS = ("center", "random")


def _crop(pix, top: int, left: int, r: int):
    return pix[:, top: top + r, left: left + r]


class TrainingLatents:
    """Latents and crop records of the training images for a KL VAE (`kind="kl"`, SD/SDXL) or a
    deterministic autoencoder (`kind="dc"`, SANA's DC-AE). `encodes` counts VAE encoder calls."""

    def __init__(self, files, resolution: int, vae, device, *, flip_p: float, crop: str, kind: str,
                 scaling: float, shift: float = 0.0):
        self.r, self.vae, self.device, self.kind = int(resolution), vae, device, kind
        self.crop, self.scaling, self.shift = crop, float(scaling), float(shift)
        self.n = len(files)
        self.encodes = 0
        resized, sizes = zip(*(load_resized(f, self.r) for f in files))
        self.sizes = list(sizes)  # original (height, width) of each image
        views = list(resized) + ([torch.flip(p, dims=[-1]) for p in resized] if flip_p > 0 else [])
        if crop == "random":
            self.images = views
            return
        boxes = [center_crop_box(p.shape[1], p.shape[2], self.r) for p in views]
        self.boxes = torch.tensor(boxes, dtype=torch.float32)
        encoded = self._encode(torch.stack([_crop(p, t, left, self.r) for p, (t, left) in zip(views, boxes)]))
        if kind == "kl":
            self.mean, self.std = encoded
        else:
            self.latents = encoded

    @property
    def cached_rows(self) -> int:
        return 0 if self.crop == "random" else int((self.mean if self.kind == "kl" else self.latents).shape[0])

    @property
    def needs_encoder(self) -> bool:
        return self.crop == "random"

    @torch.no_grad()
    def _encode(self, pix):
        """KL: (mean, std) of the latent distribution; DC-AE: the scaled latents. In the VAE's own
        dtype, never under the step's autocast (the SDXL VAE overflows in fp16), so a step encodes
        the same whether it runs in micro-batches or not."""
        outs = []
        with torch.autocast(torch.device(self.device).type, enabled=False):
            for s in range(0, pix.shape[0], VAE_BATCH):
                outs.append(self.vae.encode(pix[s: s + VAE_BATCH].to(self.device, self.vae.dtype)))
                self.encodes += 1
        if self.kind == "kl":
            return (torch.cat([o.latent_dist.mean.float() for o in outs]),
                    torch.cat([o.latent_dist.std.float() for o in outs]))
        return torch.cat([o.latent.float() for o in outs]) * self.scaling

    def take(self, idx, flips, gen, seed: int, step: int, rank: int):
        """(latents, crops) for examples `idx` (mirrored where `flips`): scaled latents ready for
        noising, and (b, 4) float rows (original height, original width, crop top, crop left).
        Draws the KL sample noise from `gen` first, as the cached path always has."""
        rows = idx + flips * self.n
        sizes = torch.tensor([self.sizes[i] for i in idx.tolist()], dtype=torch.float32)
        if self.crop == "random":
            cgen = step_generator(seed, step, rank, stream="crop")
            boxes, pix = [], []
            for row in rows.tolist():
                img = self.images[row]
                top = int(torch.randint(0, img.shape[1] - self.r + 1, (1,), generator=cgen))
                left = int(torch.randint(0, img.shape[2] - self.r + 1, (1,), generator=cgen))
                boxes.append((top, left))
                pix.append(_crop(img, top, left, self.r))
            encoded = self._encode(torch.stack(pix))
            box = torch.tensor(boxes, dtype=torch.float32)
            if self.kind != "kl":
                return encoded, torch.cat([sizes, box], 1)
            mean, std = encoded
        else:
            box = self.boxes[rows]
            if self.kind != "kl":
                return self.latents[rows.to(self.latents.device)], torch.cat([sizes, box], 1)
            mean, std = self.mean[rows.to(self.mean.device)], self.std[rows.to(self.std.device)]
        sample = mean + std * torch.randn(mean.shape, generator=gen).to(mean.device)
        return (sample - self.shift) * self.scaling, torch.cat([sizes, box], 1)

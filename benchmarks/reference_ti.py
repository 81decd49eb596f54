"""A plain Textual Inversion loop written the way the common public example scripts are
(diffusers examples/textual_inversion/textual_inversion.py and its descendants), as the
baseline for `bench_train.py`. Deliberately NOT optimised; what it does every step:

- loads, resizes, crops and flips the images with PIL, and tokenises a template (the Dataset);
- runs the VAE encoder on the batch and samples the latent;
- back-propagates into the WHOLE token-embedding table (resized by the new token), and steps
  AdamW over all of its rows (so AdamW keeps two moment tensors the size of the table);
- restores every row but the new one from a saved copy of the original table.

    python benchmarks/reference_ti.py PIPELINE_DIR IMAGES_DIR --steps 20 --resolution 64 --batch-size 4
prints one JSON line: median step seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from geomkit.train.data import IMAGE_SUFFIXES, OBJECT_TEMPLATES


class TextualInversionDataset(torch.utils.data.Dataset):
    def __init__(self, data_root, tokenizer, size, placeholder_token, repeats=100, flip_p=0.5):
        self.image_paths = sorted(str(p) for p in Path(data_root).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.tokenizer, self.size, self.placeholder_token, self.flip_p = tokenizer, size, placeholder_token, flip_p
        self.num_images = len(self.image_paths)
        self._length = self.num_images * repeats

    def __len__(self):
        return self._length

    def __getitem__(self, i):
        image = Image.open(self.image_paths[i % self.num_images])
        if not image.mode == "RGB":
            image = image.convert("RGB")
        text = random.choice(OBJECT_TEMPLATES).format(self.placeholder_token)
        input_ids = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
                                   return_tensors="pt").input_ids[0]
        img = np.array(image).astype(np.uint8)
        crop = min(img.shape[0], img.shape[1])
        h, w = img.shape[0], img.shape[1]
        img = img[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
        image = Image.fromarray(img).resize((self.size, self.size), resample=Image.BICUBIC)
        if random.random() < self.flip_p:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        image = (np.array(image).astype(np.uint8) / 127.5 - 1.0).astype(np.float32)
        return {"pixel_values": torch.from_numpy(image).permute(2, 0, 1), "input_ids": input_ids}


class ReferenceTI:
    """The public-script loop, one `step()` at a time (so a benchmark can alternate it with another)."""

    def __init__(self, pipeline, images, resolution=64, batch_size=4, lr=5e-3, seed=42, placeholder="<cat-toy>",
                 init_word="toy"):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        d = pipeline
        self.tokenizer = tokenizer = CLIPTokenizer.from_pretrained(d, subfolder="tokenizer")
        self.noise_scheduler = DDPMScheduler.from_pretrained(d, subfolder="scheduler")
        self.text_encoder = text_encoder = CLIPTextModel.from_pretrained(d, subfolder="text_encoder")
        self.vae = vae = AutoencoderKL.from_pretrained(d, subfolder="vae")
        self.unet = unet = UNet2DConditionModel.from_pretrained(d, subfolder="unet")

        tokenizer.add_tokens([placeholder])
        initializer_token_id = tokenizer.encode(init_word, add_special_tokens=False)[0]
        self.placeholder_token_ids = tokenizer.convert_tokens_to_ids([placeholder])
        text_encoder.resize_token_embeddings(len(tokenizer))
        token_embeds = text_encoder.get_input_embeddings().weight.data
        with torch.no_grad():
            for token_id in self.placeholder_token_ids:
                token_embeds[token_id] = token_embeds[initializer_token_id].clone()

        vae.requires_grad_(False)
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        text_encoder.get_input_embeddings().requires_grad_(True)
        text_encoder.train()
        self.optimizer = torch.optim.AdamW(text_encoder.get_input_embeddings().parameters(), lr=lr,
                                           betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        dataset = TextualInversionDataset(images, tokenizer, resolution, placeholder)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
        self._batches = iter(self.loader)
        self.orig_embeds_params = text_encoder.get_input_embeddings().weight.data.clone()

    def step(self) -> float:
        try:
            batch = next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            batch = next(self._batches)
        vae, unet, text_encoder, noise_scheduler = self.vae, self.unet, self.text_encoder, self.noise_scheduler
        latents = vae.encode(batch["pixel_values"]).latent_dist.sample().detach()
        latents = latents * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,)).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(batch["input_ids"])[0]
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
        target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
            noise_scheduler.get_velocity(latents, noise, timesteps)
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        index_no_updates = torch.ones((len(self.tokenizer),), dtype=torch.bool)
        ids = self.placeholder_token_ids
        index_no_updates[min(ids) : max(ids) + 1] = False
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight[index_no_updates] = self.orig_embeds_params[index_no_updates]
        return float(loss.detach())


def peak_rss_mb() -> float:
    """VmHWM: this address space's own high-water mark (ru_maxrss would include the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("pipeline")
    ap.add_argument("images")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)

    ref = ReferenceTI(args.pipeline, args.images, args.resolution, args.batch_size, args.lr, args.seed)
    times, losses = [], []
    for _ in range(args.steps):  # a step's time includes fetching its batch (PIL, tokenising)
        t0 = time.perf_counter()
        losses.append(ref.step())
        times.append(time.perf_counter() - t0)
    timed = times[2:] if len(times) > 4 else times
    print(json.dumps({
        "step_seconds_median": statistics.median(timed),
        "peak_rss_mb": peak_rss_mb(),
        "final_loss": losses[-1],
        "table_rows": int(ref.orig_embeds_params.shape[0]),
    }))


if __name__ == "__main__":
    main()

"""The README's picture of ``snap``: a punk that diffusers drew with a bespoke_pl LoRA, upscaled to 1024 px
and saved as JPEG (what a user brings from another tool), beside the 24x24 art ``snap`` gives back.

    python benchmarks/snap_figure.py --lora logs/demo/version_0/demo-000003.safetensors --out docs/snap-diffusers.png

diffusers' own SDXL pipeline loads the LoRA file (``load_lora_weights``) on the tiny pretrained base and
draws at the trained size (24 x 8 = 192 px) with Euler a; the picture is upscaled bicubic, as an image editor or
ComfyUI's "Upscale Image" does. It prints how many of the 576 art pixels equal the art the trainer's own
samples would show (the 192 px picture reduced on its known grid).
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline
from PIL import Image

from bespoke_pl.commands.snap import command as snap_command
from bespoke_pl.commands.snap_inputs import lora_palette
from bespoke_pl.offline.pretrained import tiny_punks_path
from bespoke_pl.pixelart.snap import to_art

PROMPT = "pixel art, 24x24, portrait of bespoke punk, female, green skin, blue background"


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lora", required=True, help="a bespoke_pl LoRA file of tiny-punks:sdxl (the demo's)"
    )
    parser.add_argument("--out", required=True, help="the PNG to write (never replaced)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; nothing is overwritten")
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_punks_path("sdxl"))
    pipe.load_lora_weights(args.lora)
    # Euler a, the usual choice in A1111 and ComfyUI: plain Euler leaves a grain on the tiny base's
    # backgrounds (docs/tiny-bases.md)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed)
    drawn = pipe(args.prompt, height=192, width=192, num_inference_steps=20, guidance_scale=4.0,
                 generator=generator).images[0]  # fmt: skip
    palette, _ = lora_palette(Path(args.lora))
    expected = to_art(as_tensor(drawn)[None], 8, palette)[1][0]
    with tempfile.TemporaryDirectory() as folder:
        given = Path(folder) / "from-elsewhere.jpg"
        drawn.resize((1024, 1024), Image.BICUBIC).save(given, quality=90)
        snap_command([str(given), "--out", str(Path(folder) / "art"), "--lora", args.lora])
        art = as_tensor(Image.open(Path(folder) / "art" / "from-elsewhere.png"))
        shown = as_tensor(Image.open(given))
    same = int((art == expected).all(0).sum())
    print(f"{same} of 576 art pixels equal the trainer's own reduction of the 192 px picture")
    canvas = torch.full((3, 1024, 2 * 1024 + 32), 255, dtype=torch.uint8)
    canvas[:, :, :1024] = shown
    art_image = Image.fromarray(art.permute(1, 2, 0).numpy(), "RGB").resize((1024, 1024), Image.NEAREST)
    canvas[:, :, 1024 + 32 :] = as_tensor(art_image)
    Image.fromarray(canvas.permute(1, 2, 0).numpy(), "RGB").save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

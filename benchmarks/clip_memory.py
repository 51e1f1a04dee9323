"""How many frames fit in one CLIP forward pass (`--clip-chunk-size`) on a GPU of a given memory.

    python benchmarks/clip_memory.py                                 # ViT-bigG-14, 24 GiB GPU
    python benchmarks/clip_memory.py --clip-model ViT-H-14 --gpu-gib 80 --json vith.json

No GPU is needed: what transfers from a CPU to a GPU is the bytes of the tensors a forward pass
keeps alive at once. Under `torch.no_grad` a transformer block frees its activations before the
next block runs, so the peak does not grow with depth: it is reached inside one block (the MLP,
whose hidden layer is `mlp_width` ≈ 4.9 × width wide for bigG). So the vision tower of the named
model is built with its real width, heads, MLP width and image size but only 1 and 2 blocks
(random weights), and run on chunks of 1, 2, 4 frames.

Method: torch's own allocation accounting, `torch.profiler.profile(profile_memory=True)`: its memory
timeline lists every allocation and free of torch's CPU allocator (kernel-internal buffers
included), in bytes requested, so the figure does not depend on glibc or on what an earlier pass
left cached, and is the same from run to run. The live bytes are summed along the timeline, and the
peak is taken inside the vision transformer (a `record_function` range around it): the patch
embedding before it briefly holds a CPU-only copy of the convolution weights (oneDNN's layout),
which would otherwise dominate the peak of small models at small chunks. The input image is made
inside the profiled pass, so it counts. A least-squares line through the chunk sizes gives bytes per
frame (slope) and the chunk-independent part (intercept).

Hand estimate (checked against the measurement): at the MLP peak the input image (3·H·W fp32) and
k residual-width tensors (tokens × width: the transformer's input, the block's input, the
block's state after attention, the LayerNorm output; k = 3 with one block, 4 with two or more)
are alive, plus the MLP's two hidden tensors (the first linear layer's output and the GELU's,
tokens × mlp_width each): bytes/frame = 4·3·H·W + e·T·(k·width + 2·mlp_width), e = 4 (fp32) or 2
(fp16). Attention runs through scaled_dot_product_attention (flash / memory-efficient kernels),
which does not hold the heads × T² score matrix; `attention_scores_bytes_per_frame` says what it
would add if a kernel did.

fp16 on a GPU: autocast computes the matrix products in fp16 and open_clip's LayerNorm casts its
output back to the input's dtype, so the residual stream stays fp16 too. The CPU runs the same
autocast policy for these ops, so the fp16 figure is measured here as well; the GPU estimate uses
the larger of that measurement and half the fp32 figure (the usual assumption: fp16 activations
are half of fp32 ones). The weights stay fp32 (autocast casts them per product), counted from the
full model's config on the `meta` device (nothing allocated).

Largest chunk = (GPU memory × (1 - margin) - CUDA context - full-model fp32 weights - intercept)
/ bytes per frame; the margin (20%) is for the caching allocator's fragmentation and cuBLAS
workspaces, the context (~1 GiB) for the CUDA runtime and kernels.
"""

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

GIB = 2**30
MB = 1e6


@dataclass
class Args:
    clip_model: str = "ViT-bigG-14"
    """open_clip architecture name, or the path of an open_clip model config (.json)"""
    layers: tuple[int, ...] = (1, 2)
    """transformer blocks of the reduced vision towers that are measured (the deepest one is used)"""
    chunks: tuple[int, ...] = (1, 2, 4)
    """frames per forward pass that are measured (the per-frame figure is the slope over them)"""
    precisions: tuple[Literal["fp32", "bf16", "fp16"], ...] = ("fp32", "fp16")
    """precisions measured: fp32, and fp16 / bf16 autocast (same bytes per element)"""
    gpu_gib: float = 24.0
    """GPU memory (GiB) for the largest chunk that fits"""
    margin: float = 0.2
    """share of the GPU memory kept free for the caching allocator (fragmentation) and workspaces"""
    context_gib: float = 1.0
    """GiB taken by the CUDA context (runtime, kernels) before any tensor"""
    one_pass_frames: int = 3200
    """also report the memory of this many frames in a single forward pass (a humanoid rollout, scored at its end)"""
    json: str | None = None
    """write the figures to this JSON file"""


def model_config(name: str) -> dict:
    """The open_clip config of an architecture name or of a config file (.json, registered under its name)."""
    import open_clip

    if name.endswith(".json"):
        open_clip.add_model_config(name)
        name = os.path.splitext(os.path.basename(name))[0]
    config = open_clip.get_model_config(name)
    if config is None:
        raise SystemExit(f"error: --clip-model {name!r} is not an open_clip architecture or config file.")
    vision_cfg = config["vision_cfg"]
    if vision_cfg.get("timm_model_name") or not isinstance(vision_cfg.get("layers"), int):
        raise SystemExit(f"error: {name} has no open_clip ViT image tower (ResNet or timm): not measured here.")
    return name, config


def full_model_parameters(name: str) -> tuple[int, int]:
    """(all parameters, vision-tower parameters) of the full model, built on the meta device (no memory)."""
    import open_clip
    import torch

    logging.disable(logging.WARNING)  # "no pretrained weights loaded": none are wanted
    try:
        with torch.device("meta"):
            model = open_clip.create_model(name, device="meta")
    finally:
        logging.disable(logging.NOTSET)
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.visual.parameters())


def geometry(vision_cfg: dict) -> dict:
    """Tokens, width, MLP width, heads and image size of an open_clip vision config."""
    image = vision_cfg.get("image_size", 224)
    patch = vision_cfg.get("patch_size", 16)
    height, width_px = (image, image) if isinstance(image, int) else image
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
    width = vision_cfg["width"]
    tokens = (height // patch_h) * (width_px // patch_w) + 1  # patches + the class token
    return dict(tokens=tokens, width=width, mlp_width=int(width * vision_cfg.get("mlp_ratio", 4.0)),
                heads=width // vision_cfg.get("head_width", 64), image_pixels=3 * height * width_px)


def hand_estimate(geo: dict, layers: int, element_bytes: int) -> int:
    """Bytes per frame alive at the MLP peak of a block (see the module docstring)."""
    k = 3 if layers == 1 else 4
    return 4 * geo["image_pixels"] + element_bytes * geo["tokens"] * (k * geo["width"] + 2 * geo["mlp_width"])


def measure(config: dict, layers: int, chunk: int, precision: str) -> dict:
    """Peak bytes allocated during one forward pass of the vision tower cut to `layers` blocks, on `chunk`
    frames: inside the transformer (`peak_bytes`) and over the whole pass (`whole_pass_peak_bytes`)."""
    import torch
    from open_clip.model import _build_vision_tower
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.manual_seed(0)
    tower = _build_vision_tower(config["embed_dim"], dict(config["vision_cfg"], layers=layers))
    tower = tower.eval().requires_grad_(False)
    size = tower.image_size if isinstance(tower.image_size, (tuple, list)) else (tower.image_size,) * 2
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    # Autocast keeps fp32 weights and casts each one as a product needs it: a chunk-independent copy
    # (bigG: 27 MB) that would mask the per-frame growth at small chunks. So the weights are cast
    # beforehand (the activations are the same: autocast runs the products in `dtype` either way) and
    # the largest such copy is added back as a fixed cost by the caller (`weight_cast_bytes`).
    tower = tower.to(dtype)
    ranges = []
    tower.transformer.register_forward_pre_hook(
        lambda module, inputs: ranges.append(record_function("clip_memory::transformer").__enter__()))
    tower.transformer.register_forward_hook(lambda module, inputs, output: ranges[-1].__exit__(None, None, None))

    def forward():
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=precision != "fp32"):
            x = torch.randn(chunk, 3, *size)
            y = tower(x)
            del x, y

    forward()  # warm-up: lazy initialisation and kernel selection stay out of the figure
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        forward()
    start_ns = prof.profiler.kineto_results.trace_start_ns()
    block = next(e for e in prof.events() if e.name == "clip_memory::transformer")
    low, high = start_ns + block.time_range.start * 1000, start_ns + block.time_range.end * 1000
    live = peak = block_peak = 0
    for time_ns, action, _, size_bytes in sorted(prof._memory_profile().timeline, key=lambda event: event[0]):
        if action.name == "CREATE":
            live += size_bytes
        elif action.name == "DESTROY":
            live -= size_bytes
        peak = max(peak, live)
        if low <= time_ns <= high:
            block_peak = max(block_peak, live)
    return dict(peak_bytes=block_peak, whole_pass_peak_bytes=peak)


def weight_cast_bytes(config: dict, precision: str) -> int:
    """Bytes of the largest weight copy autocast makes at a time (one block's largest matrix, in fp16/bf16)."""
    if precision == "fp32":
        return 0
    geo = geometry(config["vision_cfg"])
    return 2 * max(geo["width"] * geo["mlp_width"], 3 * geo["width"] ** 2)


def fit(chunks, peaks) -> tuple[float, float]:
    """Least-squares (bytes per frame, chunk-independent bytes) through (chunk, peak) points."""
    slope, intercept = np.polyfit(np.asarray(chunks, float), np.asarray(peaks, float), 1)
    return float(slope), float(intercept)


def largest_chunk(gpu_gib, margin, context_gib, weights_bytes, fixed_bytes, per_frame_bytes) -> int:
    """Most frames per pass whose activations fit beside the weights (0: not even one frame fits)."""
    free = gpu_gib * GIB * (1 - margin) - context_gib * GIB - weights_bytes - max(fixed_bytes, 0.0)
    return max(int(math.floor(free / max(per_frame_bytes, 1.0))), 0)


def main(args: Args) -> dict:
    name, config = model_config(args.clip_model)
    geo = geometry(config["vision_cfg"])
    parameters, vision_parameters = full_model_parameters(name)
    weights_bytes = 4 * parameters  # fp32 weights: autocast keeps them

    measured = {}
    for precision in args.precisions:
        element_bytes = 4 if precision == "fp32" else 2
        for layers in args.layers:
            rows = [dict(chunk=c, **measure(config, layers, c, precision)) for c in args.chunks]
            peaks = [r["peak_bytes"] for r in rows]
            slope, intercept = fit(args.chunks, peaks)
            line = [slope * c + intercept for c in args.chunks]
            measured.setdefault(precision, {})[str(layers)] = dict(
                peaks={str(r["chunk"]): r["peak_bytes"] for r in rows},
                whole_pass_peaks={str(r["chunk"]): r["whole_pass_peak_bytes"] for r in rows},
                per_frame_bytes=slope, fixed_bytes=intercept + weight_cast_bytes(config, precision),
                largest_deviation_from_line=max(abs(p - q) / p for p, q in zip(peaks, line)),
                hand_estimate_per_frame_bytes=hand_estimate(geo, layers, element_bytes))

    deepest = str(max(args.layers))  # under no_grad the peak stops growing with depth from 2 blocks on
    fp32 = measured.get("fp32", {}).get(deepest)
    low = next((measured[p][deepest] for p in ("fp16", "bf16") if p in measured), None)
    per_frame_fp32 = fp32["per_frame_bytes"] if fp32 else float(hand_estimate(geo, max(args.layers), 4))
    per_frame_fp16 = max(low["per_frame_bytes"] if low else 0.0, per_frame_fp32 / 2)
    fixed_fp32 = fp32["fixed_bytes"] if fp32 else 0.0
    fixed_fp16 = low["fixed_bytes"] if low else weight_cast_bytes(config, "fp16")
    budget = dict(gpu_gib=args.gpu_gib, margin=args.margin, context_gib=args.context_gib, weights_bytes=weights_bytes)
    max_chunk_fp16 = largest_chunk(**budget, fixed_bytes=fixed_fp16, per_frame_bytes=per_frame_fp16)
    max_chunk_fp32 = largest_chunk(**budget, fixed_bytes=fixed_fp32, per_frame_bytes=per_frame_fp32)
    n = args.one_pass_frames
    mlp_hidden_fp32 = 4 * geo["tokens"] * geo["mlp_width"]
    figures = dict(
        settings=asdict(args), model=name, geometry=geo, method="torch.profiler memory timeline (CPU), "
        "peak bytes allocated inside the vision transformer",
        full_model_parameters=parameters, vision_parameters=vision_parameters, weights_bytes_fp32=weights_bytes,
        measured=measured,
        per_frame_bytes_fp32=per_frame_fp32,
        per_frame_bytes_fp16_measured=low["per_frame_bytes"] if low else None,
        per_frame_bytes_fp16_half_of_fp32=per_frame_fp32 / 2,
        per_frame_bytes_fp16=per_frame_fp16,
        attention_scores_bytes_per_frame=4 * geo["heads"] * geo["tokens"] ** 2,
        max_chunk_fp16=max_chunk_fp16, max_chunk_fp32=max_chunk_fp32,
        one_pass_frames=n,
        one_pass_mlp_hidden_bytes_fp32=n * mlp_hidden_fp32,
        one_pass_activation_bytes_fp32=n * per_frame_fp32 + fixed_fp32,
        one_pass_activation_bytes_fp16=n * per_frame_fp16 + fixed_fp16,
    )

    print(f"{name}: {geo['tokens']} tokens × width {geo['width']}, MLP width {geo['mlp_width']}, "
          f"{geo['heads']} heads; "
          f"{parameters / 1e9:.3f} B parameters ({vision_parameters / 1e9:.3f} B in the image tower). "
          f"Peak bytes allocated inside the transformer (torch.profiler memory timeline, CPU):")
    print("\n| precision | blocks | peak MB at " + ", ".join(map(str, args.chunks)) + " frames | MB/frame (slope) "
          "| hand estimate MB/frame | fixed MB | off the line |\n|---|---|---|---|---|---|---|")
    for precision, rows in measured.items():
        for layers, row in rows.items():
            print(f"| {precision} | {layers} | " + ", ".join(f"{v / MB:.1f}" for v in row["peaks"].values())
                  + f" | {row['per_frame_bytes'] / MB:.2f} | {row['hand_estimate_per_frame_bytes'] / MB:.2f} "
                  f"| {row['fixed_bytes'] / MB:.1f} | {row['largest_deviation_from_line']:.1%} |")
    gpu = f"{args.gpu_gib:g} GiB GPU ({args.margin:.0%} margin, {args.context_gib:g} GiB context, fp32 weights)"
    print("\n| figure | value |\n|---|---|")
    for label, value in [
            ("activation per frame, fp32", f"{per_frame_fp32 / MB:.1f} MB"),
            ("activation per frame, fp16 autocast (larger of measured and half of fp32)",
             f"{per_frame_fp16 / MB:.1f} MB"),
            ("weights of the full model, fp32", f"{weights_bytes / 1e9:.2f} GB ({weights_bytes / GIB:.2f} GiB)"),
            (f"largest chunk, fp16 autocast, {gpu}", f"{max_chunk_fp16}"),
            (f"largest chunk, fp32, {gpu}", f"{max_chunk_fp32}"),
            (f"{n} frames in one pass: one MLP hidden tensor in fp32 "
             f"({n} × {geo['tokens']} × {geo['mlp_width']} × 4 B)",
             f"{n * mlp_hidden_fp32 / 1e9:.1f} GB ({n * mlp_hidden_fp32 / GIB:.1f} GiB)"),
            (f"{n} frames in one pass: peak activations, fp32 / fp16 autocast (weights not included)",
             f"{figures['one_pass_activation_bytes_fp32'] / GIB:.1f} GiB / "
             f"{figures['one_pass_activation_bytes_fp16'] / GIB:.1f} GiB")]:
        print(f"| {label} | {value} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))

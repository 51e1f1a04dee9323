"""The first run on a GPU: every script for a few thousand steps on CUDA, and CLIP's throughput with
ViT-bigG-14 in fp16, in one table: steps/s, CLIP frames/s, peak GPU memory, the OpenGL renderer, errors.

    bash benchmarks/gpu_check.sh              # on a GPU machine, at most 10 minutes (it runs this file)
    python benchmarks/gpu_check.py --smoke    # the same checks on a CPU with a tiny model (tests/test_benchmark.py)

Nothing is downloaded: random ViT-B-32 and ViT-bigG-14 checkpoints are made on the spot (speed and memory do
not depend on the weights) and loaded by the scripts as a user's checkpoint file would be. A check that fails
is reported in the table and the others go on. The README's GPU figures are this table's, from one H200
(docs/speed.md; docs/gpu_check_h200.json holds its rows).
"""

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass

import open_clip
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import throughput  # noqa: E402
import dqn_clip_cartpole as cartpole  # noqa: E402
import sac_clip_humanoid as humanoid  # noqa: E402  (chooses MuJoCo's OpenGL backend before mujoco is imported)
import sac_clip_mountaincar as mountaincar  # noqa: E402

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@dataclass
class Args:
    out: str = "runs/gpu_check"
    """folder for the random checkpoints, the runs and gpu_check.json"""
    smoke: bool = False
    """if toggled, the same checks on the CPU with a tiny random model and a few hundred steps (the test)"""


# (check, script, CLIP model, flags): a few thousand steps each, learning from the middle on, at the paper's
# updates per transition; the humanoid with 32 envs, as the paper (a rollout of 3,200 frames).
CHECKS = [
    ("cartpole", cartpole, "ViT-B-32", dict(total_timesteps=6400, learning_starts=3200)),
    ("mountaincar", mountaincar, "ViT-B-32", dict(total_timesteps=2000, learning_starts=1000)),
    ("humanoid", humanoid, "ViT-B-32", dict(total_timesteps=9600, learning_starts=3200)),
    ("humanoid", humanoid, "ViT-bigG-14", dict(total_timesteps=6400, learning_starts=3200)),
]
SMOKE = dict(num_envs=2, total_timesteps=200, learning_starts=100, train_frequency=50, gradient_steps=2,
             batch_size=16, episode_length=25, landscape_points=3)


def random_checkpoint(name: str, folder: str, device) -> tuple[str, str]:
    """(model name or config, checkpoint path) of a randomly initialised model, saved in fp16 (bigG: 5 GB)."""
    path = os.path.join(folder, f"{os.path.basename(name).removesuffix('.json')}_random_fp16.pt")
    if not os.path.exists(path):
        if name.endswith(".json"):
            open_clip.add_model_config(name)
        model = open_clip.create_model(os.path.basename(name).removesuffix(".json"), device=device)
        torch.save({key: value.half() for key, value in model.state_dict().items()}, path)
        del model
    return name, path


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure(check, device, run) -> dict:
    """Runs `run()`; its steps/s and CLIP frames/s, the peak GPU memory it took, or the error it raised."""
    reset_peak_memory(device)
    start, row = time.perf_counter(), dict(check=check, steps_per_second=None, clip_fps=None, error="")
    try:
        row.update(run())
    except SystemExit as e:
        if e.code in (130, 143):  # the run was asked to stop (Ctrl-C, or gpu_check.sh's time limit): so is the check
            raise
        row["error"] = f"SystemExit: {e}"  # a script's one-sentence stop
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
        traceback.print_exc()
    row["seconds"] = time.perf_counter() - start
    row["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return row


HEADER = "| check | steps/s | CLIP frames/s | peak GPU memory (GiB) | seconds | error |\n|---|---|---|---|---|---|"


def table_row(row: dict) -> str:
    number = lambda value, spec: format(value, spec) if value is not None else "-"  # noqa: E731
    return (f"| {row['check']} | {number(row['steps_per_second'], '.0f')} | {number(row['clip_fps'], '.0f')} | "
            f"{number(row['peak_gpu_gib'], '.1f')} | {row['seconds']:.0f} | {row['error'] or '-'} |")


def main(args: Args) -> list:
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: gpu_check needs a CUDA GPU (torch sees none); on a CPU, --smoke runs the checks small.")
    os.makedirs(args.out, exist_ok=True)
    gl = humanoid.require_gl()
    models = {}
    if args.smoke:
        with open(os.path.join(args.out, "tiny-gpu-check.json"), "w") as f:
            json.dump(TINY, f)
        models = dict.fromkeys(["ViT-B-32", "ViT-bigG-14"], random_checkpoint(
            os.path.join(args.out, "tiny-gpu-check.json"), args.out, device))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (--smoke)"
    versions = dict(torch=torch.__version__, cuda=torch.version.cuda, open_clip=open_clip.__version__,
                    mujoco=humanoid.mujoco.__version__, gymnasium=humanoid.gym.__version__)
    rows, start = [], time.perf_counter()

    def report(row):  # each row as it is measured, so that a check cut short by the time limit leaves the others
        rows.append(row)
        print(f"\ngpu_check on {device_name}; MuJoCo's OpenGL renderer: {gl} (MUJOCO_GL={os.environ['MUJOCO_GL']})\n{HEADER}")
        print("\n".join(table_row(r) for r in rows), flush=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
            json.dump(dict(device=device_name, gl_renderer=gl, versions=versions,
                           seconds=time.perf_counter() - start, rows=rows), f, indent=1)

    for check, module, model, flags in CHECKS:
        def run(module=module, model=model, flags=flags):
            if model not in models:
                models[model] = random_checkpoint(model, args.out, device)
                reset_peak_memory(device)  # the peak is the run's, not the making of its checkpoint
            name, checkpoint = models[model]
            if args.smoke:  # small, and on a CPU the humanoid's shadows would take most of the time
                flags = {**SMOKE, **(dict(fast_render=True) if module is humanoid else {})}
            result = module.main(module.Args(clip_model=name, clip_pretrained=checkpoint, eval_episodes=1,
                                             output_dir=os.path.join(args.out, "runs"), **flags))
            return dict(steps_per_second=result["sps"])
        report(measure(f"{check}, {model}", device, run))

    settings = dict(script="humanoid", clip_model="ViT-bigG-14", precision="fp16",
                    batch_size=humanoid.choose_chunk_size(0, "cuda"), num_envs=32, frames=512, steps=6400)
    if args.smoke:
        settings.update(script="cartpole", clip_model=models["ViT-B-32"][0], precision="fp32", batch_size=8,
                        num_envs=2, frames=16, steps=40)

    def clip_throughput():
        figures = throughput.main(throughput.Args(**settings))
        return dict(steps_per_second=figures["end_to_end_sps"], clip_fps=figures["clip_fps"])
    report(measure(f"throughput.py --script {settings['script']}, {os.path.basename(settings['clip_model'])} "
                   f"{settings['precision']}, chunk {settings['batch_size']}", device, clip_throughput))
    return rows


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))

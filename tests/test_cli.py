"""The command line: every bad input stops before training with one sentence, exit code 1, no traceback."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, cartpole, read_scalars

SCRIPT = os.path.join(ROOT, "dqn_clip_cartpole.py")


def run(*flags, cwd, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDL_VIDEODRIVER": "dummy", **(env_extra or {})}
    return subprocess.run([sys.executable, SCRIPT, *flags], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.mark.parametrize("flags, names", [
    (["--alpha", "1.5"], "--alpha"),
    (["--alpha", "-0.1"], "--alpha"),
    (["--prompt", ""], "--prompt"),
    (["--baseline-prompt", "  "], "--baseline-prompt"),
    (["--alpha", "0.5", "--prompt", "pole and cart"], "--baseline-prompt"),
    (["--clip-model", "ViT-Nope-99"], "--clip-model"),
    (["--clip-model", "ViT-B-32", "--clip-pretrained", "/no/such/checkpoint.pt"], "--clip-pretrained"),
    (["--clip-model", "ViT-B-32", "--clip-pretrained", "no_such_tag"], "--clip-pretrained"),
    (["--num-envs", "0", "--reward", "ground-truth"], "--num-envs"),
    ([], "--clip-pretrained"),  # the defaults, offline: the weights cannot be downloaded
])
def test_bad_input_is_one_clear_sentence(tmp_path, flags, names):
    result = run(*flags, "--output-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr
    assert not os.listdir(tmp_path)  # stopped before any run folder was made


def test_unknown_choice_is_refused_by_the_parser(tmp_path):
    result = run("--reward", "magic", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "--reward" in result.stderr


def test_help_shows_every_default(tmp_path):
    result = run("--help", cwd=tmp_path, env_extra={"COLUMNS": "200"})
    assert result.returncode == 0
    defaults = cartpole.Args()
    for text in ["--prompt", "pole vertically upright on top of the cart", "--baseline-prompt", "pole and cart",
                 "--alpha", "--clip-model", defaults.clip_model, "--clip-pretrained", defaults.clip_pretrained,
                 "--clip-precision", "--reward", "--total-timesteps", "3000000", "--learning-starts", "75000",
                 "--learning-rate", "0.0023", "--cuda", "--capture-video", "--save-model"]:
        assert text in result.stdout, text


def test_real_size_architecture_from_a_local_checkpoint(tmp_path):
    """ViT-B-32 with random weights saved by the test, through the command line."""
    import open_clip
    import torch

    checkpoint = tmp_path / "vit_b_32_random.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), checkpoint)
    result = run("--clip-model", "ViT-B-32", "--clip-pretrained", str(checkpoint), "--alpha", "0.5",
                 "--total-timesteps", "96", "--learning-starts", "48", "--train-frequency", "16",
                 "--gradient-steps", "4", "--episode-length", "24", "--num-envs", "2", "--eval-episodes", "1",
                 "--landscape-points", "5", "--clip-precision", "auto", "--output-dir", str(tmp_path / "runs"),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "precision fp32" in result.stdout and "CLIP image encoder runs in" in result.stdout
    (run_dir,) = [os.path.join(tmp_path, "runs", d) for d in os.listdir(tmp_path / "runs")]
    scalars = read_scalars(run_dir)
    assert {"losses/td_loss", "charts/episodic_clip_return", "charts/reward_correlation", "eval/clip_return",
            "charts/SPS", "time/clip_seconds"} <= set(scalars)
    assert len(scalars["losses/td_loss"]) == 3

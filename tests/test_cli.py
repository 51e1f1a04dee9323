"""The command line: every bad input stops before training with one sentence, exit code 1, no traceback."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, cartpole, mountaincar, read_scalars

SCRIPTS = {"dqn_clip_cartpole.py": cartpole, "sac_clip_mountaincar.py": mountaincar}


def run(script, *flags, cwd, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDL_VIDEODRIVER": "dummy", **(env_extra or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.mark.parametrize("flags, names", [
    (["--alpha", "1.5"], "--alpha"),
    (["--alpha", "-0.1"], "--alpha"),
    (["--prompt", ""], "--prompt"),
    (["--baseline-prompt", "  "], "--baseline-prompt"),
    (["--alpha", "0.5", "--prompt", "a cart", "--baseline-prompt", "a cart"], "--baseline-prompt"),
    (["--clip-model", "ViT-Nope-99"], "--clip-model"),
    (["--clip-model", "ViT-B-32", "--clip-pretrained", "/no/such/checkpoint.pt"], "--clip-pretrained"),
    (["--clip-model", "ViT-B-32", "--clip-pretrained", "no_such_tag"], "--clip-pretrained"),
    (["--num-envs", "0", "--reward", "ground-truth"], "--num-envs"),
    ([], "--clip-pretrained"),  # the defaults, offline: the weights cannot be downloaded
])
@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_input_is_one_clear_sentence(tmp_path, script, flags, names):
    result = run(script, *flags, "--output-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr
    assert not os.listdir(tmp_path)  # stopped before any run folder was made


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_choice_is_refused_by_the_parser(tmp_path, script):
    result = run(script, "--reward", "magic", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "--reward" in result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_every_flag_and_default(tmp_path, script):
    result = run(script, "--help", cwd=tmp_path, env_extra={"COLUMNS": "250"})
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())  # undo tyro's line wrapping
    for field in dataclasses.fields(SCRIPTS[script].Args):
        flag = "--" + field.name.replace("_", "-")
        assert flag in help_text, flag
        default = field.default
        if isinstance(default, bool) or field.name == "exp_name":
            continue
        shown = " ".join(default) if isinstance(default, tuple) else str(default)
        assert f"(default: {shown})" in help_text or f"(default: {shown!r})" in help_text, (flag, shown)


@pytest.mark.parametrize("script", SCRIPTS)
def test_real_size_architecture_from_a_local_checkpoint(tmp_path, script):
    """ViT-B-32 with random weights saved by the test, through the command line."""
    import open_clip
    import torch

    checkpoint = tmp_path / "vit_b_32_random.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), checkpoint)
    result = run(script, "--clip-model", "ViT-B-32", "--clip-pretrained", str(checkpoint), "--alpha", "0.5",
                 "--total-timesteps", "96", "--learning-starts", "48", "--train-frequency", "16",
                 "--gradient-steps", "4", "--episode-length", "24", "--num-envs", "2", "--eval-episodes", "1",
                 "--landscape-points", "5", "--clip-precision", "auto", "--output-dir", str(tmp_path / "runs"),
                 *(["--batch-size", "32"] if script == "sac_clip_mountaincar.py" else []), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "precision fp32" in result.stdout and "CLIP image encoder runs in" in result.stdout
    (run_dir,) = [os.path.join(tmp_path, "runs", d) for d in os.listdir(tmp_path / "runs")]
    scalars = read_scalars(run_dir)
    assert {"losses/td_loss", "losses/q_values", "charts/episodic_return", "charts/episodic_clip_return",
            "charts/success_rate", "eval/success_rate", "eval/clip_return", "charts/SPS", "time/rendering_seconds",
            "time/clip_seconds", "time/updates_seconds"} <= set(scalars)
    assert len(scalars["losses/td_loss"]) == 3
    assert all(np.isfinite(value) for _, value in scalars["losses/td_loss"])
    # The correlation with the ground truth needs the ground truth to vary: the pole falls in every
    # short CartPole run, while a random car never reaches MountainCar's flag (tests/test_mountaincar.py
    # checks the key with a goal the random car reaches).
    assert ("charts/reward_correlation" in scalars) == (script == "dqn_clip_cartpole.py")

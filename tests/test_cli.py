"""The command line: every bad input stops before training with one sentence, exit code 1, no traceback."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tyro

from conftest import ROOT, cartpole, humanoid, mountaincar, read_scalars

SCRIPTS = {"dqn_clip_cartpole.py": cartpole, "sac_clip_mountaincar.py": mountaincar, "sac_clip_humanoid.py": humanoid}


def run(script, *flags, cwd, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDL_VIDEODRIVER": "dummy", **(env_extra or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


BAD_INPUTS = [
    (["--alpha", "1.5"], "--alpha"),
    (["--alpha", "-0.1"], "--alpha"),
    (["--prompt", ""], "--prompt"),
    (["--baseline-prompt", "  "], "--baseline-prompt"),
    (["--alpha", "0.5", "--prompt", "a cart", "--baseline-prompt", "a cart"], "--baseline-prompt"),
    (["--clip-model", "ViT-Nope-99"], "--clip-model"),
    (["--clip-model", "ViT-B-32", "--clip-pretrained", "/no/such/checkpoint.pt"], "--clip-pretrained"),
    (["--clip-model", "ViT-B-32", "--clip-pretrained", "no_such_tag"], "--clip-pretrained"),
    (["--num-envs", "0", "--reward", "ground-truth"], "--num-envs"),
    (["--gradient-steps", "0", "--reward", "ground-truth"], "--gradient-steps must be in [1, inf), got 0"),
    (["--learning-rate", "-1", "--reward", "ground-truth"], "--learning-rate must be in (0, inf), got -1.0"),
    (["--batch-size", "0", "--reward", "ground-truth"], "--batch-size"),
    (["--eval-episodes", "-1", "--reward", "ground-truth"], "--eval-episodes"),
    (["--gamma", "1.5", "--reward", "ground-truth"], "--gamma must be in [0, 1], got 1.5"),
    (["--tau", "0", "--reward", "ground-truth"], "--tau"),
    (["--clip-chunk-size", "-1"], "--clip-chunk-size"),
    (["--buffer-size", "100"], "--buffer-size must hold a rollout and an episode"),  # CLIP returns from replay slots
    ([], "--clip-pretrained"),  # the defaults, offline: the weights cannot be downloaded
]


@pytest.mark.parametrize("flags, names", BAD_INPUTS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_input_stops_with_one_sentence_naming_the_flag(tmp_path, script, flags, names):
    """Parsed as the command line would be, then run in this process (a subprocess per case is slow)."""
    module = SCRIPTS[script]
    args = tyro.cli(module.Args, args=[*flags, "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        module.main(args)
    message = str(stop.value.code)
    assert message.startswith("error: ") and names in message and "\n" not in message, message
    assert not os.listdir(tmp_path)  # stopped before any run folder was made


def test_bad_input_through_the_command_line(tmp_path, script="sac_clip_humanoid.py"):
    """Exit code 1 and one line on stderr: no traceback, no library warnings (here: the download retries
    of the default weights, offline). One script suffices: the loading code is a shared block, and the
    in-process test above checks every script's message."""
    result = run(script, "--output-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--clip-pretrained" in lines[0], result.stderr
    assert not os.listdir(tmp_path)


def parse(script, *flags):
    """What the command line does with these flags (tyro in this process): (exit code, stdout, stderr)."""
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
        tyro.cli(SCRIPTS[script].Args, args=list(flags))
    return stop.value.code, stdout.getvalue(), stderr.getvalue()


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_choice_is_refused_by_the_parser(script):
    code, _, stderr = parse(script, "--reward", "magic")
    assert code != 0 and "Traceback" not in stderr and "--reward" in stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_every_flag_and_default(script, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, stdout, _ = parse(script, "--help")
    assert code == 0
    help_text = " ".join(stdout.split())  # undo tyro's line wrapping
    for field in dataclasses.fields(SCRIPTS[script].Args):
        flag = "--" + field.name.replace("_", "-")
        assert flag in help_text, flag
        default = field.default
        if isinstance(default, bool) or field.name == "exp_name":
            continue
        if default == ():  # the humanoid's --prompt: the paper's prompt of --task
            assert "(default: the paper's prompt for --task)" in help_text, flag
            continue
        shown = " ".join(default) if isinstance(default, tuple) else str(default)
        assert f"(default: {shown})" in help_text or f"(default: {shown!r})" in help_text, (flag, shown)


@pytest.fixture(scope="module")
def vit_b_32_checkpoint(tmp_path_factory):
    """ViT-B-32 with random weights, saved by the test session (nothing is downloaded)."""
    import open_clip
    import torch

    checkpoint = tmp_path_factory.mktemp("vit_b_32") / "vit_b_32_random.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), checkpoint)
    return checkpoint


@pytest.mark.long(40)
def test_real_size_architecture_from_a_local_checkpoint(tmp_path, vit_b_32_checkpoint):
    """ViT-B-32 from a local checkpoint file, through the humanoid's command line in its default scene, shadows
    included (the loading and reward code is a shared block; every script's loop runs a tiny CLIP in process)."""
    result = run("sac_clip_humanoid.py", "--clip-model", "ViT-B-32", "--clip-pretrained", str(vit_b_32_checkpoint),
                 "--alpha", "0.5", "--total-timesteps", "56", "--learning-starts", "32", "--train-frequency", "8",
                 "--gradient-steps", "4", "--episode-length", "24", "--num-envs", "2", "--eval-episodes", "1",
                 "--batch-size", "32", "--clip-chunk-size", "16", "--landscape-points", "2", "--baseline-episodes", "1",
                 "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CLIP image encoder runs in fp32 (--clip-precision auto on cpu)" in result.stdout
    (run_dir,) = [os.path.join(tmp_path, "runs", d) for d in os.listdir(tmp_path / "runs")]
    scalars = read_scalars(run_dir)
    assert {"losses/td_loss", "losses/q_values", "charts/episodic_clip_return", "charts/last_frame_clip_reward",
            "eval/clip_return", "eval/last_frame_clip_reward", "eval/success_rate", "charts/success_rate", "charts/SPS",
            "charts/pose_fraction", "landscape/in_pose_minus_out"} <= set(scalars)
    assert len(scalars["losses/td_loss"]) == 3  # phases at 40, 48 and 56 transitions
    assert all(np.isfinite(value) for _, value in scalars["losses/td_loss"])
    assert os.listdir(os.path.join(run_dir, "strips"))  # what a researcher looks at besides the detector

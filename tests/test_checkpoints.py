"""Long runs survive: checkpoints, resuming, SIGTERM and Ctrl-C, progress with an ETA, and W&B tracking.

A run stopped and resumed must end exactly as one that never stopped (same seed, buffer saved, CPU):
same final weights, same logged curve.
"""

import glob
import os
import signal
import time

import numpy as np
import open_clip
import pytest
import torch
import tyro

from conftest import cartpole, humanoid, mountaincar, needs_gl, read_scalars

FLAGS = {  # short runs whose rollouts end at the listed steps, learning starting after the first ones
    cartpole: dict(num_envs=2, total_timesteps=600, learning_starts=200, train_frequency=100, gradient_steps=10,
                   episode_length=50),
    mountaincar: dict(num_envs=2, total_timesteps=384, learning_starts=96, train_frequency=32, gradient_steps=8,
                      batch_size=32, episode_length=50),
    humanoid: dict(baseline_episodes=1, num_envs=2, total_timesteps=300, learning_starts=100, train_frequency=50, gradient_steps=4,
                   batch_size=32, hidden_size=32, episode_length=40, fast_render=True),  # CPU: shadows are slow
}
STOP_AT = {cartpole: 350, mountaincar: 200, humanoid: 170}  # transitions stored when SIGTERM arrives


def short_args(module, folder, **overrides):
    settings = dict(FLAGS[module], clip_model="unused", eval_episodes=1, landscape_points=3, buffer_size=2000,
                    clip_precision="fp32", save_model=True, checkpoint_interval=10**9, output_dir=str(folder), seed=1)
    return module.Args(**{**settings, **overrides})


def tiny_reward(module, tiny_clip):
    name, _, model = tiny_clip
    return module.CLIPReward(model, open_clip.get_tokenizer(name), ("a robot kneeling",), ("a robot",), alpha=0.5)


def sigterm_when_stored(module, monkeypatch, transitions: int):
    """This process gets SIGTERM right after the replay buffer has stored `transitions` (mid-rollout)."""
    add = module.ReplayBuffer.add

    def add_then_signal(self, *transition):
        slots = add(self, *transition)
        if self.pos == transitions:
            os.kill(os.getpid(), signal.SIGTERM)
        return slots

    monkeypatch.setattr(module.ReplayBuffer, "add", add_then_signal)


def only_run_dir(folder):
    (run_dir,) = glob.glob(os.path.join(folder, "*"))
    return run_dir


def curves(run_dir) -> dict:
    return {tag: values for tag, values in read_scalars(run_dir).items() if tag != "charts/SPS"}


def assert_same_run(whole: dict, resumed: dict):
    assert resumed["global_step"] == whole["global_step"] and resumed["gradient_steps_done"] == whole["gradient_steps_done"]
    expected, weights = torch.load(whole["model_path"]), torch.load(resumed["model_path"])
    flat = lambda d: {f"{k}.{n}": v for k, sub in d.items() for n, v in sub.items()} if isinstance(  # noqa: E731
        next(iter(d.values())), dict) else d
    expected, weights = flat(expected), flat(weights)
    assert expected.keys() == weights.keys()
    for key in expected:
        assert torch.equal(expected[key], weights[key]), key
    whole_curves, resumed_curves = curves(whole["run_dir"]), curves(resumed["run_dir"])
    assert whole_curves.keys() == resumed_curves.keys()
    for tag in whole_curves:
        assert np.array_equal(resumed_curves[tag], whole_curves[tag], equal_nan=True), tag
    assert len(whole_curves["losses/td_loss"]) >= 2 and len(whole_curves["charts/episodic_return"]) >= 4


@pytest.mark.parametrize("module", [cartpole, mountaincar, pytest.param(humanoid, marks=needs_gl)],
                         ids=["cartpole", "mountaincar", "humanoid"])
def test_a_run_stopped_by_sigterm_and_resumed_ends_as_if_never_stopped(module, tiny_clip, tmp_path, monkeypatch,
                                                                        capsys):
    whole = module.main(short_args(module, tmp_path / "whole"), reward_model=tiny_reward(module, tiny_clip))
    with monkeypatch.context() as patch:
        sigterm_when_stored(module, patch, STOP_AT[module])
        with pytest.raises(SystemExit) as stopped:
            module.main(short_args(module, tmp_path / "stopped"), reward_model=tiny_reward(module, tiny_clip))
    assert stopped.value.code == 143
    run_dir = only_run_dir(tmp_path / "stopped")
    rollout = FLAGS[module]["train_frequency"]
    checkpoint_step = -(-STOP_AT[module] // rollout) * rollout  # the end of the rollout the signal came in
    assert [os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "checkpoint_*.pt"))] == [
        f"checkpoint_{checkpoint_step:012d}.pt"]
    assert not os.path.exists(os.path.join(run_dir, "results.json"))  # not finished
    printed = capsys.readouterr().out
    assert f"stopped at step {checkpoint_step} (SIGTERM); to go on: python {module.__name__}.py --resume {run_dir}" in printed
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back

    # Time adds up across sessions: say the first one had trained for 1,000 s.
    state = module.load_checkpoint(run_dir)
    state["seconds"] = 1000.0
    module.save_checkpoint(run_dir, state)
    started = time.time()
    resumed = module.main(module.Args(resume=run_dir), reward_model=tiny_reward(module, tiny_clip))
    assert 1000 < resumed["wall_seconds"] < 1000 + time.time() - started
    assert resumed["sps"] < resumed["global_step"] / 1000
    assert resumed["run_dir"] == run_dir
    assert_same_run(whole, resumed)


def test_a_checkpoint_cut_mid_write_or_damaged_later_is_skipped_for_the_one_before(tiny_clip, tmp_path, monkeypatch,
                                                                                 capsys):
    """Checkpoints are written to a temporary file and renamed: a crash mid-write (here: the disk fills up
    during the second one) leaves the first intact, and the run resumes from it and ends as if never stopped.
    A newest checkpoint damaged afterwards is skipped for the one before it."""
    flags = dict(checkpoint_interval=200)
    whole = cartpole.main(short_args(cartpole, tmp_path / "whole", **flags), reward_model=tiny_reward(cartpole, tiny_clip))
    save, calls = torch.save, []

    def save_that_fails_the_second_time(obj, file):
        calls.append(file)
        if len(calls) == 2:
            file.write(b"half a checkpoint")
            raise OSError("No space left on device")
        return save(obj, file)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save_that_fails_the_second_time)
        with pytest.raises(OSError):
            cartpole.main(short_args(cartpole, tmp_path / "crashed", **flags), reward_model=tiny_reward(cartpole, tiny_clip))
    run_dir = only_run_dir(tmp_path / "crashed")
    assert [name for name in sorted(os.listdir(run_dir)) if name.startswith("checkpoint")] == [
        "checkpoint_000000000200.pt", "checkpoint_000000000400.pt.tmp"]
    open(os.path.join(run_dir, "checkpoint_000000000999.pt.tmp"), "wb").close()  # an older crash's remains
    resumed = cartpole.main(cartpole.Args(resume=run_dir + "/"), reward_model=tiny_reward(cartpole, tiny_clip))
    assert_same_run(whole, resumed)
    assert not glob.glob(os.path.join(run_dir, "*.tmp"))  # the crashed writes' remains are gone

    # Damaged later (a disk error, a copy cut short): the newest is skipped, with a note.
    assert [name for name in sorted(os.listdir(run_dir)) if name.startswith("checkpoint")] == [
        "checkpoint_000000000400.pt", "checkpoint_000000000600.pt"]  # the newest two are kept
    with open(os.path.join(run_dir, "checkpoint_000000000600.pt"), "r+b") as f:
        f.truncate(1000)
    capsys.readouterr()
    assert cartpole.load_checkpoint(run_dir)["global_step"] == 400
    assert "checkpoint_000000000600.pt cannot be read" in capsys.readouterr().out


def test_without_the_buffer_a_resumed_run_fills_a_fresh_one_before_it_trains(tiny_clip, tmp_path, monkeypatch):
    """--no-checkpoint-buffer: the checkpoint holds no transitions; the resumed run starts new episodes in a
    fresh buffer and trains again only once it holds learning-starts transitions."""
    flags = dict(checkpoint_buffer=False, total_timesteps=1000)
    with monkeypatch.context() as patch:
        sigterm_when_stored(cartpole, patch, 350)
        with pytest.raises(SystemExit):
            cartpole.main(short_args(cartpole, tmp_path, **flags), reward_model=tiny_reward(cartpole, tiny_clip))
    run_dir = only_run_dir(tmp_path)
    state = cartpole.load_checkpoint(run_dir)
    assert state["buffer"] is None and state["updates_done"] == 20  # phases after 300 and 400: 10 updates each
    stored_at_sample = []
    sample = cartpole.ReplayBuffer.sample
    monkeypatch.setattr(cartpole.ReplayBuffer, "sample", lambda self, n: stored_at_sample.append(self.pos) or sample(self, n))
    resumed = cartpole.main(cartpole.Args(resume=run_dir), reward_model=tiny_reward(cartpole, tiny_clip))
    # The fresh buffer holds the 600 transitions after step 400; training waits for 200 of them (learning-starts):
    # phases after 700, 800, 900 and 1,000.
    assert min(stored_at_sample) == 300 and resumed["gradient_steps_done"] == 20 + 4 * 10


def test_sigterm_through_the_command_line_stops_with_the_command_that_resumes(tmp_path):
    """The real signal to a real process: it stops at the end of the rollout with a checkpoint, says how to go
    on, and exits 143 (128 + SIGTERM); the command it printed finishes the run."""
    import subprocess
    import sys

    from conftest import ROOT

    command = [sys.executable, "dqn_clip_cartpole.py", "--reward", "ground-truth", "--total-timesteps", "4000",
               "--learning-starts", "400", "--train-frequency", "200", "--gradient-steps", "10", "--num-envs", "4",
               "--episode-length", "50", "--eval-episodes", "1", "--output-dir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("step "):  # training has started: the loop is running
            process.send_signal(signal.SIGTERM)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    (stopped,) = [line for line in out.splitlines() if line.startswith("stopped at step ")]
    step = int(stopped.split()[3])
    assert step < 4000 and step % 200 == 0 and "(SIGTERM); to go on: python dqn_clip_cartpole.py --resume " in stopped
    # The printed command, parsed as the command line would parse it (run here: a second process would only add
    # its ~10 s of imports).
    python, script, *flags = stopped.split("to go on: ")[1].split()
    assert (python, script) == ("python", "dqn_clip_cartpole.py")
    finished = cartpole.main(tyro.cli(cartpole.Args, args=flags))
    assert finished["global_step"] == 4000 and finished["run_dir"] == flags[-1]


def test_track_sends_flags_curves_and_videos_to_wandb_offline(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = cartpole.main(short_args(cartpole, tmp_path, track=True, wandb_project_name="vlmrm-test", total_timesteps=400,
                                      capture_video=True, video_interval=300), reward_model=tiny_reward(cartpole, tiny_clip))
    (offline,) = glob.glob(os.path.join(result["run_dir"], "wandb", "offline-run-*"))
    assert offline.endswith(os.path.basename(result["run_dir"]))  # the W&B run is named after the run folder
    expected = (b"train_frequency", b"learning_rate", b"charts/episodic_return", b"losses/td_loss", b"videos/eval")
    for _ in range(120):  # W&B's service process writes the run's log on its own, a moment after wandb.finish()
        with open(glob.glob(os.path.join(offline, "*.wandb"))[0], "rb") as f:
            log = f.read()
        if all(key in log for key in expected):
            break
        time.sleep(0.5)
    for key in expected:
        assert key in log, key  # the flags, the synced TensorBoard scalars, the videos
    videos = glob.glob(os.path.join(offline, "files", "media", "videos", "**", "*.gif"), recursive=True)
    assert len(videos) == 2  # at steps 0 and 300


def test_progress_line_and_eta():
    assert cartpole.progress(16_000, 3_000_000, 412) == "step 16000/3000000 (0.5%), 412 steps/s, ETA 2h00m"
    assert cartpole.progress(3_000_004, 3_000_000, 412).endswith("(100.0%), 412 steps/s, ETA 0h00m")  # past the end
    assert cartpole.duration(13 * 86400 + 5 * 3600 + 59) == "13d05h" and cartpole.duration(59) == "0h00m"


def test_an_absurd_estimate_warns_and_names_a_smaller_model(tmp_path, capsys, monkeypatch):
    """A reward model as slow as ViT-bigG-14 on a CPU: the run's estimate comes with a warning that names
    ViT-B-32 and what it would need. The clock is a fake one that only the slow model advances, so the figures
    do not depend on how busy the machine is."""
    now = [0.0]
    monkeypatch.setattr(cartpole.time, "perf_counter", lambda: now[0])

    class SlowReward(torch.nn.Module):  # 0.4 s a frame, stands in for a large model on a CPU
        device, precision, chunk_size = torch.device("cpu"), "fp32", 256

        def forward(self, frames):
            now[0] += 0.4 * len(frames)
            return torch.zeros(len(frames))

    args = cartpole.Args(clip_model="ViT-bigG-14", total_timesteps=10_000_000)
    frames = np.zeros((3, 224, 224, 3), np.uint8)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    cartpole.estimate_run_time(SlowReward(), frames, args)
    assert torch.equal(torch.rand(3), expected)  # building ViT-B-32 drew nothing from the run's random stream
    estimate, warning = capsys.readouterr().out.strip().splitlines()[-2:]
    assert estimate.startswith("estimate: CLIP alone needs 46d") and "(ViT-bigG-14, fp32 on cpu)" in estimate
    assert warning.startswith("warning: at this speed the run cannot finish (46d")
    assert "ViT-B-32 (--clip-model ViT-B-32 --clip-pretrained laion2b_s34b_b79k) would need " in warning


def test_a_gpu_runs_random_stream_is_saved_and_restored_for_its_own_device(monkeypatch):
    """The CUDA branch, run on the CPU: the generator of the run's GPU alone is saved and put back (not every
    visible GPU's: a run resumed where fewer GPUs are visible must still load), and a CPU run saves none."""
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or torch.ones(3))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device, state.sum())))
    envs = cartpole.gym.vector.SyncVectorEnv([cartpole.make_env(20, (32, 32))],
                                             autoreset_mode=cartpole.gym.vector.AutoresetMode.DISABLED)
    envs.reset(seed=0)
    gpu, cpu = torch.device("cuda", 1), torch.device("cpu")
    rb = cartpole.ReplayBuffer(10, 4, (), np.int64, gpu)
    state = cartpole.random_and_env_state(envs, rb, with_buffer=False)
    cartpole.restore_random_and_env_state(state, envs, rb)
    assert calls == [("get", gpu), ("set", gpu, 3.0)]
    assert cartpole.random_and_env_state(envs, cartpole.ReplayBuffer(10, 4, (), np.int64, cpu), False)["cuda"] is None


def test_a_checkpoint_older_than_a_flag_is_not_resumed_with_todays_default(tmp_path):
    """A checkpoint whose flags lack one (written before it existed) would go on with today's default, e.g. the
    time-limit end turning terminal half way through a run: the run stops with one sentence instead."""
    result = cartpole.main(short_args(cartpole, tmp_path, reward="ground-truth", total_timesteps=200))
    state = cartpole.load_checkpoint(result["run_dir"])
    del state["args"]["bootstrap_time_limit"]
    cartpole.save_checkpoint(result["run_dir"], state)
    with pytest.raises(SystemExit, match=r"^error: --resume '.*': its checkpoint was written before "
                                         r"--bootstrap-time-limit existed, so going on could change what the run "
                                         r"does half way: finish it with the code that wrote it, or start anew\.$"):
        cartpole.main(cartpole.Args(resume=result["run_dir"]))
    state["args"]["bootstrap_time_limit"] = False  # one with a flag this script does not have stops the same way
    state["args"]["gradient_penalty"] = 1.0
    cartpole.save_checkpoint(result["run_dir"], state)
    with pytest.raises(SystemExit, match=r"^error: --resume '.*': its checkpoint has a flag this script does not know "
                                         r"\(--gradient-penalty\): finish the run with the code that wrote it, or "
                                         r"start anew\.$"):
        cartpole.main(cartpole.Args(resume=result["run_dir"]))
    del state["args"]["gradient_penalty"]  # and one whose loop position is kept under other names
    state["counters"] = tuple(state[key] if key == "global_step" else state.pop(key) for key in cartpole.POSITION)
    cartpole.save_checkpoint(result["run_dir"], state)
    with pytest.raises(SystemExit, match=r"^error: --resume '.*': its checkpoint was written by an older version of "
                                         r"this script \(it holds no rollouts_done\): finish the run with the code "
                                         r"that wrote it, or start anew\.$"):
        cartpole.main(cartpole.Args(resume=result["run_dir"]))


def test_stop_requests_give_the_signals_back_on_every_way_out():
    """Inside the block SIGTERM and Ctrl-C are requests; a second Ctrl-C interrupts at once; leaving the block
    (normally, by an exception, by the interrupt) puts the handlers back."""
    signals = (signal.SIGTERM, signal.SIGINT)
    before = [signal.getsignal(signum) for signum in signals]
    with cartpole.StopRequests() as stop:
        assert [signal.getsignal(signum) for signum in signals] == [stop.handle, stop.handle] and not stop
    assert [signal.getsignal(signum) for signum in signals] == before
    with pytest.raises(RuntimeError):
        with cartpole.StopRequests():
            raise RuntimeError("a crash inside the loop")
    assert [signal.getsignal(signum) for signum in signals] == before
    with pytest.raises(KeyboardInterrupt):
        with cartpole.StopRequests() as stop:
            stop.handle(signal.SIGINT, None)  # the first Ctrl-C: the run stops after its next checkpoint
            assert stop == ["SIGINT"]
            stop.handle(signal.SIGINT, None)  # the second: now
    assert [signal.getsignal(signum) for signum in signals] == before

"""The benchmarks run at a tiny size and report every figure (no test asserts a time)."""

import json
import math
import os

import numpy as np
import open_clip
import pytest
import torch

from conftest import ROOT, load_benchmark, needs_gl


throughput = load_benchmark("throughput")
clip_memory = load_benchmark("clip_memory")

FIELDS = {"settings", "device", "torch_threads", "render_fps_per_env", "render_fps_total", "clip_fps", "simulation_sps_per_env",
          "clip_gflop_per_frame", "clip_tflops_achieved", "device_peak_tflops", "clip_fraction_of_peak",
          "updates_per_second", "end_to_end_sps", "end_to_end_over_clip_only", "phase_share", "fidelity",
          "periodic_evaluation_seconds"}


@pytest.mark.parametrize("script", ["cartpole", "humanoid"])
def test_benchmark_reports_every_figure(tiny_clip, tmp_path, script):
    name, _, _ = tiny_clip
    path = tmp_path / "figures.json"
    # The humanoid without shadows (llvmpipe draws them at ~8 frames/s): this test checks which figures are
    # reported, not their values.
    throughput.main(throughput.Args(script=script, clip_model=name, frames=8, steps=120, batch_size=8,
                                    num_envs=2, fast_render=script == "humanoid", json=str(path)))
    figures = json.loads(path.read_text())
    assert FIELDS <= set(figures), FIELDS - set(figures)
    assert set(figures["phase_share"]) == {"simulation", "rendering", "clip", "updates"}
    assert figures["clip_gflop_per_frame"] > 0 and figures["end_to_end_sps"] > 0
    assert figures["updates_per_second"] > 0  # the short run reaches training phases (at the script's ratio)
    # The humanoid's evaluation right after learning starts is timed and taken out of its training speed;
    # CartPole evaluates only at the end, after the script took its speed.
    assert (figures["periodic_evaluation_seconds"] > 0) == (script == "humanoid")
    if script == "humanoid":
        assert throughput.load_script(script).evaluate_and_log.__name__ == "evaluate_and_log"  # the timer is gone
    assert set(figures["fidelity"]) >= {"fp32", "bf16"}
    for row in figures["fidelity"].values():
        assert {"cosine_min", "cosine_mean", "max_reward_error", "reward_spread", "error_over_spread", "spearman",
                "faithful", "seconds_per_frame", "frames_per_second"} <= set(row)
        assert row["frames_per_second"] > 0
    assert figures["fidelity"]["fp32"]["max_reward_error"] == 0.0
    # bf16 autocast must change the arithmetic: an error of exactly 0 means autocast silently did nothing.
    assert figures["fidelity"]["bf16"]["max_reward_error"] > 0.0
    assert figures["fidelity"]["bf16"]["cosine_min"] < 1.0


def test_fast_render_is_refused_for_a_script_without_it():
    with pytest.raises(SystemExit, match=r"^error: --fast-render is the humanoid's \(got --script cartpole\)"):
        throughput.main(throughput.Args(script="cartpole", fast_render=True))


def test_fidelity_restores_precision_and_lets_out_of_memory_through(tiny_clip, monkeypatch):
    name, _, model = tiny_clip
    reward_model = throughput.load_script("cartpole").CLIPReward(
        model, open_clip.get_tokenizer(name), ("pole upright",), ("pole",), 0.5, chunk_size=3, precision="fp16")
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    figures = throughput.measure_fidelity(reward_model, frames, torch.device("cpu"))
    assert reward_model.precision == "fp16"
    assert figures["fp32"]["max_reward_error"] == 0.0 and figures["fp32"]["spearman"] == 1.0

    embed = reward_model.embed_images

    def failing(kind):
        def embed_images(x):
            if reward_model.precision == "bf16":
                raise kind
            return embed(x)
        return embed_images

    # No kernel for a dtype: that precision is left out.
    no_kernel = RuntimeError('"addmm_impl_cpu_" not implemented for \'BFloat16\'')
    monkeypatch.setattr(reward_model, "embed_images", failing(no_kernel))
    assert set(throughput.measure_fidelity(reward_model, frames, torch.device("cpu"))) == {"fp32", "fp16"}
    # Out of memory (or any other error) is not a missing kernel: it stops the benchmark.
    for error in (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), RuntimeError("boom")):
        monkeypatch.setattr(reward_model, "embed_images", failing(error))
        with pytest.raises(type(error)):
            throughput.measure_fidelity(reward_model, frames, torch.device("cpu"))
        assert reward_model.precision == "fp16"


def test_clip_memory_grows_with_the_chunk(tiny_clip):
    name, _, _ = tiny_clip
    settings = dict(clip_model=name, layers=(1,), chunks=(1, 4), precisions=("fp32",), context_gib=0.0)
    figures = clip_memory.main(clip_memory.Args(gpu_gib=0.05, **settings))
    peaks = figures["measured"]["fp32"]["1"]["peaks"]
    assert peaks["4"] > peaks["1"] > 0
    row = figures["measured"]["fp32"]["1"]
    assert 0.5 < row["per_frame_bytes"] / row["hand_estimate_per_frame_bytes"] < 1.5
    assert figures["weights_bytes_fp32"] == 4 * figures["full_model_parameters"] > 0
    large = clip_memory.main(clip_memory.Args(gpu_gib=1.0, **settings))
    assert 0 < figures["max_chunk_fp16"] < large["max_chunk_fp16"]
    assert 0 < figures["max_chunk_fp32"] < large["max_chunk_fp32"]


@needs_gl
def test_gpu_check_reports_every_check_and_goes_on_past_a_failure(tmp_path, monkeypatch, capsys):
    """gpu_check.sh's work, small on the CPU (--smoke): every script trains from a random checkpoint made on the
    spot and loaded as a user's file, throughput.py runs, and one table comes out; a check that fails is a row
    with its error, and the others still run."""
    gpu_check = load_benchmark("gpu_check")
    monkeypatch.setattr(gpu_check.mountaincar, "main", lambda args: gpu_check.mountaincar.fail("no such thing"))
    rows = gpu_check.main(gpu_check.Args(smoke=True, out=str(tmp_path)))
    assert [row["check"].split(",")[0] for row in rows] == ["cartpole", "mountaincar", "humanoid", "humanoid",
                                                           "throughput.py --script cartpole"]
    failed = rows.pop(1)
    assert failed["error"] == "SystemExit: error: no such thing" and failed["steps_per_second"] is None
    assert all(not row["error"] and row["steps_per_second"] > 0 for row in rows), rows
    assert rows[-1]["clip_fps"] > 0 and all(row["peak_gpu_gib"] is None for row in rows)  # no GPU: no figure
    printed = capsys.readouterr().out
    assert "MuJoCo's OpenGL renderer: " in printed and "| mountaincar, ViT-B-32 | - | - | - |" in printed
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["rows"][0]["check"] == "cartpole, ViT-B-32" and saved["versions"]["torch"] == torch.__version__
    assert saved["seconds"] >= sum(row["seconds"] for row in saved["rows"])
    with open(os.path.join(ROOT, "benchmarks", "gpu_check.sh")) as f:
        assert "timeout -k 30 600 python benchmarks/gpu_check.py" in f.read()  # at most 10 minutes


def test_gpu_check_without_a_gpu_stops_with_one_sentence(tmp_path, monkeypatch):
    gpu_check = load_benchmark("gpu_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"^error: gpu_check needs a CUDA GPU .* --smoke runs the checks small\.$"):
        gpu_check.main(gpu_check.Args(out=str(tmp_path)))


def test_gpu_check_stops_when_its_run_is_asked_to_and_keeps_the_rows_before(tmp_path, monkeypatch):
    """gpu_check.sh's time limit sends SIGTERM: the running script checkpoints and exits 143, and gpu_check stops
    too (not on to the next check past its 10 minutes), its table so far in gpu_check.json."""
    gpu_check = load_benchmark("gpu_check")
    monkeypatch.setattr(gpu_check.mountaincar, "main", lambda args: (_ for _ in ()).throw(SystemExit(143)))
    with pytest.raises(SystemExit) as stopped:
        gpu_check.main(gpu_check.Args(smoke=True, out=str(tmp_path)))
    assert stopped.value.code == 143
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [row["check"] for row in rows] == ["cartpole, ViT-B-32"] and not rows[0]["error"]


def test_pose_reward_report_orders_states_as_the_detector(tmp_path):
    """benchmarks/pose_reward_report.py: the score separates the states in the pose from the others (by construction:
    the flag is half of it), and the graded part alone already orders them as the detector does (AUC near 1) for
    every task. A graded part that pointed away from a pose, or a margin with the wrong sign, fails here."""
    pose_reward_report = load_benchmark("pose_reward_report")
    report = pose_reward_report.main(pose_reward_report.Args(out=str(tmp_path / "report.json"), episodes=1, jitters=1))
    assert set(report) == set(load_benchmark("pose_contact_sheet").humanoid.TASKS)
    for task, row in report.items():
        assert row["in_pose_states"] > 0 and row["auc"] == 1.0, task
        assert row["best_out_of_pose"] < 0.5 and min(row["in_pose_score"]) >= 0.9
        assert row["graded_auc"] > 0.95 and row["graded_spearman"] > 0.0, (task, row["graded_auc"])
    assert json.loads((tmp_path / "report.json").read_text())["kneeling"]["auc"] == 1.0


@needs_gl
def test_pose_speed_reports_the_marginal_rate_and_the_update_bound(tmp_path):
    """benchmarks/pose_speed.py, tiny: two runs that differ in length give the marginal rate; the update's FLOPs
    are the SAC update's of the paper's sizes (batch 512, 2 x 256: ~2.3 GFLOP counted with torch's counter)."""
    pose_speed = load_benchmark("pose_speed")
    figures = pose_speed.main(pose_speed.Args(raw_steps=50, learning_starts=64, phases=(1, 2), updates=1, repeats=2,
                                              train_frequency=320, gradient_steps=10, json=str(tmp_path / "speed.json")))
    # Rates, not times, are checked: the marginal rate of so short a run is noise (a busy core can even make it negative).
    assert len(figures["raw_sps"]) == 2 and all(len(raw) == 3 and min(raw) > 0 for raw in figures["raw_sps"])
    assert len(figures["pose_sps_each"]) == 2 and all(math.isfinite(rate) for rate in figures["pose_sps_each"])
    # Each repeat's ratio is against its own raw physics, the headline is their median.
    assert figures["pose_over_raw_each"] == pytest.approx(
        [rate / np.median(raw) for rate, raw in zip(figures["pose_sps_each"], figures["raw_sps"])])
    assert figures["pose_over_raw"] == pytest.approx(np.median(figures["pose_over_raw_each"]))
    assert all(len(raw) == 3 and min(raw) > 0 for raw in figures["raw_same_episodes_sps"])
    assert figures["pose_over_raw_same_episodes"] == pytest.approx(np.median(
        [rate / np.median(raw) for rate, raw in zip(figures["pose_sps_each"], figures["raw_same_episodes_sps"])]))
    assert figures["pose_sps_after_learning_starts"] == pytest.approx(np.median(figures["pose_sps_each"]))
    assert 1.5 < figures["update_gflop"] < 3.5 and figures["matmul_gflops_per_s"] > 0
    # The bound: the transitions of one update (320 / 10) in the time its FLOPs take at the products' rate.
    assert figures["update_bound_sps"] == pytest.approx(32 * figures["matmul_gflops_per_s"] / figures["update_gflop"])
    # Adding the physics: per transition, an update's share and a step of the pose run's episodes, in turn.
    physics = np.median(figures["raw_same_episodes_sps"])
    assert figures["update_and_physics_bound_sps"] == pytest.approx(1 / (1 / figures["update_bound_sps"] + 1 / physics))
    assert json.loads((tmp_path / "speed.json").read_text())["torch_threads"] == 1
    assert figures["pose_over_update_and_physics_bound"] == pytest.approx(
        figures["pose_sps_after_learning_starts"] / figures["update_and_physics_bound_sps"])
    # The second physics reference runs the pose run's episodes: 100 steps each, whether the robot falls or not;
    # gymnasium's ends one whenever it falls (~24 steps with random actions).
    assert pose_speed.raw_physics(250, episode_length=100)[1] == 2
    assert pose_speed.raw_physics(250)[1] >= 5


def test_clip_cpu_pipeline_compares_the_scripts_with_the_authors_pipeline(tiny_clip, tmp_path, monkeypatch):
    """benchmarks/clip_cpu_pipeline.py, tiny: a frames/s per chunk size, and end-to-end CartPole runs of both
    pipelines; the authors' renders gymnasium's full 600x400 frame (CLIPReward resizes it)."""
    pipeline = load_benchmark("clip_cpu_pipeline")
    name, _, _ = tiny_clip
    passes = []  # (frames, height, width) of every CLIP pass
    embed = pipeline.cartpole.CLIPReward.embed_images
    monkeypatch.setattr(pipeline.cartpole.CLIPReward, "embed_images",
                        lambda self, frames: passes.append(np.asarray(frames).shape[:3]) or embed(self, frames))
    # The sweep ends at 48 frames per pass: the end-to-end runs must each use their own size, never that one.
    figures = pipeline.main(pipeline.Args(clip_model=name, chunk_sizes=(4, 48), frames=48, steps=96, repeats=1,
                                          json=str(tmp_path / "pipeline.json")))
    assert set(figures["chunk_frames_per_s"]) == {4, 48} and figures["cpu_rule_chunk_size"] == 32
    assert all(len(v) == 1 and v[0] > 0 for v in figures["end_to_end_sps"].values())
    end_to_end = passes[(1 + 48 // 4) + (1 + 1):]  # after the sweep's: a warm-up pass, then 48 frames, per size
    full_size = [p for p in end_to_end if p[1:] == (400, 600)]
    drawn_small = [p for p in end_to_end if p[1:] != (400, 600)]
    assert full_size and drawn_small  # the authors' frames are drawn at 600x400 and resized; the scripts' are not
    assert max(p[0] for p in end_to_end) <= 32  # both at 32 frames per pass (the CPU rule and the authors' batch)


def test_pose_curves_table_and_figure_come_from_the_runs_logs(tmp_path, capsys):
    """benchmarks/pose_curves.py on two logged runs whose evaluations fall at different steps: one row per
    evaluation step, each run's greedy success (steps in the pose, how many differ), and the baselines."""
    from torch.utils.tensorboard import SummaryWriter

    runs = []
    for seed, evaluations in ((1, {50_016: (0.0, 0.12, 3), 150_016: (1.0, 0.63, 2)}), (2, {50_016: (0.0, 0.05, 1)})):
        run = tmp_path / f"Humanoid__pose_kneeling__{seed}__123"
        writer = SummaryWriter(str(run))
        writer.add_scalar("baselines/zero_actions_pose_fraction", 0.12, 0)
        writer.add_scalar("baselines/random_actions_pose_fraction", 0.17, 0)
        for step, (success, fraction, distinct) in evaluations.items():
            writer.add_scalar("eval/success_rate", success, step)
            writer.add_scalar("eval/pose_fraction", fraction, step)
            writer.add_scalar("eval/distinct_pose_fractions", distinct, step)
        writer.close()
        runs.append(str(run))
    pose_curves = load_benchmark("pose_curves")
    pose_curves.main(pose_curves.Args(runs=tuple(runs), out=str(tmp_path / "curves.png")))
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| steps | pose_kneeling, seed 1 | pose_kneeling, seed 2 |"
    assert table[2:] == ["| baselines: zero, random actions (steps in the pose) | 12%, 17% | 12%, 17% |",
                         "| 50k | 0.0 (12%, 3 distinct) | 0.0 (5%, 1 distinct) |", "| 150k | 1.0 (63%, 2 distinct) |  |"]
    assert os.path.getsize(tmp_path / "curves.png") > 0


@needs_gl
def test_scene_row_draws_each_tasks_pose_as_the_script_renders_it(tmp_path):
    """One frame per task, at the size asked, each the script's own rendering of that task's hand-built pose."""
    scene_row = load_benchmark("scene_row")
    args = scene_row.Args(out=str(tmp_path / "row.png"), size=48, fast_render=True)
    row = scene_row.main(args)
    tasks = list(scene_row.humanoid.TASKS)
    assert row.shape == (48, 48 * len(tasks), 3) and (tmp_path / "row.png").is_file()
    env = scene_row.humanoid.CLIPHumanoidEnv((48, 48), fast_render=True)
    scene_row.humanoid.set_pose(env, *scene_row.humanoid.path_pose("arms-raised", 1.0))
    expected = env.render()
    env.close()
    tile = row[:, 48 * tasks.index("arms-raised"):48 * (tasks.index("arms-raised") + 1)]
    assert np.array_equal(tile[16:], expected[16:])  # below the label: the script's frame, pixel for pixel
    tiles = [row[16:, 48 * i:48 * (i + 1)].astype(int) for i in range(len(tasks))]
    assert min(np.abs(a - b).mean() for i, a in enumerate(tiles) for b in tiles[i + 1:]) > 0  # eight different poses


@needs_gl
def test_pose_conditions_rebuild_the_runs_own_judgement_from_its_buffer(tmp_path, capsys):
    """The states put back from a run's buffer (x = y = 0) are judged as the run judged them while it ran: each
    window's share in the pose equals the in-pose flags the environment stored with those transitions."""
    from conftest import humanoid

    pose_conditions = load_benchmark("pose_conditions")
    args = humanoid.Args(reward="pose", task="standing-up", num_envs=2, episode_length=40, total_timesteps=200,
                         learning_starts=100, train_frequency=50, gradient_steps=1, batch_size=16, hidden_size=16,
                         baseline_episodes=0, eval_episodes=0, video_interval=10**9, output_dir=str(tmp_path),
                         fast_render=True)
    run_dir = humanoid.main(args)["run_dir"]
    rows = pose_conditions.main(pose_conditions.Args(run=run_dir, window=100, every=1))
    stored = pose_conditions.newest_checkpoint(run_dir)["buffer"]["true_rewards"].numpy()
    assert [row["start"] for row in rows] == [0, 100]
    # One state of a window moves its share by 0.01: a tolerance of 1e-6 only absorbs float32 rounding.
    assert [row["in_pose"] for row in rows] == pytest.approx([stored[:100].mean(), stored[100:].mean()], abs=1e-6)
    assert 0 < stored.mean() < 1  # it stands at first and falls: the flags vary, so the equality means something
    assert set(rows[0]["conditions"]) == {f"{c[0]} {c[1]} {c[2]}" for c in humanoid.TASKS["standing-up"].conditions}
    assert "| 0k– |" in capsys.readouterr().out
    # A buffer that has wrapped round holds the run's last transitions from `pos` on: they come back in order.
    args.buffer_size, args.output_dir = 150, str(tmp_path / "ring")
    run_dir = humanoid.main(args)["run_dir"]
    rows = pose_conditions.main(pose_conditions.Args(run=run_dir, window=50, every=1))
    buffer = pose_conditions.newest_checkpoint(run_dir)["buffer"]
    ring = np.roll(buffer["true_rewards"].numpy(), -buffer["pos"])
    assert buffer["full"] and [row["start"] for row in rows] == [50, 100, 150]
    assert [row["in_pose"] for row in rows] == pytest.approx([ring[:50].mean(), ring[50:100].mean(), ring[100:].mean()],
                                                             abs=1e-6)


def test_pose_reachable_aims_each_actuator_at_its_own_joint():
    """benchmarks/pose_reachable.py's controller, without simulating: each actuator is paired with the joint of its
    name (the model lists the abdomen's joints and actuators in different orders), a robot put in the task's pose
    gets zero action on every actuator, and a velocity on one joint brakes that joint's actuator alone, by kd.
    Reading the wrong joints, mixing qpos and qvel addresses, or degrees and radians, fails here."""
    pose_reachable = load_benchmark("pose_reachable")
    h = pose_reachable.humanoid
    env = h.CLIPHumanoidEnv((16, 16), textured=False, fast_render=True)
    model, data = env.model, env.data
    names = [model.actuator(i).name for i in range(model.nu)]
    assert [model.joint(j).name for j in model.actuator_trnid[:, 0]] == names
    for task in h.TASKS:  # set_pose leaves a knee the pose does not name at 0°, past its -2° limit, where the goal is
        qpos, qvel, goal = pose_reachable.joint_targets(model, task)
        joints, pitch = h.path_pose(task, 1.0)
        h.set_pose(env, joints, pitch)
        straight = [name.endswith("knee") and name not in joints for name in names]
        expected = np.where(straight, 4.0 * np.radians(-2.0), 0.0)
        assert pose_reachable.pd_action(data, qpos, qvel, goal, 4.0, 0.1) == pytest.approx(expected, abs=1e-6), task
    qpos, qvel, goal = pose_reachable.joint_targets(model, "kneeling")  # its pose names every knee
    h.set_pose(env, *h.path_pose("kneeling", 1.0))
    data.qvel[model.joint("abdomen_y").dofadr[0]] = 1.0
    action = pose_reachable.pd_action(data, qpos, qvel, goal, 4.0, 0.1)
    assert action[names.index("abdomen_y")] == pytest.approx(-0.1)
    assert np.abs(np.delete(action, names.index("abdomen_y"))).max() < 1e-9


def test_pose_reachable_drives_the_joints_into_the_pose_and_zero_gains_do_nothing(capsys, monkeypatch):
    """benchmarks/pose_reachable.py: with no gains the controller's actions are zeros, so its in-pose flags are the
    zero-action rollout's, step for step; with gains it kneels for most of the episode from several start states
    (zero actions: ~12%), and `--reward pose` pays it more per step. A controller that pushed away from the pose
    (a sign) stays below the zero-action figure; the table is printed from the rows."""
    pose_reachable = load_benchmark("pose_reachable")
    h = pose_reachable.humanoid
    env = h.make_env(100, task="kneeling", fast_render=True)()
    env.reset(seed=5)
    zero = [env.step(np.zeros(17, np.float32))[1] for _ in range(100)]
    flags, zero_scores = pose_reachable.pd_episode(env, "kneeling", 0.0, 0.0, 1, seed=5)
    assert flags.tolist() == zero and 0.0 < np.mean(zero) < 0.3
    for seed in (5, 6):
        flags, scores = pose_reachable.pd_episode(env, "kneeling", 1.0, 0.05, 1, seed=seed)
        assert flags.mean() > 0.6 and scores.mean() > zero_scores.mean() + 0.2
    monkeypatch.setattr(pose_reachable, "GAINS", [(0.0, 0.0, 1), (1.0, 0.05, 1), (1.0, 0.05, 10)])
    [row] = pose_reachable.main(pose_reachable.Args(tasks=("kneeling",), episodes=2))
    assert row["gains_that_succeed"] == 2 and row["ramp_1"]["kp"] == 1.0 and row["ramp_1"]["success_rate"] == 1.0
    assert f"| `kneeling` | {row['best']['kp']}, {row['best']['kd']}, {row['best']['ramp']} |" in capsys.readouterr().out

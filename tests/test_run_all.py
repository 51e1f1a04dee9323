"""run_all.sh: the paper's grid, local and SLURM execution, the summary, failures that are not fatal."""

import csv
import os
import shlex
import signal
import subprocess
import sys

import pytest

from conftest import ROOT

RUN_ALL = os.path.join(ROOT, "run_all.sh")


def run_all(*flags, env_extra=None):
    """run_all.sh with these flags; `env_extra` adds to the environment (None removes a variable)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDL_VIDEODRIVER": "dummy", **(env_extra or {})}
    env = {key: value for key, value in env.items() if value is not None}
    return subprocess.run(["bash", RUN_ALL, "--python", sys.executable, *flags], capture_output=True, text=True,
                          env=env, timeout=1200)


def read_summary(folder):
    with open(os.path.join(folder, "summary.csv")) as f:
        return list(csv.DictReader(f))


def test_dry_run_lists_the_papers_grid():
    result = run_all("--dry-run", "--seeds", "2")
    assert result.returncode == 0 and not result.stderr
    commands = result.stdout.strip().splitlines()
    count = lambda text: sum(text in c for c in commands)  # noqa: E731
    # Per seed: CartPole 5 alphas + ground truth; MountainCar textured and plain x 5 alphas + ground
    # truth; Humanoid 8 tasks of Table 1, 2 more scenes for the ablation, 3 more models for the scale.
    assert count("dqn_clip_cartpole.py") == 2 * 6 and count("sac_clip_mountaincar.py") == 2 * 11
    assert count("sac_clip_humanoid.py") == 2 * 13 and len(commands) == 2 * 30
    assert count("--reward ground-truth") == 2 * 2
    assert count("--no-textured --alpha") == 2 * 5 and count("--textured --alpha") == 2 * 5
    for alpha in ("0", "0.25", "0.5", "0.75", "1"):
        assert count(f"--exp-name cartpole_alpha{alpha} --alpha {alpha} ") == 2
    assert count("--task kneeling ") == 2 * 6  # Table 1, 2 ablation scenes, 3 models
    for task in ("lotus-position", "standing-up", "arms-raised", "doing-splits", "hands-on-hips", "arms-crossed",
                 "standing-on-one-leg"):
        assert count(f"--task {task} ") == 2, task
    # The scene ablation, one change per row as in the paper: the original scene (stock textures and
    # stock camera), then the textures with the stock camera; no run has the stock textures alone.
    humanoid = [c for c in commands if "sac_clip_humanoid.py" in c]
    original = [c for c in humanoid if "--no-textured --camera stock" in c]
    assert len(original) == 2 and all("--exp-name humanoid_kneeling_original_scene " in c for c in original)
    assert {c.split("--seed ")[1].split()[0] for c in original} == {"1", "2"}
    assert all("--camera stock" in c for c in humanoid if "--no-textured" in c)
    assert count("--exp-name humanoid_kneeling_stock_camera --camera stock --task kneeling ") == 2
    assert count("humanoid_kneeling_stock_textures") == 0
    for model in ("RN50-quickgelu --clip-pretrained openai", "ViT-L-14", "ViT-H-14"):
        assert count(f"--clip-model {model}") == 2
    assert count("--seed 1 ") == 30 and count("--seed 2 ") == 30
    assert len(set(commands)) == len(commands)
    only = run_all("--dry-run", "--only", "cartpole", "--only", "humanoid").stdout.strip().splitlines()
    assert len(only) == 6 + 13


def test_bad_flags_give_the_usage():
    for flags in (["--only", "pong"], ["--seeds", "0"], ["--bogus"]):
        result = run_all(*flags)
        assert result.returncode == 2 and "usage: bash run_all.sh" in result.stderr, flags


@pytest.mark.long(90)
def test_smoke_grid_interrupted_and_rerun_finishes_every_experiment_and_writes_the_summary(tmp_path):
    """CartPole's six experiments for a few steps each, one run failing on purpose (each run costs ~10 s of
    imports, so the other environments' lines are checked by the parser below and their summary tables by the
    fake grid further down). Ctrl-C stops the grid; the same command again skips the finished runs, resumes one
    with a checkpoint and starts the rest. The failed run is recorded as failed and the others finish; the summary
    is rebuilt from the run folders; a killed run is listed as missing."""
    wrapper = tmp_path / "python_that_fails_once"
    wrapper.write_text(f'#!/usr/bin/env bash\ncase "$*" in *cartpole_alpha0.25*) exit 3 ;; esac\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    command = ["bash", os.path.join(ROOT, "run_all.sh"), "--python", str(wrapper), "--smoke", "--only", "cartpole",
               "--jobs", "2", "--output-dir", str(out)]  # the last --python wins
    # A shell started in the background inherits SIGINT ignored, and bash cannot trap an ignored signal: give the
    # grid the default disposition, as a terminal would.
    grid = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "SDL_VIDEODRIVER": "dummy"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ended = 0
    for line in grid.stdout:  # Ctrl-C (SIGINT to the whole process group) once three runs have ended
        ended += " done " in line or " FAILED " in line
        if ended == 3:
            os.killpg(grid.pid, signal.SIGINT)
            break
    first = grid.communicate(timeout=300)[0]
    assert grid.returncode == 130 and "run_all.sh: stopping" in first, first[-3000:]
    done = sorted(path.parent for path in (out / "runs").glob("*/results.json"))
    assert 2 <= len(done) < 6, done
    # One finished run lost its results (say, the node died while writing them): it has its final checkpoint.
    os.remove(done[0] / "results.json")
    lost, finished = done[0].name.split("__")[1], {run.name.split("__")[1] for run in done[1:]}

    result = run_all(*command[2:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    skipped = {line.split()[2].rsplit("_seed", 1)[0] for line in result.stdout.splitlines() if " skip " in line}
    assert skipped == finished
    assert f"resume {lost}_seed1" in result.stdout
    assert "FAILED (exit 3) cartpole_alpha0.25_seed1" in result.stdout + first
    # A task of a SLURM array runs its line of the grid as submitted, with the same rule: here, a finished run.
    assert "skip cartpole_alpha0_seed1 (finished" in run_all("--run-index", "0", "--output-dir", str(out)).stdout
    rows = read_summary(out)
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(rows) == 6 and [r["experiment"] for r in failed] == ["cartpole_alpha0.25"], failed
    assert all(int(r["steps"]) > 0 and r["git_commit"] for r in rows if r["status"] == "ok")
    assert all(0.0 <= float(r["success_rate"]) <= 1.0 for r in rows if r["status"] == "ok")
    table = (out / "summary.md").read_text()
    assert "## CartPole" in table and "| cartpole_alpha0.25 | 1 | - | - | 1 |" in table

    # The summary is rebuilt from the run folders alone.
    before = (out / "summary.csv").read_text()
    os.remove(out / "summary.csv")
    os.remove(out / "summary.md")
    assert run_all("--summary-only", "--output-dir", str(out)).returncode == 0
    assert (out / "summary.csv").read_text() == before and (out / "summary.md").is_file()

    # A run with neither results nor an exit status (killed) is listed as missing, not dropped.
    (killed,) = (out / "runs").glob("CartPole__cartpole_alpha1__*")
    os.remove(killed / "results.json")
    os.remove(out / "logs" / "cartpole_alpha1_seed1.status")
    assert run_all("--summary-only", "--output-dir", str(out)).returncode == 0
    missing = [r for r in read_summary(out) if r["status"].startswith("missing")]
    assert [r["experiment"] for r in missing] == ["cartpole_alpha1"]


@pytest.mark.parametrize("smoke", [False, True], ids=["paper", "smoke"])
def test_every_command_of_the_grid_parses_and_passes_its_scripts_checks(smoke):
    """Each line of the grid, read by its own script's parser and range checks in this process: a misspelt flag,
    a value out of range or a task name the script does not know fails here, for every environment and seed,
    without running anything."""
    import dqn_clip_cartpole
    import sac_clip_humanoid
    import sac_clip_mountaincar
    import tyro

    modules = {"dqn_clip_cartpole.py": dqn_clip_cartpole, "sac_clip_mountaincar.py": sac_clip_mountaincar,
               "sac_clip_humanoid.py": sac_clip_humanoid}
    commands = run_all("--dry-run", "--seeds", "2", *(["--smoke"] if smoke else [])).stdout.strip().splitlines()
    assert len(commands) == (2 * 30 if not smoke else 2 * 27)  # --smoke leaves out the 3 model-scale runs
    names = set()
    for command in commands:
        python, script, *flags = shlex.split(command)
        assert python == sys.executable, command
        module = modules[script]
        args = tyro.cli(module.Args, args=flags)
        if script == "sac_clip_humanoid.py":
            args.prompt = module.goal_prompts(args)
        module.check_flags(args, module.RANGES)
        names.add((args.exp_name, args.seed))
        if smoke:
            assert args.total_timesteps <= 120 and not args.cuda, command
            assert args.reward != "clip" or args.clip_pretrained.endswith("tiny-clip.pt"), command
    assert len(names) == len(commands)  # one run folder each


def test_slurm_submits_one_array_task_per_run(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/usr/bin/env bash\necho "$@" > {tmp_path}/sbatch_args\necho "Submitted batch job 1"\n')
    (bin_dir / "sbatch").chmod(0o755)
    out = tmp_path / "out"
    result = run_all("--slurm", "--only", "mountaincar", "--seeds", "2", "--partition", "gpu", "--gpus-per-task", "1",
                     "--output-dir", str(out), env_extra={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sbatch_args").read_text().strip() == str(out / "slurm_array.sh")
    array = (out / "slurm_array.sh").read_text()
    assert "#SBATCH --array=0-21" in array and "#SBATCH --partition=gpu" in array and "--gres=gpu:1" in array
    # USR1 5 minutes before the time limit: the run gets SIGTERM (it checkpoints), then the task requeues itself
    # (not on scancel, which sends SIGTERM); a requeued task resumes its run (--run-index, in the smoke grid).
    assert "#SBATCH --signal=B:USR1@300" in array and "#SBATCH --requeue" in array
    assert f'bash run_all.sh --run-index $SLURM_ARRAY_TASK_ID --output-dir "{out}"' in array
    assert '[ $code != 143 ] || scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"; exit $code\' USR1' in array
    commands = (out / "commands.txt").read_text().strip().splitlines()
    assert len(commands) == 22 and all("sac_clip_mountaincar.py" in c for c in commands)
    assert not list((out / "runs").iterdir())  # nothing ran here


def test_one_run_per_gpu_unless_asked_for_more(tmp_path):
    """More lanes than GPUs would put two bigG runs (~14 GB each) on one GPU: --jobs is capped at
    --runs-per-gpu x the GPUs (nvidia-smi's, or CUDA_VISIBLE_DEVICES'), and the cap is said; without GPUs
    (a CPU machine, an empty CUDA_VISIBLE_DEVICES, or an nvidia-smi that only prints its failure) --jobs stands."""
    def fake_nvidia_smi(folder, output):
        folder.mkdir()
        (folder / "nvidia-smi").write_text(f"#!/usr/bin/env bash\nprintf '{output}'\n")
        (folder / "nvidia-smi").chmod(0o755)
        return {"PATH": f"{folder}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": None}

    two_gpus = fake_nvidia_smi(tmp_path / "two", "0\\n1\\n")
    capped = run_all("--dry-run", "--only", "cartpole", "--jobs", "8", env_extra=two_gpus)
    assert capped.returncode == 0 and "run_all.sh: 2 runs at a time: 2 GPU(s), 1 run(s) per GPU" in capped.stderr
    # The grid is the same, each run given its share of the cores: 2 runs at a time on this machine's cores.
    share = max(os.cpu_count() // 2, 1)
    assert capped.stdout.replace(f" --torch-threads {share}", "") == run_all("--dry-run", "--only", "cartpole").stdout
    assert capped.stdout.count(f" --torch-threads {share} ") == len(capped.stdout.splitlines())
    shared = run_all("--dry-run", "--only", "cartpole", "--jobs", "8", "--runs-per-gpu", "2", env_extra=two_gpus)
    assert "run_all.sh: 4 runs at a time: 2 GPU(s), 2 run(s) per GPU" in shared.stderr
    assert "runs at a time" not in run_all("--dry-run", "--jobs", "2", env_extra=two_gpus).stderr  # within the cap
    visible = run_all("--dry-run", "--only", "cartpole", "--jobs", "8", env_extra={"CUDA_VISIBLE_DEVICES": "3,5,6"})
    assert "run_all.sh: 3 runs at a time: 3 GPU(s)" in visible.stderr
    broken = fake_nvidia_smi(tmp_path / "broken", "NVIDIA-SMI has failed because it could not communicate with the "
                                                  "NVIDIA driver.\\n")
    for env in (broken, {**two_gpus, "CUDA_VISIBLE_DEVICES": ""}):
        result = run_all("--dry-run", "--jobs", "8", env_extra=env)
        assert result.returncode == 0 and "runs at a time" not in result.stderr


def fake_run(out, module, final, **flags):
    """A finished run's folder: results.json written by the script's own write_results with its own Args."""
    args = module.Args(output_dir=str(out / "runs"), **flags)
    run_dir = out / "runs" / f"{args.exp_name}__{args.seed}"
    run_dir.mkdir(parents=True)
    module.write_results(str(run_dir), args, dict(global_step=1000, wall_seconds=10.0, eval_clip_return=1.0,
                                                  eval_last_frame_clip_reward=0.1, **final), {})
    return run_dir


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def read_figure_data(folder):
    """{(figure, panel, series, x, seed): value} of every value the figures draw."""
    with open(os.path.join(folder, "figure_data.csv")) as f:
        return {(r["figure"], r["panel"], r["series"], r["x"], r["seed"]): float(r["value"]) for r in csv.DictReader(f)}


def test_summary_draws_the_papers_figures(tmp_path):
    """Success against α, per humanoid task and against model size (with the EPIC distance), from a fake grid
    of two seeds where every run's success rate and EPIC distance say which run it is."""
    import dqn_clip_cartpole as cartpole
    import sac_clip_humanoid as humanoid
    import sac_clip_mountaincar as mountaincar

    out = tmp_path / "out"
    alphas = (0.0, 0.25, 0.5, 0.75, 1.0)
    tasks = ("kneeling", "lotus-position", "standing-up", "arms-raised", "doing-splits", "hands-on-hips",
             "arms-crossed", "standing-on-one-leg")
    models = {"RN50": "RN50-quickgelu", "ViT-L-14": "ViT-L-14", "ViT-H-14": "ViT-H-14"}
    for seed in (1, 2):
        for alpha in alphas:
            fake_run(out, cartpole, dict(eval_success_rate=alpha / 2 + seed / 100), exp_name=f"cartpole_alpha{alpha:g}",
                     alpha=alpha, seed=seed)
            for textured, base in ((True, 0.9), (False, 0.4)):
                fake_run(out, mountaincar, dict(eval_success_rate=base - alpha / 4 + seed / 100), textured=textured,
                         exp_name=f"mountaincar_{'textured' if textured else 'no-textured'}_alpha{alpha:g}",
                         alpha=alpha, seed=seed)
        fake_run(out, cartpole, dict(eval_success_rate=1.0), exp_name="cartpole_ground_truth", reward="ground-truth",
                 seed=seed)
        for i, task in enumerate(tasks):  # kneeling (ViT-bigG-14) is also the model-scale study's largest model
            fake_run(out, humanoid, dict(eval_success_rate=i / 10 + seed / 100, epic_distance=0.2 + seed / 100),
                     task=task, seed=seed, exp_name="humanoid_" + task.replace("-", "_"))
        fake_run(out, humanoid, dict(eval_success_rate=0.5), exp_name="humanoid_kneeling_stock_camera",
                 camera="stock", seed=seed)
        fake_run(out, humanoid, dict(eval_success_rate=0.25), exp_name="humanoid_kneeling_original_scene",
                 camera="stock", textured=False, seed=seed)
        for j, (name, model) in enumerate(models.items()):
            fake_run(out, humanoid, dict(eval_success_rate=0.8 + j / 20 + seed / 100,
                                         epic_distance=0.5 + j / 10 + seed / 100),
                     exp_name=f"humanoid_kneeling_{name}", clip_model=model, seed=seed)
    # A failed run (no results.json) is left out of the figures.
    (out / "logs").mkdir()
    (out / "logs" / "cartpole_alpha0.5_seed3.status").write_text("1\n")

    result = run_all("--summary-only", "--output-dir", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 figures" in result.stdout
    summary = (out / "summary.md").read_text()
    for figure in ("success_vs_alpha.png", "humanoid_success_per_task.png", "success_and_epic_vs_model_size.png"):
        width, height = png_size(out / figure)
        assert 600 <= width <= 2000 and 400 <= height <= 1000 and (out / figure).stat().st_size > 10_000, figure
        assert f"]({figure})" in summary, figure
    assert png_size(out / "success_and_epic_vs_model_size.png")[0] > png_size(out / "success_vs_alpha.png")[0]
    # Table 1's rows, one per task, and the kneeling scene ablation in the paper's order with the paper's success
    # next to each row (mean over the two seeds; the failed column last).
    humanoid_table = summary.split("## Humanoid")[1].split("\n\n")[1].splitlines()[2:]
    assert {row.split(" | ")[0] for row in humanoid_table} >= {"| humanoid_" + t.replace("-", "_") for t in tasks}
    ablation = summary.split("## Scene ablation (kneeling")[1].split("\n\n")[1].splitlines()[2:]
    assert [row.split(" | ")[:5] for row in ablation] == [
        ["| original scene (stock textures, stock camera)", "36%", "humanoid_kneeling_original_scene", "2", "0.25"],
        ["| modified textures, stock camera", "91%", "humanoid_kneeling_stock_camera", "2", "0.5"],
        ["| modified textures and camera", "100%", "humanoid_kneeling", "2", "0.015"]]
    assert all(row.endswith(" | 0 |") for row in ablation)

    # Each value is drawn at its own run's α, task or model, for its seed, with the mean over seeds.
    data = read_figure_data(out)
    alpha_figure = {(series, float(x), seed): v for (figure, _, series, x, seed), v in data.items()
                    if figure == "success_vs_alpha.png"}
    for alpha in alphas:
        for seed in (1, 2):
            assert alpha_figure["CartPole", alpha, str(seed)] == pytest.approx(alpha / 2 + seed / 100)
            for series, base in (("MountainCar, textured", 0.9), ("MountainCar, original", 0.4)):
                assert alpha_figure[series, alpha, str(seed)] == pytest.approx(base - alpha / 4 + seed / 100)
        assert alpha_figure["CartPole", alpha, "mean"] == pytest.approx(alpha / 2 + 0.015)
    assert len(alpha_figure) == 3 * 5 * 3  # no ground-truth run, no failed run, no humanoid run
    for i, task in enumerate(tasks):
        assert data["humanoid_success_per_task.png", "success rate (pose detector)", "this reproduction", task, "2"] \
            == pytest.approx(i / 10 + 0.02)
    assert len([key for key in data if key[0] == "humanoid_success_per_task.png"]) == 8 * 3
    success = "success rate (pose detector)", "kneeling"
    epic = "EPIC distance, CLIP reward to pose detector", "kneeling"
    scale = {key[1:]: v for key, v in data.items() if key[0] == "success_and_epic_vs_model_size.png"}
    for j, name in enumerate(models):
        assert scale[(*success, name, "1")] == pytest.approx(0.8 + j / 20 + 0.01)
        assert scale[(*epic, name, "1")] == pytest.approx(0.5 + j / 10 + 0.01)
        assert scale[(*epic, name, "mean")] == pytest.approx(0.5 + j / 10 + 0.015)
    assert scale[(*success, "ViT-bigG-14", "2")] == pytest.approx(0.02)  # Table 1's kneeling run
    assert scale[(*epic, "ViT-bigG-14", "2")] == pytest.approx(0.22)
    assert len(scale) == 2 * 4 * 3


def test_summary_without_humanoid_runs_draws_no_humanoid_figure(tmp_path):
    import dqn_clip_cartpole as cartpole

    empty = tmp_path / "empty"
    (empty / "runs").mkdir(parents=True)
    result = run_all("--summary-only", "--output-dir", str(empty))
    assert result.returncode == 0, result.stderr
    assert not list(empty.glob("*.png")) and "## Figures" not in (empty / "summary.md").read_text()

    out = tmp_path / "out"
    for alpha in (0.0, 1.0):
        fake_run(out, cartpole, dict(eval_success_rate=alpha), exp_name=f"cartpole_alpha{alpha:g}", alpha=alpha)
    result = run_all("--summary-only", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["success_vs_alpha.png"]
    summary = (out / "summary.md").read_text()
    assert "](success_vs_alpha.png)" in summary and "humanoid_success" not in summary and "## Humanoid" not in summary
    assert {key[0] for key in read_figure_data(out)} == {"success_vs_alpha.png"}


def test_reward_report_grid_covers_every_environment_task_scene_and_the_model_scale():
    assert run_all("--reward-report", "--slurm").returncode == 2  # reports run here, not as a job array
    commands = run_all("--reward-report", "--dry-run").stdout.strip().splitlines()
    assert len(commands) == 1 + 2 + 8 + 2 and all("benchmarks/reward_report.py" in c for c in commands)
    assert all("--alpha 0 0.25 0.5 0.75 1 " in c for c in commands)
    kneeling = [c for c in commands if "--task kneeling " in c]
    assert len(kneeling) == 3  # the model-scale study in one report, and the two other scenes
    assert sum("--clip-model RN50-quickgelu ViT-L-14 ViT-H-14 ViT-bigG-14 --clip-pretrained openai "
               "laion2b_s32b_b82k laion2b_s32b_b79k laion2b_s39b_b160k " in c for c in kneeling) == 1
    assert sum("--no-textured --camera stock" in c for c in kneeling) == 1
    assert sum("--env mountaincar --no-textured" in c for c in commands) == 1
    assert len({c.split("--out ")[1] for c in commands}) == len(commands)  # a folder each


def test_reward_report_smoke_writes_the_report_and_the_summary_links_it(tmp_path):
    out = tmp_path / "smoke"
    result = run_all("--reward-report", "--smoke", "--only", "cartpole", "--output-dir", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "reward_report" / "cartpole" / "report.md").is_file()
    summary = (out / "summary.md").read_text()
    assert "[cartpole](reward_report/cartpole/report.md) | tiny-clip.json tiny-clip.pt | 20 (" in summary  # 5 x 4 states


def test_summary_draws_epic_against_model_size_from_the_kneeling_report(tmp_path):
    """The paper's figure of reward quality against model size, from the kneeling report's four models."""
    import json

    models = ["RN50-quickgelu openai", "ViT-L-14 laion2b_s32b_b82k", "ViT-H-14 laion2b_s32b_b79k",
              "ViT-bigG-14 laion2b_s39b_b160k"]
    candidates = [dict(model=m, goal=["a humanoid robot kneeling"], baseline=["a humanoid robot"], alpha=alpha,
                       default=alpha == 0.0, epic_distance=0.7 - 0.1 * i - alpha / 100, auc=0.5 + 0.1 * i)
                  for i, m in enumerate(models) for alpha in (0.0, 0.5)]
    folder = tmp_path / "reward_report" / "humanoid_kneeling"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(dict(states=dict(count=2000, goal=150), models=models,
                                                        candidates=sorted(candidates, key=lambda c: c["epic_distance"]))))
    result = run_all("--summary-only", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "| [humanoid_kneeling](reward_report/humanoid_kneeling/report.md) | RN50-quickgelu openai | 2000 (150) | " \
           "0.700, 0.500 |" in summary
    assert "| ViT-bigG-14 laion2b_s39b_b160k | 2000 (150) | 0.400, 0.800 | 'a humanoid robot kneeling', 0.5 | 0.395, 0.800 |" in summary
    with open(tmp_path / "figure_data.csv") as f:
        drawn = [row for row in csv.DictReader(f) if row["figure"] == "reward_report_epic_vs_model_size.png"]
    means = {row["x"]: float(row["value"]) for row in drawn if row["seed"] == "mean"}
    assert means == pytest.approx({m: 0.7 - 0.1 * i for i, m in enumerate(models)})  # alpha 0 only, by size

#!/usr/bin/env bash
# The paper's experiments in one command: CartPole (DQN), MountainCar (SAC) and the Humanoid (SAC)
# with CLIP rewards, as in "Vision-Language Models are Zero-Shot Reward Models for RL" (ICLR 2024).
#
#   bash run_all.sh --dry-run                       # print every command of the grid, run nothing
#   bash run_all.sh --only cartpole --jobs 4        # run locally, 4 at a time, spread over the GPUs
#   bash run_all.sh --slurm --partition gpu         # submit the grid as one SLURM job array
#   bash run_all.sh --smoke --jobs 2                # every experiment for a few steps, tiny CLIP, CPU
#   bash run_all.sh --summary-only                  # rebuild the summary from existing run folders
#   bash run_all.sh --reward-report                 # before training: how well each model and prompt of the grid
#                                                   # orders labelled states (benchmarks/reward_report.py)
#
# Every run writes results.json into its run folder; the summary (summary.csv, summary.md in the shape
# of the paper's tables, and PNG figures) is built from those files and from each run's exit status.
set -uo pipefail
cd "$(dirname "$0")"

usage() {
    cat <<'EOF'
usage: bash run_all.sh [--dry-run] [--only cartpole|mountaincar|humanoid]... [--seeds N] [--jobs N]
                       [--runs-per-gpu N] [--smoke] [--output-dir DIR] [--python CMD] [--summary-only]
                       [--reward-report]
                       [--slurm [--partition NAME] [--gpus-per-task N] [--time HH:MM:SS]]

  --dry-run          print every command, one per line, and do nothing else
  --only NAME        run only this environment's experiments (repeatable; default: all three)
  --seeds N          seeds 1..N of every experiment (default 1; the paper used 4 for its Table 1
                     and 2 for its model-scale study)
  --jobs N           runs at a time, locally (default 1); with GPUs, at most one run per GPU (see --runs-per-gpu)
  --runs-per-gpu N   runs that may share one GPU (default 1: ViT-bigG-14 takes ~14 GB per run, and two runs
                     overflow a 24 GB card); --jobs is capped at N x the number of GPUs
  --smoke            a few steps of every experiment with a tiny random-weight CLIP on the CPU
  --output-dir DIR   where runs, logs and the summary go (default runs/paper, runs/smoke with --smoke)
  --python CMD       the interpreter that runs the scripts (default: python)
  --summary-only     rebuild summary.csv, summary.md and its figures from DIR and exit
  --reward-report    instead of training: the reward report (benchmarks/reward_report.py) of every environment, task,
                     scene and model of the grid, one after the other (--jobs and --seeds do not apply; not with
                     --slurm), into DIR/reward_report/, and the summary
  --slurm            submit the grid with sbatch as a job array, one task per run, instead of running it
  --partition NAME   SLURM partition (default: the cluster's default)
  --gpus-per-task N  GPUs requested per run with --slurm (default 1)
  --time T           SLURM time limit per run (default 48:00:00)
EOF
}

fail_usage() { echo "run_all.sh: $1" >&2; usage >&2; exit 2; }

DRY_RUN=0 SMOKE=0 SUMMARY_ONLY=0 REWARD_REPORT=0 SLURM=0 SEEDS=1 JOBS=1 RUNS_PER_GPU=1 OUTPUT_DIR="" PYTHON=python
PARTITION="" GPUS_PER_TASK=1 TIME_LIMIT=48:00:00 ONLY=() RUN_INDEX=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --smoke) SMOKE=1 ;;
        --summary-only) SUMMARY_ONLY=1 ;;
        --reward-report) REWARD_REPORT=1 ;;  # not with --slurm (checked below); --jobs and --seeds do not apply
        --run-index) [ $# -ge 2 ] || fail_usage "--run-index needs a value"; RUN_INDEX=$2; shift ;;  # a SLURM task
        --slurm) SLURM=1 ;;
        --only) [ $# -ge 2 ] || fail_usage "--only needs a value"
            case "$2" in cartpole|mountaincar|humanoid) ONLY+=("$2") ;;
                *) fail_usage "--only must be cartpole, mountaincar or humanoid, got '$2'" ;; esac
            shift ;;
        --seeds|--jobs|--runs-per-gpu|--gpus-per-task) [ $# -ge 2 ] || fail_usage "$1 needs a value"
            [[ "$2" =~ ^[1-9][0-9]*$ ]] || fail_usage "$1 must be a positive integer, got '$2'"
            case "$1" in --seeds) SEEDS=$2 ;; --jobs) JOBS=$2 ;; --runs-per-gpu) RUNS_PER_GPU=$2 ;;
                *) GPUS_PER_TASK=$2 ;; esac
            shift ;;
        --output-dir|--python|--partition|--time) [ $# -ge 2 ] || fail_usage "$1 needs a value"
            case "$1" in --output-dir) OUTPUT_DIR=$2 ;; --python) PYTHON=$2 ;; --partition) PARTITION=$2 ;;
                *) TIME_LIMIT=$2 ;; esac
            shift ;;
        -h|--help) usage; exit 0 ;;
        *) fail_usage "unknown flag '$1'" ;;
    esac
    shift
done
[ $REWARD_REPORT = 0 ] || [ $SLURM = 0 ] || fail_usage "--reward-report runs here, one report after the other: not with --slurm"
[ ${#ONLY[@]} -gt 0 ] || ONLY=(cartpole mountaincar humanoid)
[ -n "$OUTPUT_DIR" ] || OUTPUT_DIR=$([ $SMOKE = 1 ] && echo runs/smoke || echo runs/paper)
wants() { [[ " ${ONLY[*]} " == *" $1 "* ]]; }

# --- The grid: one line per run, "<experiment>_seed<N>\t<command>" -----------------------------
ALPHAS=(0 0.25 0.5 0.75 1)
TINY_MODEL="$OUTPUT_DIR/smoke_model/tiny-clip.json" TINY_WEIGHTS="$OUTPUT_DIR/smoke_model/tiny-clip.pt"

model_flags() {  # $1 = architecture, $2 = pretrained tag; --smoke swaps in the tiny random model
    if [ $SMOKE = 1 ]; then echo "--clip-model $TINY_MODEL --clip-pretrained $TINY_WEIGHTS"
    else echo "--clip-model $1 --clip-pretrained $2"; fi
}

smoke_flags() {  # a handful of steps, CPU-sized
    [ $SMOKE = 1 ] || return 0
    case "$1" in
        cartpole) echo " --total-timesteps 120 --learning-starts 60 --train-frequency 30 --gradient-steps 2 --episode-length 30 --num-envs 2 --eval-episodes 1 --landscape-points 5 --clip-precision fp32 --no-cuda" ;;
        mountaincar) echo " --total-timesteps 120 --learning-starts 60 --train-frequency 30 --gradient-steps 2 --batch-size 32 --episode-length 30 --num-envs 2 --eval-episodes 1 --landscape-points 5 --clip-precision fp32 --no-cuda" ;;
        humanoid) echo " --total-timesteps 80 --learning-starts 40 --train-frequency 20 --gradient-steps 2 --batch-size 32 --hidden-size 32 --episode-length 20 --num-envs 2 --eval-episodes 1 --landscape-points 5 --clip-precision fp32 --no-cuda --fast-render --baseline-episodes 1" ;;  # software shadows would take most of the time
    esac
}

emit() {  # $1 = experiment name, $2 = its flags; uses the caller's $s (script and common flags) and $seed
    printf '%s_seed%s\t%s --exp-name %s%s\n' "$1" "$seed" "$s" "$1" "${2:+ $2}"
}


grid() {
    local seed alpha textured task prompt model tag
    for seed in $(seq 1 "$SEEDS"); do
        if wants cartpole; then
            local s="$PYTHON dqn_clip_cartpole.py --seed $seed --output-dir $OUTPUT_DIR/runs$(smoke_flags cartpole)$THREADS"
            for alpha in "${ALPHAS[@]}"; do
                emit cartpole_alpha$alpha "--alpha $alpha $(model_flags ViT-bigG-14 laion2b_s39b_b160k)"
            done
            emit cartpole_ground_truth "--reward ground-truth"
        fi
        if wants mountaincar; then
            local s="$PYTHON sac_clip_mountaincar.py --seed $seed --output-dir $OUTPUT_DIR/runs$(smoke_flags mountaincar)$THREADS"
            for textured in textured no-textured; do
                for alpha in "${ALPHAS[@]}"; do
                    emit mountaincar_${textured}_alpha$alpha "--$textured --alpha $alpha $(model_flags ViT-bigG-14 laion2b_s39b_b160k)"
                done
            done
            emit mountaincar_ground_truth "--reward ground-truth"
        fi
        if wants humanoid; then
            local s="$PYTHON sac_clip_humanoid.py --seed $seed --output-dir $OUTPUT_DIR/runs$(smoke_flags humanoid)$THREADS"
            # Table 1: eight tasks, alpha 0, ViT-bigG-14, textured scene, the paper's camera.
            # --task gives the paper's prompt (Table 3) and the pose detector that judges success.
            for task in kneeling lotus-position standing-up arms-raised doing-splits hands-on-hips arms-crossed \
                        standing-on-one-leg; do
                emit "humanoid_${task//-/_}" "--task $task $(model_flags ViT-bigG-14 laion2b_s39b_b160k)"
            done
            # Scene ablation on kneeling, one change per row as in the paper: the original scene (stock
            # textures, stock camera: 36%), then the modified textures with the stock camera (91%), then
            # textures and the paper's camera (100%), which is Table 1's kneeling run above.
            emit humanoid_kneeling_original_scene "--no-textured --camera stock --task kneeling $(model_flags ViT-bigG-14 laion2b_s39b_b160k)"
            emit humanoid_kneeling_stock_camera "--camera stock --task kneeling $(model_flags ViT-bigG-14 laion2b_s39b_b160k)"
            # Model scale on kneeling (ViT-bigG-14 is Table 1's kneeling run). Not with --smoke: every model is the
            # tiny one there, so these would repeat humanoid_kneeling.
            # name:architecture:weights (OpenAI's RN50 was trained with QuickGELU: RN50-quickgelu builds it so)
            [ $SMOKE = 1 ] || for entry in RN50:RN50-quickgelu:openai ViT-L-14:ViT-L-14:laion2b_s32b_b82k ViT-H-14:ViT-H-14:laion2b_s32b_b79k; do
                IFS=: read -r name architecture weights <<<"$entry"
                emit humanoid_kneeling_$name "--task kneeling $(model_flags "$architecture" "$weights")"
            done
        fi
    done
}

# --- Reward reports: one line per report, "<name>\t<command>" ----------------------------------
report_models() {  # "architecture:weights" ...; --smoke swaps in the tiny random model (once)
    if [ $SMOKE = 1 ]; then echo "--clip-model $TINY_MODEL --clip-pretrained $TINY_WEIGHTS"; return; fi
    local entry models=() weights=()
    for entry in "$@"; do models+=("${entry%%:*}") weights+=("${entry#*:}"); done
    echo "--clip-model ${models[*]} --clip-pretrained ${weights[*]}"
}

report_grid() {
    local r="$PYTHON benchmarks/reward_report.py --alpha ${ALPHAS[*]} --cache-dir $OUTPUT_DIR/reward_cache" task
    # --smoke: small state sets, rendered without shadows, on the CPU
    [ $SMOKE = 0 ] || r+=" --grid 5 4 --episodes 1 --jitters 0 --path-points 2 --fast-render --no-cuda"
    local bigg=ViT-bigG-14:laion2b_s39b_b160k
    report() { printf '%s\t%s --out %s\n' "$1" "$r $2" "$OUTPUT_DIR/reward_report/$1"; }
    if wants cartpole; then report cartpole "--env cartpole $(report_models $bigg)"; fi
    if wants mountaincar; then
        report mountaincar_textured "--env mountaincar $(report_models $bigg)"
        report mountaincar_no-textured "--env mountaincar --no-textured $(report_models $bigg)"
    fi
    if wants humanoid; then
        # Kneeling with the model-scale study's four models (the paper's EPIC against model size), the other tasks
        # with ViT-bigG-14, and kneeling in the scene ablation's two other scenes.
        report humanoid_kneeling "--env humanoid --task kneeling $(report_models RN50-quickgelu:openai \
            ViT-L-14:laion2b_s32b_b82k ViT-H-14:laion2b_s32b_b79k $bigg)"
        for task in lotus-position standing-up arms-raised doing-splits hands-on-hips arms-crossed standing-on-one-leg; do
            report "humanoid_${task//-/_}" "--env humanoid --task $task $(report_models $bigg)"
        done
        report humanoid_kneeling_original_scene "--env humanoid --task kneeling --no-textured --camera stock $(report_models $bigg)"
        report humanoid_kneeling_stock_camera "--env humanoid --task kneeling --camera stock $(report_models $bigg)"
    fi
}

# --- Summary: summary.csv, summary.md and figures from results.json files and exit statuses ---
summarize() {
    "$PYTHON" - "$OUTPUT_DIR" <<'PY'
import csv, glob, json, os, sys

out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "runs", "*", "results.json"))):
    with open(path) as f:
        run = json.load(f)
    args, res = run["args"], run["results"]
    rows.append(dict(
        experiment=args["exp_name"], script=run["script"], task="ground truth" if args["reward"] == "ground-truth" else " / ".join(
            x for x in (args.get("task"), " / ".join(args["prompt"])) if x),
        alpha=args["alpha"] if args["reward"] == "clip" else "", model=args["clip_model"] if args["reward"] == "clip" else "",
        textured=args.get("textured", ""), camera=args.get("camera", ""), seed=args["seed"], steps=res.get("global_step"),
        wall_seconds=round(res.get("wall_seconds", float("nan")), 1),
        success_rate=res.get("eval_success_rate", ""), clip_return=res.get("eval_clip_return", ""),
        last_frame_clip_reward=res.get("eval_last_frame_clip_reward", ""),
        epic_distance=res.get("epic_distance", float("nan")), status="ok",
        git_commit=run["git_commit"], run_dir=os.path.dirname(path)))
finished = {(r["experiment"], r["seed"]) for r in rows}  # results.json wins over an older attempt's exit status
for path in sorted(glob.glob(os.path.join(out, "logs", "*.status"))):
    with open(path) as f:
        code = f.read().strip()
    name = os.path.basename(path)[: -len(".status")]
    experiment, seed = name.rsplit("_seed", 1)
    if code != "0" and (experiment, int(seed)) not in finished:  # a failed run: record it from its exit status
        rows.append(dict(experiment=experiment, seed=int(seed), status=f"failed (exit {code}), see logs/{name}.log"))
names = os.path.join(out, "run_names.txt")  # every planned run: one with neither file never finished
if os.path.isfile(names):
    seen = {f"{r['experiment']}_seed{r['seed']}" for r in rows}
    for name in open(names).read().split():
        if name not in seen:
            experiment, seed = name.rsplit("_seed", 1)
            rows.append(dict(experiment=experiment, seed=int(seed), status="missing: no results.json and no exit status "
                             "(still running, or killed: time limit, preemption)"))
fields = ["experiment", "script", "task", "alpha", "model", "textured", "camera", "seed", "steps", "wall_seconds",
          "success_rate", "clip_return", "last_frame_clip_reward", "epic_distance", "status", "git_commit", "run_dir"]
with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["experiment"], r["seed"])))

def mean(values):
    values = [float(v) for v in values if v not in ("", None) and float(v) == float(v)]  # skip NaN
    return f"{sum(values) / len(values):.3g}" if values else "-"

groups = {}
for r in rows:
    groups.setdefault(r["experiment"], []).append(r)
tables = [("CartPole (DQN): greedy success rate", "cartpole", "success_rate"),
          ("MountainCar (SAC): greedy success rate", "mountaincar", "success_rate"),
          ("Humanoid (SAC, ViT-bigG-14 unless named): greedy success rate, in the task's pose for at least half of "
           "an evaluation episode as judged by the script's pose detector (the paper asked a person: see strips/ too)",
           "humanoid", "success_rate")]
lines = [f"# Results ({out})", ""]
for title, prefix, key in tables:
    names = sorted(n for n in groups if n.startswith(prefix))
    if not names:
        continue
    lines += [f"## {title}", "", "| experiment | seeds | " + key + " (mean) | CLIP return (mean) | failed |", "|---|---|---|---|---|"]
    for n in names:
        ok = [r for r in groups[n] if r["status"] == "ok"]
        lines.append(f"| {n} | {len(groups[n])} | {mean(r[key] for r in ok)} | {mean(r['clip_return'] for r in ok)} | "
                     f"{len(groups[n]) - len(ok)} |")
    lines.append("")
# The paper's scene ablation on kneeling, in its order, one change per row, with its success rates.
ablation = [("original scene (stock textures, stock camera)", "36%", "humanoid_kneeling_original_scene"),
            ("modified textures, stock camera", "91%", "humanoid_kneeling_stock_camera"),
            ("modified textures and camera", "100%", "humanoid_kneeling")]
if any(n in groups for _, _, n in ablation):
    lines += ["## Scene ablation (kneeling, ViT-bigG-14)", "",
              "| scene | paper success | experiment | seeds | success_rate (mean) | last_frame_clip_reward (mean) | failed |",
              "|---|---|---|---|---|---|---|"]
    for scene, paper, n in ablation:
        runs = groups.get(n, [])
        ok = [r for r in runs if r["status"] == "ok"]
        lines.append(f"| {scene} | {paper} | {n} | {len(runs)} | {mean(r.get('success_rate', '') for r in ok)} | "
                     f"{mean(r['last_frame_clip_reward'] for r in ok)} | {len(runs) - len(ok)} |")
    lines.append("")

# --- Figures: PNGs next to summary.md, each drawn only where its runs exist. Every value drawn (each
# seed's and the mean over seeds) is also a row of figure_data.csv, to read the numbers behind a figure.
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

def average(values):
    values = [v for v in values if v == v]  # skip NaN
    return sum(values) / len(values) if values else float("nan")

plotted, figures = [], []  # every value drawn; the markdown lines that show the figures
def draw(file, title, xlabel, panels, ticks=None, bars=False):
    """panels: (y label, {series: [(x, seed, value)]}, {x: the paper's value} or None) each; the mean over seeds
    at each x as a line (or a bar), each seed as a cross, the paper's figure as a black diamond."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 5.2), squeeze=False, layout="constrained")
    for ax, (ylabel, series, paper) in zip(axes[0], panels):
        for i, (label, points) in enumerate(series.items()):
            xs = sorted({x for x, _, _ in points})
            means = [average([v for x2, _, v in points if x2 == x]) for x in xs]
            if bars:
                ax.bar(xs, means, width=0.6, color=f"C{i}", alpha=0.5, label=label)
            else:
                ax.plot(xs, means, "-o", color=f"C{i}", label=label)
            ax.scatter([x for x, _, _ in points], [v for _, _, v in points], color=f"C{i}", marker="x", zorder=3)
            name = (lambda x: ticks[x]) if ticks else (lambda x: x)
            plotted.extend([(file, ylabel, label, name(x), "mean", m) for x, m in zip(xs, means)] +
                           [(file, ylabel, label, name(x), seed, v) for x, seed, v in points])
        if paper:
            ax.scatter(list(paper), list(paper.values()), color="black", marker="D", zorder=4, label="paper")
        ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(-0.05, 1.05))
        if ticks:
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    fig.suptitle(f"{title}\n(line or bar: mean over seeds; crosses: single seeds)")
    fig.savefig(os.path.join(out, file), dpi=100)
    plt.close(fig)
    figures.extend([f"![{title}]({file})", ""])

ok = [r for r in rows if r["status"] == "ok"]
def success(r):
    return float(r["success_rate"]) if r["success_rate"] not in ("", None) else float("nan")

# Success against α, the weight of the baseline prompt: one series per environment (and MountainCar's scene).
by_alpha = {}
for r in ok:
    if r["experiment"].startswith(("cartpole_alpha", "mountaincar_")) and r["alpha"] != "":
        series = r["experiment"].rsplit("_alpha", 1)[0]
        series = {"cartpole": "CartPole", "mountaincar_textured": "MountainCar, textured",
                  "mountaincar_no-textured": "MountainCar, original"}.get(series, series)
        by_alpha.setdefault(series, []).append((float(r["alpha"]), r["seed"], success(r)))
if by_alpha:
    draw("success_vs_alpha.png", "Success rate against the goal-baseline weight α", "α (goal-baseline weight)",
         [("greedy success rate", dict(sorted(by_alpha.items())), None)])
# Table 1: the humanoid's tasks (ViT-bigG-14, α = 0), with the paper's success rates.
table1 = {"kneeling": 1.0, "lotus-position": 1.0, "standing-up": 1.0, "arms-raised": 1.0, "doing-splits": 1.0,
          "hands-on-hips": 0.64, "standing-on-one-leg": 0.0, "arms-crossed": 0.0}
experiment = {t: "humanoid_" + t.replace("-", "_") for t in table1}
tasks = [t for t in table1 if experiment[t] in groups]
points = [(i, r["seed"], success(r)) for i, t in enumerate(tasks) for r in ok if r["experiment"] == experiment[t]]
if tasks:
    draw("humanoid_success_per_task.png", "Humanoid tasks (Table 1: ViT-bigG-14, α = 0)", "task",
         [("success rate (pose detector)", {"this reproduction": points}, {i: table1[t] for i, t in enumerate(tasks)})],
         ticks=tasks, bars=True)
# Model scale on kneeling: success and the EPIC distance between the CLIP reward and the pose detector's
# in-pose flag over the last 10,000 steps of training (the last charts/epic_distance, in results.json).
def epic(run):  # runs older than results.json's epic_distance: the last value in their TensorBoard log
    if run["epic_distance"] == run["epic_distance"]:  # not NaN
        return run["epic_distance"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(run["run_dir"], size_guidance={"scalars": 1}).Reload()
    return events.Scalars("charts/epic_distance")[-1].value if "charts/epic_distance" in events.Tags()["scalars"] \
        else float("nan")
scale = {"RN50": ("humanoid_kneeling_RN50", 0.0), "ViT-L-14": ("humanoid_kneeling_ViT-L-14", 0.0),
         "ViT-H-14": ("humanoid_kneeling_ViT-H-14", 0.0), "ViT-bigG-14": ("humanoid_kneeling", 1.0)}  # by size
models = [m for m, (n, _) in scale.items() if n in groups]
scale_runs = [(i, r) for i, m in enumerate(models) for r in ok if r["experiment"] == scale[m][0]]
if len(models) > 1:  # the study compares models: one alone is Table 1's kneeling run
    draw("success_and_epic_vs_model_size.png", "Model scale on kneeling (α = 0; EPIC: the last value logged in "
         "training)", "CLIP model (by size)",
         [("success rate (pose detector)", {"kneeling": [(i, r["seed"], success(r)) for i, r in scale_runs]},
           {i: scale[m][1] for i, m in enumerate(models)}),
          ("EPIC distance, CLIP reward to pose detector",
           {"kneeling": [(i, r["seed"], epic(r)) for i, r in scale_runs]}, None)], ticks=models)
# Reward reports (run_all.sh --reward-report), from their report.json: per report and model, its default candidate
# (the grid's prompts at the first α) and its best; and, from the kneeling report's four models, EPIC against model size.
reports = sorted(glob.glob(os.path.join(out, "reward_report", "*", "report.json")))
if reports:
    lines += ["## Reward reports (benchmarks/reward_report.py: EPIC distance and AUC to the ground truth, before training)", "",
              "| report | model | states (in the goal) | default: EPIC, AUC | best: prompt, α | best: EPIC, AUC |",
              "|---|---|---|---|---|---|"]
    cell = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731  (null: NaN in the report)
    for path in reports:
        with open(path) as f:
            rep = json.load(f)
        name = os.path.basename(os.path.dirname(path))
        for model in rep["models"]:
            rows_model = [c for c in rep["candidates"] if c["model"] == model]  # best first
            default, best = next(c for c in rows_model if c["default"]), rows_model[0]
            lines.append(f"| [{name}](reward_report/{name}/report.md) | {model} | {rep['states']['count']} "
                         f"({rep['states']['goal']}) | {cell(default['epic_distance'])}, {cell(default['auc'])} | "
                         f"{' / '.join(best['goal'])!r}, {best['alpha']} | {cell(best['epic_distance'])}, {cell(best['auc'])} |")
        if name == "humanoid_kneeling" and len(rep["models"]) > 1:  # the models in the grid's order: by size
            epics = {c["model"]: c["epic_distance"] for c in rep["candidates"] if c["default"]}
            draw("reward_report_epic_vs_model_size.png", "Kneeling: EPIC distance of the CLIP reward to the pose "
                 "detector before training (the paper's prompt, α = 0)", "CLIP model",
                 [("EPIC distance (lower is better)",
                   {"kneeling": [(i, 0, epics[m] if epics[m] is not None else float("nan"))
                                 for i, m in enumerate(rep["models"])]}, None)], ticks=rep["models"])
    lines.append("")
if figures:
    lines += ["## Figures", ""] + figures
with open(os.path.join(out, "figure_data.csv"), "w", newline="") as f:
    csv.writer(f).writerows([("figure", "panel", "series", "x", "seed", "value")] + plotted)
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines))
print(f"summary: {len(rows)} runs ({sum(r['status'] != 'ok' for r in rows)} failed) -> "
      f"{os.path.join(out, 'summary.csv')}, {os.path.join(out, 'summary.md')}, {len(figures) // 2} figures")
PY
}

if [ $SUMMARY_ONLY = 1 ]; then
    if [ ! -d "$OUTPUT_DIR" ]; then
        echo "run_all.sh: --summary-only: there is no folder $OUTPUT_DIR; give --output-dir the folder a grid ran into" >&2
        exit 1
    fi
    summarize; exit $?
fi

# Lanes and GPUs: lane j runs on GPU j mod (number of GPUs); with GPUs, at most --runs-per-gpu lanes per GPU.
# (An empty CUDA_VISIBLE_DEVICES means no GPU; nvidia-smi prints its failures on stdout: only numbers are GPUs.)
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then IFS=, read -ra GPU_IDS <<<"$CUDA_VISIBLE_DEVICES"
else mapfile -t GPU_IDS < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | grep -E '^[0-9]+$'); fi
if [ $SMOKE = 0 ] && [ ${#GPU_IDS[@]} -gt 0 ] && [ "$JOBS" -gt $(( ${#GPU_IDS[@]} * RUNS_PER_GPU )) ] \
        && [ -z "$RUN_INDEX" ]; then
    JOBS=$(( ${#GPU_IDS[@]} * RUNS_PER_GPU ))
    echo "run_all.sh: $JOBS runs at a time: ${#GPU_IDS[@]} GPU(s), $RUNS_PER_GPU run(s) per GPU (--runs-per-gpu 2" \
         "shares each GPU between two runs where memory allows: ViT-bigG-14 takes ~14 GB per run)" >&2
fi
# Runs at the same time share the CPU cores: each gets its share of torch's threads (else every run spins one
# thread per core, and they slow each other several times over).
THREADS=""
if [ "$JOBS" -gt 1 ]; then CORES=$(nproc); THREADS=" --torch-threads $(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))"; fi

PLAN=$(if [ $REWARD_REPORT = 1 ]; then report_grid; else grid; fi)
if [ $DRY_RUN = 1 ]; then printf '%s\n' "$PLAN" | cut -f2-; exit 0; fi

mkdir -p "$OUTPUT_DIR/logs" "$OUTPUT_DIR/runs"
if [ $SMOKE = 1 ] && [ ! -f "$TINY_WEIGHTS" ]; then  # a tiny open_clip architecture with random weights
    mkdir -p "$(dirname "$TINY_WEIGHTS")"
    "$PYTHON" - "$TINY_MODEL" "$TINY_WEIGHTS" <<'PY' || exit 1
import json, sys
import open_clip, torch
config, weights = sys.argv[1:]
with open(config, "w") as f:
    json.dump({"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}, f)
open_clip.add_model_config(config)
torch.save(open_clip.create_model("tiny-clip").state_dict(), weights)
PY
fi

if [ $REWARD_REPORT = 1 ]; then  # one report after the other (each keeps a GPU busy), then the summary
    failed=0
    while IFS=$'\t' read -r name command; do
        echo "[$(date +%H:%M:%S)] reward report $name"
        eval "$command" > "$OUTPUT_DIR/logs/reward_report_$name.log" 2>&1 \
            || { failed=1; echo "[$(date +%H:%M:%S)] FAILED reward report $name, see logs/reward_report_$name.log"; }
    done <<<"$PLAN"
    summarize
    exit $failed
fi

# Each run's name, "<experiment>_seed<N>", names its log and exit-status files.
run_names=() commands=()
if [ -n "$RUN_INDEX" ]; then  # one task of the SLURM array: the grid as it was submitted
    mapfile -t run_names < "$OUTPUT_DIR/run_names.txt"
    mapfile -t commands < "$OUTPUT_DIR/commands.txt"
else
    while IFS=$'\t' read -r name command; do
        run_names+=("$name") commands+=("$command")
    done <<<"$PLAN"
    printf '%s\n' "${commands[@]}" > "$OUTPUT_DIR/commands.txt"
    printf '%s\n' "${run_names[@]}" > "$OUTPUT_DIR/run_names.txt"
fi

# Each run: skipped when its folder has results.json (finished), resumed when it has a checkpoint (a run folder
# is "<Env>__<experiment>__<seed>__<time>"), else started; its log grows across attempts. SIGTERM is passed on to
# the run, which stops at the end of its rollout with a checkpoint (exit 143).
run_one() {  # $1 = run index, $2 = lane; returns the run's exit status
    local name=${run_names[$1]} command=${commands[$1]} dir what=start code
    local experiment=${name%_seed*} seed=${name##*_seed}
    for dir in $(ls -d "$OUTPUT_DIR/runs/"*"__${experiment}__${seed}__"* 2>/dev/null | sort -r); do
        if [ -f "$dir/results.json" ]; then echo "[$(date +%H:%M:%S)] skip $name (finished: $dir)"; return 0; fi
        if compgen -G "$dir/checkpoint_*.pt" >/dev/null; then
            command="${command%% --seed *} --resume $dir" what=resume
            break
        fi
    done
    if [ ${#GPU_IDS[@]} -gt 0 ]; then
        export CUDA_VISIBLE_DEVICES=${GPU_IDS[$(( $2 % ${#GPU_IDS[@]} ))]}
        # MuJoCo's EGL picks its own device (the first) whatever CUDA_VISIBLE_DEVICES says: render on the run's GPU.
        [[ "$CUDA_VISIBLE_DEVICES" =~ ^[0-9]+$ ]] && export MUJOCO_EGL_DEVICE_ID=$CUDA_VISIBLE_DEVICES
    fi
    echo "[$(date +%H:%M:%S)] $what $name${CUDA_VISIBLE_DEVICES:+ on GPU $CUDA_VISIBLE_DEVICES}"
    eval "exec $command" >> "$OUTPUT_DIR/logs/$name.log" 2>&1 &
    local pid=$!
    trap "kill -TERM $pid 2>/dev/null" TERM
    wait $pid; code=$?
    while kill -0 $pid 2>/dev/null; do wait $pid; code=$?; done  # a signal interrupted the wait: wait for the run
    trap - TERM
    echo $code > "$OUTPUT_DIR/logs/$name.status"
    echo "[$(date +%H:%M:%S)] $([ $code = 0 ] && echo done || echo "FAILED (exit $code)") $name"
    return $code
}

if [ -n "$RUN_INDEX" ]; then run_one "$RUN_INDEX" 0; exit $?; fi  # one task of the SLURM array

# --slurm: 5 minutes before the time limit SLURM sends USR1 to the task, which passes SIGTERM on to the run (it
# checkpoints) and requeues itself; on a preemption or scancel, SIGTERM reaches the run directly.
if [ $SLURM = 1 ]; then
    cat > "$OUTPUT_DIR/slurm_array.sh" <<EOF
#!/usr/bin/env bash
#SBATCH --job-name=vlmrm
#SBATCH --array=0-$(( ${#commands[@]} - 1 ))
#SBATCH --gres=gpu:$GPUS_PER_TASK
#SBATCH --time=$TIME_LIMIT
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --output=$OUTPUT_DIR/logs/slurm_%A_%a.out
#SBATCH --open-mode=append
$([ -n "$PARTITION" ] && echo "#SBATCH --partition=$PARTITION")
cd "$PWD"
bash run_all.sh --run-index \$SLURM_ARRAY_TASK_ID --output-dir "$OUTPUT_DIR" --python "$PYTHON" &
task=\$!
trap 'kill -TERM \$task; wait \$task; code=\$?; [ \$code != 143 ] || scontrol requeue "\${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID}"; exit \$code' USR1
trap 'kill -TERM \$task; wait \$task; exit \$?' TERM
wait \$task
EOF
    sbatch "$OUTPUT_DIR/slurm_array.sh" || { echo "run_all.sh: sbatch failed" >&2; exit 1; }
    echo "submitted ${#commands[@]} runs; when they are done: bash run_all.sh --summary-only --output-dir $OUTPUT_DIR"
    exit 0
fi

# Locally: --jobs lanes run at the same time; lane j runs runs j, j + jobs, ... one after the other,
# on GPU j mod (number of GPUs), so that two runs share a GPU only with --runs-per-gpu 2 or more.
# Ctrl-C or SIGTERM: each running run checkpoints at the end of its rollout and the lanes stop; rerunning the
# same command goes on.
lane() {
    local i
    for ((i = $1; i < ${#commands[@]}; i += JOBS)); do
        run_one "$i" "$1"
        case $? in 130|143) return ;; esac  # stopped: start nothing more
    done
}
lanes=()
for ((j = 0; j < JOBS; j++)); do lane "$j" & lanes+=($!); done
STOPPED=0
trap 'STOPPED=1; echo "run_all.sh: stopping; the running runs checkpoint first, then rerun this command to go on"
      kill -TERM "${lanes[@]}" 2>/dev/null' INT TERM
while ! wait; do :; done  # a signal interrupts wait: wait again until every lane has stopped
summarize
[ $STOPPED = 0 ] || exit 130

# Job backends of the recipe (sourced by codec.sh). Edit the Slurm settings for your cluster.
#
#   cmd_backend=local  jobs run as background processes on this machine (default)
#   cmd_backend=slurm  every job is a Slurm step started with srun (inside an sbatch/salloc
#                      allocation it uses that allocation; outside it, srun requests its own)
#
# Functions:
#   run_jobs NJ LOG CMD...   run NJ copies of CMD; the word JOB in LOG and CMD is replaced by 1..NJ.
#                            Waits for all; on failure prints the failed logs' tails and returns 1.
#   run_train LOG CMD...     run one training command (GPUs, nodes from $ngpu, $num_nodes);
#                            with slurm and num_nodes > 1 it starts one task per node, and the
#                            caller adds --dist_launcher slurm to CMD; locally, num_nodes > 1 starts
#                            one process per "node" on this machine with --dist_rank/--dist_world_size
#                            added (node 0 logs to LOG, node N to LOG's .nodeN.log).
#   requeue_job              after a preempted training (exit 75) inside an sbatch job: requeue it
#                            (scontrol requeue) when slurm_requeue=true, so that it reruns and resumes.
#
# Preemption and time limits on Slurm (signal-and-requeue). The training checkpoints and exits 75
# when it receives SIGUSR1 or SIGTERM; stage 4 then prints "preempted: rerun the same command to
# continue" and, in a batch job, requeues it. Needed:
#   --signal=USR1@120  (in slurm_train_opts below) Slurm sends SIGUSR1 to the training step 120 s before
#                      the time limit: enough for the current iteration and the checkpoint write.
#   --requeue          (sbatch option, give it when submitting: sbatch --requeue ... run.sh ...) lets the
#                      job be requeued, by the scheduler on preemption or by requeue_job here.
# A preempting scheduler sends SIGTERM (after its GraceTime), which works the same way.

cmd_backend=${cmd_backend:-local}

# Slurm options for CPU jobs (data preparation, statistics, decoding, scoring, tokens).
slurm_cpu_opts=${slurm_cpu_opts:-"--cpus-per-task=2 --mem=8G --time=12:00:00"}
# Slurm options for training; --gres=gpu:N, --nodes and --ntasks-per-node are added.
# --signal=USR1@120: checkpoint and stop 120 s before the time limit (see above).
slurm_train_opts=${slurm_train_opts:-"--cpus-per-task=8 --mem=64G --time=7-00:00:00 --signal=USR1@120"}
# Requeue the batch job after a preemption (needs sbatch --requeue or the cluster's JobRequeue=1).
slurm_requeue=${slurm_requeue:-true}
# Slurm options for GPU decoding / token extraction jobs (used when --ngpu > 0).
slurm_gpu_opts=${slurm_gpu_opts:-"--cpus-per-task=4 --mem=16G --time=12:00:00 --gres=gpu:1"}

_log_header() {
    # Writes the command (shell-quoted) and a start time to a log file.
    local log=$1
    shift
    mkdir -p "$(dirname "$log")"
    {
        printf '# %q' "$1"
        shift
        printf ' %q' "$@"
        printf '\n# started at %s on %s\n' "$(date '+%F %T')" "$(hostname)"
    } > "$log"
}

_log_footer() {
    local log=$1 rc=$2
    printf '# ended at %s with exit code %s\n' "$(date '+%F %T')" "$rc" >> "$log"
}

# run_jobs NJ LOG CMD... (set job_uses_gpu=true beforehand for GPU jobs on slurm)
run_jobs() {
    local nj=$1 log_pattern=$2
    shift 2
    if ! [[ "$nj" =~ ^[1-9][0-9]*$ ]]; then
        echo "run_jobs: NJ must be a positive integer, got '$nj'" >&2
        return 1
    fi
    local threads=1 ncpu
    ncpu=$(nproc 2>/dev/null || echo 1)
    [ "$nj" -lt "$ncpu" ] && threads=$((ncpu / nj))

    local pids=() n arg log
    for n in $(seq "$nj"); do
        local cmd=()
        for arg in "$@"; do cmd+=("${arg//JOB/$n}"); done
        log=${log_pattern//JOB/$n}
        _log_header "$log" "${cmd[@]}"
        case "$cmd_backend" in
            local)
                ( rc=0; OMP_NUM_THREADS=$threads "${cmd[@]}" >> "$log" 2>&1 || rc=$?; _log_footer "$log" $rc; exit $rc ) &
                ;;
            slurm)
                local opts=$slurm_cpu_opts
                [ "${job_uses_gpu:-false}" = true ] && opts=$slurm_gpu_opts
                # shellcheck disable=SC2086
                ( rc=0; srun --ntasks=1 --export=ALL --job-name="$(basename "${log%.log}")" $opts \
                    "${cmd[@]}" >> "$log" 2>&1 || rc=$?; _log_footer "$log" $rc; exit $rc ) &
                ;;
            *)
                echo "run_jobs: unknown cmd_backend '$cmd_backend' (use local or slurm)" >&2
                return 1
                ;;
        esac
        pids+=($!)
    done

    local failed=0 i=0
    for n in $(seq "$nj"); do
        if ! wait "${pids[$i]}"; then
            log=${log_pattern//JOB/$n}
            echo "job $n/$nj failed; last lines of $log:" >&2
            tail -n 20 "$log" >&2
            failed=$((failed + 1))
        fi
        i=$((i + 1))
    done
    if [ "$failed" -gt 0 ]; then
        echo "$failed of $nj jobs failed (logs: $log_pattern)" >&2
        return 1
    fi
}

# run_train LOG CMD...
run_train() {
    local log=$1
    shift
    _log_header "$log" "$@"
    local rc=0
    case "$cmd_backend" in
        local)
            if [ "${num_nodes:-1}" -gt 1 ]; then
                # A multi-node run rehearsed on this machine: each "node" is one process (which spawns
                # one per GPU with --multiprocessing_distributed true), ranks given explicitly.
                local node pids=() node_log r
                for ((node = 0; node < num_nodes; node++)); do
                    node_log=$log
                    if [ "$node" -gt 0 ]; then node_log=${log%.log}.node${node}.log; _log_header "$node_log" "$@"; fi
                    "$@" --dist_rank "$node" --dist_world_size "$num_nodes" >> "$node_log" 2>&1 &
                    pids+=($!)
                done
                for node in "${!pids[@]}"; do
                    r=0
                    wait "${pids[$node]}" || r=$?
                    # A failure outranks a preemption (75), which outranks success.
                    if [ "$r" -ne 0 ] && { [ "$rc" -eq 0 ] || [ "$rc" -eq 75 ]; }; then rc=$r; fi
                done
            else
                "$@" >> "$log" 2>&1 || rc=$?
            fi
            ;;
        slurm)
            local gres=
            [ "${ngpu:-0}" -gt 0 ] && gres="--gres=gpu:${ngpu}"
            # shellcheck disable=SC2086
            srun --nodes="${num_nodes:-1}" --ntasks-per-node=1 --export=ALL \
                --job-name="$(basename "$(dirname "$log")")" $slurm_train_opts $gres \
                "$@" >> "$log" 2>&1 || rc=$?
            ;;
        *)
            echo "run_train: unknown cmd_backend '$cmd_backend' (use local or slurm)" >&2
            return 1
            ;;
    esac
    _log_footer "$log" "$rc"
    return "$rc"
}

# requeue_job: inside an sbatch job with slurm_requeue=true, requeue it (it reruns the same command).
requeue_job() {
    # (scontrol refuses interactive salloc jobs: then the message below says what to do.)
    if [ "$cmd_backend" = slurm ] && [ "${slurm_requeue:-true}" = true ] && [ -n "${SLURM_JOB_ID:-}" ] &&
        command -v scontrol >/dev/null; then
        echo "requeueing Slurm job ${SLURM_JOB_ID}" >&2
        scontrol requeue "$SLURM_JOB_ID" || echo "scontrol requeue failed: submit with sbatch --requeue" >&2
    fi
}

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
#                            caller adds --dist_launcher slurm to CMD.

cmd_backend=${cmd_backend:-local}

# Slurm options for CPU jobs (data preparation, statistics, decoding, scoring, tokens).
slurm_cpu_opts=${slurm_cpu_opts:-"--cpus-per-task=2 --mem=8G --time=12:00:00"}
# Slurm options for training; --gres=gpu:N, --nodes and --ntasks-per-node are added.
slurm_train_opts=${slurm_train_opts:-"--cpus-per-task=8 --mem=64G --time=7-00:00:00"}
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
            "$@" >> "$log" 2>&1 || rc=$?
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

#!/usr/bin/env bash
# Stages of the SNAC codec recipe. Run from egs2/snac24k (run.sh sets the defaults).
#
# Every stage logs what it does, writes a done-marker holding a fingerprint of its inputs and
# settings, and skips its work when the marker matches: re-running a command repeats nothing,
# and changed inputs redo only what depends on them. Training always runs with --resume true,
# so a killed training continues from its last checkpoint (checkpoint.pth).
set -euo pipefail

log() {
    printf '%s (codec.sh:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "${BASH_LINENO[0]}" "$*"
}
die() {
    printf '%s (codec.sh:%s) ERROR: %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "${BASH_LINENO[0]}" "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Options (name, default, help). Every one can be given as --name VALUE.
stage=1                  # first stage to run
stop_stage=6             # last stage to run (7 = pack the model, 8 = speech LM)
ngpu=0                   # GPUs per node for training (0 = CPU); decoding/tokens use one if > 0
num_nodes=1              # nodes for training (slurm: one task per node; local: one process group per "node" on this machine)
nj=4                     # parallel jobs for data preparation and statistics
inference_nj=2           # parallel jobs for decoding
dataset=demo             # demo | folder:PATH | kaldi:PATH | hf:NAME[:CONFIG] | a preset in conf/datasets
data_opts=               # extra options for prepare_data in stage 1 (e.g. "--max_hours 100")
train_set=train          # training set name
valid_set=dev            # validation set name
test_sets="dev test"     # sets to decode and score (space separated)
fs=24000                 # sampling rate of the dumped audio (must match the model)
min_wav_duration=0.5     # shorter utterances are rejected in stage 2 (seconds)
max_wav_duration=30      # longer utterances are rejected in stage 2 (seconds; 0 = no limit)
audio_format=flac        # flac | ark: storage of the dumped audio
train_config=            # training config (yaml)
train_args=              # extra options for gan_codec_train (e.g. "--max_epoch 10")
num_iters=               # optimizer steps of the training (default: the config's own total on one device)
batch_size=              # global batch in chunks, split over GPUs and nodes (default: the config's)
init_param=              # fine-tune from this model: a .pth (ESPnet --init_param syntax), official dir, .zip or Hugging Face repo id
tag=                     # experiment name suffix (default: train_config file name)
inference_model=         # checkpoint of the experiment for stages 5-7 (default: valid.mel_loss.best.pth, else latest.pth)
plot_spectrograms=3      # spectrogram comparison images per test set
score_untrained=true     # stage 5: also score the untrained model (iteration 0) on the test sets, in RESULTS.md
score_anchors=true       # stage 5: also score known degradations of the test sets' speech (reference points), in RESULTS.md
token_formats=auto       # stage 6: extract_tokens formats (auto = ark,text, + orpheus,datasets for sets with transcripts)
cmd_backend=local        # local | slurm (settings in cmd.sh)
python=python3           # Python interpreter
workdir=.                # parent of data/, dump/ and exp/ unless given separately
datadir=                 # default: ${workdir}/data
dumpdir=                 # default: ${workdir}/dump
expdir=                  # default: ${workdir}/exp
lm_config=               # stage 8: speech LM config (default: conf/train_lm_snac.yaml)
lm_tag=                  # stage 8: LM experiment name suffix (default: lm_config file name, + _text with a text prefix)
lm_args=                 # stage 8: extra options for lm_train (e.g. "--max_epoch 5")
lm_text_prefix=false     # stage 8: true = lines start with the transcript (data/<set>/text): a text-to-speech LM
lm_prompt_set=           # stage 8: held-out set whose utterances prompt the LM (default: first of --test_sets)
lm_num_prompts=2         # stage 8: prompts to continue
lm_prompt_frames=12      # stage 8: SNAC frames per prompt (12 = 1 s at 24 kHz; 0 allowed with --lm_text_prefix true)
lm_gen_frames=36         # stage 8: frames the LM generates per prompt (7 ids each)
lm_inference_args=       # stage 8: extra options for lm_inference (search is greedy: --beam_size 1)

help_message() {
    cat <<EOF
Usage: $0 [options]

Stages:
  1  data preparation (local/data.sh -> \${datadir}/<set>)
  2  formatting into \${dumpdir}/raw/<set>: ${fs} Hz mono, duration filter, rejected list
  3  statistics (gan_codec_train --collect_stats) -> \${expdir}/codec_stats_<fs>
  4  training (gan_codec_train --resume true) -> \${expdir}/codec_<tag>
  5  decoding and scoring of the test sets -> \${expdir}/codec_<tag>/decode_<model>/<set>,
     \${expdir}/codec_<tag>/RESULTS.md
  6  token extraction for all sets -> \${dumpdir}/tokens/<set>
  7  (optional) packing: ESPnet zip and official-format directory -> \${expdir}/codec_<tag>/packed
  8  (optional) speech LM on the tokens of stage 6 with ESPnet's LM task: data -> \${dumpdir}/lm_snac[_text],
     lm_train -> \${expdir}/lm_<lm_tag>, lm_inference continues held-out prompts, the slot check and
     SNAC decoding -> \${expdir}/lm_<lm_tag>/generate_<model>_<set>/{wav,continuation,slot_check.json}

Options:
EOF
    # The option block above is the documentation: print it.
    sed -n '/^# Options (name/,/^help_message/p' "$0" | grep -E '^[a-z_]+=' |
        sed -E 's/^([a-z_]+)=("[^"]*"|[^ ]*) *# ?(.*)$/  --\1 (default: \2)\t\3/' | expand -t 44
    cat <<EOF
  --help                                    show this message
EOF
}

run_args=$(printf '%q ' "$0" "$@")

while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h)
            help_message
            exit 0
            ;;
        --*=*)
            die "write options as '--name value', not '$1'"
            ;;
        --*)
            name=${1#--}
            if ! [[ "$name" =~ ^[a-z_]+$ ]] || ! grep -qE "^${name}=" <(sed -n '/^# Options (name/,/^help_message/p' "$0"); then
                die "unknown option '$1' (see $0 --help)"
            fi
            [ $# -ge 2 ] || die "option '$1' needs a value"
            printf -v "$name" '%s' "$2"
            shift 2
            ;;
        *)
            die "unexpected argument '$1' (options are '--name value'; see $0 --help)"
            ;;
    esac
done

[ -e local/data.sh ] && [ -e path.sh ] || die "run this from the recipe directory (egs2/snac24k)"
# shellcheck disable=SC1091
. ./path.sh
# shellcheck disable=SC1091
. ./cmd.sh

for v in stage stop_stage ngpu num_nodes nj inference_nj fs plot_spectrograms; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "--$v must be a non-negative integer, got '${!v}'"
done
[ "$nj" -ge 1 ] && [ "$inference_nj" -ge 1 ] || die "--nj and --inference_nj must be at least 1"
case "$score_untrained" in true|false) ;; *) die "--score_untrained must be true or false, got '$score_untrained'" ;; esac
case "$score_anchors" in true|false) ;; *) die "--score_anchors must be true or false, got '$score_anchors'" ;; esac
case "$audio_format" in flac|ark) ;; *) die "--audio_format must be flac or ark, got '$audio_format'" ;; esac
case "$cmd_backend" in local|slurm) ;; *) die "--cmd_backend must be local or slurm, got '$cmd_backend'" ;; esac
[ "$num_nodes" -ge 1 ] || die "--num_nodes must be at least 1"
command -v "$python" >/dev/null || die "python interpreter '$python' not found (--python)"

datadir=${datadir:-${workdir}/data}
dumpdir=${dumpdir:-${workdir}/dump}
expdir=${expdir:-${workdir}/exp}

if [ "$stop_stage" -ge 3 ] && [ "$stage" -le 7 ]; then
    [ -n "$train_config" ] || die "--train_config is required"
    [ -f "$train_config" ] || die "train config '$train_config' not found"
fi
if [ -z "$tag" ]; then
    tag=$(basename "${train_config:-default}")
    tag=${tag%.*}
fi
stats_dir=${expdir}/codec_stats_${fs}
codec_exp=${expdir}/codec_${tag}
if [ "$audio_format" = ark ]; then data_type=kaldi_ark; else data_type=sound; fi

# Sets that stages 2 and 6 process: train, valid and test sets, each once.
all_sets=$(printf '%s\n' "$train_set" "$valid_set" $test_sets | awk 'NF && !seen[$0]++' | tr '\n' ' ')

# ---------------------------------------------------------------------------------------------
# Helpers

# md5 of files and strings: fingerprint f1 f2 ... -- "text"
fingerprint() {
    local parts=() f
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        f=$1
        shift
        if [ -f "$f" ]; then parts+=("$f $(md5sum < "$f" | cut -d' ' -f1)"); else parts+=("$f missing"); fi
    done
    [ "${1:-}" = -- ] && shift
    printf '%s\n' "${parts[@]}" "$@" | md5sum | cut -d' ' -f1
}

# Identity of a (possibly symlinked) model file without hashing hundreds of MB.
file_identity() {
    local real
    real=$(readlink -f "$1")
    printf '%s %s %s' "$real" "$(stat -c %s "$real")" "$(stat -c %Y "$real")"
}

# stage_state MARKER FINGERPRINT -> prints done | stale | todo
stage_state() {
    if [ ! -f "$1" ]; then echo todo
    elif [ "$(cat "$1")" = "$2" ]; then echo done
    else echo stale
    fi
}

# split_scp IN NJ OUT_PATTERN: contiguous chunks, JOB in OUT_PATTERN replaced by 1..NJ
split_scp() {
    local in=$1 n=$2 pattern=$3 total
    total=$(wc -l < "$in")
    awk -v nj="$n" -v total="$total" -v pat="$pattern" \
        '{ j = int((NR - 1) * nj / total) + 1; f = pat; gsub("JOB", j, f); print > f }' "$in"
}

min() { printf '%s\n' "$@" | sort -n | head -n 1; }

count_lines() { if [ -f "$1" ]; then wc -l < "$1" | tr -d ' '; else echo 0; fi; }

# Lines of a rejected.tsv without its header.
count_rejected() { if [ -f "$1" ]; then grep -vc '^utt_id	' "$1" || true; else echo 0; fi; }

# Before a (resumed) training run of stage 4 or 8.3 in EXP: say how it continues, keep earlier logs
# (train.log -> train.1.log -> train.2.log ...). start_training LABEL EXP STATE
start_training() {
    local label=$1 exp=$2 state=$3 n i
    mkdir -p "$exp"
    [ "$state" = stale ] && log "${label}: config, data or options changed since the last training; continuing it"
    [ -f "${exp}/checkpoint.pth" ] && log "${label}: resuming from ${exp}/checkpoint.pth"
    if [ -f "${exp}/train.log" ]; then
        n=1
        while [ -e "${exp}/train.${n}.log" ]; do n=$((n + 1)); done
        for ((i = n; i > 1; i--)); do mv "${exp}/train.$((i - 1)).log" "${exp}/train.${i}.log"; done
        mv "${exp}/train.log" "${exp}/train.1.log"
    fi
    return 0
}

# After it: the model the run must leave. end_training LABEL EXP
end_training() {
    [ -e "${2}/latest.pth" ] || die "${1}: training ended without a model (${2}/latest.pth)"
}

resolve_model() {
    # The checkpoint used by stages 5-7.
    if [ -n "$inference_model" ]; then
        [ -e "${codec_exp}/${inference_model}" ] || die "--inference_model ${inference_model} not found in ${codec_exp}"
        echo "${codec_exp}/${inference_model}"
        return
    fi
    local m
    for m in valid.mel_loss.best.pth valid.mel_distance.best.pth latest.pth; do
        if [ -e "${codec_exp}/${m}" ]; then echo "${codec_exp}/${m}"; return; fi
    done
    die "no trained model in ${codec_exp} (run stage 4, or give --inference_model)"
}

log "${run_args}"
log "data: ${datadir}  dump: ${dumpdir}  experiment: ${codec_exp}  backend: ${cmd_backend}"

# ---------------------------------------------------------------------------------------------
if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
    marker=${datadir}/.done_stage1
    fp="dataset=${dataset} fs=${fs} audio_format=${audio_format} opts=${data_opts}"
    case $(stage_state "$marker" "$fp") in
        done)
            log "Stage 1: data preparation already done for '${dataset}' (${marker}); skipping"
            for dset in $all_sets; do
                [ -s "${datadir}/${dset}/wav.scp" ] ||
                    die "Stage 1: ${datadir} has no set '${dset}' (sets: $(cd "$datadir" && ls -d */ | tr -d / | tr '\n' ' '))"
            done
            ;;
        stale)
            die "Stage 1: ${datadir} was prepared with other settings ($(cat "$marker")):" \
                "use another --workdir/--datadir or remove ${datadir}"
            ;;
        todo)
            log "Stage 1: data preparation of '${dataset}' into ${datadir}"
            # shellcheck disable=SC2086
            local/data.sh --dataset "$dataset" --output_dir "$datadir" --fs "$fs" --nj "$nj" \
                --audio_format "$audio_format" --python "$python" --sets "$all_sets" -- ${data_opts}
            for dset in $all_sets; do
                [ -s "${datadir}/${dset}/wav.scp" ] || die "Stage 1: ${datadir}/${dset}/wav.scp missing or empty"
                log "Stage 1: ${dset}: $(count_lines "${datadir}/${dset}/wav.scp") utterances," \
                    "$(count_rejected "${datadir}/${dset}/rejected.tsv") rejected"
            done
            echo "$fp" > "$marker"
            ;;
    esac
fi

# ---------------------------------------------------------------------------------------------
if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
    for dset in $all_sets; do
        src=${datadir}/${dset}
        dst=${dumpdir}/raw/${dset}
        marker=${dst}/.done
        [ -s "${src}/wav.scp" ] || die "Stage 2: ${src}/wav.scp not found (run stage 1)"
        fp=$(fingerprint "${src}/wav.scp" "${src}/utt2spk" "${src}/text" -- \
            "fs=${fs} min=${min_wav_duration} max=${max_wav_duration} format=${audio_format}")
        state=$(stage_state "$marker" "$fp")
        if [ "$state" = done ]; then
            log "Stage 2: ${dst} already formatted; skipping"
            continue
        fi
        [ "$state" = stale ] && { log "Stage 2: ${src} or the settings changed; redoing ${dst}"; rm -rf "$dst"; }
        log "Stage 2: formatting ${src} -> ${dst} (${fs} Hz mono, ${audio_format}," \
            "duration ${min_wav_duration}..${max_wav_duration} s)"
        mkdir -p "$dst"
        "$python" -m espnet_snac.bin.prepare_data \
            --source "kaldi:${src}" --output_dir "$dst" --fs "$fs" --nj "$nj" \
            --audio_format "$audio_format" \
            --min_duration "$min_wav_duration" --max_duration "$max_wav_duration" \
            > "${dst}/format.log" 2>&1 || { tail -n 30 "${dst}/format.log" >&2; die "Stage 2 failed for ${dset} (log: ${dst}/format.log)"; }
        n_in=$(count_lines "${src}/wav.scp")
        n_out=$(count_lines "${dst}/wav.scp")
        n_rej=$(count_rejected "${dst}/rejected.tsv")
        [ "$n_out" -gt 0 ] || die "Stage 2: no utterance of ${src} survived (see ${dst}/rejected.tsv)"
        [ -s "${dst}/utt2num_samples" ] || die "Stage 2: ${dst}/utt2num_samples missing"
        [ $((n_out + n_rej)) -eq "$n_in" ] ||
            die "Stage 2: ${dset}: ${n_in} in, but ${n_out} kept + ${n_rej} rejected"
        log "Stage 2: ${dset}: ${n_in} in, ${n_out} kept, ${n_rej} rejected (${dst}/rejected.tsv);" \
            "transcripts: $(count_lines "${dst}/text")"
        echo "$fp" > "$marker"
    done
fi

# ---------------------------------------------------------------------------------------------
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
    train_dir=${dumpdir}/raw/${train_set}
    valid_dir=${dumpdir}/raw/${valid_set}
    marker=${stats_dir}/.done
    for d in "$train_dir" "$valid_dir"; do
        [ -f "${d}/.done" ] || die "Stage 3: ${d} is not formatted (run stage 2)"
    done
    # Codec statistics are the audio shapes: they depend on the data only, not on the config.
    fp=$(fingerprint "${train_dir}/wav.scp" "${valid_dir}/wav.scp")
    state=$(stage_state "$marker" "$fp")
    if [ "$state" = done ]; then
        log "Stage 3: statistics in ${stats_dir} are up to date; skipping"
    else
        [ "$state" = stale ] && { log "Stage 3: data changed; recomputing ${stats_dir}"; rm -rf "$stats_dir"; }
        logdir=${stats_dir}/logdir
        mkdir -p "$logdir"
        _nj=$(min "$nj" "$(count_lines "${train_dir}/wav.scp")" "$(count_lines "${valid_dir}/wav.scp")")
        # Each job mostly imports ESPnet and reads shapes: no point in more local jobs than cores.
        [ "$cmd_backend" = local ] && _nj=$(min "$_nj" "$(nproc)")
        split_scp "${train_dir}/wav.scp" "$_nj" "${logdir}/train.JOB.scp"
        split_scp "${valid_dir}/wav.scp" "$_nj" "${logdir}/valid.JOB.scp"
        log "Stage 3: collecting statistics with ${_nj} jobs (logs: ${logdir}/stats.*.log)"
        # shellcheck disable=SC2086
        run_jobs "$_nj" "${logdir}/stats.JOB.log" \
            "$python" -m espnet_snac.bin.gan_codec_train \
                --collect_stats true \
                --use_preprocessor true \
                --config "$train_config" \
                --train_data_path_and_name_and_type "${train_dir}/wav.scp,audio,${data_type}" \
                --valid_data_path_and_name_and_type "${valid_dir}/wav.scp,audio,${data_type}" \
                --train_shape_file "${logdir}/train.JOB.scp" \
                --valid_shape_file "${logdir}/valid.JOB.scp" \
                --output_dir "${logdir}/stats.JOB" \
                --ngpu 0 ${train_args} || die "Stage 3: statistics collection failed"
        input_dirs=()
        for n in $(seq "$_nj"); do input_dirs+=(--input_dir "${logdir}/stats.${n}"); done
        "$python" -m espnet2.bin.aggregate_stats_dirs --skip_sum_stats "${input_dirs[@]}" \
            --output_dir "$stats_dir" > "${logdir}/aggregate.log" 2>&1 ||
            { cat "${logdir}/aggregate.log" >&2; die "Stage 3: aggregate_stats_dirs failed"; }
        for part in train valid; do
            [ -s "${stats_dir}/${part}/audio_shape" ] || die "Stage 3: ${stats_dir}/${part}/audio_shape missing"
        done
        [ "$(count_lines "${stats_dir}/train/audio_shape")" -eq "$(count_lines "${train_dir}/wav.scp")" ] ||
            die "Stage 3: ${stats_dir}/train/audio_shape does not cover ${train_dir}/wav.scp"
        log "Stage 3: shape files in ${stats_dir}/{train,valid}/audio_shape"
        echo "$fp" > "$marker"
    fi
fi

# ---------------------------------------------------------------------------------------------
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
    train_dir=${dumpdir}/raw/${train_set}
    valid_dir=${dumpdir}/raw/${valid_set}
    [ -f "${stats_dir}/.done" ] || die "Stage 4: statistics missing (run stage 3)"
    marker=${codec_exp}/.done_train
    fp=$(fingerprint "$train_config" "${stats_dir}/.done" -- \
        "train_args=${train_args} init_param=${init_param} ngpu=${ngpu} num_nodes=${num_nodes}" \
        "num_iters=${num_iters} batch_size=${batch_size}")
    state=$(stage_state "$marker" "$fp")
    if [ "$state" = done ]; then
        log "Stage 4: training in ${codec_exp} already finished; skipping"
    else
        start_training "Stage 4" "$codec_exp" "$state"
        printf '%s--stage 4 "$@"\n' "$run_args" > "${codec_exp}/run.sh"
        chmod +x "${codec_exp}/run.sh"

        # The plan turns the step count and global batch into ESPnet's per-rank chunk-iterator
        # options for this corpus and world size (see README "Planning a run").
        plan_opts=(--speech_shape "${stats_dir}/train/audio_shape" --config "$train_config"
            --ngpu "$ngpu" --num_nodes "$num_nodes")
        plan_opts+=(--num_iters "${num_iters:-config}")
        [ -n "$batch_size" ] && plan_opts+=(--batch_size "$batch_size")
        "$python" -m espnet_snac.bin.plan_training "${plan_opts[@]}" > "${codec_exp}/plan.txt" 2> "${codec_exp}/plan.err" ||
            { cat "${codec_exp}/plan.err" >&2; die "Stage 4: the run cannot be planned (${codec_exp}/plan.err)"; }
        rm -f "${codec_exp}/plan.err"
        tail -n 1 "${codec_exp}/plan.txt" > "${codec_exp}/plan.json"
        sed '$d' "${codec_exp}/plan.txt" | while IFS= read -r line; do log "Stage 4: plan: ${line}"; done
        read -r plan_k plan_epochs plan_batch < <("$python" -c \
            'import json,sys; p=json.load(open(sys.argv[1])); print(p["num_iters_per_epoch"], p["max_epoch"], p["batch_size"])' \
            "${codec_exp}/plan.json")

        opts=(--config "$train_config"
            --use_preprocessor true
            --train_data_path_and_name_and_type "${train_dir}/wav.scp,audio,${data_type}"
            --valid_data_path_and_name_and_type "${valid_dir}/wav.scp,audio,${data_type}"
            --train_shape_file "${stats_dir}/train/audio_shape"
            --valid_shape_file "${stats_dir}/valid/audio_shape"
            --resume true
            --output_dir "$codec_exp"
            --ngpu "$ngpu"
            --num_iters_per_epoch "$plan_k" --max_epoch "$plan_epochs" --batch_size "$plan_batch")
        if [ -n "$init_param" ]; then
            # a Hugging Face repo id, official dir or packed zip becomes a codec.generator.* .pth
            init_pth=$("$python" -c 'import sys; from espnet_snac.model.checkpoints import espnet_init_param; print(espnet_init_param(sys.argv[1], sys.argv[2]))' \
                "$init_param" "${codec_exp}/init") || die "Stage 4: --init_param ${init_param} cannot be read as SNAC weights"
            opts+=(--init_param "$init_pth")
        fi
        if [ "$ngpu" -gt 1 ] || [ "$num_nodes" -gt 1 ]; then
            opts+=(--multiprocessing_distributed true)
        fi
        if [ "$num_nodes" -gt 1 ]; then
            # One task per node, rendezvous via a shared file. Slurm gives the ranks; the local backend
            # runs the nodes as processes on this machine (run_train adds --dist_rank/--dist_world_size).
            rm -f "${codec_exp}"/.dist_init_*
            opts+=(--dist_init_method "file://$(cd "$codec_exp" && pwd)/.dist_init_$(date +%s%N)")
            [ "$cmd_backend" = slurm ] && opts+=(--dist_launcher slurm)
            [ "$ngpu" -eq 0 ] && opts+=(--dist_backend gloo)
        fi
        log "Stage 4: training ${codec_exp} with ${train_config} (ngpu=${ngpu}, nodes=${num_nodes});" \
            "log: ${codec_exp}/train.log, TensorBoard: tensorboard --logdir ${codec_exp}/tensorboard"
        start=$(date +%s)
        # SIGTERM/SIGUSR1 (Slurm preemption, --signal=USR1@120 in cmd.sh) reach the training, which
        # checkpoints and exits 75; this shell waits for it instead of dying first.
        trap 'log "Stage 4: stop signal received; waiting for the training to write its checkpoint"' TERM USR1
        rc=0
        # shellcheck disable=SC2086
        run_train "${codec_exp}/train.log" \
            "$python" -m espnet_snac.bin.gan_codec_train "${opts[@]}" ${train_args} || rc=$?
        trap - TERM USR1
        if [ "$rc" -eq 75 ]; then
            grep -h 'Training preempted' "${codec_exp}/train.log" "${codec_exp}"/train.node*.log 2>/dev/null >&2 || true
            log "Stage 4: preempted: rerun the same command to continue (from ${codec_exp}/checkpoint.pth)"
            requeue_job
            exit 75
        fi
        [ "$rc" -eq 0 ] ||
            { tail -n 30 "${codec_exp}/train.log" >&2; die "Stage 4: training failed (log: ${codec_exp}/train.log)"; }
        end_training "Stage 4" "$codec_exp"
        log "Stage 4: training finished in $(( $(date +%s) - start )) s; models in ${codec_exp}"
        echo "$fp" > "$marker"
    fi
fi

# ---------------------------------------------------------------------------------------------
if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
    model_file=$(resolve_model)
    model_id=$(file_identity "$model_file")
    model_name=$(basename "$model_file" .pth)
    decode_dir=${codec_exp}/decode_${model_name}
    if [ "$ngpu" -gt 0 ]; then _ngpu=1; job_uses_gpu=true; else _ngpu=0; job_uses_gpu=false; fi
    results_changed=false
    for dset in $test_sets; do
        data=${dumpdir}/raw/${dset}
        dir=${decode_dir}/${dset}
        marker=${dir}/.done
        [ -f "${data}/.done" ] || die "Stage 5: ${data} is not formatted (run stage 2 with ${dset} in --test_sets)"
        fp=$(fingerprint "${data}/wav.scp" -- "model=${model_id} plots=${plot_spectrograms}")
        state=$(stage_state "$marker" "$fp")
        if [ "$state" = done ]; then
            log "Stage 5: ${dir} already decoded and scored; skipping"
            continue
        fi
        results_changed=true
        rm -rf "$dir"
        logdir=${dir}/log
        mkdir -p "$logdir" "${dir}/wav" "${dir}/codec"
        _nj=$(min "$inference_nj" "$(count_lines "${data}/wav.scp")")
        split_scp "${data}/wav.scp" "$_nj" "${logdir}/keys.JOB.scp"
        log "Stage 5: decoding ${data} with ${model_file} (${_nj} jobs; logs: ${logdir}/inference.*.log)"
        run_jobs "$_nj" "${logdir}/inference.JOB.log" \
            "$python" -m espnet_snac.bin.gan_codec_inference \
                --ngpu "$_ngpu" \
                --data_path_and_name_and_type "${data}/wav.scp,audio,${data_type}" \
                --key_file "${logdir}/keys.JOB.scp" \
                --model_file "$model_file" \
                --train_config "${codec_exp}/config.yaml" \
                --output_dir "${logdir}/output.JOB" || die "Stage 5: decoding of ${dset} failed"
        # Merge the jobs' outputs into ${dir}/wav and ${dir}/codec with one scp each.
        for n in $(seq "$_nj"); do
            find "${logdir}/output.${n}/wav" -name '*.wav' -exec mv -t "${dir}/wav" {} +
            if [ -d "${logdir}/output.${n}/codec" ]; then
                find "${logdir}/output.${n}/codec" -name '*.npy' -exec mv -t "${dir}/codec" {} +
            fi
            rm -rf "${logdir}/output.${n}"
        done
        abs_dir=$(cd "$dir" && pwd)
        awk -v d="${abs_dir}/wav" '{ print $1, d "/" $1 ".wav" }' "${data}/wav.scp" > "${dir}/wav.scp"
        awk -v d="${abs_dir}/codec" '{ print $1, d "/" $1 ".npy" }' "${data}/wav.scp" > "${dir}/codec.scp"
        missing=$(awk '{ print $2 }' "${dir}/wav.scp" | while read -r f; do [ -f "$f" ] || echo "$f"; done | wc -l)
        [ "$missing" -eq 0 ] || die "Stage 5: ${missing} of $(count_lines "${data}/wav.scp") reconstructions missing in ${dir}/wav"
        [ -n "$(ls "${dir}/codec")" ] || rm -f "${dir}/codec.scp"

        log "Stage 5: scoring ${dir}/wav.scp against ${data}/wav.scp"
        "$python" -m espnet_snac.bin.score \
            --ref_scp "${data}/wav.scp" \
            --hyp_scp "${dir}/wav.scp" \
            --output_dir "${dir}/scoring" \
            --plot_spectrograms "$plot_spectrograms" > "${logdir}/score.log" 2>&1 ||
            { tail -n 30 "${logdir}/score.log" >&2; die "Stage 5: scoring of ${dset} failed (log: ${logdir}/score.log)"; }
        [ -s "${dir}/scoring/results.json" ] || die "Stage 5: ${dir}/scoring/results.json missing"
        echo "$fp" > "$marker"
    done
    results_opts="model=${model_id} sets=${test_sets} untrained=${score_untrained} anchors=${score_anchors}"
    [ "$(cat "${codec_exp}/.results_opts" 2>/dev/null)" = "$results_opts" ] || results_changed=true
    if "$results_changed" || [ ! -s "${codec_exp}/RESULTS.md" ]; then
        set_args=()
        for dset in $test_sets; do
            set_args+=(--scoring_dir "${dset}=${decode_dir}/${dset}/scoring")
            "$score_untrained" && set_args+=(--untrained "${dset}=${dumpdir}/raw/${dset}/wav.scp")
            "$score_anchors" && set_args+=(--anchors "${dset}=${dumpdir}/raw/${dset}/wav.scp")
        done
        "$python" local/make_results.py \
            --exp_dir "$codec_exp" \
            --model_file "$model_file" \
            "${set_args[@]}" \
            --output "${codec_exp}/RESULTS.md" > "${codec_exp}/make_results.log" 2>&1 ||
            { tail -n 30 "${codec_exp}/make_results.log" >&2; die "Stage 5: writing ${codec_exp}/RESULTS.md failed (log: ${codec_exp}/make_results.log)"; }
        # Codebook use of the decoded sets and, for a collapsed codec, the warning box (also in RESULTS.md).
        { grep -E '^[^ ]+: codes in use per level' "${codec_exp}/make_results.log" || true; } |
            while IFS= read -r line; do log "Stage 5: ${line}"; done
        grep -E '^!' "${codec_exp}/make_results.log" >&2 || true
        echo "$results_opts" > "${codec_exp}/.results_opts"
        log "Stage 5: results table ${codec_exp}/RESULTS.md"
    fi
fi

# ---------------------------------------------------------------------------------------------
if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
    model_file=$(resolve_model)
    model_id=$(file_identity "$model_file")
    if [ "$ngpu" -gt 0 ]; then device=cuda; _ngpu=1; job_uses_gpu=true; else device=cpu; _ngpu=0; job_uses_gpu=false; fi
    if [ -f "${MAIN_ROOT}/espnet_snac/bin/extract_tokens.py" ]; then have_extractor=true; else have_extractor=false; fi
    for dset in $all_sets; do
        data=${dumpdir}/raw/${dset}
        dir=${dumpdir}/tokens/${dset}
        marker=${dir}/.done
        [ -f "${data}/.done" ] || die "Stage 6: ${data} is not formatted (run stage 2)"
        # The formats: what the set can give (Orpheus ids and a datasets export need transcripts of
        # every utterance, extract_tokens refuses a partial text).
        n_in=$(count_lines "${data}/wav.scp")
        formats=$token_formats
        if [ "$formats" = auto ]; then
            formats=ark,text
            n_text=$(count_lines "${data}/text")
            if [ -s "${data}/text" ] && [ "$n_text" -eq "$n_in" ]; then
                formats=${formats},orpheus,datasets
            elif [ -s "${data}/text" ]; then
                log "Stage 6: ${data}/text covers ${n_text} of ${n_in}" \
                    "utterances: no Orpheus/datasets export for ${dset} (give every utterance a transcript)"
            fi
        fi
        fp=$(fingerprint "${data}/wav.scp" "${data}/text" -- "model=${model_id} formats=${formats}")
        state=$(stage_state "$marker" "$fp")
        if [ "$state" = done ]; then
            log "Stage 6: tokens in ${dir} are up to date; skipping"
            continue
        fi
        # A changed model or set invalidates the tokens; an interrupted run is resumed.
        [ "$state" = stale ] && { log "Stage 6: model, formats or ${data} changed; redoing ${dir}"; rm -rf "$dir"; }
        mkdir -p "$dir"
        if "$have_extractor"; then
            log "Stage 6: extracting tokens of ${data} (formats ${formats}) -> ${dir} (log: ${dir}/extract_tokens.log)"
            run_jobs 1 "${dir}/extract_tokens.log" \
                "$python" -m espnet_snac.bin.extract_tokens \
                    --model "$model_file" \
                    --data_dir "${data}" \
                    --formats "$formats" \
                    --output_dir "$dir" \
                    --no_progress \
                    --device "$device" || die "Stage 6: token extraction of ${dset} failed (log: ${dir}/extract_tokens.log)"
            { grep -E '^codes in use per level' "${dir}/extract_tokens.log" || true; } |
                while IFS= read -r line; do log "Stage 6: ${dset}: ${line}"; done
            # A collapsed codebook (espnet_snac.tokens.stats.collapse_verdict): the box, on the console.
            grep -E '^!' "${dir}/extract_tokens.log" >&2 || true
            [ -d "${dir}/datasets" ] && log "Stage 6: ${dset}: datasets export (utt_id, text, codes, orpheus_ids;" \
                "datasets.load_from_disk) in ${dir}/datasets; Orpheus ids in ${dir}/text_orpheus"
            scp=${dir}/codes.scp
        else
            # Without the extractor: ESPnet-style codes (.npy per utterance) from the inference tool.
            log "Stage 6: espnet_snac.bin.extract_tokens not available; writing codes with gan_codec_inference"
            _nj=$(min "$inference_nj" "$n_in")
            split_scp "${data}/wav.scp" "$_nj" "${dir}/keys.JOB.scp"
            run_jobs "$_nj" "${dir}/log/inference.JOB.log" \
                "$python" -m espnet_snac.bin.gan_codec_inference \
                    --ngpu "$_ngpu" \
                    --data_path_and_name_and_type "${data}/wav.scp,audio,${data_type}" \
                    --key_file "${dir}/keys.JOB.scp" \
                    --model_file "$model_file" \
                    --train_config "${codec_exp}/config.yaml" \
                    --encode_only true \
                    --output_dir "${dir}/log/output.JOB" || die "Stage 6: encoding of ${dset} failed"
            mkdir -p "${dir}/codec"
            for n in $(seq "$_nj"); do
                find "${dir}/log/output.${n}/codec" -name '*.npy' -exec mv -t "${dir}/codec" {} +
                rm -rf "${dir}/log/output.${n}" "${dir}/keys.${n}.scp"
            done
            abs_dir=$(cd "$dir" && pwd)
            awk -v d="${abs_dir}/codec" '{ print $1, d "/" $1 ".npy" }' "${data}/wav.scp" > "${dir}/codec.scp"
            scp=${dir}/codec.scp
        fi
        n_out=$(count_lines "$scp")
        n_rej=$(count_rejected "${dir}/rejected.tsv")
        [ $((n_out + n_rej)) -eq "$n_in" ] ||
            die "Stage 6: ${dset}: ${n_in} utterances, but ${n_out} in ${scp} + ${n_rej} in ${dir}/rejected.tsv"
        log "Stage 6: ${dset}: tokens of ${n_out} utterances in ${dir} (${n_rej} rejected)"
        echo "$fp" > "$marker"
    done
fi

# ---------------------------------------------------------------------------------------------
if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
    model_file=$(resolve_model)
    packdir=${codec_exp}/packed
    marker=${packdir}/.done
    fp="model=$(file_identity "$model_file")"
    if [ "$(stage_state "$marker" "$fp")" = done ]; then
        log "Stage 7: ${packdir} is up to date; skipping"
    else
        rm -rf "$packdir"
        mkdir -p "$packdir"
        log "Stage 7: packing ${model_file} -> ${packdir}/model.zip and ${packdir}/snac_24khz"
        pack_opts=()
        [ -f "${codec_exp}/RESULTS.md" ] && pack_opts+=(--option "${codec_exp}/RESULTS.md")
        [ -d "${codec_exp}/images" ] && pack_opts+=(--option "${codec_exp}/images")
        "$python" -m espnet2.bin.pack codec \
            --train_config "${codec_exp}/config.yaml" \
            --model_file "$model_file" \
            "${pack_opts[@]}" \
            --outpath "${packdir}/model.zip" > "${packdir}/pack.log" 2>&1 ||
            { cat "${packdir}/pack.log" >&2; die "Stage 7: packing failed"; }
        "$python" -c 'import sys; from espnet_snac import SNAC; SNAC.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])' \
            "$model_file" "${packdir}/snac_24khz" >> "${packdir}/pack.log" 2>&1 ||
            { cat "${packdir}/pack.log" >&2; die "Stage 7: writing the official-format directory failed"; }
        echo "$fp" > "$marker"
        log "Stage 7: ESPnet zip ${packdir}/model.zip; official format ${packdir}/snac_24khz" \
            "(snac.SNAC.from_pretrained loads it)"
    fi
fi

# ---------------------------------------------------------------------------------------------
# Stage 8: a speech LM trained by ESPnet's own LM task on the tokens of stage 6, as another recipe
# would use them. Four steps, each with its own done-marker: data, statistics, training, and
# generation (lm_inference, slot check, SNAC decoding).
if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
    case "$lm_text_prefix" in true|false) ;; *) die "--lm_text_prefix must be true or false, got '$lm_text_prefix'" ;; esac
    for v in lm_num_prompts lm_prompt_frames lm_gen_frames; do
        [[ "${!v}" =~ ^[0-9]+$ ]] || die "--$v must be a non-negative integer, got '${!v}'"
    done
    [ "$lm_num_prompts" -ge 1 ] && [ "$lm_gen_frames" -ge 1 ] || die "--lm_num_prompts and --lm_gen_frames must be at least 1"
    lm_config=${lm_config:-conf/train_lm_snac.yaml}
    [ -f "$lm_config" ] || die "Stage 8: LM config '${lm_config}' not found (--lm_config)"
    read -r -a _test_sets <<< "$test_sets"
    lm_prompt_set=${lm_prompt_set:-${_test_sets[0]:-}}
    [ -n "$lm_prompt_set" ] || die "Stage 8: no prompt set (give --lm_prompt_set or --test_sets)"
    [ "$lm_prompt_set" != "$train_set" ] || die "Stage 8: the prompts must be held out: --lm_prompt_set equals --train_set"
    if "$lm_text_prefix"; then lm_variant=snac_text; else lm_variant=snac; fi
    if [ -z "$lm_tag" ]; then
        lm_tag=$(basename "$lm_config")
        lm_tag=${lm_tag%.*}
        "$lm_text_prefix" && lm_tag=${lm_tag}_text
    fi
    lm_data=${dumpdir}/lm_${lm_variant}
    lm_stats=${expdir}/lm_stats_${lm_variant}
    lm_exp=${expdir}/lm_${lm_tag}
    if [ "$ngpu" -gt 0 ]; then _ngpu=1; job_uses_gpu=true; device=cuda; else _ngpu=0; job_uses_gpu=false; device=cpu; fi

    # 8.1 LM lines, prompts and token list from the tokens (and transcripts)
    lm_data_opts=(--output_dir "$lm_data" --text_prefix "$lm_text_prefix"
        --num_prompts "$lm_num_prompts" --prompt_frames "$lm_prompt_frames")
    fp_files=()
    for pair in "train:${train_set}" "valid:${valid_set}" "prompt:${lm_prompt_set}"; do
        part=${pair%%:*}
        dset=${pair#*:}
        tok=${dumpdir}/tokens/${dset}
        [ -f "${tok}/.done" ] && [ -s "${tok}/text" ] ||
            die "Stage 8: no tokens of '${dset}' in ${tok} (run stage 6 with ${dset} among the sets)"
        lm_data_opts+=("--${part}_tokens" "$tok")
        fp_files+=("${tok}/text")
        if "$lm_text_prefix"; then
            [ -s "${datadir}/${dset}/text" ] ||
                die "Stage 8: --lm_text_prefix true needs transcripts ${datadir}/${dset}/text (utt transcript)"
            lm_data_opts+=("--${part}_text" "${datadir}/${dset}/text")
            fp_files+=("${datadir}/${dset}/text")
        fi
    done
    marker=${lm_data}/.done
    fp=$(fingerprint "${fp_files[@]}" -- "sets=${train_set},${valid_set},${lm_prompt_set} ${lm_data_opts[*]}")
    if [ "$(stage_state "$marker" "$fp")" = done ]; then
        log "Stage 8: LM data in ${lm_data} is up to date; skipping"
    else
        rm -rf "$lm_data"
        mkdir -p "$lm_data"
        log "Stage 8: LM data (text prefix: ${lm_text_prefix}) from ${dumpdir}/tokens/{${train_set},${valid_set},${lm_prompt_set}} -> ${lm_data}"
        "$python" -m espnet_snac.bin.lm_data "${lm_data_opts[@]}" > "${lm_data}/lm_data.log" 2>&1 ||
            { cat "${lm_data}/lm_data.log" >&2; die "Stage 8: writing the LM data failed (log: ${lm_data}/lm_data.log)"; }
        while read -r line; do log "Stage 8: ${line}"; done < "${lm_data}/lm_data.log"
        echo "$fp" > "$marker"
    fi

    # 8.2 statistics: ESPnet's shape files of the LM lines
    lm_task_opts=(--use_preprocessor true --token_type word --token_list "${lm_data}/token_list"
        --train_data_path_and_name_and_type "${lm_data}/train/text,text,text"
        --valid_data_path_and_name_and_type "${lm_data}/valid/text,text,text")
    marker=${lm_stats}/.done
    # On the training lines only: other prompts (8.1 redone) need no new statistics or training.
    fp=$(fingerprint "${lm_data}/train/text" "${lm_data}/valid/text" "${lm_data}/token_list")
    if [ "$(stage_state "$marker" "$fp")" = done ]; then
        log "Stage 8: LM statistics in ${lm_stats} are up to date; skipping"
    else
        rm -rf "$lm_stats"
        mkdir -p "$lm_stats"
        log "Stage 8: LM statistics (lm_train --collect_stats true) -> ${lm_stats} (log: ${lm_stats}/stats.log)"
        # shellcheck disable=SC2086
        run_jobs 1 "${lm_stats}/stats.log" \
            "$python" -m espnet2.bin.lm_train --collect_stats true --config "$lm_config" "${lm_task_opts[@]}" \
                --train_shape_file "${lm_data}/train/text" --valid_shape_file "${lm_data}/valid/text" \
                --output_dir "$lm_stats" --ngpu 0 ${lm_args} || die "Stage 8: LM statistics failed"
        for part in train valid; do
            [ "$(count_lines "${lm_stats}/${part}/text_shape")" -eq "$(count_lines "${lm_data}/${part}/text")" ] ||
                die "Stage 8: ${lm_stats}/${part}/text_shape does not cover ${lm_data}/${part}/text"
        done
        echo "$fp" > "$marker"
    fi

    # 8.3 training (resumable, like stage 4)
    marker=${lm_exp}/.done_train
    fp=$(fingerprint "$lm_config" "${lm_stats}/.done" "${lm_data}/token_list" -- "lm_args=${lm_args} ngpu=${ngpu}")
    state=$(stage_state "$marker" "$fp")
    if [ "$state" = done ]; then
        log "Stage 8: LM training in ${lm_exp} already finished; skipping"
    else
        start_training "Stage 8" "$lm_exp" "$state"
        log "Stage 8: training the LM ${lm_exp} with ${lm_config} (espnet2.bin.lm_train; log: ${lm_exp}/train.log)"
        start=$(date +%s)
        # shellcheck disable=SC2086
        num_nodes=1 run_train "${lm_exp}/train.log" \
            "$python" -m espnet2.bin.lm_train --config "$lm_config" "${lm_task_opts[@]}" \
                --train_shape_file "${lm_stats}/train/text_shape" \
                --valid_shape_file "${lm_stats}/valid/text_shape" \
                --resume true --output_dir "$lm_exp" --ngpu "$_ngpu" ${lm_args} ||
            { tail -n 30 "${lm_exp}/train.log" >&2; die "Stage 8: LM training failed (log: ${lm_exp}/train.log)"; }
        end_training "Stage 8" "$lm_exp"
        # ESPnet logs "Nepoch results: [train] ..., loss=X, ..." once per epoch.
        losses=$(sed -n 's/.*epoch results: \[train\][^[]* loss=\([^,]*\),.*/\1/p' "${lm_exp}/train.log" | tr '\n' ' ')
        log "Stage 8: LM trained in $(( $(date +%s) - start )) s; train loss per epoch: ${losses:-none logged}"
        echo "$fp" > "$marker"
    fi

    # 8.4 continuation of the held-out prompts, slot check, SNAC decoding
    lm_model=
    for m in valid.loss.best.pth valid.acc.best.pth latest.pth; do
        if [ -e "${lm_exp}/${m}" ]; then lm_model=${lm_exp}/${m}; break; fi
    done
    [ -n "$lm_model" ] || die "Stage 8: no LM model in ${lm_exp}"
    [ -d "$codec_exp" ] || die "Stage 8: decoding needs the codec experiment ${codec_exp} (give the --train_config/--tag of stages 4-6)"
    codec_model=$(resolve_model)
    gen_dir=${lm_exp}/generate_$(basename "$lm_model" .pth)_${lm_prompt_set}
    maxlen=$((lm_gen_frames * 7))
    marker=${gen_dir}/.done
    fp=$(fingerprint "${lm_data}/prompt/text" -- "lm=$(file_identity "$lm_model") codec=$(file_identity "$codec_model")" \
        "maxlen=${maxlen} args=${lm_inference_args}")
    if [ "$(stage_state "$marker" "$fp")" = done ]; then
        log "Stage 8: ${gen_dir} is up to date; skipping"
    else
        rm -rf "$gen_dir"
        mkdir -p "${gen_dir}/log"
        log "Stage 8: ${lm_num_prompts} prompt(s) of ${lm_prompt_set} (${lm_prompt_frames} frames each) +" \
            "${lm_gen_frames} generated frames with ${lm_model} (log: ${gen_dir}/log/inference.log)"
        # minlen = maxlen - 1: exactly maxlen new ids (lm_inference writes nothing when minlen >= maxlen).
        # shellcheck disable=SC2086
        run_jobs 1 "${gen_dir}/log/inference.log" \
            "$python" -m espnet2.bin.lm_inference --ngpu "$_ngpu" \
                --lm_train_config "${lm_exp}/config.yaml" --lm_file "$lm_model" \
                --data_path_and_name_and_type "${lm_data}/prompt/text,text,text" \
                --maxlen "$maxlen" --minlen $((maxlen - 1)) --beam_size 1 --nbest 1 \
                --output_dir "${gen_dir}/lm_inference" ${lm_inference_args} || die "Stage 8: lm_inference failed"
        log "Stage 8: slot check and SNAC decoding with ${codec_model} (log: ${gen_dir}/log/decode.log)"
        run_jobs 1 "${gen_dir}/log/decode.log" \
            "$python" -m espnet_snac.bin.lm_decode \
                --token_int "${gen_dir}/lm_inference/1best_recog/token_int" \
                --prompts "${lm_data}/prompt/text" --token_list "${lm_data}/token_list" \
                --model "$codec_model" --expected_tokens "$maxlen" --device "$device" \
                --output_dir "$gen_dir" || die "Stage 8: decoding the continuations failed"
        grep -E 'frames generated|slot check' "${gen_dir}/log/decode.log" | sed 's/^.*lm_decode: //' |
            while read -r line; do log "Stage 8: ${line}"; done
        echo "$fp" > "$marker"
    fi
    log "Stage 8: LM ${lm_exp}; audio: ${gen_dir}/wav (prompt + continuation), ${gen_dir}/continuation;" \
        "counts: ${gen_dir}/slot_check.json"
fi

log "Finished stages ${stage}-${stop_stage}"
if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 5 ] && [ -d "$codec_exp" ]; then
    log "Experiment: ${codec_exp}"
    [ -f "${codec_exp}/RESULTS.md" ] && log "  results:  ${codec_exp}/RESULTS.md"
    [ -n "${decode_dir:-}" ] && log "  decoded audio, scores and spectrograms: ${decode_dir}/<set>/{wav,scoring}"
    [ -d "${dumpdir}/tokens" ] && log "  tokens:   ${dumpdir}/tokens/<set>"
    if compgen -G "${dumpdir}/tokens/*/datasets" > /dev/null; then
        log "  token datasets with transcripts (Orpheus-style): ${dumpdir}/tokens/<set>/datasets"
    fi
fi

#!/usr/bin/env bash
# Recipe stage 1: Kaldi-style data directories <output_dir>/<set> (wav.scp, utt2spk, spk2utt,
# utt2num_samples, text when the source has transcripts, rejected.tsv) through
# python -m espnet_snac.bin.prepare_data.
#
#   --dataset demo            the embedded demo corpus (local/demo_corpus/{train,dev,test}); its
#                             transcripts local/demo_corpus/text give <output_dir>/<set>/text
#   --dataset folder:PATH     any folder of audio files, kaldi:PATH a Kaldi data directory,
#   --dataset hf:NAME[:CONF]  a Hugging Face dataset: prepare_data writes {train,dev,test}
#                             (deterministic hash split when the source has one split)
#   --dataset NAME            a preset conf/datasets/NAME.yaml
# Options after "--" go to prepare_data unchanged (e.g. -- --max_hours 100 --streaming).
# Run from the recipe directory (egs2/snac24k).
set -euo pipefail

log() { printf '%s (data.sh) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$*"; }
die() { printf '%s (data.sh) ERROR: %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$*" >&2; exit 1; }

dataset=demo
output_dir=data
fs=24000
nj=4
audio_format=flac
python=python3
sets="train dev test"

usage() {
    cat <<EOF
Usage: $0 [--dataset demo|folder:PATH|kaldi:PATH|hf:NAME[:CONFIG]|PRESET] [--output_dir data]
          [--fs 24000] [--nj 4] [--audio_format flac|ark] [--python python3]
          [--sets "train dev test"] [-- PREPARE_DATA_OPTIONS...]
EOF
}

extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h) usage; exit 0 ;;
        --dataset|--output_dir|--fs|--nj|--audio_format|--python|--sets)
            [ $# -ge 2 ] || die "option '$1' needs a value"
            printf -v "${1#--}" '%s' "$2"
            shift 2
            ;;
        --) shift; extra=("$@"); break ;;
        *) die "unknown option '$1' (see $0 --help)" ;;
    esac
done

[ -f ./db.sh ] && . ./db.sh
DEMO_CORPUS=${DEMO_CORPUS:-local/demo_corpus}

common=(--fs "$fs" --nj "$nj" --audio_format "$audio_format")

prepare() {
    # prepare SOURCE OUTPUT_DIR [options...]
    local src=$1 out=$2
    shift 2
    mkdir -p "$out"
    log "prepare_data --source ${src} --output_dir ${out} $*"
    "$python" -m espnet_snac.bin.prepare_data --source "$src" --output_dir "$out" "$@" ||
        die "prepare_data failed for ${src}"
}

case "$dataset" in
    demo)
        for dset in $sets; do
            [ -d "${DEMO_CORPUS}/${dset}" ] ||
                die "the demo corpus has no '${dset}' set (it has train, dev, test): ${DEMO_CORPUS}/${dset}"
            # Each folder is one split already: keep every file in it.
            prepare "folder:${DEMO_CORPUS}/${dset}" "${output_dir}/${dset}" "${common[@]}" "${extra[@]}"
            if [ -f "${DEMO_CORPUS}/text" ]; then
                # Kaldi text (utt_id transcript) for the utterances kept in wav.scp.
                awk 'NR == FNR { keep[$1] = 1; next } ($1 in keep)' "${output_dir}/${dset}/wav.scp" \
                    "${DEMO_CORPUS}/text" | sort > "${output_dir}/${dset}/text"
                n_text=$(wc -l < "${output_dir}/${dset}/text")
                n_wav=$(wc -l < "${output_dir}/${dset}/wav.scp")
                log "${output_dir}/${dset}/text: transcripts of ${n_text} of ${n_wav} utterances"
            else
                log "no ${DEMO_CORPUS}/text: ${output_dir}/${dset} has no transcripts"
            fi
        done
        ;;
    folder:*|kaldi:*|hf:*)
        [ "$(echo $sets | wc -w)" -eq 3 ] ||
            die "a single source is split into three sets (train, dev, test); got sets '${sets}'"
        # One source: a deterministic hash split gives dev and test (override with
        # -- --dev_fraction F --test_fraction F [--split_by utterance]). Speaker-disjoint when the
        # source has enough speakers, else by utterance; small corpora still get one dev and one
        # test utterance (espnet_snac.data.finalize.split_rows).
        prepare "$dataset" "$output_dir" "${common[@]}" --dev_fraction 0.05 --test_fraction 0.05 \
            --subset_names "$(echo $sets | tr ' ' ',')" "${extra[@]}"
        ;;
    *)
        [ -f "conf/datasets/${dataset}.yaml" ] ||
            die "unknown dataset '${dataset}': use demo, folder:PATH, kaldi:PATH, hf:NAME or one of: $(ls conf/datasets 2>/dev/null | sed 's/\.yaml$//' | tr '\n' ' ')"
        log "prepare_data --preset ${dataset} --output_dir ${output_dir} ${common[*]} ${extra[*]}"
        "$python" -m espnet_snac.bin.prepare_data --preset "$dataset" --output_dir "$output_dir" \
            "${common[@]}" "${extra[@]}" || die "prepare_data failed for preset ${dataset}"
        ;;
esac

for dset in $sets; do
    [ -s "${output_dir}/${dset}/wav.scp" ] ||
        die "${output_dir}/${dset}/wav.scp was not written: the source gave no utterance for the set '${dset}'" \
            "(sets wanted: ${sets}; see the prepare_data messages above and ${output_dir}/rejected.tsv)." \
            "For a single source, change the split with run.sh --data_opts \"--dev_fraction F --test_fraction F" \
            "--split_by utterance\" (three or more usable utterances always give every set one), or name other" \
            "sets with --train_set/--valid_set/--test_sets"
done
for dset in $sets; do
    if [ "$dataset" != demo ] && [ -s "${output_dir}/${dset}/text" ]; then
        log "${output_dir}/${dset}/text: transcripts of $(wc -l < "${output_dir}/${dset}/text") of" \
            "$(wc -l < "${output_dir}/${dset}/wav.scp") utterances"
    fi
done
log "data directories: $(for d in $sets; do printf '%s ' "${output_dir}/${d}"; done)"

#!/usr/bin/env bash
# SNAC 24 kHz speech codec: data -> training -> decoding/scoring -> tokens.
# All stages live in codec.sh; see ./codec.sh --help for every option.
set -euo pipefail

# The demo corpus trains with the demo config (minutes on CPU); any other dataset with the
# paper recipe. Both can be overridden with --train_config.
dataset=demo
own_config=false
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = --dataset ] && [ $((i + 1)) -lt ${#args[@]} ] && dataset=${args[$((i + 1))]}
    case "${args[$i]}" in --train_config|--train_config=*) own_config=true ;; esac
done
# The paper run is 800k optimizer steps whatever the corpus and GPU count: stage 4 plans the epochs
# (espnet_snac.bin.plan_training). The demo and a config given with --train_config keep the config's
# own step count unless --num_iters is given (later options win).
num_iters=config
if [ "$dataset" = demo ]; then
    train_config=conf/tuning/train_snac24k_demo.yaml
else
    train_config=conf/train_snac24k.yaml
    [ "$own_config" = true ] || num_iters=800000
fi

# The interpreter: --python if given, else the checkout's .venv, else the active virtual
# environment, else python3; it must import espnet2 and espnet_snac.
python=
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = --python ] && [ $((i + 1)) -lt ${#args[@]} ] && python=${args[$((i + 1))]}
done
if [ -z "$python" ]; then
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    if [ -x "${root}/.venv/bin/python" ]; then python=${root}/.venv/bin/python
    elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "${VIRTUAL_ENV}/bin/python" ]; then python=${VIRTUAL_ENV}/bin/python
    else python=python3
    fi
fi
if ! "$python" -c 'import espnet2, espnet_snac' > /dev/null 2>&1; then
    echo "run.sh: ERROR: '${python}' cannot import espnet2 and espnet_snac. Create the checkout's environment" \
        "(make venv, i.e. python3 -m venv .venv && .venv/bin/pip install -e '.[test]' in $(cd ../.. && pwd))," \
        "activate a virtual environment that has the package, or give --python PATH" \
        "(make demo VENV=PATH does the same for the demo)." >&2
    exit 1
fi
first_stage=1
last_stage=6
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --stage) first_stage=${args[$((i + 1))]} ;;
        --stop_stage) last_stage=${args[$((i + 1))]} ;;
    esac
done
if [ "$own_config" = true ] && [ "$num_iters" = config ] && ! printf '%s\n' "${args[@]}" | grep -qx -- --num_iters &&
    [ "$first_stage" -le 4 ] 2>/dev/null && [ "$last_stage" -ge 4 ] 2>/dev/null; then
    echo "run.sh: no --num_iters: training runs the config's own step count (max_epoch x num_iters_per_epoch;" \
        "conf/tuning/train_snac24k_tiny.yaml is a smoke test of a few steps and collapses); stage 4 logs the plan." \
        "Give --num_iters N to choose." >&2
fi

./codec.sh \
    --python "$python" \
    --dataset "$dataset" \
    --fs 24000 \
    --train_config "$train_config" \
    --train_set train \
    --valid_set dev \
    --test_sets "dev test" \
    --num_iters "$num_iters" \
    "$@"

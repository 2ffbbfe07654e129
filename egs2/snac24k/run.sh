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

./codec.sh \
    --dataset "$dataset" \
    --fs 24000 \
    --train_config "$train_config" \
    --train_set train \
    --valid_set dev \
    --test_sets "dev test" \
    --num_iters "$num_iters" \
    "$@"

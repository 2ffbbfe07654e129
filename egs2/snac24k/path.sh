# Environment of the recipe (sourced by codec.sh): the repository's Python package and, when it
# exists, its virtual environment. No Kaldi or ESPnet checkout is needed.
MAIN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export MAIN_ROOT
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "${MAIN_ROOT}/.venv/bin/python" ]; then
    export PATH="${MAIN_ROOT}/.venv/bin:${PATH}"
fi
export PYTHONPATH="${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONIOENCODING=UTF-8
# Byte-order sorting everywhere, as Kaldi-style files expect.
export LC_ALL=C

# Where the corpora live (sourced by local/data.sh). Point these at your copies.
# The embedded demo corpus ships with the repository.
DEMO_CORPUS=${DEMO_CORPUS:-local/demo_corpus}
# Examples for other sources (used with --dataset folder:${MY_FOLDER} etc.):
MY_AUDIO_FOLDER=${MY_AUDIO_FOLDER:-}
MY_KALDI_DIR=${MY_KALDI_DIR:-}

# Where the corpora live (sourced by local/data.sh).
# The embedded demo corpus ships with the repository; other data is named with --dataset
# (folder:PATH, kaldi:PATH, hf:NAME[:CONFIG] or a preset in conf/datasets/).
DEMO_CORPUS=${DEMO_CORPUS:-local/demo_corpus}

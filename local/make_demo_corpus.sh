#!/usr/bin/env bash
# Rebuild the embedded demo corpus local/demo_corpus/{train,dev,test}/*.flac from Debian's
# asterisk-core-sounds-en-g722 package (Allison Smith's voice prompts, CC-BY-SA-3.0), and its
# transcripts local/demo_corpus/text (Kaldi text: "utt_id transcript") from the prompt list
# core-sounds-en.txt of the asterisk-core-sounds-en package.
#
# Needs: apt-get (to download the .deb files; or pass --deb and --texts_deb), dpkg-deb, ffmpeg, md5sum.
# Not used by the recipe or the tests: the corpus it writes is committed to the repository.
# --texts_only true rewrites only the transcripts of the audio files already in --output_dir.
#
# Selection (deterministic for a given package version):
#   * prompts of the main folder plus dictate/ and followme/ (digits, letters, phonetic
#     alphabet and silence files are single words or empty and are skipped);
#   * duration between --min_dur and --max_dur seconds (G.722 at 64 kbit/s = 8000 bytes/s);
#   * candidates ordered by the md5 of their name, taken while the FLAC total stays within
#     --budget_bytes;
#   * split by position in that order: i % 13 == 0 -> test, i % 13 == 1 -> dev, else train.
set -euo pipefail

usage() {
    cat <<EOF
Usage: $0 [options]
  --output_dir DIR     where to write {train,dev,test}/ (default: local/demo_corpus next to this script)
  --deb FILE           use this asterisk-core-sounds-en-g722 .deb instead of downloading it
  --min_dur SEC        shortest prompt to keep (default: 2.0)
  --max_dur SEC        longest prompt to keep (default: 7.0)
  --budget_bytes N     maximum total size of the FLAC files (default: 8000000)
  --texts_deb FILE     use this asterisk-core-sounds-en .deb (prompt texts) instead of downloading it
  --texts_only BOOL    true: only (re)write <output_dir>/text for the files already there (default: false)
EOF
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
output_dir=${script_dir}/demo_corpus
deb=
min_dur=2.0
max_dur=7.0
budget_bytes=8000000
texts_deb=
texts_only=false

while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h) usage; exit 0 ;;
        --output_dir) output_dir=$2; shift 2 ;;
        --deb) deb=$2; shift 2 ;;
        --min_dur) min_dur=$2; shift 2 ;;
        --max_dur) max_dur=$2; shift 2 ;;
        --budget_bytes) budget_bytes=$2; shift 2 ;;
        --texts_deb) texts_deb=$2; shift 2 ;;
        --texts_only) texts_only=$2; shift 2 ;;
        *) echo "$0: unknown option '$1' (see --help)" >&2; exit 1 ;;
    esac
done

case "$texts_only" in true|false) ;; *) echo "$0: --texts_only must be true or false" >&2; exit 1 ;; esac
tools="dpkg-deb ffmpeg md5sum"
[ "$texts_only" = true ] && tools=dpkg-deb
for tool in $tools; do
    command -v "$tool" >/dev/null || { echo "$0: '$tool' is required (apt-get install $tool)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# write_texts DIR: DIR/text for every DIR/{train,dev,test}/*.flac. A prompt "dictate/both_help" of
# core-sounds-en.txt ("name: transcript" lines) is the file dictate-both_help.flac.
write_texts() {
    local dir=$1 list
    if [ -z "$texts_deb" ]; then
        command -v apt-get >/dev/null || { echo "$0: apt-get not found; pass --texts_deb FILE" >&2; exit 1; }
        (cd "$work" && apt-get download asterisk-core-sounds-en)
        texts_deb=$(ls "$work"/asterisk-core-sounds-en_*.deb)
    fi
    echo "transcripts: $(dpkg-deb -f "$texts_deb" Package) $(dpkg-deb -f "$texts_deb" Version)"
    dpkg-deb -x "$texts_deb" "$work/texts"
    list=$(find "$work/texts" -name 'core-sounds-en.txt*' | head -n 1)
    [ -n "$list" ] || { echo "$0: $texts_deb has no core-sounds-en.txt" >&2; exit 1; }
    case "$list" in *.gz) gzip -dc "$list" ;; *) cat "$list" ;; esac |
        awk 'index($0, ": ") && $0 !~ /^;/ {
                 name = substr($0, 1, index($0, ": ") - 1); gsub("/", "-", name)
                 text = substr($0, index($0, ": ") + 2); gsub(/[ \t\r]+/, " ", text)
                 sub(/^ /, "", text); sub(/ $/, "", text)
                 print name, text }' > "$work/all_texts"
    find "$dir/train" "$dir/dev" "$dir/test" -name '*.flac' -printf '%f\n' | sed 's/\.flac$//' | LC_ALL=C sort > "$work/utts"
    awk 'NR == FNR { want[$1] = 1; next } ($1 in want) && !seen[$1]++' "$work/utts" "$work/all_texts" |
        LC_ALL=C sort > "$work/text"
    missing=$(cut -d' ' -f1 "$work/text" | LC_ALL=C comm -23 "$work/utts" -)
    [ -z "$missing" ] || { echo "$0: no transcript for: $missing" >&2; exit 1; }
    mv "$work/text" "$dir/text"
    echo "text: $(wc -l < "$dir/text") transcripts -> $dir/text"
}

if [ "$texts_only" = true ]; then
    write_texts "$output_dir"
    exit 0
fi

if [ -z "$deb" ]; then
    command -v apt-get >/dev/null || { echo "$0: apt-get not found; pass --deb FILE" >&2; exit 1; }
    (cd "$work" && apt-get download asterisk-core-sounds-en-g722)
    deb=$(ls "$work"/asterisk-core-sounds-en-g722_*.deb)
fi
echo "source package: $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"
dpkg-deb -x "$deb" "$work/x"
sounds=$work/x/usr/share/asterisk/sounds/en_US_f_Allison
[ -d "$sounds" ] || { echo "$0: $deb has no en_US_f_Allison folder" >&2; exit 1; }

# candidates: "md5 utt_id path" for prompts in the duration range
: > "$work/candidates"
for f in "$sounds"/*.g722 "$sounds"/dictate/*.g722 "$sounds"/followme/*.g722; do
    rel=${f#"$sounds"/}
    utt=$(echo "${rel%.g722}" | tr '/' '-')
    bytes=$(stat -c %s "$f")
    if awk -v b="$bytes" -v lo="$min_dur" -v hi="$max_dur" 'BEGIN{d=b/8000; exit !(d>=lo && d<=hi)}'; then
        echo "$(echo -n "$utt" | md5sum | cut -c1-32) $utt $f" >> "$work/candidates"
    fi
done
sort "$work/candidates" -o "$work/candidates"
echo "candidates in [$min_dur, $max_dur] s: $(wc -l < "$work/candidates")"

rm -rf "$work/out"
mkdir -p "$work/out/train" "$work/out/dev" "$work/out/test"
total=0
i=0
while read -r _ utt f; do
    if [ $((i % 13)) -eq 0 ]; then part=test; elif [ $((i % 13)) -eq 1 ]; then part=dev; else part=train; fi
    out=$work/out/$part/$utt.flac
    ffmpeg -nostdin -loglevel error -y -f g722 -i "$f" -ar 16000 -ac 1 -sample_fmt s16 \
        -compression_level 12 -map_metadata -1 -fflags +bitexact "$out"
    size=$(stat -c %s "$out")
    if [ $((total + size)) -gt "$budget_bytes" ]; then
        rm -f "$out"
        break
    fi
    total=$((total + size))
    i=$((i + 1))
done < "$work/candidates"

mkdir -p "$output_dir"
for part in train dev test; do
    rm -rf "${output_dir:?}/$part"
    mv "$work/out/$part" "$output_dir/$part"
    echo "$part: $(ls "$output_dir/$part" | wc -l) files"
done
echo "total: $i files, $total bytes -> $output_dir"
write_texts "$output_dir"

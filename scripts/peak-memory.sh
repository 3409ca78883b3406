#!/usr/bin/env bash
# Runs a command and prints its peak memory, sampled every 0.5 s from /proc (Linux), in GB (10^9 bytes):
#   rss       resident set size (what /usr/bin/time -v reports as its maximum)
#   anon      its anonymous part: heap, ONNX Runtime's weight copies (prepacked, folded, re-laid-out)
#   file      its file-backed part: external data files ONNX Runtime maps instead of copying; a file
#             page mapped by two sessions of one process counts twice here
#   pss       proportional set size: each resident page once, however many mappings share it (what
#             the process really holds; a cgroup limit charges page-cache pages once too)
# The figures are the maxima of each column over the run (they need not come from the same sample).
#
#   scripts/peak-memory.sh target/release/pva-worker edit job.json --root examples --out out
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: scripts/peak-memory.sh COMMAND [ARGS...]" >&2; exit 2; }
"$@" &
pid=$!
peak_rss=0 peak_anon=0 peak_file=0 peak_pss=0
kb() { awk -v k="$1" '$1 == k":" {print $2; exit}' "$2" 2>/dev/null || true; }
while kill -0 "$pid" 2>/dev/null; do
  rss=$(kb VmRSS "/proc/$pid/status"); anon=$(kb RssAnon "/proc/$pid/status")
  file=$(kb RssFile "/proc/$pid/status"); pss=$(kb Pss "/proc/$pid/smaps_rollup")
  [ "${rss:-0}" -le "$peak_rss" ] || peak_rss=$rss
  [ "${anon:-0}" -le "$peak_anon" ] || peak_anon=$anon
  [ "${file:-0}" -le "$peak_file" ] || peak_file=$file
  [ "${pss:-0}" -le "$peak_pss" ] || peak_pss=$pss
  sleep 0.5
done
status=0
wait "$pid" || status=$?
gb() { echo "$1 * 1024 / 10^9" | bc -l; }
printf 'peak memory: rss %.1f GB, anon %.1f GB, file %.1f GB, pss %.1f GB (exit %d)\n' \
  "$(gb "$peak_rss")" "$(gb "$peak_anon")" "$(gb "$peak_file")" "$(gb "$peak_pss")" "$status"
exit "$status"

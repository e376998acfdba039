# Sourced by the tuning scripts: training runs two (one per core) at a time, each pinned to its core.
# pinned_run DIR ARGS...: runs `python -m experiments.train ARGS... --workdir=DIR` (log in DIR.log) unless
# DIR/results.json exists; every `nproc` runs, waits for the batch. Call `wait` after the last one.
_pinned_cores=$(nproc)
_pinned_index=0
pinned_run() {
  local dir=$1; shift
  if [ ! -f "$dir/results.json" ]; then
    taskset -c $((_pinned_index % _pinned_cores)) python -m experiments.train "$@" --workdir="$dir" > "$dir.log" 2>&1 &
  fi
  _pinned_index=$((_pinned_index + 1))
  if (( _pinned_index % _pinned_cores == 0 )); then wait; fi
}

# pinned_root DIR: creates DIR (the runs' root) and prints it.
pinned_root() {
  mkdir -p "$1"
  echo "$1"
}

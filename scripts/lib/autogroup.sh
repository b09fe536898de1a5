# Sourced by the benchmark scripts. Not run on its own.
#
# With autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled), a
# process's nice level only ranks it inside its own session's group, and
# groups share a CPU equally: `nice -n -10` alone does nothing against a
# build running in another terminal. own_autogroup re-runs the calling
# script in a new session (a group holding only the benchmark) and gives
# that group the nice level; every child inherits it.
#
#   own_autogroup NICE "$0" "${orig_args[@]}"
#
# In the outer call it waits for the inner run and exits with its status;
# in the inner run (or where autogroups or setsid are missing) it returns.
own_autogroup() {
  local nice_level=$1 script=$2
  shift 2
  [[ -n $nice_level ]] || return 0
  if [[ -n ${BULKGET_OWN_AUTOGROUP:-} ]]; then
    echo "$nice_level" >/proc/self/autogroup
    return 0
  fi
  [[ -w /proc/self/autogroup ]] && command -v setsid >/dev/null || return 0
  # Not exec: a terminal's Ctrl-C goes to this session only, so this
  # process forwards it, and the inner run's traps still clean up. A
  # background job of a script is not a group leader, so setsid does not
  # fork and $! is the inner script itself.
  BULKGET_OWN_AUTOGROUP=1 setsid --wait "$script" "$@" &
  local inner=$! status=0
  trap 'kill -TERM "$inner" 2>/dev/null || true' INT TERM
  wait "$inner" || status=$?
  # A forwarded signal interrupts the first wait; wait again for the exit.
  if kill -0 "$inner" 2>/dev/null; then wait "$inner" || status=$?; fi
  exit "$status"
}

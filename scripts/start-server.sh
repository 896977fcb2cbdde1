#!/bin/sh
# Starts chat-server on a free port and waits until it is ready (it prints
# its address first), without sleeping. Prints shell assignments to eval:
#
#   eval "$(scripts/start-server.sh credentials.txt)"
#   echo "$CHAT_HOST $CHAT_PORT $CHAT_SERVER_PID $CHAT_SERVER_LOG"
#   ...
#   kill "$CHAT_SERVER_PID"
#
# Further arguments go to chat-server (e.g. --state-dir DIR). It listens on
# 127.0.0.1 unless they include --bind (e.g. --bind ::1); CHAT_HOST is the
# first address it listens on. The binaries are taken from $CHAT_BIN_DIR,
# else target/release or target/debug beside this script, else $PATH.
#
# The server's log is CHAT_SERVER_LOG, in a temporary folder that is
# removed, log included, once the server exits; set CHAT_SERVER_LOG before
# calling to keep the log in a file of your choice instead.
#
# If the server does not start, it says why on standard error, prints
# `false` (so that `eval "$(...)"` fails too, and `set -e` stops the
# caller), and exits 1.
set -eu

here=$(dirname "$0")
bin_dir() {
    for dir in "${CHAT_BIN_DIR:-}" "$here/../target/release" "$here/../target/debug"; do
        if [ -n "$dir" ] && [ -x "$dir/chat-server" ]; then
            echo "$dir/"
            return
        fi
    done
    echo ""
}

fail() {
    echo "start-server.sh: $*" >&2
    echo "false"
    exit 1
}

credentials=${1:-credentials.txt}
[ $# -gt 0 ] && shift

# The caller's --bind replaces ours; a --pid-file of theirs is read instead
# of ours.
has_bind=
pid_file=
previous=
for arg in "$@"; do
    case $previous in --pid-file) pid_file=$arg ;; esac
    case $arg in
        --bind | --bind=*) has_bind=1 ;;
        --pid-file=*) pid_file=${arg#--pid-file=} ;;
    esac
    previous=$arg
done

bin=$(bin_dir)
work=$(mktemp -d "${TMPDIR:-/tmp}/chat-server.XXXXXX")
log=${CHAT_SERVER_LOG:-$work/server.log}
if [ -z "$pid_file" ]; then
    pid_file="$work/pid"
    set -- "$@" --pid-file "$pid_file"
fi
if [ -z "$has_bind" ]; then
    set -- --bind 127.0.0.1 "$@"
fi
mkfifo "$work/ready"
# Opened before the server starts, so the log can be shown even after the
# folder is gone.
: >"$log"
exec 3<"$log"

# The server runs in a subshell that removes the folder once it exits.
# Nothing in it keeps this script's standard output open: the caller's
# $(...) ends when this script does.
(
    "${bin}chat-server" --credentials "$credentials" "$@" 0 \
        >"$work/ready" 2>"$log" </dev/null &
    wait $! || true
    rm -rf "$work"
) >/dev/null 2>&1 </dev/null &

# The first line is "Server listening on ADDR:PORT", or end of file if the
# server exited (port in use, bad credentials: see the log). The pid file
# is written before that line.
first=
IFS= read -r first <"$work/ready" || true
case $first in
    "Server listening on "*) ;;
    *) fail "chat-server did not start: $first$(cat <&3)" ;;
esac
exec 3<&-
addr=${first#Server listening on }
port=${addr##*:}
host=${addr%:*}
host=${host#[}
host=${host%]}
pid=$(cat "$pid_file")
echo "CHAT_HOST='$host'; CHAT_PORT=$port; CHAT_SERVER_PID=$pid; CHAT_SERVER_LOG='$log';"
echo "export CHAT_HOST CHAT_PORT CHAT_SERVER_PID CHAT_SERVER_LOG"

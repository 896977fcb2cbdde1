#!/bin/sh
# Starts chat-server on 127.0.0.1 on a free port and waits until it is ready
# (it prints its address first), without sleeping. Prints shell assignments
# to eval:
#
#   eval "$(scripts/start-server.sh credentials.txt)"
#   echo "$CHAT_PORT $CHAT_SERVER_PID $CHAT_SERVER_LOG"
#   ...
#   kill "$CHAT_SERVER_PID"
#
# Further arguments go to chat-server (e.g. --state-dir DIR). The binaries
# are taken from $CHAT_BIN_DIR, else target/release or target/debug beside
# this script, else $PATH. Exits 1, saying why, if the server does not start.
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

credentials=${1:-credentials.txt}
[ $# -gt 0 ] && shift
bin=$(bin_dir)
work=$(mktemp -d "${TMPDIR:-/tmp}/chat-server.XXXXXX")
log="$work/server.log"
mkfifo "$work/ready"

"${bin}chat-server" --bind 127.0.0.1 --credentials "$credentials" "$@" 0 \
    >"$work/ready" 2>"$log" </dev/null &
pid=$!

# The first line is "Server listening on 127.0.0.1:PORT", or end of file
# if the server exited (port in use, bad credentials: see the log).
if ! IFS= read -r first <"$work/ready"; then
    echo "start-server.sh: chat-server did not start: $(cat "$log")" >&2
    exit 1
fi
port=${first##*:}
echo "CHAT_PORT=$port; CHAT_SERVER_PID=$pid; CHAT_SERVER_LOG='$log';"
echo "export CHAT_PORT CHAT_SERVER_PID CHAT_SERVER_LOG"

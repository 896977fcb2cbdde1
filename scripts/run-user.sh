#!/bin/sh
# Runs one user's session from a command file (or standard input), on the
# server started by start-server.sh ($CHAT_PORT), and exits with the
# client's exit code (0: logged out at the end of the commands).
#
#   scripts/run-user.sh A A_pwd commands.txt [chat-client flags...]
#
# The password is handed over in the environment, never on a command line
# other users could see. Flags such as --format json, --until PATTERN or
# --stay go after the command file ("-" for standard input).
set -eu

if [ $# -lt 2 ]; then
    echo "usage: run-user.sh USER PASSWORD [COMMAND_FILE|-] [chat-client flags...]" >&2
    exit 2
fi
user=$1
password=$2
input=${3:--}
[ $# -ge 3 ] && shift 3 || shift 2
: "${CHAT_PORT:?run start-server.sh first (CHAT_PORT is not set)}"

here=$(dirname "$0")
client=chat-client
for dir in "${CHAT_BIN_DIR:-}" "$here/../target/release" "$here/../target/debug"; do
    if [ -n "$dir" ] && [ -x "$dir/chat-client" ]; then
        client="$dir/chat-client"
        break
    fi
done

if [ "$input" != "-" ]; then
    exec <"$input"
fi
CHAT_PASSWORD=$password exec "$client" --user "$user" "$@" 127.0.0.1 "$CHAT_PORT"

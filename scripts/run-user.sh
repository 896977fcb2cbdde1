#!/bin/sh
# Runs one user's session from a command file (or standard input), on the
# server started by start-server.sh ($CHAT_HOST, $CHAT_PORT), and exits
# with the client's exit code (0: logged out at the end of the commands).
#
#   CHAT_PASSWORD=A_pwd scripts/run-user.sh A commands.txt [chat-client flags...]
#   scripts/run-user.sh A commands.txt --password-file A.pw
#   printf 'online\n' | CHAT_PASSWORD=A_pwd scripts/run-user.sh A --stay
#
# The password comes from the environment (CHAT_PASSWORD) or a file
# (--password-file), never from a command line other users could see.
# The command file is optional: without one (or with "-"), commands are
# read from standard input. Flags such as --format json, --until PATTERN
# or --stay follow it, or the user name when there is no command file.
set -eu

usage() {
    echo "usage: [CHAT_PASSWORD=...] run-user.sh USER [COMMAND_FILE|-] [chat-client flags...]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
user=$1
shift
input=-
case ${1:-} in
    "" | -?*) ;; # No command file: flags (or nothing) follow.
    *)
        input=$1
        shift
        ;;
esac
if [ "$input" != "-" ] && { [ ! -e "$input" ] || [ -d "$input" ]; }; then
    echo "run-user.sh: no command file $input (the password is not an argument:" \
        "set CHAT_PASSWORD or give --password-file FILE)" >&2
    exit 2
fi
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
exec "$client" --user "$user" "$@" "${CHAT_HOST:-127.0.0.1}" "$CHAT_PORT"

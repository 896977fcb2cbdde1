#!/usr/bin/env bash
# Replays the original system's whole walkthrough with three scripted users
# on a fresh server, and prints what each user sees, prefixed [A], [B],
# [C] (typed lines show as "[A] > ..."): login, a live message, offline
# delivery, broadcast, online, block and unblock, getaddress and consent,
# a private message, logout.
#
#   scripts/demo.sh
#
# No sleeps: each step waits (at most 10 s) for the line it expects in the
# right user's output before the next line is typed. Exits 0 when every
# expected line came, 1 (naming the line) otherwise.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/chat-demo.XXXXXX")
printf 'A A_pwd\nB B_pwd\nC C_pwd\n' >"$work/credentials.txt"
chmod 600 "$work/credentials.txt"
eval "$("$here/start-server.sh" "$work/credentials.txt")"
trap 'kill "$CHAT_SERVER_PID" 2>/dev/null; rm -rf "$work"' EXIT

declare -A keyboard screen

# Starts a user's client, with a FIFO for its keyboard and one for its screen.
login() {
    local user=$1 fd
    rm -f "$work/$user.in" "$work/$user.out"
    mkfifo "$work/$user.in" "$work/$user.out"
    CHAT_PASSWORD="${user}_pwd" "$here/run-user.sh" "$user" "$work/$user.in" >"$work/$user.out" &
    # In the order the client opens them: its screen first, then its keyboard.
    exec {fd}<"$work/$user.out"
    screen[$user]=$fd
    exec {fd}>"$work/$user.in"
    keyboard[$user]=$fd
    expect "$user" "Welcome to the chat system!"
}

# Types a line for a user.
type_line() {
    printf '[%s] > %s\n' "$1" "$2"
    printf '%s\n' "$2" >&"${keyboard[$1]}"
}

# Shows a user's lines up to the expected one (a trailing * matches any
# ending); fails if it does not come within 10 s.
expect() {
    local user=$1 want=$2 line
    while IFS= read -r -t 10 line <&"${screen[$user]}"; do
        printf '[%s] %s\n' "$user" "$line"
        # shellcheck disable=SC2053 # $want is a pattern on purpose.
        [[ $line == $want ]] && return 0
    done
    echo "demo: $user never saw: $want" >&2
    exit 1
}

# Logs a user out and waits for the client to say goodbye.
logout() {
    type_line "$1" "logout"
    expect "$1" "Logging out. Bye for now!"
    exec {keyboard[$1]}>&-
    exec {screen[$1]}<&-
}

echo "== login"
login A
login B
expect A "User B has logged on."
login C
expect A "User C has logged on."
expect B "User C has logged on."

echo "== message"
type_line A "message B hi there!"
expect B "A: hi there!"
expect A "Message delivered to B."

echo "== offline delivery"
logout B
expect A "User B has logged out."
expect C "User B has logged out."
type_line A "message B see you later"
expect A "User B is offline. The message will be delivered when B logs in."
login B
expect B "A: see you later"
expect A "User B has logged on."
expect C "User B has logged on."

echo "== broadcast"
type_line C "broadcast hello all"
expect A "C: hello all"
expect B "C: hello all"

echo "== online"
type_line B "online"
expect B "A"
expect B "C"
expect B "(Warning: Users that have blocked you will not be listed)"

echo "== block and unblock"
type_line A "block C"
expect A "User C has been blocked."
type_line C "message A are you there?"
expect C "Your message could not be delivered as the recipient has blocked you."
type_line C "broadcast anyone?"
expect C "Your message could not be received by some recipients."
expect B "C: anyone?"
type_line A "unblock C"
expect A "User C has been unblocked."
type_line C "message A back again"
expect A "C: back again"
expect C "Message delivered to A."

echo "== getaddress, consent and a private message"
type_line B "getaddress A"
expect B "consent asked from User B."
expect A "User B is asking for consent."
expect A "To ignore, do nothing. To give consent, enter: consent <user>"
type_line A "consent B"
expect B "User A ip: 127.0.0.1, port: *"
type_line B "private A psst, just between us"
expect A "B: psst, just between us"

echo "== logout"
logout A
expect B "User A has logged out."
expect C "User A has logged out."
logout B
expect C "User B has logged out."
logout C
wait
echo "== done: every user saw what the walkthrough shows"

# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_chat_server_global_optspecs
    string join \n credentials= block-time= timeout= bind= pid-file= control= metrics= max-queued= max-output= state-dir= max-line= max-connections= max-connections-per-address= connection-rate= login-timeout= login-attempts= send-rate= send-burst= max-queued-bytes= message-ttl= login-rate= throttle-table= log-level= log-format= hash-password generate= h/help V/version
end

function __fish_chat_server_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_chat_server_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_chat_server_using_subcommand
    set -l cmd (__fish_chat_server_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c chat-server -n "__fish_chat_server_needs_command" -l credentials -d 'Credentials file: one `username password` per line' -r -F
complete -c chat-server -n "__fish_chat_server_needs_command" -l block-time -d 'Seconds an account stays locked after 3 failed logins' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l timeout -d 'Seconds of silence after which a client is considered gone' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l bind -d 'Address to listen on: an IP address or a host name (every address it resolves to). Give it more than once to listen on several, e.g. --bind 127.0.0.1 --bind ::1 (with port 0, all share one free port). `::` alone takes IPv4 clients too' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l pid-file -d 'Write the server\'s process id to PATH once it listens (replaced atomically; removed at a clean exit), for init systems without systemd' -r -F
complete -c chat-server -n "__fish_chat_server_needs_command" -l control -d 'Serve a control socket at PATH (a Unix socket, mode 0600) for `chat-server ctl`. A socket left there by a server that died is replaced; it is removed at exit' -r -F
complete -c chat-server -n "__fish_chat_server_needs_command" -l metrics -d 'Serve GET /metrics (Prometheus text format) and GET /healthz over HTTP on ADDR (IP:PORT, e.g. 127.0.0.1:9100; no TLS, so keep it on a private address)' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l max-queued -d 'Most messages waiting in one user\'s outbox; past it, senders are told the message was not accepted' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l max-output -d 'Most bytes queued for one connection that is not reading; chat messages past half of it wait in the outbox instead' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l state-dir -d 'Keep outboxes, block lists and lockouts in DIR, so that they survive a restart or crash (an append-only journal). Without it, state is kept in memory only' -r -F
complete -c chat-server -n "__fish_chat_server_needs_command" -l max-line -d 'Longest line accepted from a client, in bytes (newline included); a longer one is refused and discarded without being buffered' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l max-connections -d 'Most connections open at once (default: what the open file limit, raised to its hard limit at start, leaves room for). When full, a newcomer takes the place of the oldest connection that has not logged in; if every one has, it is told the server is full' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l max-connections-per-address -d 'Most connections open at once from one client address (IPv6: per /64); past it, new ones are told there are too many from there [default: 256, or half of --max-connections if less]' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l connection-rate -d 'New connections a second from one client address (IPv6: per /64), after a burst of --max-connections-per-address; faster ones are told there are too many from there' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l login-timeout -d 'Seconds a connection may take to log in before it is closed' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l login-attempts -d 'Most failed logins per client address (IPv6: per /64) per minute; past it, logins from that address are refused without being checked' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l send-rate -d 'MESSAGE and BROADCAST commands one user may send per second, steadily; past it (and the burst), they are refused and the sender told. 0: no limit' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l send-burst -d 'MESSAGE and BROADCAST commands one user may send at once, after a pause (the bucket the send rate refills)' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l max-queued-bytes -d 'Most bytes of message text waiting in all outboxes together; past it, new messages are refused and their senders told' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l message-ttl -d 'Seconds a message waits for an offline recipient before it expires (its sender is told, if online)' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l login-rate -d 'Most login attempts, failed or not, per client address (IPv6: per /64) per second, with a burst of ten seconds\' worth; past it, logins from that address are refused without being checked' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l throttle-table -d 'Most client addresses the login throttle tracks at once (for tests: a full table forgets the address used least recently)' -r
complete -c chat-server -n "__fish_chat_server_needs_command" -l log-level -d 'Log level on stderr. Logging never blocks the server: lines stderr does not take in time are dropped and counted' -r -f -a "off\t''
error\t''
warn\t''
info\t''
debug\t''
trace\t''"
complete -c chat-server -n "__fish_chat_server_needs_command" -l log-format -d 'Log line format: `text` (an RFC 3339 UTC timestamp, the level, the message), `journal` (`<N>` priority prefixes for journald, which adds the time; the default when stderr is the journal), or `json` (one object per line: time, level, message)' -r -f -a "text\t''
journal\t''
json\t''"
complete -c chat-server -n "__fish_chat_server_needs_command" -l generate -d 'Write a man page or a shell completion script to standard output and exit' -r -f -a "man\t'A man page (roff, section 1)'
bash\t'A bash completion script'
zsh\t'A zsh completion script'
fish\t'A fish completion script'"
complete -c chat-server -n "__fish_chat_server_needs_command" -l hash-password -d 'Print the argon2id hash of a password (the field to paste after the username in the credentials file) and exit. From a terminal, the password is typed twice without echo; otherwise one line is read from standard input, without a prompt (for scripts)'
complete -c chat-server -n "__fish_chat_server_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chat-server -n "__fish_chat_server_needs_command" -s V -l version -d 'Print version'
complete -c chat-server -n "__fish_chat_server_needs_command" -a "ctl" -d 'Ask a running server, through its --control socket, for figures, or tell it what to do.'
complete -c chat-server -n "__fish_chat_server_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chat-server -n "__fish_chat_server_using_subcommand ctl" -l control -d 'The server\'s control socket (its --control)' -r -F
complete -c chat-server -n "__fish_chat_server_using_subcommand ctl" -l json -d 'Print JSON instead of a table'
complete -c chat-server -n "__fish_chat_server_using_subcommand ctl" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chat-server -n "__fish_chat_server_using_subcommand help; and not __fish_seen_subcommand_from ctl help" -f -a "ctl" -d 'Ask a running server, through its --control socket, for figures, or tell it what to do.'
complete -c chat-server -n "__fish_chat_server_using_subcommand help; and not __fish_seen_subcommand_from ctl help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'

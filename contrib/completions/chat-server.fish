complete -c chat-server -l credentials -d 'Credentials file: one `username password` per line' -r -F
complete -c chat-server -l block-time -d 'Seconds an account stays locked after 3 failed logins' -r
complete -c chat-server -l timeout -d 'Seconds of silence after which a client is considered gone' -r
complete -c chat-server -l bind -d 'Address to listen on: an IP address or a host name (every address it resolves to). Give it more than once to listen on several, e.g. --bind 127.0.0.1 --bind ::1 (with port 0, all share one free port). `::` alone takes IPv4 clients too' -r
complete -c chat-server -l pid-file -d 'Write the server\'s process id to PATH once it listens (replaced atomically; removed at a clean exit), for init systems without systemd' -r -F
complete -c chat-server -l control -d 'Serve a control socket at PATH (a Unix socket, mode 0600) for `chat-server ctl`. A socket left there by a server that died is replaced; it is removed at exit' -r -F
complete -c chat-server -l metrics -d 'Serve GET /metrics (Prometheus text format) and GET /healthz over HTTP on ADDR (IP:PORT, e.g. 127.0.0.1:9100; no TLS, so keep it on a private address)' -r
complete -c chat-server -l max-queued -d 'Most messages waiting in one user\'s outbox; past it, senders are told the message was not accepted' -r
complete -c chat-server -l max-output -d 'Most bytes queued for one connection that is not reading; chat messages past half of it wait in the outbox instead' -r
complete -c chat-server -l state-dir -d 'Keep outboxes, block lists and lockouts in DIR, so that they survive a restart or crash (an append-only journal). Without it, state is kept in memory only' -r -F
complete -c chat-server -l max-line -d 'Longest line accepted from a client, in bytes (newline included); a longer one is refused and discarded without being buffered' -r
complete -c chat-server -l max-connections -d 'Most connections open at once (default: what the open file limit, raised to its hard limit at start, leaves room for). When full, a newcomer takes the place of the oldest connection that has not logged in; if every one has, it is told the server is full' -r
complete -c chat-server -l max-connections-per-address -d 'Most connections open at once from one client address (IPv6: per /64); past it, new ones are told there are too many from there [default: 256, or half of --max-connections if less]' -r
complete -c chat-server -l connection-rate -d 'New connections a second from one client address (IPv6: per /64), after a burst of --max-connections-per-address; faster ones are told there are too many from there' -r
complete -c chat-server -l login-timeout -d 'Seconds a connection may take to log in before it is closed' -r
complete -c chat-server -l login-attempts -d 'Most failed logins per client address (IPv6: per /64) per minute; past it, logins from that address are refused without being checked' -r
complete -c chat-server -l send-rate -d 'MESSAGE and BROADCAST commands one user may send per second, steadily; past it (and the burst), they are refused and the sender told. 0: no limit' -r
complete -c chat-server -l send-burst -d 'MESSAGE and BROADCAST commands one user may send at once, after a pause (the bucket the send rate refills)' -r
complete -c chat-server -l max-queued-bytes -d 'Most bytes of message text waiting in all outboxes together; past it, new messages are refused and their senders told' -r
complete -c chat-server -l message-ttl -d 'Seconds a message waits for an offline recipient before it expires (its sender is told, if online)' -r
complete -c chat-server -l login-rate -d 'Most login attempts, failed or not, per client address (IPv6: per /64) per second, with a burst of ten seconds\' worth; past it, logins from that address are refused without being checked' -r
complete -c chat-server -l throttle-table -d 'Most client addresses the login throttle tracks at once (for tests: a full table forgets the address used least recently)' -r
complete -c chat-server -l log-level -d 'Log level on stderr. Logging never blocks the server: lines stderr does not take in time are dropped and counted' -r -f -a "off\t''
error\t''
warn\t''
info\t''
debug\t''
trace\t''"
complete -c chat-server -l log-format -d 'Log line format: `text` (an RFC 3339 UTC timestamp, the level, the message), `journal` (`<N>` priority prefixes for journald, which adds the time; the default when stderr is the journal), or `json` (one object per line: time, level, message)' -r -f -a "text\t''
journal\t''
json\t''"
complete -c chat-server -l tls-cert -d 'Speak TLS with this certificate chain (PEM, the server\'s own certificate first); needs --tls-key. Re-read on SIGHUP' -r -F
complete -c chat-server -l tls-key -d 'The private key of --tls-cert (PEM). Re-read on SIGHUP' -r -F
complete -c chat-server -l self-signed -d 'Make a new key and a self-signed certificate for NAME (the host name or IP address clients connect to), write them to DIR/cert.pem and DIR/key.pem (mode 0600, never over existing files), print the certificate\'s SHA-256 fingerprint (for `chat-client --pin`) and exit' -r
complete -c chat-server -l out -d 'Where --self-signed writes the certificate and key' -r -F
complete -c chat-server -l generate -d 'Write a man page or a shell completion script to standard output and exit' -r -f -a "man\t'A man page (roff, section 1)'
bash\t'A bash completion script'
zsh\t'A zsh completion script'
fish\t'A fish completion script'"
complete -c chat-server -l hash-password -d 'Print the argon2id hash of a password (the field to paste after the username in the credentials file) and exit. From a terminal, the password is typed twice without echo; otherwise one line is read from standard input, without a prompt (for scripts)'
complete -c chat-server -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chat-server -s V -l version -d 'Print version'

complete -c chat-client -l generate -d 'Write a man page or a shell completion script to standard output and exit' -r -f -a "man\t'A man page (roff, section 1)'
bash\t'A bash completion script'
zsh\t'A zsh completion script'
fish\t'A fish completion script'"
complete -c chat-client -l user -d 'Log in as this user instead of asking for a username' -r
complete -c chat-client -l password-file -d 'Read the password from the first line of this file' -r -F
complete -c chat-client -l format -d 'How events are printed: the original texts, or one JSON object per line (see docs/JSON.md)' -r -f -a "text\t''
json\t''"
complete -c chat-client -l until -d 'Wait for the event PATTERN names, then log out and exit 0; exit 8 if it has not come within --wait. Input is still read and carried out. A plain PATTERN must equal a whole text line of an event (in either format); `*` in it matches any run of characters. A PATTERN starting with `{` is a flat JSON object, e.g. \'{"event":"message","from":"A"}\': an event matches when each member equals its field of that name (docs/JSON.md)' -r
complete -c chat-client -l wait -d 'Seconds --until waits' -r
complete -c chat-client -l settle -d 'Before logging out (end of input, logout, --until), wait at most this long for the outcome of every message sent; then report those still unconfirmed (exit 9)' -r
complete -c chat-client -l login-retry-pause -d 'Seconds before a login the server was too busy to check is sent again (for tests; hidden)' -r
complete -c chat-client -l ca -d 'Trust the certificates in this PEM file (a CA, or the server\'s own certificate) instead of the system\'s; implies --tls' -r -F
complete -c chat-client -l pin -d 'Trust only the server certificate with this SHA-256 fingerprint (as `chat-server --self-signed` prints it; colons allowed); implies --tls' -r
complete -c chat-client -l stay -d 'Stay logged in after standard input ends, until SIGINT, SIGTERM or server shutdown'
complete -c chat-client -l timestamps -d 'Start each text line with the local time, HH:MM (for a message: when the server accepted it)'
complete -c chat-client -l tls -d 'Speak TLS to the server, trusting the system\'s certificate authorities (see --ca and --pin for others). Private messages then go over TLS too'
complete -c chat-client -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chat-client -s V -l version -d 'Print version'

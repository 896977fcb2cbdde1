//! `--generate man|bash|zsh|fish`: a program's man page or shell completion
//! script, written to standard output.
//!
//! The texts are made by clap_mangen and clap_complete from each program's
//! clap command, but not at run time: the generators would add about
//! 170 KiB to each binary. They are kept in `contrib/man` and
//! `contrib/completions`, and built into the binaries packed ([`crate::lz`],
//! by build.rs: about half their size); a test of each binary renders them
//! again and fails when a file is stale (run
//! `CHAT_UPDATE_GENERATED=1 cargo test --bins` to rewrite them).
//!
//! It does not install anything: where man pages and completions go is the
//! packager's or the user's choice (the README shows the usual places).

use std::io::{self, Write};

use clap::ValueEnum;

/// What `--generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    /// A man page (roff, section 1).
    Man,
    /// A bash completion script.
    Bash,
    /// A zsh completion script.
    Zsh,
    /// A fish completion script.
    Fish,
}

impl Generate {
    /// Every kind, for the tests that keep the files up to date.
    pub const ALL: [Generate; 4] = [Generate::Man, Generate::Bash, Generate::Zsh, Generate::Fish];

    /// Where the file for `program` lives in the source tree.
    pub fn path(self, program: &str) -> String {
        match self {
            Generate::Man => format!("contrib/man/{program}.1"),
            Generate::Bash => format!("contrib/completions/{program}.bash"),
            Generate::Zsh => format!("contrib/completions/_{program}"),
            Generate::Fish => format!("contrib/completions/{program}.fish"),
        }
    }
}

/// One program's generated texts as build.rs packed them: for each of
/// [`Generate::ALL`] in turn, its packed length (4 bytes, little-endian)
/// and the packed text.
#[derive(Debug, Clone, Copy)]
pub struct Texts(pub &'static [u8]);

impl Texts {
    /// The text of `what`, unpacked.
    pub fn get(&self, what: Generate) -> io::Result<String> {
        let damaged = || io::Error::new(io::ErrorKind::InvalidData, "damaged built-in text");
        let mut rest = self.0;
        for kind in Generate::ALL {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(damaged)?;
            let len = u32::from_le_bytes(*len) as usize;
            let packed = tail.get(..len).ok_or_else(damaged)?;
            if kind == what {
                let text = crate::lz::unpack(packed)?;
                return String::from_utf8(text).map_err(|_| damaged());
            }
            rest = &tail[len..];
        }
        Err(damaged())
    }
}

/// Writes `what` of `texts` to `out`.
pub fn write(what: Generate, texts: &Texts, out: &mut impl Write) -> io::Result<()> {
    out.write_all(texts.get(what)?.as_bytes())?;
    out.flush()
}

/// `--generate` in a program's `main`: writes to stdout; on failure (a
/// closed pipe) one line on stderr naming the program, and exit status 1.
pub fn run(program: &str, what: Generate, texts: &Texts) -> std::process::ExitCode {
    match write(what, texts, &mut io::stdout().lock()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: cannot write to standard output: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> Texts {
        let mut packed = Vec::new();
        for text in ["m", "b", "z", "f"] {
            let one = crate::lz::pack(text.as_bytes());
            packed.extend_from_slice(&(one.len() as u32).to_le_bytes());
            packed.extend_from_slice(&one);
        }
        Texts(Vec::leak(packed))
    }

    #[test]
    fn writes_the_text_asked_for() {
        for (what, want) in [
            (Generate::Man, "m"),
            (Generate::Bash, "b"),
            (Generate::Zsh, "z"),
            (Generate::Fish, "f"),
        ] {
            let mut out = Vec::new();
            write(what, &texts(), &mut out).unwrap();
            assert_eq!(out, want.as_bytes());
        }
    }

    #[test]
    fn files_have_the_names_packagers_expect() {
        assert_eq!(Generate::Man.path("chat-server"), "contrib/man/chat-server.1");
        assert_eq!(Generate::Zsh.path("chat-server"), "contrib/completions/_chat-server");
    }

    #[test]
    fn a_failing_writer_is_an_error_not_a_panic() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(write(Generate::Bash, &texts(), &mut Closed).is_err());
        assert!(Texts(&[1, 0]).get(Generate::Man).is_err(), "damaged: an error, not a panic");
    }
}

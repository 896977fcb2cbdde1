//! Test helper shared by `chat-server` and `chat-client` (included with
//! `#[path]` in their tests): renders a program's man page and completions
//! with clap_mangen and clap_complete from its clap command, and checks
//! them against the files in contrib/ that `--generate` prints. With
//! `CHAT_UPDATE_GENERATED=1` it rewrites the files instead.

use std::path::Path;

use chat::generate::Generate;
use clap_complete::Shell;

/// What the generators make of `command` for `what`.
fn render(what: Generate, mut command: clap::Command) -> String {
    let mut text = Vec::new();
    let name = command.get_name().to_owned();
    match what {
        Generate::Man => clap_mangen::Man::new(command).render(&mut text).expect("render man"),
        Generate::Bash => clap_complete::generate(Shell::Bash, &mut command, name, &mut text),
        Generate::Zsh => clap_complete::generate(Shell::Zsh, &mut command, name, &mut text),
        Generate::Fish => clap_complete::generate(Shell::Fish, &mut command, name, &mut text),
    }
    String::from_utf8(text).expect("generated text is UTF-8")
}

/// Panics naming every stale file (or rewrites them, if asked to).
pub fn check(program: &str, command: &clap::Command, built_in: &chat::generate::Texts) {
    let update = std::env::var_os("CHAT_UPDATE_GENERATED").is_some();
    let mut stale = Vec::new();
    for what in Generate::ALL {
        let want = render(what, command.clone());
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(what.path(program));
        if update {
            std::fs::write(&path, &want).expect("write generated file");
        } else if built_in.get(what).expect("built-in text unpacks") != want {
            stale.push(what.path(program));
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files: {}; run CHAT_UPDATE_GENERATED=1 cargo test --bins, \
         then cargo build (the binary prints the files it was built with)",
        stale.join(", ")
    );
}

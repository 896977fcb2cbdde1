//! The client's command-line parser on arbitrary typed lines: it never
//! panics, and a message it accepts always fits a frame.
#![no_main]

use chat::client::command::{parse, Command};
use chat::protocol::{valid_name, MAX_TEXT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let Ok(Some(command)) = parse(&line) else { return };
    match command {
        Command::Message { to, text } | Command::Private { to, text } => {
            assert!(valid_name(to));
            assert!(!text.trim().is_empty() && text.len() <= MAX_TEXT);
        }
        Command::Broadcast { text } => assert!(!text.trim().is_empty() && text.len() <= MAX_TEXT),
        Command::Block { user }
        | Command::Unblock { user }
        | Command::GetAddress { user }
        | Command::Consent { user } => assert!(valid_name(user)),
        Command::Online | Command::Resend | Command::Help | Command::Logout => {}
    }
});

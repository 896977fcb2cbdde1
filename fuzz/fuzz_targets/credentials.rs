//! The credentials file parser on arbitrary file contents (the first byte
//! picks the server's line limit): it never panics, and every account it
//! accepts can log in: a valid, unique name, and a plain password that
//! fits a LOGIN line within the limit and reads back as itself.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use chat::protocol::{valid_name, ClientMsg};
use chat::server::credentials::{parse, Secret};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, contents)) = data.split_first() else { return };
    let max_line = 128 + usize::from(limit) * 16;
    let Ok(accounts) = parse(Path::new("fuzz.txt"), contents, max_line) else { return };
    let mut names = HashSet::new();
    for account in &accounts {
        assert!(valid_name(&account.name));
        assert!(names.insert(account.name.clone()), "duplicate {}", account.name);
        if let Secret::Plain(password) = &account.password {
            let line = format!("LOGIN {} 65535 {password}\n", account.name);
            assert!(line.len() <= max_line, "{} bytes over {max_line}", line.len());
            let parsed = ClientMsg::parse(&line);
            let expected =
                ClientMsg::Login { user: &account.name, p2p_port: 65535, password, cert: None };
            assert_eq!(parsed, Ok(expected));
        }
    }
});

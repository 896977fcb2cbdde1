//! Journal replay on arbitrary file contents: never a panic, and replay of
//! whatever it keeps is stable (replaying the file it cut gives the same).
#![no_main]

use chat::server::journal::{Journal, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("chat-fuzz-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut contents = MAGIC.to_vec();
    contents.extend_from_slice(data);
    std::fs::write(dir.join("journal"), &contents).unwrap();
    let (journal, first) = Journal::open(&dir).unwrap();
    drop(journal);
    let (_, second) = Journal::open(&dir).unwrap();
    assert_eq!(first.records, second.records);
    assert!(second.damage.is_none(), "the cut left no damage behind");
});

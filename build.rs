//! Packs the man pages and shell completions in `contrib/` (see
//! src/generate.rs) into `OUT_DIR`, for `--generate` to unpack: built in
//! plain they would take the programs past 1 MiB.

#[path = "src/lz.rs"]
#[allow(dead_code)]
mod lz;

use std::path::Path;

fn main() {
    let out = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    for program in ["chat-server", "chat-client"] {
        // In the order of `Generate::ALL`: man, bash, zsh, fish.
        let files = [
            format!("contrib/man/{program}.1"),
            format!("contrib/completions/{program}.bash"),
            format!("contrib/completions/_{program}"),
            format!("contrib/completions/{program}.fish"),
        ];
        let mut packed = Vec::new();
        for file in &files {
            println!("cargo:rerun-if-changed={file}");
            let text = std::fs::read(file).unwrap_or_else(|e| panic!("read {file}: {e}"));
            let one = lz::pack(&text);
            packed.extend_from_slice(&(one.len() as u32).to_le_bytes());
            packed.extend_from_slice(&one);
        }
        let path = Path::new(&out).join(format!("{program}.texts"));
        std::fs::write(&path, packed).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    println!("cargo:rerun-if-changed=src/lz.rs");
    println!("cargo:rerun-if-changed=build.rs");
}

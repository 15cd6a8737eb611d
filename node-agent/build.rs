//! Embeds the eBPF object built by `cargo xtask build-ebpf`. When it hasn't been built, an empty
//! stand-in is embedded so `cargo check`/`clippy`/`test` work anywhere; loading it fails with a
//! message that says to run `cargo xtask build-ebpf`.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("KEEL_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpf/bpfel-unknown-none/release/keel-datapath"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("keel-datapath.o");
    println!("cargo:rerun-if-env-changed=KEEL_EBPF_OBJECT");
    // Only the object itself: while it is missing cargo reruns this script on every build (so
    // it is picked up once it appears); watching its directory instead would rebuild the agent
    // after every no-op `build-ebpf`, which touches the directory.
    println!("cargo:rerun-if-changed={}", object.display());
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write OUT_DIR object"),
        Err(_) => fs::write(&out, []).expect("write OUT_DIR stand-in"),
    }
}

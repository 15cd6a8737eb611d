//! `keel-storetool`: drives an embedded store from a separate process, for crash tests.
//!
//! `keel-storetool fill --data-dir DIR [--prefix P] [--count N]` creates the keys
//! `P000000`, `P000001`, ... one by one (value: the key's bytes) and prints
//! `ACK <key> <revision>` on stdout, flushed, after each create returns. Whatever it printed is
//! acknowledged, so it must survive the process being killed (`kill -9`) right after.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keel_control::store::Store;
use keel_control::store::embedded::EmbeddedStore;

#[derive(Parser)]
#[command(about = "Drives an embedded Keel store from a separate process (crash tests)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates keys one by one, printing `ACK <key> <revision>` after each.
    Fill {
        /// The store's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Prefix of the keys.
        #[arg(long, default_value = "/durability/")]
        prefix: String,
        /// How many keys to create.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Fill {
            data_dir,
            prefix,
            count,
        } => fill(data_dir, &prefix, count).await,
    }
}

async fn fill(data_dir: PathBuf, prefix: &str, count: u64) -> Result<()> {
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&data_dir))
        .await
        .context("opening the store")??;
    let mut stdout = std::io::stdout().lock();
    for n in 0..count {
        let key = format!("{prefix}{n:06}");
        let revision = store
            .create(&key, key.as_bytes().to_vec())
            .await
            .with_context(|| format!("creating {key}"))?;
        writeln!(stdout, "ACK {key} {revision}").context("writing to stdout")?;
        stdout.flush().context("flushing stdout")?;
    }
    Ok(())
}

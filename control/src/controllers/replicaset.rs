//! Placeholder while the replicaset controller is written.
use std::sync::Arc;

use tokio::task::JoinSet;

use super::Context;

pub fn start(_ctx: &Arc<Context>, _tasks: &mut JoinSet<()>) {}

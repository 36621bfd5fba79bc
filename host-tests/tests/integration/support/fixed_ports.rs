//! The node's well-known ports (10257, 10259, 10249, 2381, 9902 on the node IP and on loopback).
//!
//! Most behaviours run on ports the kernel picks, side by side. The few that reproduce a node's
//! exact layout bind the real port numbers; they take this lock so that no two of them, running
//! in parallel threads of the one test binary, want the same port at once.

use std::sync::{Mutex, MutexGuard};

static NODE_PORTS: Mutex<()> = Mutex::new(());

/// Held for as long as the caller binds the node's well-known ports. A test that failed while
/// holding it poisons nothing for the others: the lock guards no data, only the ports.
pub fn hold() -> MutexGuard<'static, ()> {
    NODE_PORTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

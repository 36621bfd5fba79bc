//! One process-wide tokio runtime that serves every double (mock apiserver, fake components).
//!
//! Why not the test's own runtime: `#[tokio::test]` is single-threaded by default, and tests block
//! it (waiting for an Envoy child, `std::thread::sleep`), which would starve the servers and turn
//! timing tests into flakes. A separate runtime also lets `set_fault(Fault::Down)` wait
//! synchronously until the listening socket is really closed, from sync or async callers alike.

use std::sync::OnceLock;
use tokio::runtime::{Builder, Runtime};

/// The shared runtime the doubles run on (2 workers: the test machines have 2 cores).
pub fn io_runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("host-tests-io")
            .enable_all()
            .build()
            .expect("building the host-tests io runtime")
    })
}

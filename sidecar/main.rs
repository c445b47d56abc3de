//! `redfire-sidecar`: the RedFire Mesh sidecar.

use std::process::ExitCode;

use redfire::mesh::process::{shutdown, telemetry};
use redfire::sidecar::config::Config;
use redfire::sidecar::server::Sidecar;

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redfire-sidecar: {e}");
            return ExitCode::from(2);
        }
    };
    // One worker thread: the current-thread scheduler, which polls every task on the
    // main thread with no cross-thread wake-ups or work stealing (cheaper per request
    // than a one-worker multi-thread runtime, and one thread less).
    let mut builder = match config.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("redfire-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telemetry = telemetry::init("redfire-sidecar", config.log_format, &config.log_level);
        redfire::sidecar::shared::trace::enable(telemetry.exporting());
        let sidecar = match Sidecar::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("redfire-sidecar: {e}");
                return ExitCode::FAILURE;
            }
        };
        shutdown::signal().await;
        sidecar.shutdown();
        sidecar.wait().await;
        ExitCode::SUCCESS
    })
}

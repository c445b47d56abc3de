//! `redfire-control`: the RedFire Mesh control service.

use std::process::ExitCode;

use redfire::control::config::Config;
use redfire::control::server::Control;
use redfire::control::{shutdown, telemetry};

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redfire-control: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("redfire-control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let _telemetry = telemetry::init("redfire-control", config.log_format, &config.log_level);
        let control = match Control::start(config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("redfire-control: {e}");
                return ExitCode::FAILURE;
            }
        };
        shutdown::signal().await;
        control.shutdown();
        match control.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

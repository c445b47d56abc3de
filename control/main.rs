//! `redfire-control`: the RedFire Mesh control service.

use std::process::ExitCode;

use redfire::control::config::{Command, Config, TokenCommand};
use redfire::control::identity::ca::Ca;
use redfire::control::identity::token;
use redfire::control::server::{Control, ServerError};
use redfire::mesh::process::{shutdown, telemetry};

fn main() -> ExitCode {
    let (config, command) = match Config::load() {
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
    match command {
        Some(Command::Token(TokenCommand::Create { service, namespace, ttl })) => {
            return runtime.block_on(create_token(config, &service, &namespace, &ttl));
        }
        Some(Command::TrustBundle) => return runtime.block_on(print_trust_bundle(config)),
        None => {}
    }
    runtime.block_on(async {
        let _telemetry = telemetry::init("redfire-control", config.log_format, &config.log_level);
        let control = match Control::start(config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("redfire-control: {e}");
                // An invalid policy file is bad config, like a bad setting.
                let code = if matches!(e, ServerError::Policy(_)) { 2 } else { 1 };
                return ExitCode::from(code);
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

/// `redfire-control trust-bundle`: prints the roots clients verify control's
/// certificate (and every workload's) with.
async fn print_trust_bundle(config: Config) -> ExitCode {
    match Ca::load(config.ca).await {
        Ok(ca) => {
            print!("{}", ca.bundle_pem());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redfire-control: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `redfire-control token create`: prints one bootstrap token on stdout.
async fn create_token(config: Config, service: &str, namespace: &str, ttl: &str) -> ExitCode {
    use redfire::mesh::registry::validate_service_name;
    let ttl = match humantime::parse_duration(ttl) {
        Ok(t) if !t.is_zero() => t,
        _ => {
            eprintln!("redfire-control: invalid config: ttl: {ttl:?} is not a duration like 24h");
            return ExitCode::from(2);
        }
    };
    for (key, value) in [("service", service), ("namespace", namespace)] {
        if let Err(e) = validate_service_name(value) {
            eprintln!("redfire-control: invalid config: {key}: {}", e.trim_start_matches("service: "));
            return ExitCode::from(2);
        }
    }
    let ca = match Ca::load(config.ca).await {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("redfire-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    match token::create(&ca, namespace, service, ttl) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redfire-control: token: {e}");
            ExitCode::FAILURE
        }
    }
}

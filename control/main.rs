//! `redfire-control`: the RedFire Mesh control service.

use std::process::ExitCode;

use redfire::control::authz::token;
use redfire::control::config::{Command, Config, TokenCommand};
use redfire::control::identity::ca::Ca;
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
        Some(Command::Token(TokenCommand::Create { service, namespace, ttl, uses })) => {
            return runtime.block_on(create_token(config, Token::Bootstrap { service, namespace, uses }, &ttl));
        }
        Some(Command::Token(TokenCommand::Operator { subject, roles, ttl })) => {
            return runtime.block_on(create_token(config, Token::Operator { subject, roles }, &ttl));
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

/// What `redfire-control token` prints.
enum Token {
    Bootstrap { service: String, namespace: String, uses: u32 },
    Operator { subject: String, roles: Vec<String> },
}

/// `redfire-control token create|operator`: prints one token on stdout.
async fn create_token(config: Config, kind: Token, ttl: &str) -> ExitCode {
    use redfire::mesh::registry::validate_service_name;
    let invalid = |e: String| {
        eprintln!("redfire-control: invalid config: {e}");
        ExitCode::from(2)
    };
    let ttl = match humantime::parse_duration(ttl) {
        Ok(t) if !t.is_zero() => t,
        _ => return invalid(format!("ttl: {ttl:?} is not a duration like 24h")),
    };
    if let Token::Bootstrap { service, namespace, uses } = &kind {
        for (key, value) in [("service", service), ("namespace", namespace)] {
            if let Err(e) = validate_service_name(value) {
                return invalid(format!("{key}: {}", e.trim_start_matches("service: ")));
            }
        }
        if *uses == 0 {
            return invalid("uses: at least 1".into());
        }
    }
    let ca = match Ca::load(config.ca).await {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("redfire-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    let created = match &kind {
        Token::Bootstrap { service, namespace, uses } => {
            token::create_at(&ca, namespace, service, std::time::SystemTime::now(), ttl, *uses)
        }
        Token::Operator { subject, roles } => {
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            match token::create_operator(&ca, subject, &roles, ttl) {
                Err(e) => return invalid(e),
                ok => ok,
            }
        }
    };
    match created {
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

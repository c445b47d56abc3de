//! How control's Redis-backed stores (registry, events, policies, bootstrap
//! token redemptions) connect: lazily, each command bounded by the store's
//! `redis_timeout`, one quick retry, reconnects no further apart than it.

use std::time::Duration;

use redis::Client;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A client for `url` and a connection that is opened on first use;
/// errors name the `redis_url` setting.
pub fn connect_lazy(url: &str, timeout: Duration) -> Result<(Client, ConnectionManager), String> {
    let client = Client::open(url).map_err(|e| format!("redis_url: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(timeout);
    let conn =
        ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| format!("redis_url: {e}"))?;
    Ok((client, conn))
}

//! The Redis Streams event store: what several control replicas share.
//!
//! Data layout: every key of topic `T` (and of `T.dlq`, `T.dlq.dlq`, ...)
//! carries the hash tag `{<prefix>:ev:T}`, so each script below runs
//! atomically on one Redis Cluster slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<tag>:<topic>:s` | stream | the events: fields `e` (envelope, protobuf), `s` (subject), `v` (aggregate version); dead letters add `dt dg dp dn dr` |
//! | `<tag>:<topic>:meta` | hash | retention: `max_len`, `max_age_ms` |
//! | `<tag>:<topic>:idem:<key>` | string | position of an idempotent publish (expires after the window) |
//! | `<tag>:<topic>:why` | hash | `group\|position` → last nack reason |
//! | `<tag>:<topic>:agg:<id>` | list | an aggregate's events; version = index + 1 (never trimmed) |
//! | `{<prefix>:ev}:topics` | set | topic names, for the retention sweep |
//!
//! Consumer groups are Redis consumer groups: new events come from
//! XREADGROUP, expired leases are claimed with XAUTOCLAIM (min idle = the
//! visibility timeout), extend resets the idle time with XCLAIM JUSTID, and
//! nack sets it to `visibility timeout - delay`. Each of publish, fetch,
//! ack/nack/extend, aggregate append and trim is one Lua script.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::sync::watch;

use super::store::{Changes, EventSettings, EventStore};
use crate::mesh::events::{
    Delivery, Envelope, EventError, Fetched, GroupInfo, NewEvent, Position, Published, Retention, StartFrom, Stored,
    TopicInfo, dlq_topic,
};

/// Settings of the Redis event store.
#[derive(Debug, Clone)]
pub struct RedisEventConfig {
    /// `redis://host:port/db` (or `rediss://`).
    pub url: String,
    /// Key prefix (shared with the registry's setting).
    pub prefix: String,
    /// Longest wait for one Redis command.
    pub timeout: Duration,
    /// How often subscribers look for other replicas' publishes.
    pub poll_interval: Duration,
}

#[derive(Debug)]
struct Scripts {
    publish: Script,
    fetch: Script,
    lease: Script,
    append: Script,
    trim: Script,
    describe: Script,
    delete_group: Script,
}

/// See the module docs.
#[derive(Debug)]
pub struct RedisEventStore {
    settings: EventSettings,
    config: RedisEventConfig,
    conn: ConnectionManager,
    scripts: Scripts,
    changes: Changes,
    known: Mutex<HashSet<String>>,
    down: Mutex<Option<String>>,
}

/// The keys of one topic.
struct Keys {
    stream: String,
    meta: String,
    why: String,
    idem: String,
    dlq: String,
    agg: String,
}

impl RedisEventStore {
    /// Connects lazily: commands fail with UNAVAILABLE while Redis is down.
    pub fn new(settings: EventSettings, config: RedisEventConfig) -> Result<Self, String> {
        let (_, conn) = crate::control::redis::connect_lazy(&config.url, config.timeout)?;
        Ok(RedisEventStore {
            settings,
            config,
            conn,
            scripts: Scripts {
                publish: Script::new(include_str!("redis/publish.lua")),
                fetch: Script::new(include_str!("redis/fetch.lua")),
                lease: Script::new(include_str!("redis/lease.lua")),
                append: Script::new(include_str!("redis/append.lua")),
                trim: Script::new(include_str!("redis/trim.lua")),
                describe: Script::new(include_str!("redis/describe.lua")),
                delete_group: Script::new(include_str!("redis/delete_group.lua")),
            },
            changes: Changes::default(),
            known: Mutex::new(HashSet::new()),
            down: Mutex::new(None),
        })
    }

    fn keys(&self, topic: &str) -> Keys {
        let mut base = topic;
        while let Some(b) = base.strip_suffix(".dlq") {
            base = b;
        }
        let tag = format!("{{{}:ev:{base}}}", self.config.prefix);
        let dlq = dlq_topic(topic);
        Keys {
            stream: format!("{tag}:{topic}:s"),
            meta: format!("{tag}:{topic}:meta"),
            why: format!("{tag}:{topic}:why"),
            idem: format!("{tag}:{topic}:idem:"),
            dlq: format!("{tag}:{dlq}:s"),
            agg: format!("{tag}:{topic}:agg:"),
        }
    }

    fn topics_key(&self) -> String {
        format!("{{{}:ev}}:topics", self.config.prefix)
    }

    fn error(&self, e: redis::RedisError) -> EventError {
        let msg = e.to_string();
        if msg.contains("NOGROUP") {
            return EventError::NotFound(format!("unknown group or topic ({msg})"));
        }
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            *self.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
            return EventError::Unavailable(format!("event store unavailable: {msg}"));
        }
        EventError::Internal(format!("event store: {msg}"))
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, EventError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.config.timeout, f(&mut conn)).await {
            Ok(Ok(v)) => {
                *self.down.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(v)
            }
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => {
                let msg = format!("redis did not answer within {:?}", self.config.timeout);
                *self.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
                Err(EventError::Unavailable(format!("event store unavailable: {msg}")))
            }
        }
    }

    /// Records `topic` in the topic set (once per process).
    async fn remember(&self, topic: &str) -> Result<(), EventError> {
        if self.known.lock().unwrap_or_else(|e| e.into_inner()).contains(topic) {
            return Ok(());
        }
        let key = self.topics_key();
        let _: i64 = self.run(async |c| redis::cmd("SADD").arg(&key).arg(topic).query_async(c).await).await?;
        self.known.lock().unwrap_or_else(|e| e.into_inner()).insert(topic.to_string());
        Ok(())
    }

    fn defaults(&self) -> (u64, u64) {
        let r = self.settings.default_retention;
        (r.max_len, r.max_age.as_millis() as u64)
    }

    async fn lease(
        &self,
        op: LeaseOp<'_>,
        topic: &str,
        group: &str,
        consumer: &str,
        position: Position,
    ) -> Result<(), EventError> {
        let k = self.keys(topic);
        let (name, idle, reason) = match op {
            LeaseOp::Ack => ("ack", 0, ""),
            LeaseOp::Extend => ("extend", 0, ""),
            LeaseOp::Nack { idle_ms, reason } => ("nack", idle_ms, reason),
        };
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(&k.stream)
            .key(&k.why)
            .arg(name)
            .arg(group)
            .arg(consumer)
            .arg(position.to_string())
            .arg(idle)
            .arg(reason);
        let (code, owner): (i64, String) = self.run(async |c| inv.invoke_async(c).await).await?;
        match code {
            1 => Ok(()),
            0 => Err(EventError::NotFound(format!(
                "position {position} is not pending in group {group:?} of topic {topic:?} (never delivered, or already acked)"
            ))),
            _ => Err(EventError::Foreign(format!(
                "position {position} of topic {topic:?} is leased to consumer {owner:?}, not {consumer:?}"
            ))),
        }
    }
}

/// What `lease.lua` does to a pending event.
enum LeaseOp<'a> {
    Ack,
    Extend,
    /// Claimable again once its idle time reaches the visibility timeout.
    Nack {
        idle_ms: u64,
        reason: &'a str,
    },
}

fn pos(id: &str) -> Result<Position, EventError> {
    id.parse().map_err(|_| EventError::Internal(format!("redis returned a bad stream id {id:?}")))
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(&bytes(v)).into_owned()
}

fn int(v: &Value) -> u64 {
    match v {
        Value::Int(i) => (*i).max(0) as u64,
        other => text(other).parse().unwrap_or(0),
    }
}

fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) => a,
        _ => &[],
    }
}

/// An envelope from a stream entry's fields (version and dead-letter
/// fields folded in).
fn entry_envelope(fields: &[Value]) -> Result<Envelope, EventError> {
    let mut env = Envelope::default();
    let mut dlq = Vec::new();
    for pair in fields.chunks(2) {
        let [k, v] = pair else { continue };
        match text(k).as_str() {
            "e" => {
                let keep = std::mem::take(&mut env.extensions);
                let version = env.aggregate_version;
                env = Envelope::decode(&bytes(v))?;
                env.extensions.extend(keep);
                if version > 0 {
                    env.aggregate_version = version;
                }
            }
            "v" => {
                if let Ok(n) = text(v).parse() {
                    env.aggregate_version = n;
                }
            }
            "dt" => dlq.push(("dlqtopic", text(v))),
            "dg" => dlq.push(("dlqgroup", text(v))),
            "dp" => dlq.push(("dlqposition", text(v))),
            "dn" => dlq.push(("dlqdeliveries", text(v))),
            "dr" => dlq.push(("dlqreason", text(v))),
            _ => {}
        }
    }
    for (k, v) in dlq {
        env.extensions.insert(k.into(), v);
    }
    Ok(env)
}

#[tonic::async_trait]
impl EventStore for RedisEventStore {
    fn settings(&self) -> &EventSettings {
        &self.settings
    }

    async fn create_topic(&self, topic: &str, retention: Retention) -> Result<bool, EventError> {
        let k = self.keys(topic);
        let created: i64 = self
            .run(async |c| {
                redis::cmd("HSET")
                    .arg(&k.meta)
                    .arg("max_len")
                    .arg(retention.max_len)
                    .arg("max_age_ms")
                    .arg(retention.max_age.as_millis() as u64)
                    .query_async(c)
                    .await
            })
            .await?;
        self.remember(topic).await?;
        Ok(created > 0)
    }

    async fn publish(&self, topic: &str, events: Vec<NewEvent>) -> Result<Vec<Published>, EventError> {
        self.remember(topic).await?;
        let k = self.keys(topic);
        let (max_len, max_age) = self.defaults();
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.key(&k.stream).key(&k.meta).arg(&k.idem).arg(self.settings.idempotency_window.as_millis() as u64);
        inv.arg(max_len).arg(max_age);
        for e in &events {
            inv.arg(e.idempotency_key.as_deref().unwrap_or("")).arg(e.envelope.encode()).arg(&e.envelope.subject);
        }
        let reply: Vec<(String, u8)> = self.run(async |c| inv.invoke_async(c).await).await?;
        self.changes.bump(topic);
        reply.into_iter().map(|(id, dup)| Ok(Published { position: pos(&id)?, duplicate: dup == 1 })).collect()
    }

    async fn ensure_group(&self, topic: &str, group: &str, start: StartFrom) -> Result<(), EventError> {
        self.remember(topic).await?;
        let k = self.keys(topic);
        let (max_len, max_age) = self.defaults();
        let from = match start {
            StartFrom::Latest => "$",
            StartFrom::Earliest => "0",
        };
        let r: Result<Value, EventError> = self
            .run(async |c| {
                redis::pipe()
                    .cmd("HSETNX")
                    .arg(&k.meta)
                    .arg("max_len")
                    .arg(max_len)
                    .ignore()
                    .cmd("HSETNX")
                    .arg(&k.meta)
                    .arg("max_age_ms")
                    .arg(max_age)
                    .ignore()
                    .cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&k.stream)
                    .arg(group)
                    .arg(from)
                    .arg("MKSTREAM")
                    .query_async(c)
                    .await
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(EventError::Internal(m)) if m.contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        claim: bool,
    ) -> Result<Fetched, EventError> {
        let k = self.keys(topic);
        let mut inv = self.scripts.fetch.prepare_invoke();
        inv.key(&k.stream)
            .key(&k.dlq)
            .key(&k.why)
            .arg(group)
            .arg(consumer)
            .arg(max)
            .arg(self.settings.visibility_timeout.as_millis() as u64)
            .arg(self.settings.max_deliveries)
            .arg(if claim { 1 } else { 0 })
            .arg(topic);
        let reply: Value = self.run(async |c| inv.invoke_async(c).await).await?;
        let parts = array(&reply);
        let mut out = Fetched::default();
        for d in parts.first().map(array).unwrap_or_default() {
            let [id, fields, n] = array(d) else { continue };
            out.deliveries.push(Delivery {
                topic: topic.to_string(),
                position: pos(&text(id))?,
                delivery_count: int(n) as u32,
                envelope: entry_envelope(array(fields))?,
            });
        }
        out.dead_lettered = parts.get(1).map(int).unwrap_or(0);
        for id in parts.get(2).map(array).unwrap_or_default() {
            out.trimmed.push(pos(&text(id))?);
        }
        if out.dead_lettered > 0 {
            let dlq = dlq_topic(topic);
            self.remember(&dlq).await?;
            self.changes.bump(&dlq);
        }
        Ok(out)
    }

    async fn ack(&self, topic: &str, group: &str, consumer: &str, position: Position) -> Result<(), EventError> {
        self.lease(LeaseOp::Ack, topic, group, consumer, position).await
    }

    async fn nack(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        position: Position,
        delay: Duration,
        reason: &str,
    ) -> Result<(), EventError> {
        let vt = self.settings.visibility_timeout;
        let idle_ms = vt.saturating_sub(delay).as_millis() as u64;
        self.lease(LeaseOp::Nack { idle_ms, reason }, topic, group, consumer, position).await
    }

    async fn extend(&self, topic: &str, group: &str, consumer: &str, position: Position) -> Result<(), EventError> {
        self.lease(LeaseOp::Extend, topic, group, consumer, position).await
    }

    async fn read_range(&self, topic: &str, after: Position, limit: usize) -> Result<Vec<Stored>, EventError> {
        let k = self.keys(topic);
        let reply: Value = self
            .run(async |c| {
                redis::cmd("XRANGE")
                    .arg(&k.stream)
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(c)
                    .await
            })
            .await?;
        array(&reply)
            .iter()
            .filter_map(|e| match array(e) {
                [id, fields] => Some((id, fields)),
                _ => None,
            })
            .map(|(id, fields)| Ok(Stored { position: pos(&text(id))?, envelope: entry_envelope(array(fields))? }))
            .collect()
    }

    async fn append(
        &self,
        topic: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        expected: Option<u64>,
        events: Vec<Envelope>,
    ) -> Result<(u64, Vec<Position>), EventError> {
        self.remember(topic).await?;
        let k = self.keys(topic);
        let (max_len, max_age) = self.defaults();
        let mut inv = self.scripts.append.prepare_invoke();
        inv.key(&k.stream)
            .key(format!("{}{aggregate_id}", k.agg))
            .key(&k.meta)
            .arg(expected.map(|e| e.to_string()).unwrap_or_default())
            .arg(aggregate_id)
            .arg(max_len)
            .arg(max_age);
        for mut e in events {
            e.subject = aggregate_id.to_string();
            e.aggregate_type = aggregate_type.to_string();
            // The version is the list index + 1, filled in when read.
            e.aggregate_version = 0;
            inv.arg(e.encode());
        }
        let reply: Value = self.run(async |c| inv.invoke_async(c).await).await?;
        let parts = array(&reply);
        let code = parts.first().map(|v| matches!(v, Value::Int(-1))).unwrap_or(true);
        let second = parts.get(1).cloned().unwrap_or(Value::Nil);
        if code {
            let current = int(&second);
            let expected = expected.unwrap_or(0);
            let aggregate_id = aggregate_id.to_string();
            return Err(if expected < current {
                EventError::Conflict { aggregate_id, current, expected }
            } else {
                EventError::VersionAhead { aggregate_id, current, expected }
            });
        }
        self.changes.bump(topic);
        let version = parts.first().map(int).unwrap_or(0);
        let positions = array(&second).iter().map(|id| pos(&text(id))).collect::<Result<_, _>>()?;
        Ok((version, positions))
    }

    async fn read_aggregate(&self, topic: &str, aggregate_id: &str) -> Result<(u64, Vec<Envelope>), EventError> {
        let key = format!("{}{aggregate_id}", self.keys(topic).agg);
        let list: Vec<Vec<u8>> =
            self.run(async |c| redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(c).await).await?;
        let mut out = Vec::with_capacity(list.len());
        for (i, b) in list.iter().enumerate() {
            let mut e = Envelope::decode(b)?;
            e.aggregate_version = i as u64 + 1;
            out.push(e);
        }
        Ok((out.len() as u64, out))
    }

    async fn describe(&self, topic: &str) -> Result<TopicInfo, EventError> {
        let k = self.keys(topic);
        let mut inv = self.scripts.describe.prepare_invoke();
        inv.key(&k.stream).key(&k.meta).key(&k.dlq);
        let reply: Value = self.run(async |c| inv.invoke_async(c).await).await?;
        let p = array(&reply);
        if p.first().map(int) != Some(1) || p.len() < 8 {
            return Err(EventError::NotFound(format!("unknown topic {topic:?}")));
        }
        let position = |v: &Value| {
            let s = text(v);
            if s.is_empty() { Ok(Position::ZERO) } else { pos(&s) }
        };
        let mut groups = Vec::new();
        for g in array(&p[7]) {
            let [name, consumers, pending, lag, last] = array(g) else { continue };
            groups.push(GroupInfo {
                name: text(name),
                consumers: int(consumers) as u32,
                pending: int(pending),
                lag: int(lag),
                last_delivered: position(last)?,
            });
        }
        Ok(TopicInfo {
            topic: topic.to_string(),
            length: int(&p[1]),
            first: position(&p[2])?,
            last: position(&p[3])?,
            retention: Retention { max_len: int(&p[4]), max_age: Duration::from_millis(int(&p[5])) },
            groups,
            dead_letters: int(&p[6]),
        })
    }

    async fn reset_group(&self, topic: &str, group: &str, position: Option<Position>) -> Result<(), EventError> {
        let k = self.keys(topic);
        let id = position.map(|p| p.to_string()).unwrap_or_else(|| "$".into());
        let r: Result<Value, EventError> = self
            .run(async |c| redis::cmd("XGROUP").arg("SETID").arg(&k.stream).arg(group).arg(&id).query_async(c).await)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(EventError::Internal(m)) if m.contains("requires the key to exist") => {
                Err(EventError::NotFound(format!("unknown topic {topic:?}")))
            }
            Err(EventError::NotFound(_)) => {
                Err(EventError::NotFound(format!("unknown group {group:?} on topic {topic:?}")))
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), EventError> {
        let k = self.keys(topic);
        let mut inv = self.scripts.delete_group.prepare_invoke();
        inv.key(&k.stream).key(&k.why).arg(group);
        let n: i64 = self.run(async |c| inv.invoke_async(c).await).await?;
        match n {
            1 => Ok(()),
            -1 => Err(EventError::NotFound(format!("unknown topic {topic:?}"))),
            _ => Err(EventError::NotFound(format!("unknown group {group:?} on topic {topic:?}"))),
        }
    }

    async fn topics(&self) -> Result<Vec<String>, EventError> {
        let key = self.topics_key();
        let mut names: Vec<String> = self.run(async |c| redis::cmd("SMEMBERS").arg(&key).query_async(c).await).await?;
        names.sort();
        Ok(names)
    }

    async fn trim(&self) -> Result<u64, EventError> {
        let topics = self.topics().await?;
        let mut removed = 0;
        for topic in topics {
            let k = self.keys(&topic);
            let mut inv = self.scripts.trim.prepare_invoke();
            inv.key(&k.stream).key(&k.meta);
            let n: u64 = self.run(async |c| inv.invoke_async(c).await).await?;
            removed += n;
        }
        Ok(removed)
    }

    fn changes(&self, topic: &str) -> watch::Receiver<u64> {
        self.changes.subscribe(topic)
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(self.config.poll_interval)
    }

    fn ready(&self) -> Result<(), String> {
        match &*self.down.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(why) => Err(format!("event store: {why}")),
        }
    }
}

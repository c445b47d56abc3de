//! `redfire.events.v1.Events`: the gRPC boundary. Requests are validated and
//! converted to domain types here; store errors become statuses here (see
//! [`EventError::code`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::store::EventStore;
use super::subscription::{Handle, SubscribeSpec, Subscription};
use crate::control::authz::{Admitted, Authz};
use crate::control::metrics::Metrics;
use crate::control::metrics::events::EventMetrics;
use crate::mesh::events::{Envelope, EventError, NewEvent, Position, Retention, StartFrom, TopicInfo, validate_name};
use crate::proto::events::v1 as pb;
use crate::proto::events::v1::events_server::Events;

/// Limits the API enforces.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Largest event `data`.
    pub max_payload: usize,
    /// Most events per Publish or AppendToAggregate.
    pub max_batch: usize,
    /// Largest `max_in_flight` a subscriber may ask for.
    pub max_in_flight: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits { max_payload: 1 << 20, max_batch: 1000, max_in_flight: 10_000 }
    }
}

/// The service over any [`EventStore`].
#[derive(Debug, Clone)]
pub struct EventsService {
    store: Arc<dyn EventStore>,
    metrics: Arc<Metrics>,
    limits: EventLimits,
    authz: Arc<Authz>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

const REPLAY_PAGE: usize = 500;

impl EventsService {
    /// A service over `store`; `shutdown` turning true ends every stream.
    pub fn new(
        store: Arc<dyn EventStore>,
        metrics: Arc<Metrics>,
        limits: EventLimits,
        authz: Arc<Authz>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        EventsService { store, metrics, limits, authz, shutdown }
    }

    /// The event bus ACL's decision for a call on one topic.
    fn granted<T>(&self, req: &Request<T>, topic: &str) -> Result<(), Status> {
        self.authz.topics(Admitted::of(req), [topic])
    }

    fn events(&self) -> Arc<EventMetrics> {
        self.metrics.events.clone()
    }

    fn finish<T>(&self, method: &'static str, started: Instant, r: Result<T, EventError>) -> Result<T, Status> {
        let code = r.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|e| e.code());
        self.metrics.rpc(method, code, Some(started.elapsed()));
        r.map_err(|e| e.to_status())
    }

    fn envelope(&self, e: Option<pb::Event>) -> Result<Envelope, EventError> {
        let mut env = Envelope::from(e.ok_or_else(|| EventError::InvalidArgument("event: missing".into()))?);
        env.validate(self.limits.max_payload)?;
        Ok(env)
    }

    fn batch(&self, n: usize) -> Result<(), EventError> {
        if n == 0 {
            return Err(EventError::InvalidArgument("events: at least one is needed".into()));
        }
        if n > self.limits.max_batch {
            return Err(EventError::TooLarge(format!(
                "{n} events in one call; the limit is {}",
                self.limits.max_batch
            )));
        }
        Ok(())
    }

    async fn publish_inner(&self, req: pb::PublishRequest) -> Result<pb::PublishResponse, EventError> {
        validate_name("topic", &req.topic)?;
        self.batch(req.events.len())?;
        let mut events = Vec::with_capacity(req.events.len());
        for entry in req.events {
            let envelope = self.envelope(entry.event)?;
            let key = (!entry.idempotency_key.is_empty()).then_some(entry.idempotency_key);
            if key.as_ref().is_some_and(|k| k.len() > 256) {
                return Err(EventError::InvalidArgument("idempotency_key: longer than 256 bytes".into()));
            }
            events.push(NewEvent { envelope, idempotency_key: key });
        }
        let ids: Vec<String> = events.iter().map(|e| e.envelope.id.clone()).collect();
        let published = self.store.publish(&req.topic, events).await?;
        let stored = published.iter().filter(|p| !p.duplicate).count() as u64;
        self.metrics.events.published(&req.topic, stored);
        Ok(pb::PublishResponse {
            results: published
                .into_iter()
                .zip(ids)
                .map(|(p, id)| pb::PublishResult { position: p.position.to_string(), duplicate: p.duplicate, id })
                .collect(),
        })
    }

    async fn append_inner(
        &self,
        req: pb::AppendToAggregateRequest,
    ) -> Result<pb::AppendToAggregateResponse, EventError> {
        validate_name("topic", &req.topic)?;
        if req.aggregate_id.is_empty() || req.aggregate_id.len() > 256 {
            return Err(EventError::InvalidArgument("aggregate_id: 1..=256 bytes".into()));
        }
        if req.aggregate_type.is_empty() {
            return Err(EventError::InvalidArgument("aggregate_type: missing".into()));
        }
        self.batch(req.events.len())?;
        let events = req.events.into_iter().map(|e| self.envelope(Some(e))).collect::<Result<Vec<_>, _>>()?;
        let n = events.len() as u64;
        let (version, positions) =
            self.store.append(&req.topic, &req.aggregate_type, &req.aggregate_id, req.expected_version, events).await?;
        self.metrics.events.published(&req.topic, n);
        Ok(pb::AppendToAggregateResponse { version, positions: positions.iter().map(Position::to_string).collect() })
    }
}

fn retention_from(r: Option<pb::Retention>, default: Retention) -> Retention {
    match r {
        Some(r) => Retention { max_len: r.max_len, max_age: Duration::from_millis(r.max_age_ms) },
        None => default,
    }
}

fn retention_to(r: Retention) -> pb::Retention {
    pb::Retention { max_len: r.max_len, max_age_ms: r.max_age.as_millis() as u64 }
}

fn description(info: TopicInfo) -> pb::TopicDescription {
    let shown = |p: Position| if p == Position::ZERO { String::new() } else { p.to_string() };
    pb::TopicDescription {
        topic: info.topic,
        length: info.length,
        first_position: shown(info.first),
        last_position: shown(info.last),
        retention: Some(retention_to(info.retention)),
        groups: info
            .groups
            .into_iter()
            .map(|g| pb::GroupDescription {
                name: g.name,
                consumers: g.consumers,
                pending: g.pending,
                lag: g.lag,
                last_delivered: shown(g.last_delivered),
            })
            .collect(),
        dead_letters: info.dead_letters,
    }
}

fn delivery(d: crate::mesh::events::Delivery) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        message: Some(pb::subscribe_response::Message::Delivery(pb::Delivery {
            topic: d.topic,
            position: d.position.to_string(),
            delivery_count: d.delivery_count,
            event: Some(d.envelope.into()),
        })),
    }
}

const COMMANDS_IN_FLIGHT: usize = 64;

type CommandFuture = Pin<Box<dyn std::future::Future<Output = Option<pb::SubscribeResponse>> + Send>>;

/// The next client message, until the client half-closes or goes away.
async fn next_command(
    mut input: Streaming<pb::SubscribeRequest>,
) -> Option<(pb::SubscribeRequest, Streaming<pb::SubscribeRequest>)> {
    match input.message().await {
        Ok(Some(m)) => Some((m, input)),
        Ok(None) | Err(_) => None,
    }
}

/// Applies one ack / nack / extend; the error message to send back, if any.
async fn apply(handle: Handle, msg: pb::SubscribeRequest) -> Option<pb::SubscribeResponse> {
    let (topic, position, r) = match msg.command? {
        pb::subscribe_request::Command::Open(_) => (
            String::new(),
            String::new(),
            Err(EventError::InvalidArgument("`open` may only be the first message".into())),
        ),
        pb::subscribe_request::Command::Ack(a) => {
            let r = match a.position.parse() {
                Ok(p) => handle.ack(&a.topic, p).await,
                Err(e) => Err(e),
            };
            (a.topic, a.position, r)
        }
        pb::subscribe_request::Command::Nack(n) => {
            let delay = Duration::from_millis(u64::from(n.delay_ms));
            let r = match n.position.parse() {
                Ok(p) => handle.nack(&n.topic, p, delay, &n.reason).await,
                Err(e) => Err(e),
            };
            (n.topic, n.position, r)
        }
        pb::subscribe_request::Command::Extend(x) => {
            let r = match x.position.parse() {
                Ok(p) => handle.extend(&x.topic, p).await,
                Err(e) => Err(e),
            };
            (x.topic, x.position, r)
        }
    };
    r.err().map(|e| command_error(topic, position, e))
}

fn command_error(topic: String, position: String, e: EventError) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        message: Some(pb::subscribe_response::Message::Error(pb::CommandError {
            topic,
            position,
            code: e.code() as i32,
            message: e.to_string(),
        })),
    }
}

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, req: Request<pb::PublishRequest>) -> Result<Response<pb::PublishResponse>, Status> {
        self.granted(&req, &req.get_ref().topic)?;
        let started = Instant::now();
        let r = self.publish_inner(req.into_inner()).await;
        self.finish("Publish", started, r).map(Response::new)
    }

    type SubscribeStream = BoxStream<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let started = Instant::now();
        let call = Admitted::of(&req).cloned();
        let mut input = req.into_inner();
        let open = match input.message().await? {
            Some(pb::SubscribeRequest { command: Some(pb::subscribe_request::Command::Open(o)) }) => o,
            _ => {
                let e = EventError::InvalidArgument("the first message must be `open`".into());
                return self.finish("Subscribe", started, Err(e));
            }
        };
        self.authz.topics(call.as_ref(), open.topics.iter().map(String::as_str))?;
        let spec = SubscribeSpec {
            topics: open.topics,
            group: open.group,
            consumer: open.consumer,
            max_in_flight: if open.max_in_flight == 0 { 100 } else { open.max_in_flight as usize },
            start: if open.start == pb::StartFrom::Earliest as i32 { StartFrom::Earliest } else { StartFrom::Latest },
        };
        let r = async {
            spec.validate(self.limits.max_in_flight)?;
            Subscription::start(self.store.clone(), self.events(), spec.clone()).await
        }
        .await;
        let sub = self.finish("Subscribe", started, r)?;
        let settings = self.store.settings();
        let opened = pb::SubscribeResponse {
            message: Some(pb::subscribe_response::Message::Opened(pb::Opened {
                max_in_flight: spec.max_in_flight as u32,
                visibility_timeout_ms: settings.visibility_timeout.as_millis() as u32,
                max_deliveries: settings.max_deliveries,
            })),
        };
        let handle = sub.handle.clone();
        // Command errors go out on their own small channel, merged below.
        let (err_tx, err_rx) = mpsc::channel::<pb::SubscribeResponse>(64);
        // The client half-closing ends the subscription once its last
        // commands are applied.
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let mut shutdown = self.shutdown.clone();
        let commands = tokio::spawn(async move {
            let _closed = closed_tx;
            let messages = futures::stream::unfold(input, next_command);
            // Commands are applied concurrently (up to 64 at once) so one
            // consumer's acks are not serialised on store round trips.
            let results = futures::StreamExt::buffer_unordered(
                futures::StreamExt::map(messages, move |m| -> CommandFuture { Box::pin(apply(handle.clone(), m)) }),
                COMMANDS_IN_FLIGHT,
            );
            tokio::pin!(results);
            loop {
                let r = tokio::select! {
                    r = futures::StreamExt::next(&mut results) => r,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                match r {
                    None => return,
                    Some(None) => {}
                    Some(Some(err)) => {
                        if err_tx.send(err).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let shutdown = self.shutdown.clone();
        let deliveries = futures::stream::unfold(Some((sub, commands, closed_rx)), move |state| {
            let mut shutdown = shutdown.clone();
            async move {
                let (mut sub, commands, mut closed) = state?;
                let next = tokio::select! {
                    d = sub.deliveries.recv() => d,
                    _ = shutdown.wait_for(|s| *s) => None,
                    _ = &mut closed => None,
                };
                match next {
                    Some(Ok(d)) => Some((Ok(delivery(d)), Some((sub, commands, closed)))),
                    Some(Err(e)) => {
                        commands.abort();
                        Some((Err(e.to_status()), None))
                    }
                    None => {
                        commands.abort();
                        None
                    }
                }
            }
        });
        let errors = ReceiverStream::new(err_rx).map(Ok);
        let stream = tokio_stream::once(Ok(opened)).chain(deliveries.merge(errors));
        Ok(Response::new(Box::pin(stream)))
    }

    type ReplayStream = BoxStream<pb::ReplayResponse>;

    async fn replay(&self, req: Request<pb::ReplayRequest>) -> Result<Response<Self::ReplayStream>, Status> {
        self.granted(&req, &req.get_ref().topic)?;
        let started = Instant::now();
        let req = req.into_inner();
        let r = async {
            validate_name("topic", &req.topic)?;
            let after = match &req.from {
                None => Position::ZERO,
                Some(pb::replay_request::From::AfterPosition(p)) if p.is_empty() => Position::ZERO,
                Some(pb::replay_request::From::AfterPosition(p)) => p.parse()?,
                Some(pb::replay_request::From::FromTime(t)) => {
                    let ms = (t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000;
                    if ms == 0 { Position::ZERO } else { Position { ms: ms - 1, seq: u64::MAX } }
                }
            };
            // The end is fixed when the call starts: replay returns what was
            // stored then, and ends.
            let end = self.store.describe(&req.topic).await?.last;
            Ok::<_, EventError>((after, end))
        }
        .await;
        let (mut after, end) = self.finish("Replay", started, r)?;
        let store = self.store.clone();
        let filter = (!req.aggregate_id.is_empty()).then_some(req.aggregate_id);
        let limit = if req.limit == 0 { usize::MAX } else { req.limit as usize };
        let (tx, rx) = mpsc::channel(64);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut sent = 0usize;
            while sent < limit && after < end {
                let page = tokio::select! {
                    p = store.read_range(&req.topic, after, REPLAY_PAGE) => p,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_status())).await;
                        return;
                    }
                };
                if page.is_empty() {
                    return;
                }
                for s in page {
                    after = s.position;
                    if s.position > end || sent >= limit {
                        return;
                    }
                    if filter.as_ref().is_some_and(|a| *a != s.envelope.subject) {
                        continue;
                    }
                    let msg = pb::ReplayResponse { position: s.position.to_string(), event: Some(s.envelope.into()) };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn append_to_aggregate(
        &self,
        req: Request<pb::AppendToAggregateRequest>,
    ) -> Result<Response<pb::AppendToAggregateResponse>, Status> {
        self.granted(&req, &req.get_ref().topic)?;
        let started = Instant::now();
        let r = self.append_inner(req.into_inner()).await;
        self.finish("AppendToAggregate", started, r).map(Response::new)
    }

    async fn read_aggregate(
        &self,
        req: Request<pb::ReadAggregateRequest>,
    ) -> Result<Response<pb::ReadAggregateResponse>, Status> {
        self.granted(&req, &req.get_ref().topic)?;
        let started = Instant::now();
        let req = req.into_inner();
        let r = async {
            validate_name("topic", &req.topic)?;
            if req.aggregate_id.is_empty() {
                return Err(EventError::InvalidArgument("aggregate_id: missing".into()));
            }
            let (version, events) = self.store.read_aggregate(&req.topic, &req.aggregate_id).await?;
            Ok(pb::ReadAggregateResponse { version, events: events.into_iter().map(Into::into).collect() })
        }
        .await;
        self.finish("ReadAggregate", started, r).map(Response::new)
    }

    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let r = async {
            validate_name("topic", &req.topic)?;
            let retention = retention_from(req.retention, self.store.settings().default_retention);
            let created = self.store.create_topic(&req.topic, retention).await?;
            Ok(pb::CreateTopicResponse { created })
        }
        .await;
        self.finish("CreateTopic", started, r).map(Response::new)
    }

    async fn describe_topic(
        &self,
        req: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        self.granted(&req, &req.get_ref().topic)?;
        let started = Instant::now();
        let req = req.into_inner();
        let r = async {
            validate_name("topic", &req.topic)?;
            let info = self.store.describe(&req.topic).await?;
            self.metrics.events.described(&info);
            Ok(description(info))
        }
        .await;
        self.finish("DescribeTopic", started, r).map(Response::new)
    }

    async fn reset_group(
        &self,
        req: Request<pb::ResetGroupRequest>,
    ) -> Result<Response<pb::ResetGroupResponse>, Status> {
        self.authz.group(Admitted::of(&req), &req.get_ref().topic, &req.get_ref().group)?;
        let started = Instant::now();
        let req = req.into_inner();
        let r = async {
            validate_name("topic", &req.topic)?;
            validate_name("group", &req.group)?;
            let position = match req.position.as_str() {
                "$" => None,
                "" => {
                    return Err(EventError::InvalidArgument("position: missing (\"0-0\", \"$\" or a position)".into()));
                }
                p => Some(p.parse()?),
            };
            self.store.reset_group(&req.topic, &req.group, position).await?;
            Ok(pb::ResetGroupResponse {})
        }
        .await;
        self.finish("ResetGroup", started, r).map(Response::new)
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        self.authz.group(Admitted::of(&req), &req.get_ref().topic, &req.get_ref().group)?;
        let started = Instant::now();
        let req = req.into_inner();
        let r = async {
            validate_name("topic", &req.topic)?;
            validate_name("group", &req.group)?;
            self.store.delete_group(&req.topic, &req.group).await?;
            Ok(pb::DeleteGroupResponse {})
        }
        .await;
        self.finish("DeleteGroup", started, r).map(Response::new)
    }
}

//! Who may call what on control's gRPC API, decided in one place.
//!
//! Every call goes through [`layer::AuthzLayer`] in front of all services:
//! it names the caller ([`caller`]: a workload by its mTLS certificate, an
//! operator by a bearer token, else anonymous), finds the method's rule in
//! [`rules::RULES`] (no rule: refused) and refuses what the rule alone
//! decides. Rules that depend on the request (the service a workload acts
//! for, the topics of a publish) are decided here too, by [`Authz`]'s
//! checks, which the services call with the name once they have decoded it:
//! the caller and its rule ride with the request ([`Admitted`]).
//!
//! Refusals are `UNAUTHENTICATED` (no or bad credential) or
//! `PERMISSION_DENIED` (a known caller the rule does not admit), with a
//! message naming the caller and the rule; each is counted in
//! `redfire_control_authz_denied_total{api,method,reason}` and logged at
//! most once per caller per minute.
//!
//! With `dev_insecure_control` nobody is checked (and control says so loudly).

pub mod caller;
pub mod event_acl;
pub mod layer;
pub mod oidc;
pub mod rules;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tonic::{Code, Status};

use self::caller::{Authenticator, Caller};
use self::event_acl::EventAcl;
use self::rules::{MethodRule, Rule};
use crate::control::metrics::DeniedLabels;
use crate::mesh::policy::topics::Action;

/// How often one caller's refusals are logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What the layer attaches to an admitted call.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// Who is calling.
    pub caller: Caller,
    /// The method's rule.
    pub rule: &'static MethodRule,
}

impl Admitted {
    /// What the layer attached to `req` (`None`: it did not go through the
    /// layer, and every check refuses it).
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&Admitted> {
        req.extensions().get::<Admitted>()
    }
}

/// A refusal before it is counted.
#[derive(Debug)]
struct Denial {
    code: Code,
    reason: &'static str,
    message: String,
}

/// See the module docs.
#[derive(Debug)]
pub struct Authz {
    /// `None` with `dev_insecure_control`.
    authenticator: Option<Authenticator>,
    /// The event bus ACL in force.
    pub acl: Arc<EventAcl>,
    denied: Family<DeniedLabels, Counter>,
    logged: Mutex<HashMap<String, Instant>>,
}

impl Authz {
    /// Checks callers with `authenticator` (`None`: nobody is checked).
    pub fn new(
        authenticator: Option<Authenticator>,
        acl: Arc<EventAcl>,
        denied: Family<DeniedLabels, Counter>,
    ) -> Self {
        Authz { authenticator, acl, denied, logged: Mutex::default() }
    }

    /// The layer's decision for one call.
    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        workload: Option<&Arc<caller::Workload>>,
    ) -> Result<Admitted, Status> {
        let rule = rules::lookup(path);
        let Some(authenticator) = &self.authenticator else {
            // Unchecked: still only the methods that have a rule.
            return match rule {
                Some(rule) => Ok(Admitted { caller: Caller::Unchecked, rule }),
                None => Err(self.refuse(None, &Caller::Unchecked, no_rule(path))),
            };
        };
        let caller = match authenticator.caller(headers, workload) {
            Ok(c) => c,
            Err(e) => {
                let d = Denial { code: Code::Unauthenticated, reason: "bad_credential", message: e.0 };
                return Err(self.refuse(rule, &Caller::Anonymous, d));
            }
        };
        let Some(rule) = rule else { return Err(self.refuse(None, &caller, no_rule(path))) };
        match method_decision(&caller, rule) {
            Ok(()) => Ok(Admitted { caller, rule }),
            Err(d) => Err(self.refuse(Some(rule), &caller, d)),
        }
    }

    /// For [`Rule::OwnService`]: the call acts for `service`.
    pub fn service(&self, call: Option<&Admitted>, service: &str) -> Result<(), Status> {
        self.acts_for(call, Some(service), || format!("service {service:?}"))
    }

    /// For [`Rule::OwnService`] when the request names a lease: `owner`
    /// finds the lease's service (or the store's error for an unknown lease),
    /// asked only for a workload; operators pass or fail on their role.
    pub fn lease(
        &self,
        call: Option<&Admitted>,
        lease: u64,
        owner: impl FnOnce() -> Result<String, Status>,
    ) -> Result<(), Status> {
        if let Some(Caller::Workload(_)) = call.map(|a| &a.caller) {
            let service = owner()?;
            return self.acts_for(call, Some(&service), || format!("lease {lease} (service {service:?})"));
        }
        self.acts_for(call, None, || format!("lease {lease}"))
    }

    fn acts_for(
        &self,
        call: Option<&Admitted>,
        service: Option<&str>,
        what: impl FnOnce() -> String,
    ) -> Result<(), Status> {
        self.decide(call, |a| match (&a.caller, a.rule.rule) {
            (Caller::Unchecked, _) => Ok(()),
            (Caller::Workload(w), _) if Some(w.service.as_str()) == service => Ok(()),
            (Caller::Operator(_), Rule::OwnService { operator: None }) => Ok(()),
            (c, Rule::OwnService { operator: Some(role) }) if c.has_role(role) => Ok(()),
            (c, Rule::OwnService { operator }) => Err(Denial {
                code: Code::PermissionDenied,
                reason: "other_service",
                message: format!(
                    "{}: {} may not act for {}: rule: {}",
                    a.rule.method,
                    c.describe(),
                    what(),
                    own_service_rule(operator)
                ),
            }),
            (_, other) => Err(misapplied(a.rule, other)),
        })
    }

    /// For [`Rule::Topics`]: the call uses `topics`.
    pub fn topics<'t>(&self, call: Option<&Admitted>, topics: impl IntoIterator<Item = &'t str>) -> Result<(), Status> {
        self.decide(call, |a| {
            let Rule::Topics(action) = a.rule.rule else { return Err(misapplied(a.rule, a.rule.rule)) };
            self.granted(a, action, topics)
        })
    }

    /// For [`Rule::OwnGroup`]: the call manages `group` of `topic`.
    pub fn group(&self, call: Option<&Admitted>, topic: &str, group: &str) -> Result<(), Status> {
        self.decide(call, |a| {
            if a.rule.rule != Rule::OwnGroup {
                return Err(misapplied(a.rule, a.rule.rule));
            }
            match &a.caller {
                Caller::Workload(w) if group == w.service || group.strip_prefix(w.service.as_str()).is_some_and(|r| r.starts_with('.')) => {
                    self.granted(a, Action::Subscribe, [topic])
                }
                Caller::Unchecked => Ok(()),
                c if c.has_role("events-admin") => Ok(()),
                c => Err(Denial {
                    code: Code::PermissionDenied,
                    reason: "group_not_owned",
                    message: format!(
                        "{}: {} may not manage group {group:?}: rule: operator role events-admin, or a workload for a group named after its service (<service> or <service>.…)",
                        a.rule.method,
                        c.describe()
                    ),
                }),
            }
        })
    }

    /// The event bus ACL's decision for `action` on every one of `topics`.
    fn granted<'t>(
        &self,
        a: &Admitted,
        action: Action,
        topics: impl IntoIterator<Item = &'t str>,
    ) -> Result<(), Denial> {
        if matches!(a.caller, Caller::Unchecked) || a.caller.has_role("events-admin") {
            return Ok(());
        }
        let acl = self.acl.current();
        for topic in topics {
            let granted = crate::mesh::policy::topics::allowed(&acl.rules, topic, action, |p| match &a.caller {
                Caller::Workload(w) => p == w.service,
                Caller::Operator(o) => p.strip_prefix("role:").is_some_and(|r| o.roles.contains(&r)),
                _ => false,
            });
            if !granted {
                return Err(Denial {
                    code: Code::PermissionDenied,
                    reason: "topic_not_granted",
                    message: format!(
                        "{}: {} may not {} topic {topic:?}: {} (event_acl of the {:?} policy, version {})",
                        a.rule.method,
                        a.caller.describe(),
                        action.as_str(),
                        match acl.rules.iter().find(|r| r.name.matches(topic)) {
                            Some(r) => format!("rule {:?} does not list it", r.name.0),
                            None => "no rule matches the topic (default deny)".into(),
                        },
                        crate::mesh::policy::CONTROL_POLICY,
                        acl.version
                    ),
                });
            }
        }
        Ok(())
    }

    /// For `IssueCertificate`: the credential grants `spiffe_id`; the CSR
    /// may name no identity or exactly that one (`requested`: the names it
    /// asks for), and a workload calling with its certificate may obtain
    /// only its own identity.
    pub fn identity(&self, call: Option<&Admitted>, spiffe_id: &str, requested: &[String]) -> Result<(), Status> {
        self.decide(call, |a| {
            let refuse = |what: String| Denial {
                code: Code::PermissionDenied,
                reason: "other_service",
                message: format!("IssueCertificate: {what}: rule: a workload signs only a CSR for its own identity"),
            };
            if let Some(other) = requested.iter().find(|n| *n != spiffe_id) {
                return Err(refuse(format!("the CSR asks for {other} but the credential grants {spiffe_id}")));
            }
            match &a.caller {
                Caller::Workload(w) if w.spiffe_id != spiffe_id => {
                    Err(refuse(format!("{} may not obtain a certificate for {spiffe_id}", a.caller.describe())))
                }
                _ => Ok(()),
            }
        })
    }

    fn decide(&self, call: Option<&Admitted>, f: impl FnOnce(&Admitted) -> Result<(), Denial>) -> Result<(), Status> {
        let Some(admitted) = call else {
            // Not through the layer: default deny.
            return Err(Status::permission_denied("not admitted by control's authorization layer"));
        };
        f(admitted).map_err(|d| self.refuse(Some(admitted.rule), &admitted.caller, d))
    }

    fn refuse(&self, rule: Option<&MethodRule>, caller: &Caller, d: Denial) -> Status {
        let (api, method) = rule.map(|r| (r.api, r.method)).unwrap_or(("unknown", "unknown"));
        self.denied.get_or_create(&DeniedLabels { api, method, reason: d.reason }).inc();
        let who = caller.describe();
        let log = {
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            if logged.len() > 10_000 {
                logged.clear();
            }
            let now = Instant::now();
            match logged.get(&who) {
                Some(at) if now.duration_since(*at) < LOG_EVERY => false,
                _ => {
                    logged.insert(who.clone(), now);
                    true
                }
            }
        };
        if log {
            tracing::warn!(caller = %who, api, method, reason = d.reason, "refused: {} (further refusals of this caller are counted, not logged, for a minute)", d.message);
        }
        Status::new(d.code, d.message)
    }
}

/// What the rule alone decides.
fn method_decision(caller: &Caller, rule: &MethodRule) -> Result<(), Denial> {
    if rule.rule == Rule::Public {
        return Ok(());
    }
    match caller {
        Caller::Anonymous => Err(Denial {
            code: Code::Unauthenticated,
            reason: "no_credential",
            message: format!(
                "{}: no credential; present a workload certificate (mTLS) or an operator token (authorization: Bearer, from `redfire-control token operator`)",
                rule.method
            ),
        }),
        Caller::Bootstrap(b) => Err(Denial {
            code: Code::Unauthenticated,
            reason: "bootstrap_token_misused",
            message: format!(
                "{}: a bootstrap token (for {}) is accepted only by IssueCertificate, in its bootstrap_token field",
                rule.method, b.spiffe_id
            ),
        }),
        Caller::Unchecked => Ok(()),
        c => match rule.rule {
            Rule::Role(role) if !c.has_role(role) => Err(Denial {
                code: Code::PermissionDenied,
                reason: "role_missing",
                message: format!("{}: {} is not admitted: rule: operator role {role}", rule.method, c.describe()),
            }),
            _ => Ok(()),
        },
    }
}

fn no_rule(path: &str) -> Denial {
    Denial {
        code: Code::PermissionDenied,
        reason: "no_rule",
        message: format!("{path}: no authorization rule for this method (default deny)"),
    }
}

fn own_service_rule(operator: Option<&str>) -> String {
    match operator {
        Some(role) => format!("a workload acts only for its own service; operators need role {role}"),
        None => "a workload reads only its own service's policy; operators may read any".into(),
    }
}

fn misapplied(rule: &MethodRule, actual: Rule) -> Denial {
    Denial {
        code: Code::PermissionDenied,
        reason: "no_rule",
        message: format!("{}: checked against the wrong rule ({actual:?}); refusing", rule.method),
    }
}

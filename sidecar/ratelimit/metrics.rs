//! Per-rule rate-limit metrics (prometheus-client), registered into the
//! sidecar's registry under `redfire_sidecar_ratelimit_*`:
//!
//! | metric | labels | counts |
//! |---|---|---|
//! | `allowed_total` | rule | requests admitted by the rule (including fail-open admissions) |
//! | `limited_total` | rule | requests answered 429 / RESOURCE_EXHAUSTED |
//! | `store_errors_total` | rule | Redis calls that failed or timed out |
//! | `store_unavailable_total` | rule, mode | decisions taken by the failure mode (`open` admits, `closed` answers 503) |
//! | `mode_switches_total` | rule, to | switches to the failure mode (`to="fallback"`) and back (`to="store"`) |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A rule's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The rule name.
    pub rule: String,
}

/// Labels of fail-mode decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// The rule name.
    pub rule: String,
    /// `open` or `closed`.
    pub mode: &'static str,
}

/// Labels of mode switches.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchLabels {
    /// The rule name.
    pub rule: String,
    /// `fallback` or `store`.
    pub to: &'static str,
}

/// One rule's counters, looked up once when the limiter is built so a check
/// increments atomics without a label lookup.
#[derive(Clone, Debug)]
pub(super) struct RuleCounters {
    pub(super) allowed: Counter,
    pub(super) limited: Counter,
    pub(super) store_errors: Counter,
    pub(super) open: Counter,
    pub(super) closed: Counter,
    pub(super) to_fallback: Counter,
    pub(super) to_store: Counter,
}

/// Every rate-limit metric. Clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct RateLimitMetrics {
    allowed: Family<RuleLabels, Counter>,
    limited: Family<RuleLabels, Counter>,
    store_errors: Family<RuleLabels, Counter>,
    unavailable: Family<ModeLabels, Counter>,
    switches: Family<SwitchLabels, Counter>,
}

fn rule(name: &str) -> RuleLabels {
    RuleLabels { rule: name.to_string() }
}

impl RateLimitMetrics {
    /// Adds the metrics to `registry` under the `ratelimit` prefix (so in the
    /// sidecar's registry they are `redfire_sidecar_ratelimit_*`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ratelimit");
        r.register("allowed", "requests admitted, per rule", self.allowed.clone());
        r.register("limited", "requests rejected with 429 / RESOURCE_EXHAUSTED, per rule", self.limited.clone());
        r.register(
            "store_errors",
            "rate-limit store calls that failed or timed out, per rule",
            self.store_errors.clone(),
        );
        r.register(
            "store_unavailable",
            "decisions taken by the failure mode while the store is failing, per rule and mode",
            self.unavailable.clone(),
        );
        r.register(
            "mode_switches",
            "switches to the failure mode and back to the store, per rule",
            self.switches.clone(),
        );
    }

    /// Prometheus text of these metrics alone, as `redfire_sidecar_ratelimit_*`.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("redfire_sidecar");
        self.register(&mut registry);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// The counters of rule `name`.
    pub(super) fn rule(&self, name: &str) -> RuleCounters {
        // One statement per lookup: `get_or_create` returns a read guard,
        // and a guard still alive (a temporary of the same statement) would
        // deadlock the next insertion into the same family.
        let allowed = self.allowed.get_or_create(&rule(name)).clone();
        let limited = self.limited.get_or_create(&rule(name)).clone();
        let store_errors = self.store_errors.get_or_create(&rule(name)).clone();
        let open = self.unavailable.get_or_create(&ModeLabels { rule: name.to_string(), mode: "open" }).clone();
        let closed = self.unavailable.get_or_create(&ModeLabels { rule: name.to_string(), mode: "closed" }).clone();
        let to_fallback = self.switches.get_or_create(&SwitchLabels { rule: name.to_string(), to: "fallback" }).clone();
        let to_store = self.switches.get_or_create(&SwitchLabels { rule: name.to_string(), to: "store" }).clone();
        RuleCounters { allowed, limited, store_errors, open, closed, to_fallback, to_store }
    }

    /// The value of one counter, for tests: `metric` is `allowed`, `limited`
    /// or `store_errors`.
    pub fn count(&self, metric: &str, name: &str) -> u64 {
        let family = match metric {
            "allowed" => &self.allowed,
            "limited" => &self.limited,
            "store_errors" => &self.store_errors,
            _ => return 0,
        };
        family.get_or_create(&rule(name)).get()
    }

    /// Mode switches of a rule to `fallback` or back to `store`, for tests.
    pub fn switches(&self, name: &str, to: &'static str) -> u64 {
        self.switches.get_or_create(&SwitchLabels { rule: name.to_string(), to }).get()
    }
}

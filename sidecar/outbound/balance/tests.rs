//! Behaviour of the policies through the public [`Balancer`], including the
//! property tests the data path relies on.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn endpoint(id: &str, weight: u32, zone: &str) -> Endpoint {
    Endpoint::new(id, Address::new("10.0.0.1", 8080), weight, zone)
}

fn set(weights: &[u32]) -> Vec<Endpoint> {
    weights.iter().enumerate().map(|(i, &w)| endpoint(&format!("e{i}"), w, "")).collect()
}

fn balancer(policy: Policy, endpoints: Vec<Endpoint>) -> Balancer {
    Balancer::new(endpoints, BalanceConfig { policy, ..BalanceConfig::default() })
}

fn counts(b: &Balancer, picks: usize, ctx: &PickContext<'_>) -> Vec<usize> {
    let mut counts = vec![0; b.endpoints().len()];
    for _ in 0..picks {
        counts[b.pick(ctx).expect("an endpoint").index()] += 1;
    }
    counts
}

/// Where each of `keys` goes, by endpoint id.
fn placement(b: &Balancer, keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            let idx = b.pick(&PickContext::new().with_hash_key(k.as_bytes())).expect("an endpoint");
            b.endpoint(idx).expect("own index").id.clone()
        })
        .collect()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

const ALL: [Policy; 6] = [
    Policy::RoundRobin,
    Policy::WeightedRoundRobin,
    Policy::LeastRequest,
    Policy::PeakEwma,
    Policy::RingHash,
    Policy::Maglev,
];

#[test]
fn an_empty_set_picks_nothing() {
    for policy in ALL {
        let b = balancer(policy, vec![]);
        assert_eq!(b.pick(&PickContext::new()), None, "{policy:?}");
        assert_eq!(b.pick(&PickContext::new().with_hash_key(b"k")), None, "{policy:?}");
        assert!(b.start(EndpointIdx::new(0)).is_none());
    }
}

#[test]
fn nothing_available_picks_nothing() {
    let none = |_: EndpointIdx| false;
    for policy in ALL {
        let b = balancer(policy, set(&[1, 2, 3]));
        assert_eq!(b.pick(&PickContext::new().with_filter(&none)), None, "{policy:?}");
        assert_eq!(b.pick(&PickContext::new().with_filter(&none).with_hash_key(b"k")), None, "{policy:?}");
    }
}

#[test]
fn duplicate_ids_are_dropped() {
    let b = balancer(Policy::RoundRobin, vec![endpoint("a", 1, ""), endpoint("b", 1, ""), endpoint("a", 9, "")]);
    assert_eq!(b.endpoints().len(), 2);
    assert_eq!(b.endpoints()[0].weight, 1, "the first one wins");
}

#[test]
fn least_request_avoids_busy_endpoints_and_follows_weights_when_idle() {
    fastrand::seed(5);
    let b = balancer(Policy::LeastRequest, set(&[1, 1]));
    let busy: Vec<RequestLoad> = (0..3).map(|_| b.start(EndpointIdx::new(0)).expect("own index")).collect();
    assert_eq!(b.outstanding(EndpointIdx::new(0)), Some(3));
    assert_eq!(counts(&b, 200, &PickContext::new()), [0, 200], "two endpoints: both are always compared");
    drop(busy);

    let b = balancer(Policy::LeastRequest, set(&[1, 3]));
    let c = counts(&b, 4000, &PickContext::new());
    assert!((800..1200).contains(&c[0]), "weights 1:3 at idle, got {c:?}");
}

/// Sequential requests with paused time: each takes its endpoint's latency
/// and ends with its feedback. Returns picks per endpoint.
async fn serve(b: &Balancer, requests: usize, latency: &[Duration], feedback: &[Feedback]) -> Vec<usize> {
    let mut counts = vec![0; latency.len()];
    for _ in 0..requests {
        let idx = b.pick(&PickContext::new()).expect("an endpoint");
        counts[idx.index()] += 1;
        let load = b.start(idx).expect("own index");
        tokio::time::advance(latency[idx.index()]).await;
        load.finish(feedback[idx.index()]);
    }
    counts
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn peak_ewma_steers_away_from_a_slow_endpoint() {
    fastrand::seed(9);
    let b = balancer(Policy::PeakEwma, set(&[1, 1, 1]));
    let ok = [Feedback::Responded; 3];
    let c = serve(&b, 300, &[10 * MS, 500 * MS, 10 * MS], &ok).await;
    assert!(c[1] <= 3, "the 500 ms endpoint got {c:?}");
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_steers_away_from_an_endpoint_shedding_load() {
    fastrand::seed(10);
    let latency = [10 * MS, 1 * MS, 10 * MS];
    // Control: fast and answering, endpoint 1 wins most pairs it is in.
    let b = balancer(Policy::PeakEwma, set(&[1, 1, 1]));
    let c = serve(&b, 300, &latency, &[Feedback::Responded; 3]).await;
    assert!(c[1] > 150, "the fast endpoint should attract traffic: {c:?}");
    // Fast but answering RESOURCE_EXHAUSTED: it must not.
    let b = balancer(Policy::PeakEwma, set(&[1, 1, 1]));
    let shed = [Feedback::Responded, Feedback::Overloaded, Feedback::Responded];
    let c = serve(&b, 300, &latency, &shed).await;
    assert!(c[1] <= 3, "the shedding endpoint got {c:?}");
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_tries_a_penalized_endpoint_again_once_it_decays() {
    fastrand::seed(11);
    let b = balancer(Policy::PeakEwma, set(&[1, 1]));
    b.start(EndpointIdx::new(0)).expect("own index").finish(Feedback::Overloaded);
    let start = tokio::time::Instant::now();
    // Endpoint 1 keeps answering in 30 ms; the 1 s penalty on endpoint 0
    // decays below that after 10 s × ln(1 s / 30 ms) ≈ 35 s.
    let first_retry = loop {
        let idx = b.pick(&PickContext::new()).expect("an endpoint");
        if idx.index() == 0 {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "endpoint 0 was never tried again");
        let load = b.start(idx).expect("own index");
        tokio::time::advance(30 * MS).await;
        load.finish(Feedback::Responded);
    };
    assert!(first_retry > Duration::from_secs(34) && first_retry < Duration::from_secs(36), "{first_retry:?}");
}

#[test]
fn zone_preference_stays_local_while_enough_are_up() {
    fastrand::seed(12);
    let endpoints = vec![
        endpoint("a", 1, "eu-1a"),
        endpoint("b", 1, "eu-1b"),
        endpoint("c", 1, "eu-1a"),
        endpoint("d", 1, "eu-1b"),
        endpoint("e", 1, "eu-1a"),
    ];
    for policy in [Policy::RoundRobin, Policy::PeakEwma, Policy::Maglev] {
        let config = BalanceConfig { policy, zone: Some(ZonePreference::new("eu-1a")), ..BalanceConfig::default() };
        let b = Balancer::new(endpoints.clone(), config);
        let c = counts(&b, 300, &PickContext::new());
        assert_eq!(c[1] + c[3], 0, "{policy:?}: {c:?}");
        assert!(c[0] > 0 && c[2] > 0 && c[4] > 0, "{policy:?}: {c:?}");
        // One local endpoint left (a): below half of the zone's 3, spread over all.
        let only_a_local = |i: EndpointIdx| ![2, 4].contains(&i.index());
        let c = counts(&b, 300, &PickContext::new().with_filter(&only_a_local));
        assert!(c[1] > 0 && c[3] > 0 && c[2] + c[4] == 0, "{policy:?}: {c:?}");
    }
}

#[test]
fn zone_preference_counts_registered_but_not_serving_instances_as_down() {
    fastrand::seed(14);
    // Two local endpoints serving, but four registered in the zone (two
    // report NOT_SERVING and are not in the set): 2 of 4 is exactly the
    // default half, so stay; one ejection more and the zone spills over.
    let endpoints = vec![
        endpoint("a", 1, "eu-1a"),
        endpoint("b", 1, "eu-1b"),
        endpoint("c", 1, "eu-1a"),
        endpoint("d", 1, "eu-1b"),
    ];
    let config = BalanceConfig { zone: Some(ZonePreference::new("eu-1a")), ..BalanceConfig::default() };
    let b = Balancer::with_zone_registered(endpoints.clone(), config.clone(), 4);
    let c = counts(&b, 200, &PickContext::new());
    assert_eq!(c[1] + c[3], 0, "{c:?}");
    let c_ejected = |i: EndpointIdx| i.index() != 2;
    let c = counts(&b, 200, &PickContext::new().with_filter(&c_ejected));
    assert!(c[1] > 0 && c[3] > 0, "1 of 4 up is under half: {c:?}");
    // With five registered, two up is under half already.
    let b = b.update_with_zone_registered(endpoints.clone(), 5);
    let c = counts(&b, 200, &PickContext::new());
    assert!(c[1] > 0 && c[3] > 0, "2 of 5: {c:?}");
    // A stricter threshold (all of the zone) spills as soon as one is out.
    let strict = ZonePreference { min_healthy_percent: 100, ..ZonePreference::new("eu-1a") };
    let b = Balancer::new(endpoints, BalanceConfig { zone: Some(strict), ..config });
    assert_eq!(counts(&b, 100, &PickContext::new())[1], 0);
    let c = counts(&b, 200, &PickContext::new().with_filter(&c_ejected));
    assert!(c[1] > 0, "{c:?}");
}

#[test]
fn zone_preference_thresholds() {
    let z = |pct| ZonePreference { min_healthy_percent: pct, ..ZonePreference::new("z") };
    assert_eq!(z(50).min_available(3), 2);
    assert_eq!(z(50).min_available(4), 2);
    assert_eq!(z(0).min_available(4), 1, "at least one");
    assert_eq!(z(100).min_available(7), 7);
    assert_eq!(z(200).min_available(7), 7, "capped at the whole zone");
}

#[test]
fn hash_policies_route_keys_across_zones() {
    let endpoints: Vec<Endpoint> = (0..6).map(|i| endpoint(&format!("e{i}"), 1, ["x", "y"][i % 2])).collect();
    for policy in [Policy::RingHash, Policy::Maglev] {
        let zoned = Balancer::new(
            endpoints.clone(),
            BalanceConfig { policy, zone: Some(ZonePreference::new("x")), ..BalanceConfig::default() },
        );
        let plain = balancer(policy, endpoints.clone());
        assert_eq!(placement(&zoned, &keys(500)), placement(&plain, &keys(500)), "{policy:?}");
    }
}

#[test]
fn hash_policies_fall_back_to_least_request_without_a_key() {
    fastrand::seed(13);
    for policy in [Policy::RingHash, Policy::Maglev] {
        let b = balancer(policy, set(&[1, 1, 1, 1]));
        let c = counts(&b, 400, &PickContext::new());
        assert!(c.iter().all(|&n| n > 50), "{policy:?}: {c:?}");
    }
}

#[test]
fn hash_policies_route_around_an_unavailable_endpoint_and_back() {
    for policy in [Policy::RingHash, Policy::Maglev] {
        let b = balancer(policy, set(&[1; 8]));
        let ks = keys(2000);
        let before = placement(&b, &ks);
        let e3_out = |i: EndpointIdx| i.index() != 3;
        let during: Vec<String> = ks
            .iter()
            .map(|k| {
                let ctx = PickContext::new().with_hash_key(k.as_bytes()).with_filter(&e3_out);
                let first = b.pick(&ctx).expect("an endpoint");
                assert_eq!(b.pick(&ctx), Some(first), "{policy:?}: a stable substitute");
                b.endpoint(first).expect("own index").id.clone()
            })
            .collect();
        for (was, now) in before.iter().zip(&during) {
            assert_ne!(now, "e3");
            if was != "e3" {
                assert_eq!(was, now, "{policy:?}: keys of available endpoints stay");
            }
        }
        assert_eq!(placement(&b, &ks), before, "{policy:?}: back once available");
    }
}

#[test]
fn ring_hash_with_small_equal_weights_moves_only_the_leavers_keys() {
    // Below the registry scale the set is scaled up to its largest weight;
    // with equal weights that stays put when one leaves.
    assert_eq!(kept_after_leaving(Policy::RingHash, &[3; 6], "e2", &keys(5000)), 1.0);
}

#[test]
fn update_keeps_the_load_of_endpoints_that_stay() {
    let b = balancer(Policy::LeastRequest, vec![endpoint("a", 1, ""), endpoint("b", 1, "")]);
    let in_flight = b.start(EndpointIdx::new(1)).expect("b");
    let b2 = b.update(vec![endpoint("c", 1, ""), endpoint("b", 1, "")]);
    assert_eq!(b2.outstanding(EndpointIdx::new(1)), Some(1));
    assert_eq!(b2.outstanding(EndpointIdx::new(0)), Some(0));
    drop(in_flight);
    assert_eq!(b2.outstanding(EndpointIdx::new(1)), Some(0), "the old balancer's request settles on the new");
}

fn weights() -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::vec(1u32..=20, 1..10)
}

proptest! {
    #![proptest_config(crate::proptest_config(128))]

    #[test]
    fn round_robin_visits_each_endpoint_once_per_cycle(n in 1usize..30, cycles in 1usize..5, seed: u64) {
        fastrand::seed(seed);
        let b = balancer(Policy::RoundRobin, set(&vec![7; n]));
        prop_assert_eq!(counts(&b, n * cycles, &PickContext::new()), vec![cycles; n]);
    }

    #[test]
    fn smooth_wrr_matches_weights_exactly_over_a_cycle(ws in weights(), cycles in 1usize..4) {
        let b = balancer(Policy::WeightedRoundRobin, set(&ws));
        let total: u32 = ws.iter().sum();
        let expected: Vec<usize> = ws.iter().map(|&w| w as usize * cycles).collect();
        prop_assert_eq!(counts(&b, total as usize * cycles, &PickContext::new()), expected);
    }

    #[test]
    fn smooth_wrr_shares_out_unavailable_turns_by_weight(ws in weights(), mask: u16) {
        let up = |i: EndpointIdx| mask & (1 << i.index()) != 0;
        let b = balancer(Policy::WeightedRoundRobin, set(&ws));
        let total: u32 = ws.iter().enumerate().filter(|&(i, _)| up(EndpointIdx::new(i))).map(|(_, &w)| w).sum();
        let expected: Vec<usize> =
            ws.iter().enumerate().map(|(i, &w)| if up(EndpointIdx::new(i)) { w as usize } else { 0 }).collect();
        let ctx = PickContext::new().with_filter(&up);
        prop_assert_eq!(counts(&b, total as usize, &ctx), expected);
    }

    #[test]
    fn least_request_shares_held_requests_by_weight(ws in proptest::collection::vec(1u32..=5, 2..8), seed: u64) {
        // Requests that stay in flight (long streams): candidates drawn by
        // weight and compared per unit of weight keep in-flight per weight
        // level (20 on average here).
        fastrand::seed(seed);
        let total: u32 = ws.iter().sum();
        let b = balancer(Policy::LeastRequest, set(&ws));
        let held: Vec<RequestLoad> = (0..total * 20)
            .map(|_| b.start(b.pick(&PickContext::new()).expect("an endpoint")).expect("own index"))
            .collect();
        let per_weight: Vec<f64> = ws
            .iter()
            .enumerate()
            .map(|(i, &w)| f64::from(b.outstanding(EndpointIdx::new(i)).expect("own index")) / f64::from(w))
            .collect();
        let (lo, hi) = per_weight.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        prop_assert!(hi <= 22.0 && lo >= 15.0, "in flight per weight {:?}", per_weight);
        drop(held);
    }

    #[test]
    fn peak_ewma_levels_held_requests_over_equal_endpoints(n in 2usize..10, seed: u64) {
        // Equal latency estimates: the cost is the in-flight count, and P2C
        // keeps the busiest endpoint within a couple of the average (20).
        // (Candidates are drawn uniformly, so weights shift traffic only
        // within pairs: an endpoint never gets more than 2/n of the picks.)
        fastrand::seed(seed);
        let b = balancer(Policy::PeakEwma, set(&vec![1; n]));
        let held: Vec<RequestLoad> = (0..n * 20)
            .map(|_| b.start(b.pick(&PickContext::new()).expect("an endpoint")).expect("own index"))
            .collect();
        let out: Vec<u32> = (0..n).map(|i| b.outstanding(EndpointIdx::new(i)).expect("own index")).collect();
        let (lo, hi) = (out.iter().min().copied().unwrap_or(0), out.iter().max().copied().unwrap_or(0));
        prop_assert!(hi <= 22 && lo >= 14, "in flight {:?}", out);
        drop(held);
    }

    #[test]
    fn no_policy_picks_an_unavailable_or_absent_endpoint(ws in weights(), mask: u16, seed: u64, key: Option<u32>) {
        fastrand::seed(seed);
        let up = |i: EndpointIdx| mask & (1 << i.index()) != 0;
        let key = key.map(|k| k.to_string());
        let any_up = (0..ws.len()).any(|i| up(EndpointIdx::new(i)));
        for policy in ALL {
            let b = balancer(policy, set(&ws));
            let mut ctx = PickContext::new().with_filter(&up);
            if let Some(key) = &key {
                ctx = ctx.with_hash_key(key.as_bytes());
            }
            for _ in 0..50 {
                match b.pick(&ctx) {
                    Some(idx) => {
                        prop_assert!(idx.index() < ws.len(), "{:?} picked an absent endpoint", policy);
                        prop_assert!(up(idx), "{:?} picked unavailable {:?}", policy, idx);
                    }
                    None => prop_assert!(!any_up, "{:?} found nothing but something was up", policy),
                }
            }
        }
    }
}

/// Share of the keys not on `gone` that map to the same endpoint after it left.
fn kept_after_leaving(policy: Policy, ws: &[u32], gone: &str, ks: &[String]) -> f64 {
    let b = balancer(policy, set(ws));
    let before = placement(&b, ks);
    let after = placement(&b.update(set(ws).into_iter().filter(|e| e.id != gone).collect()), ks);
    assert!(after.iter().all(|id| id != gone), "{policy:?}: a key still maps to the endpoint that left");
    let others: Vec<bool> =
        before.iter().zip(&after).filter(|(was, _)| *was != gone).map(|(was, now)| was == now).collect();
    others.iter().filter(|&&kept| kept).count() as f64 / others.len() as f64
}

/// The largest relative deviation of an endpoint's key count from its share
/// of the weight.
fn worst_spread(policy: Policy, ws: &[u32], ks: &[String]) -> f64 {
    let b = balancer(policy, set(ws));
    let mut per: HashMap<String, usize> = HashMap::new();
    for id in placement(&b, ks) {
        *per.entry(id).or_default() += 1;
    }
    let total: u32 = ws.iter().sum();
    ws.iter()
        .enumerate()
        .map(|(i, &w)| {
            let fair = ks.len() as f64 * f64::from(w) / f64::from(total);
            let got = per.get(&format!("e{i}")).copied().unwrap_or(0) as f64;
            (got - fair).abs() / fair
        })
        .fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(crate::proptest_config(24))]

    #[test]
    fn hash_policies_map_a_key_to_one_endpoint_whatever_the_order(
        ws in proptest::collection::vec(1u32..=300, 1..30),
        shuffle_seed: u64,
    ) {
        let ks = keys(2000);
        for policy in [Policy::RingHash, Policy::Maglev] {
            let b = balancer(policy, set(&ws));
            let first = placement(&b, &ks);
            prop_assert!(placement(&b, &ks) == first, "{:?}: placement changed between picks", policy);
            // Every sidecar must agree, whatever order discovery listed
            // the endpoints in.
            let mut shuffled = set(&ws);
            fastrand::Rng::with_seed(shuffle_seed).shuffle(&mut shuffled);
            prop_assert!(placement(&balancer(policy, shuffled), &ks) == first, "{:?}: depends on order", policy);
        }
    }

    #[test]
    fn ring_hash_moves_only_the_leavers_keys_at_registry_scale(
        ws in proptest::collection::vec(100u32..=300, 2..30),
        leaver in any::<prop::sample::Index>(),
    ) {
        // Weights at or above the registry default: each endpoint's points
        // depend on its own weight only, so no other key moves at all.
        let gone = format!("e{}", leaver.index(ws.len()));
        prop_assert_eq!(kept_after_leaving(Policy::RingHash, &ws, &gone, &keys(3000)), 1.0);
    }

    #[test]
    fn hash_policies_move_keys_only_to_an_endpoint_that_joins(
        ws in proptest::collection::vec(100u32..=300, 1..20),
        w in 100u32..=300,
    ) {
        let ks = keys(3000);
        for policy in [Policy::RingHash, Policy::Maglev] {
            let b = balancer(policy, set(&ws));
            let before = placement(&b, &ks);
            let mut grown = set(&ws);
            grown.push(endpoint("joiner", w, ""));
            let after = placement(&b.update(grown), &ks);
            let moved_elsewhere =
                before.iter().zip(&after).filter(|(was, now)| was != now && now.as_str() != "joiner").count();
            let share = moved_elsewhere as f64 / ks.len() as f64;
            // Ring hash: exactly none; Maglev's table reshuffles a little.
            let limit = if policy == Policy::RingHash { 0.0 } else { 0.05 };
            prop_assert!(share <= limit, "{:?}: {} of the keys moved between old endpoints", policy, share);
            prop_assert!(after.iter().any(|id| id == "joiner"), "{:?}: the joiner got no key", policy);
        }
    }

    #[test]
    fn maglev_keeps_nearly_all_other_keys_when_one_endpoint_leaves(
        ws in proptest::collection::vec(1u32..=300, 2..30),
        leaver in any::<prop::sample::Index>(),
    ) {
        let gone = format!("e{}", leaver.index(ws.len()));
        let kept = kept_after_leaving(Policy::Maglev, &ws, &gone, &keys(3000));
        prop_assert!(kept >= 0.9, "{} of the other keys stayed", kept);
    }

    #[test]
    fn hash_policies_spread_keys_by_weight(n in 2usize..12, w in 1u32..=300, ws in proptest::collection::vec(1u32..=4, 2..12)) {
        // Bounds from the point counts (ring: 256 per reference weight,
        // spread ~1/√points; Maglev: a table of 65537 slots) plus the noise
        // of 20 000 sample keys, with a margin.
        let ks = keys(20_000);
        let equal = vec![w; n];
        let ring = worst_spread(Policy::RingHash, &equal, &ks);
        prop_assert!(ring <= 0.35, "ring hash, {} equal endpoints: off by {}", n, ring);
        let maglev = worst_spread(Policy::Maglev, &equal, &ks);
        prop_assert!(maglev <= 0.1, "maglev, {} equal endpoints: off by {}", n, maglev);
        // Light endpoints get fewer ring points and so a coarser share.
        let ring = worst_spread(Policy::RingHash, &ws, &ks);
        prop_assert!(ring <= 0.65, "ring hash, weights {:?}: off by {}", ws, ring);
        let maglev = worst_spread(Policy::Maglev, &ws, &ks);
        prop_assert!(maglev <= 0.15, "maglev, weights {:?}: off by {}", ws, maglev);
    }
}

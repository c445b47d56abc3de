//! Outlier detection under consecutive failures, ejection times and the
//! ejection cap, with property tests of the invariants the balancer relies on.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::sidecar::outbound::balance::Address;

const SEC: Duration = Duration::from_secs(1);

fn endpoints(ids: &[&str]) -> Vec<Endpoint> {
    ids.iter().enumerate().map(|(i, id)| Endpoint::new(*id, Address::new("10.0.0.1", 8000 + i as u16), 1, "")).collect()
}

fn detector(n: usize) -> OutlierDetector {
    let ids: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    OutlierDetector::new(&endpoints(&ids), OutlierConfig::default())
}

fn fail(d: &OutlierDetector, i: usize, times: usize) {
    for _ in 0..times {
        d.try_admit(EndpointIdx::new(i)).expect("admitted").failure();
    }
}

/// Failures on `i` while it is admitted: stops counting once it is ejected.
fn fail_while_admitted(d: &OutlierDetector, i: usize, times: usize) {
    for _ in 0..times {
        if let Some(admission) = d.try_admit(EndpointIdx::new(i)) {
            admission.failure();
        }
    }
}

fn idx(i: usize) -> EndpointIdx {
    EndpointIdx::new(i)
}

#[tokio::test(start_paused = true)]
async fn ejects_after_exactly_five_consecutive_failures() {
    let d = detector(4);
    fail(&d, 0, 4);
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Healthy));
    assert!(d.is_available(idx(0)));
    fail(&d, 0, 1);
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Ejected(30 * SEC)));
    assert!(!d.is_available(idx(0)));
    assert!(d.try_admit(idx(0)).is_none());
    assert!(d.is_available(idx(1)), "the others are untouched");
    assert_eq!(d.ejected(), 1);
    assert_eq!(d.ejections(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_streak() {
    let d = detector(4);
    fail(&d, 0, 4);
    d.try_admit(idx(0)).expect("admitted").success();
    fail(&d, 0, 4);
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Healthy), "4 + 4 failures are not 5 in a row");
    fail(&d, 0, 1);
    assert!(!d.is_available(idx(0)));
}

#[tokio::test(start_paused = true)]
async fn ejection_lasts_30_s_then_a_failed_probe_ejects_for_60_s() {
    let d = detector(4);
    fail(&d, 0, 5);
    tokio::time::advance(30 * SEC - Duration::from_millis(1)).await;
    assert!(!d.is_available(idx(0)), "still ejected 1 ms before 30 s");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Probing));
    assert!(d.is_available(idx(0)));

    let probe = d.try_admit(idx(0)).expect("the trial request");
    assert!(!d.is_available(idx(0)), "one trial at a time");
    assert!(d.try_admit(idx(0)).is_none());
    probe.failure();
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Ejected(60 * SEC)));
    tokio::time::advance(60 * SEC).await;
    d.try_admit(idx(0)).expect("second trial").failure();
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Ejected(90 * SEC)));
    assert_eq!(d.ejections(), 3, "the first ejection and two failed trials");
    assert_eq!(d.update(&[]).ejections(), 3, "the count outlives endpoint-set updates");
}

#[tokio::test(start_paused = true)]
async fn a_successful_probe_makes_the_endpoint_healthy() {
    let d = detector(4);
    fail(&d, 0, 5);
    tokio::time::advance(30 * SEC).await;
    d.try_admit(idx(0)).expect("trial").success();
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Healthy));
    assert_eq!(d.ejected(), 0);
    let (a, b) = (d.try_admit(idx(0)), d.try_admit(idx(0)));
    assert!(a.is_some() && b.is_some(), "healthy again: any number of requests");
    // The streak starts from zero, and the next ejection is the second: 60 s.
    fail(&d, 0, 4);
    assert!(d.is_available(idx(0)));
    fail(&d, 0, 1);
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Ejected(60 * SEC)));
}

#[tokio::test(start_paused = true)]
async fn ejections_grow_to_the_300_s_cap_and_heal_with_time() {
    let d = detector(2);
    fail(&d, 0, 5);
    let mut lengths = vec![];
    for _ in 0..12 {
        let Some(EndpointHealth::Ejected(left)) = d.health(idx(0)) else { panic!("ejected") };
        lengths.push(left.as_secs());
        tokio::time::advance(left).await;
        d.try_admit(idx(0)).expect("trial").failure();
    }
    assert_eq!(lengths, [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]);

    // Recovered and healthy for 10 base periods: the count falls back from
    // 13 to 3, so the next ejection lasts 4 × 30 s.
    tokio::time::advance(300 * SEC).await;
    d.try_admit(idx(0)).expect("trial").success();
    tokio::time::advance(300 * SEC).await;
    fail(&d, 0, 5);
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Ejected(120 * SEC)));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_the_trial() {
    let d = detector(2);
    fail(&d, 0, 5);
    tokio::time::advance(30 * SEC).await;
    let probe = d.try_admit(idx(0)).expect("trial");
    assert!(d.try_admit(idx(0)).is_none());
    drop(probe);
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Probing));
    d.try_admit(idx(0)).expect("a new trial").success();
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Healthy));
}

#[tokio::test(start_paused = true)]
async fn never_ejects_more_than_half() {
    for (n, max) in [(1, 0), (2, 1), (3, 1), (5, 2), (10, 5)] {
        let d = detector(n);
        for i in 0..n {
            fail_while_admitted(&d, i, 20);
        }
        assert_eq!(d.ejected(), max, "{n} endpoints");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_ejection_happens_once_room_is_made() {
    let d = detector(2);
    fail(&d, 0, 5);
    fail(&d, 1, 7);
    assert!(d.is_available(idx(1)), "the other half is already out");
    tokio::time::advance(30 * SEC).await;
    d.try_admit(idx(0)).expect("trial").success();
    fail(&d, 1, 1);
    assert!(!d.is_available(idx(1)), "the streak went on and ejects as soon as it may");
}

#[tokio::test(start_paused = true)]
async fn reports_from_before_an_ejection_do_not_extend_or_end_it() {
    let d = detector(4);
    let early: Vec<Admission> = (0..2).map(|_| d.try_admit(idx(0)).expect("admitted")).collect();
    fail(&d, 0, 5);
    let mut early = early.into_iter();
    early.next().expect("first").success();
    early.next().expect("second").failure();
    assert_eq!(d.health(idx(0)), Some(EndpointHealth::Ejected(30 * SEC)));
}

#[tokio::test(start_paused = true)]
async fn state_follows_the_endpoint_across_set_updates() {
    let d = OutlierDetector::new(&endpoints(&["a", "b", "c"]), OutlierConfig::default());
    fail(&d, 1, 5);
    let early = d.try_admit(idx(0)).expect("admitted");
    // "b" moves from index 1 to 2; "a" leaves; "d" and "e" join.
    let d2 = d.update(&endpoints(&["c", "d", "b", "e"]));
    assert_eq!(d2.health(idx(2)), Some(EndpointHealth::Ejected(30 * SEC)));
    assert!(d2.is_available(idx(0)) && d2.is_available(idx(1)) && d2.is_available(idx(3)));
    // The half rule counts the new set: 4 endpoints, 2 may be out.
    fail(&d2, 1, 5);
    fail(&d2, 3, 5);
    assert_eq!(d2.ejected(), 2);
    // A request admitted by the old set reports without effect on the new.
    early.failure();
    assert_eq!(d2.ejected(), 2);
    assert_eq!(d2.health(idx(4)), None);
}

proptest! {
    #![proptest_config(crate::proptest_config(128))]

    #[test]
    fn never_more_than_half_ejected_whatever_happens(
        n in 1usize..12,
        events in proptest::collection::vec((0usize..12, any::<bool>()), 0..400),
    ) {
        let d = detector(n);
        for (i, failed) in events {
            if let Some(admission) = d.try_admit(idx(i % n)) {
                admission.report(failed);
            }
            prop_assert!(d.ejected() <= n / 2, "{} of {n} ejected", d.ejected());
            // Time stands still here: available means exactly "healthy".
            for j in 0..n {
                prop_assert_eq!(d.is_available(idx(j)), d.health(idx(j)) == Some(EndpointHealth::Healthy));
            }
        }
    }
}

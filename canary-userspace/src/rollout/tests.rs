use super::*;
use crate::domain::Group;
use crate::judge::tests::{lognormal_histogram, window};
use crate::upstream::Series;

const SECOND: u64 = 1000;

fn cfg() -> RolloutConfig {
    RolloutConfig::default()
}

fn up() -> UpstreamConfig {
    UpstreamConfig::default()
}

/// Canary behaviour for a test.
#[derive(Clone, Copy)]
struct Canary {
    error_rate: f64,
    shift_ms: f64,
    first_share: f64,
}

const HEALTHY: Canary = Canary {
    error_rate: 0.01,
    shift_ms: 0.0,
    first_share: 0.6,
};

/// One poll of `total` requests split by the rollout's weight.
fn poll(r: &Rollout, total: u64, canary: Canary) -> Poll {
    let n_c = (total as f64 * r.weight().ratio()).round() as u64;
    let n_s = total - n_c;
    let errors = |n: u64, rate: f64| (n as f64 * rate).round() as u64;
    let stable = window(
        n_s,
        errors(n_s, 0.01),
        lognormal_histogram(n_s, 100.0, 0.5, 0.0),
        0.6,
    );
    let canary = window(
        n_c,
        errors(n_c, canary.error_rate),
        lognormal_histogram(n_c, 100.0, 0.5, canary.shift_ms),
        canary.first_share,
    );
    Poll {
        backends: vec![
            BackendPoll {
                group: Group::Stable,
                backend: "v1-a".into(),
                window: stable.clone(),
            },
            BackendPoll {
                group: Group::Canary,
                backend: "v2-a".into(),
                window: canary.clone(),
            },
        ],
        stable,
        canary,
        flows: FlowCounts {
            stable: n_s,
            canary: n_c,
        },
        ..Poll::default()
    }
}

fn started(cfg: &RolloutConfig) -> Rollout {
    let (mut r, out) = Rollout::new(0, vec!["v2-a@198.18.0.21".into()], cfg);
    assert!(out.warm_up);
    assert_eq!((r.phase(), out.weight), (Phase::Pending, Weight::ZERO));
    let out = r.on_event(0, Event::WarmupDone, cfg, &up());
    assert_eq!(
        (r.phase(), out.weight.basis_points()),
        (Phase::Stepping, 1000)
    );
    r
}

/// Polls every second (evaluating when due) until a decision that is not a hold, or
/// `seconds` pass. Returns the time and that output.
fn drive(
    r: &mut Rollout,
    cfg: &RolloutConfig,
    from: u64,
    seconds: u64,
    total: u64,
    canary: Canary,
) -> (u64, Option<Output>) {
    for s in 1..=seconds {
        let t = from + s * SECOND;
        let p = poll(r, total, canary);
        let out = r.on_event(t, Event::Poll(p), cfg, &up());
        if out.decision.is_some() {
            return (t, Some(out));
        }
        if r.evaluation_due(t, cfg) {
            let out = r.on_event(t, Event::Evaluate, cfg, &up());
            if out
                .decision
                .as_ref()
                .is_some_and(|d| d.action != DecisionAction::Hold)
            {
                return (t, Some(out));
            }
        }
    }
    (from + seconds * SECOND, None)
}

#[test]
fn healthy_canary_is_promoted_through_every_step() {
    let cfg = cfg();
    let mut r = started(&cfg);
    let mut t = 0;
    let mut weights = vec![r.weight().basis_points()];
    while r.phase() == Phase::Stepping {
        let (at, out) = drive(&mut r, &cfg, t, 600, 2000, HEALTHY);
        let out = out.expect("a decision within 10 minutes");
        let d = out.decision.unwrap();
        assert_eq!(d.reason, Reason::Healthy, "{d}");
        assert_eq!(
            at - t,
            15 * SECOND,
            "a step lasts one interval when the data suffice by then"
        );
        weights.push(out.weight.basis_points());
        t = at;
    }
    assert_eq!(weights, [1000, 2500, 5000, 7500, 10000]);
    assert_eq!(r.phase(), Phase::Promoted);
    assert_eq!(r.last_decision().unwrap().action, DecisionAction::Promote);
    assert_eq!(r.step(&cfg), Some(4));
    assert_eq!(r.windows(), 5);
}

fn rolls_back_on(canary: Canary, expected: &[Reason]) {
    let cfg = cfg();
    let mut r = started(&cfg);
    let (_, out) = drive(&mut r, &cfg, 0, 600, 2000, canary);
    let out = out.expect("a decision");
    let d = out.decision.unwrap();
    assert_eq!(d.action, DecisionAction::Rollback, "{d}");
    assert!(expected.contains(&d.reason), "{d}");
    assert_eq!(
        (out.weight, r.phase(), out.reset_epoch),
        (Weight::ZERO, Phase::RolledBack, false)
    );
    assert_eq!(d.from.basis_points(), 1000, "caught at the first step");
    assert!(d.judgement.is_some());
}

#[test]
fn rolls_back_on_error_rate() {
    rolls_back_on(
        Canary {
            error_rate: 0.04,
            ..HEALTHY
        },
        &[Reason::ErrorRate],
    );
}

#[test]
fn rolls_back_on_latency() {
    rolls_back_on(
        Canary {
            shift_ms: 100.0,
            ..HEALTHY
        },
        &[Reason::LatencyMean, Reason::LatencyP95],
    );
}

#[test]
fn rolls_back_on_prediction_shift() {
    rolls_back_on(
        Canary {
            first_share: 0.8,
            ..HEALTHY
        },
        &[Reason::PredictionShift],
    );
}

#[test]
fn reset_mode_asks_for_a_new_epoch() {
    let cfg = RolloutConfig {
        rollback: RollbackMode::Reset,
        ..cfg()
    };
    let mut r = started(&cfg);
    let out = r.on_action(5 * SECOND, Action::Rollback, &cfg).unwrap();
    assert!(out.reset_epoch);
    assert!(out.decision.unwrap().message.contains("reset"));
}

#[test]
fn error_spike_rolls_back_within_one_poll() {
    let cfg = cfg();
    let mut r = started(&cfg);
    // First poll after the warm-up is left out; the next healthy poll is fine.
    for s in 1..=2 {
        let out = r.on_event(
            s * SECOND,
            Event::Poll(poll(&r, 2000, HEALTHY)),
            &cfg,
            &up(),
        );
        assert!(out.decision.is_none());
    }
    let out = r.on_event(
        3 * SECOND,
        Event::Poll(poll(
            &r,
            2000,
            Canary {
                error_rate: 0.3,
                ..HEALTHY
            },
        )),
        &cfg,
        &up(),
    );
    let d = out.decision.expect("rolled back on this poll");
    assert_eq!(
        (d.action, d.reason, out.weight),
        (DecisionAction::Rollback, Reason::ErrorSpike, Weight::ZERO),
        "{d}"
    );
    assert!(
        d.message
            .contains("60 errors of 200 canary requests against 18 of 1800 stable"),
        "{d}"
    );
}

/// A canary that starts failing after many healthy polls: its own runs of polls, before and
/// after the change, must not read as clustering that blunts the spike test (the spike takes
/// stable's design effect).
#[test]
fn error_spike_after_many_healthy_polls_rolls_back_within_one_poll() {
    let cfg = cfg();
    let mut r = started(&cfg);
    for s in 1..=12 {
        let out = r.on_event(
            s * SECOND,
            Event::Poll(poll(&r, 2000, HEALTHY)),
            &cfg,
            &up(),
        );
        assert!(out.decision.is_none());
    }
    let out = r.on_event(
        13 * SECOND,
        Event::Poll(poll(
            &r,
            2000,
            Canary {
                error_rate: 0.3,
                ..HEALTHY
            },
        )),
        &cfg,
        &up(),
    );
    let d = out.decision.expect("rolled back on this poll");
    assert_eq!(
        (d.action, d.reason, out.weight),
        (DecisionAction::Rollback, Reason::ErrorSpike, Weight::ZERO),
        "{d}"
    );
}

#[test]
fn holds_below_min_samples() {
    let cfg = cfg();
    let mut r = started(&cfg);
    // 100 requests a second: the canary gets 10, below 1000 per step in 60 s. Twice stable's
    // error rate is not strong enough evidence with so few requests.
    let (_, out) = drive(
        &mut r,
        &cfg,
        0,
        60,
        100,
        Canary {
            error_rate: 0.02,
            ..HEALTHY
        },
    );
    assert!(out.is_none(), "no decision but holds");
    let d = r.last_decision().unwrap();
    assert_eq!(
        (d.action, d.reason),
        (DecisionAction::Hold, Reason::InsufficientSamples),
        "{d}"
    );
    assert_eq!(r.weight().basis_points(), 1000);
}

#[test]
fn strong_evidence_rolls_back_before_min_samples() {
    let cfg = cfg();
    let mut r = started(&cfg);
    // 8 % errors (below error_spike) against 1 %, 10 canary requests a second.
    let (t, out) = drive(
        &mut r,
        &cfg,
        0,
        100,
        100,
        Canary {
            error_rate: 0.08,
            ..HEALTHY
        },
    );
    let d = out.expect("rolled back").decision.unwrap();
    assert_eq!(
        (d.action, d.reason),
        (DecisionAction::Rollback, Reason::ErrorRate),
        "{d}"
    );
    assert!(d.message.contains("before min_samples"), "{d}");
    assert!(
        t < 90 * SECOND,
        "{t}: fewer than min_samples canary requests"
    );
}

#[test]
fn a_canary_as_bad_as_stable_is_no_spike() {
    // Both versions answer 5 % errors; one poll the canary answers 12.4 % (20 of 161).
    let cfg = cfg();
    let mut r = started(&cfg);
    for s in 1..=40 {
        let mut p = poll(
            &r,
            1611,
            Canary {
                error_rate: 0.05,
                ..HEALTHY
            },
        );
        p.stable.errors = Series::Present(72);
        if s == 30 {
            p.canary.errors = Series::Present(20);
        }
        let out = r.on_event(s * SECOND, Event::Poll(p), &cfg, &up());
        assert!(
            out.decision
                .as_ref()
                .is_none_or(|d| d.action != DecisionAction::Rollback),
            "{:?}",
            out.decision
        );
    }
}

fn missing_canary_errors(r: &Rollout) -> Poll {
    let mut p = poll(r, 2000, HEALTHY);
    p.canary.errors = Series::Missing;
    p
}

#[test]
fn missing_metrics_hold() {
    let cfg = cfg();
    let mut r = started(&cfg);
    for s in 1..=120 {
        let t = s * SECOND;
        let p = missing_canary_errors(&r);
        r.on_event(t, Event::Poll(p), &cfg, &up());
        if r.evaluation_due(t, &cfg) {
            let out = r.on_event(t, Event::Evaluate, &cfg, &up());
            if let Some(d) = out.decision {
                assert_eq!(
                    (d.action, d.reason),
                    (DecisionAction::Hold, Reason::MetricsMissing),
                    "{d}"
                );
                assert!(d.message.contains("canary.errors"), "{d}");
                assert_eq!(t % (15 * SECOND), 0, "recorded once per interval");
            }
        }
    }
    assert_eq!(
        (r.phase(), r.weight().basis_points()),
        (Phase::Stepping, 1000),
        "never promoted"
    );
}

#[test]
fn missing_metrics_roll_back_when_configured() {
    let cfg = RolloutConfig {
        metrics_missing: MissingPolicy::Rollback,
        metrics_missing_intervals: 2,
        ..cfg()
    };
    let mut r = started(&cfg);
    let mut rollback_at = None;
    for s in 1..=60 {
        let t = s * SECOND;
        let p = missing_canary_errors(&r);
        r.on_event(t, Event::Poll(p), &cfg, &up());
        if r.evaluation_due(t, &cfg) {
            let out = r.on_event(t, Event::Evaluate, &cfg, &up());
            if out
                .decision
                .as_ref()
                .is_some_and(|d| d.action == DecisionAction::Rollback)
            {
                assert_eq!(out.decision.unwrap().reason, Reason::MetricsMissing);
                rollback_at = Some(t);
                break;
            }
        }
    }
    assert_eq!(rollback_at, Some(30 * SECOND), "second missing evaluation");
}

/// A latency series that is present but never observes anything: the old judge held forever
/// as "inconclusive"; now the hold says which signal has no data, and the `metrics_missing`
/// policy applies to it.
#[test]
fn a_signal_without_data_is_named_and_follows_the_missing_policy() {
    let empty_latency = |r: &Rollout| {
        let mut p = poll(r, 2000, HEALTHY);
        p.canary.latency = Series::Present(lognormal_histogram(0, 100.0, 0.5, 0.0));
        p
    };
    let cfg = cfg();
    let mut r = started(&cfg);
    let mut last = None;
    for s in 1..=60 {
        let t = s * SECOND;
        r.on_event(t, Event::Poll(empty_latency(&r)), &cfg, &up());
        if r.evaluation_due(t, &cfg) {
            if let Some(d) = r.on_event(t, Event::Evaluate, &cfg, &up()).decision {
                last = Some(d);
            }
        }
    }
    let d = last.expect("holds are recorded");
    assert_eq!(
        (d.action, d.reason),
        (DecisionAction::Hold, Reason::NoData),
        "{d}"
    );
    assert!(d.message.contains("a signal without data"), "{d}");
    assert!(
        d.message
            .contains("latency_mean: fewer than 2 latency observations"),
        "{d}"
    );
    assert_eq!(r.phase(), Phase::Stepping);

    let cfg = RolloutConfig {
        metrics_missing: MissingPolicy::Rollback,
        metrics_missing_intervals: 2,
        ..cfg
    };
    let mut r = started(&cfg);
    for s in 1..=60 {
        let t = s * SECOND;
        r.on_event(t, Event::Poll(empty_latency(&r)), &cfg, &up());
        if r.evaluation_due(t, &cfg) {
            r.on_event(t, Event::Evaluate, &cfg, &up());
        }
        if r.phase() == Phase::RolledBack {
            assert_eq!(t, 30 * SECOND);
            break;
        }
    }
    let d = r.last_decision().unwrap();
    assert_eq!(
        (d.action, d.reason),
        (DecisionAction::Rollback, Reason::NoData),
        "{d}"
    );
}

/// The canary's metrics could not be scraped because this node ran out of descriptors: that
/// says nothing about the canary, so even `metrics_missing = rollback` after one interval
/// only holds, naming the cause; the same poll with the backend at fault rolls back.
#[test]
fn metrics_missing_for_a_local_reason_hold_and_do_not_count() {
    let cfg = RolloutConfig {
        metrics_missing: MissingPolicy::Rollback,
        metrics_missing_intervals: 1,
        ..cfg()
    };
    let local = |r: &Rollout| {
        let mut p = poll(r, 2000, HEALTHY);
        p.canary = Window::missing();
        p.problems = vec!["k0: scrape not made, local failure on this node: Too many open files (os error 24) [local]".into()];
        p.local_failure = true;
        p
    };
    let mut r = started(&cfg);
    for s in 1..=60 {
        let t = s * SECOND;
        let p = local(&r);
        r.on_event(t, Event::Poll(p), &cfg, &up());
        if r.evaluation_due(t, &cfg) {
            let d = r
                .on_event(t, Event::Evaluate, &cfg, &up())
                .decision
                .unwrap();
            assert_eq!(
                (d.action, d.reason),
                (DecisionAction::Hold, Reason::MetricsUnknown),
                "{d}"
            );
            assert!(d.message.contains("Too many open files"), "{d}");
            assert!(
                d.message
                    .contains("not counted toward metrics_missing_intervals"),
                "{d}"
            );
        }
    }
    assert_eq!(r.phase(), Phase::Stepping);
    // The backend's own failure (refused) counts, and names the cause.
    let mut r = started(&cfg);
    let mut decision = None;
    for s in 1..=30 {
        let t = s * SECOND;
        let mut p = local(&r);
        p.problems = vec!["k0: connection refused: nothing listens on that port [refused]".into()];
        p.local_failure = false;
        r.on_event(t, Event::Poll(p), &cfg, &up());
        if r.evaluation_due(t, &cfg) {
            decision = r.on_event(t, Event::Evaluate, &cfg, &up()).decision;
            break;
        }
    }
    let d = decision.expect("an evaluation");
    assert_eq!(
        (d.action, d.reason),
        (DecisionAction::Rollback, Reason::MetricsMissing),
        "{d}"
    );
    assert!(d.message.contains("k0: connection refused"), "{d}");
}

#[test]
fn pause_stops_automatic_steps_and_resume_continues() {
    let cfg = cfg();
    let mut r = started(&cfg);
    let out = r.on_action(SECOND, Action::Pause, &cfg).unwrap();
    assert_eq!(out.decision.unwrap().action, DecisionAction::Pause);
    let (_, out) = drive(&mut r, &cfg, SECOND, 300, 2000, HEALTHY);
    assert!(out.is_none(), "paused: no step");
    assert!(!r.evaluation_due(400 * SECOND, &cfg));
    assert_eq!(r.weight().basis_points(), 1000);
    r.on_action(301 * SECOND, Action::Resume, &cfg).unwrap();
    let (_, out) = drive(&mut r, &cfg, 301 * SECOND, 60, 2000, HEALTHY);
    assert_eq!(
        out.unwrap().weight.basis_points(),
        2500,
        "data gathered while paused counts"
    );
    // A spike still rolls back a paused rollout.
    r.on_action(400 * SECOND, Action::Pause, &cfg).unwrap();
    r.on_event(
        401 * SECOND,
        Event::Poll(poll(&r, 2000, HEALTHY)),
        &cfg,
        &up(),
    );
    let out = r.on_event(
        402 * SECOND,
        Event::Poll(poll(
            &r,
            2000,
            Canary {
                error_rate: 0.5,
                ..HEALTHY
            },
        )),
        &cfg,
        &up(),
    );
    assert_eq!(out.decision.unwrap().reason, Reason::ErrorSpike);
}

#[test]
fn start_paused_waits_for_resume() {
    let cfg = RolloutConfig {
        start: StartMode::Paused,
        ..cfg()
    };
    let (mut r, _) = Rollout::new(0, vec!["c".into()], &cfg);
    assert!(r.paused());
    let out = r.on_event(SECOND, Event::WarmupDone, &cfg, &up());
    assert_eq!((r.phase(), out.weight), (Phase::Pending, Weight::ZERO));
    let out = r.on_action(2 * SECOND, Action::Resume, &cfg).unwrap();
    assert_eq!(
        (r.phase(), out.weight.basis_points()),
        (Phase::Stepping, 1000)
    );
}

#[test]
fn operator_actions() {
    let cfg = cfg();
    let mut r = started(&cfg);
    assert_eq!(
        r.on_action(SECOND, Action::Promote, &cfg)
            .unwrap()
            .weight
            .basis_points(),
        2500
    );
    assert_eq!(r.step(&cfg), Some(1));
    let out = r
        .on_action(
            2 * SECOND,
            Action::SetWeight(Weight::from_basis_points(3300)),
            &cfg,
        )
        .unwrap();
    assert_eq!(
        (out.weight.basis_points(), r.paused(), r.step(&cfg)),
        (3300, true, None)
    );
    assert_eq!(
        r.on_action(3 * SECOND, Action::Promote, &cfg)
            .unwrap()
            .weight
            .basis_points(),
        5000,
        "next step above"
    );
    let out = r.on_action(4 * SECOND, Action::PromoteFull, &cfg).unwrap();
    assert_eq!((out.weight, r.phase()), (Weight::FULL, Phase::Promoted));
    let e = r.on_action(5 * SECOND, Action::Promote, &cfg).unwrap_err();
    assert_eq!(e.to_string(), "cannot promote: the rollout is promoted; start a new rollout with `canary start` or change the canary group");
    let out = r.on_action(6 * SECOND, Action::Rollback, &cfg).unwrap();
    assert_eq!((out.weight, r.phase()), (Weight::ZERO, Phase::RolledBack));
    assert!(r.on_action(7 * SECOND, Action::Rollback, &cfg).is_err());
    assert!(r.on_action(7 * SECOND, Action::Pause, &cfg).is_err());
    let out = r.on_action(8 * SECOND, Action::Start, &cfg).unwrap();
    assert!(out.warm_up);
    assert_eq!(
        (r.phase(), out.decision.unwrap().reason),
        (Phase::Pending, Reason::Operator)
    );
    assert!(r.on_action(9 * SECOND, Action::Start, &cfg).is_err());
    // Promote during warm-up skips the rest of it; set-weight 100 promotes.
    assert_eq!(
        r.on_action(10 * SECOND, Action::Promote, &cfg)
            .unwrap()
            .weight
            .basis_points(),
        1000
    );
    r.on_action(11 * SECOND, Action::SetWeight(Weight::FULL), &cfg)
        .unwrap();
    assert_eq!(r.phase(), Phase::Promoted);
}

#[test]
fn canary_group_changes_restart_or_idle() {
    let cfg = cfg();
    let mut r = started(&cfg);
    r.on_action(SECOND, Action::Promote, &cfg).unwrap();
    let same = r.on_event(
        2 * SECOND,
        Event::CanaryChanged {
            fingerprint: vec!["v2-a@198.18.0.21".into()],
        },
        &cfg,
        &up(),
    );
    assert!(same.decision.is_none());
    assert_eq!(r.weight().basis_points(), 2500);
    let out = r.on_event(
        3 * SECOND,
        Event::CanaryChanged {
            fingerprint: vec!["v3-a@198.18.0.31".into()],
        },
        &cfg,
        &up(),
    );
    assert!(out.warm_up);
    assert_eq!(
        (r.phase(), out.weight, r.windows()),
        (Phase::Pending, Weight::ZERO, 0)
    );
    let out = r.on_event(
        4 * SECOND,
        Event::CanaryChanged {
            fingerprint: vec![],
        },
        &cfg,
        &up(),
    );
    assert_eq!((r.phase(), out.weight), (Phase::Idle, Weight::ZERO));
    assert!(r.on_action(5 * SECOND, Action::Start, &cfg).is_err());
}

#[test]
fn restores_from_persisted_state() {
    let cfg = cfg();
    let mut r = started(&cfg);
    r.on_action(SECOND, Action::Promote, &cfg).unwrap();
    let (t, _) = drive(&mut r, &cfg, SECOND, 10, 2000, HEALTHY);
    let saved = r.to_json();
    let mut restored = Rollout::from_json(&saved).expect("state reads back");
    assert_eq!(
        (restored.phase(), restored.weight(), restored.step(&cfg)),
        (Phase::Stepping, Weight::from_basis_points(2500), Some(1))
    );
    assert_eq!(restored.window().polls, r.window().polls);
    assert_eq!(restored.windows(), r.windows());
    // Both continue identically.
    let (a, out_a) = drive(&mut r, &cfg, t, 120, 2000, HEALTHY);
    let (b, out_b) = drive(&mut restored, &cfg, t, 120, 2000, HEALTHY);
    assert_eq!((a, out_a.map(|o| o.weight)), (b, out_b.map(|o| o.weight)));
    assert!(matches!(
        Rollout::from_json("{"),
        Err(RolloutError::State(_))
    ));
}

#[test]
fn decisions_display_and_serialize() {
    let cfg = cfg();
    let mut r = started(&cfg);
    let (_, out) = drive(
        &mut r,
        &cfg,
        0,
        600,
        2000,
        Canary {
            error_rate: 0.05,
            ..HEALTHY
        },
    );
    let d = out.unwrap().decision.unwrap();
    let text = d.to_string();
    assert!(
        text.starts_with(
            "rollback (error_rate): 10% -> 0%, phase rolled_back: canary is worse on error_rate"
        ),
        "{text}"
    );
    assert!(text.contains("error_rate    FAIL"), "{text}");
    let json = serde_json::to_string(&d).unwrap();
    let back: Decision = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (back.action, back.reason, back.to),
        (d.action, d.reason, d.to)
    );
}

/// Sets `field` in the persisted JSON of `r` to `value`.
fn tampered(r: &Rollout, field: &str, value: serde_json::Value) -> Rollout {
    let mut json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    json[field] = value;
    Rollout::from_json(&json.to_string()).expect("still parses")
}

#[test]
fn restored_state_is_validated_and_names_the_field() {
    let cfg = cfg();
    let r = started(&cfg);
    assert_eq!(r.phase(), Phase::Stepping);
    assert_eq!(r.validate(), Ok(()));

    // A weight of 4,000,000,000 basis points parses but is refused.
    let e = tampered(&r, "weight", 4_000_000_000u64.into())
        .validate()
        .unwrap_err();
    assert_eq!(e.field, "weight");
    assert!(e.to_string().contains("4000000000"), "{e}");
    assert!(e.to_string().contains("at most 10000"), "{e}");

    // Weights the phase cannot have.
    let e = tampered(&r, "weight", 10_000.into())
        .validate()
        .unwrap_err();
    assert_eq!(e.field, "weight");
    assert!(e.to_string().contains("phase stepping"), "{e}");
    let e = tampered(&r, "phase", "promoted".into())
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("phase promoted"), "{e}");
    let e = tampered(&r, "phase", "rolled_back".into())
        .validate()
        .unwrap_err();
    assert_eq!(e.field, "weight");
    let e = tampered(&r, "phase", "idle".into()).validate().unwrap_err();
    assert_eq!(e.field, "weight");

    // Operator weights off the configured steps are valid while stepping.
    let mut manual = started(&cfg);
    manual
        .on_action(
            1000,
            Action::SetWeight(Weight::from_basis_points(1234)),
            &cfg,
        )
        .unwrap();
    manual.on_action(2000, Action::Resume, &cfg).unwrap();
    assert_eq!(manual.validate(), Ok(()));
    // Promoted and rolled back are valid too.
    manual.on_action(3000, Action::PromoteFull, &cfg).unwrap();
    assert_eq!(manual.validate(), Ok(()));
    manual.on_action(4000, Action::Rollback, &cfg).unwrap();
    assert_eq!(manual.validate(), Ok(()));
}

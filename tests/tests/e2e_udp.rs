//! A UDP service end to end (`protocol = "udp"`, `canary-model --udp-listen` on the backends):
//! a healthy canary is promoted to 100% and a failing one rolled back, while long-lived UDP
//! flows (one socket each, a datagram every 200 ms) stay on the backend they started on and
//! new flows follow the weight. No answer is lost: the lab's links are veths on one host, so
//! a datagram is lost only where the balancer or a backend drops it, which these rollouts
//! must not cause. The UDP idle timeout re-balances a flow that fell silent.

mod e2e_support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::LabSpec;
use e2e_support::{
    cli_ok, flow_delta, flows, group_sum, in_netns, new_conn_load, settle_counters, start, totals,
    transport_failures, vip, wait_status, Background,
};

fn udp_spec(prefix: char) -> DeploymentSpec {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag(prefix));
    spec.protocol = "udp".into();
    spec.lab.clients = 2;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 20;
    spec
}

/// New flows (a socket per request) and 10 long-lived flows per client.
fn udp_load(d: &Deployment) -> canary_lab::loadgen::LoadSpec {
    let mut load = new_conn_load(d, &d.lab.clients()[0], 0, 21);
    assert!(load.udp);
    load.interval = Duration::from_millis(40);
    load.keepalive = 10;
    load.keepalive_interval = Duration::from_millis(200);
    load
}

/// Lost answers (no answer in time, refused) over all reports.
fn lost(reports: &[canary_lab::loadgen::Report]) -> u64 {
    reports.iter().map(transport_failures).sum()
}

/// Long-lived flows that were answered by more than one backend.
fn moved(reports: &[canary_lab::loadgen::Report]) -> u64 {
    reports.iter().map(|r| r.keep_alive_connections.moved).sum()
}

#[test]
fn udp_flows_keep_their_backend_through_a_promotion_with_no_lost_answer() {
    let mut spec = udp_spec('u');
    // A flow sending every 200 ms never idles out; after the promotion every earlier entry
    // has, so that each request of a new socket is a new flow even when the kernel gives the
    // socket a port an earlier one used (ephemeral ports repeat within seconds).
    spec.udp_idle_timeout = "5s".into();
    let d = start(spec);
    let load = udp_load(&d);
    let (promoted, background) = std::thread::scope(|scope| {
        // Chunks of 8 s: each long-lived flow lives through two or more weight steps.
        let bg = Background::start(scope, &d, &load, Duration::from_secs(8));
        let (s, _) = wait_status(&d, "promotion to 100%", Duration::from_mins(2), |s| {
            s.phase == "promoted" || s.phase == "rolled_back"
        });
        (s, bg.finish())
    });
    let events = e2e_support::decisions(&promoted);
    let (requests, ok, failed, _, status) = totals(&background);
    let flows_seen: u64 = background
        .iter()
        .map(|r| r.keep_alive_connections.connections)
        .sum();
    println!(
        "UDP during the rollout: {requests} requests, {ok} answered, {failed} failed \
         ({} lost, {status} errors); {flows_seen} long-lived flows, {} moved; {events:#?}",
        lost(&background),
        moved(&background)
    );
    for r in &background {
        if r.failed > 0 {
            println!("failures {:?}: {:?}", r.failures, r.failure_samples);
        }
    }
    assert_eq!(promoted.phase, "promoted", "{events:#?}");
    assert!(requests > 500, "too little load: {requests}");
    assert_eq!(failed, 0, "no UDP request fails or goes unanswered");
    assert!(flows_seen >= 20, "long-lived flows reported: {flows_seen}");
    assert_eq!(moved(&background), 0, "a UDP flow changed backend");
    // The judge saw UDP traffic on both groups (the model server's metrics).
    let versions = e2e_support::merge_versions(&background);
    assert!(
        versions.get("v2").copied().unwrap_or(0) > 100,
        "{versions:?}"
    );

    // After the promotion (and the idle timeout) new UDP flows all go to canary, each counted
    // by the kernel.
    std::thread::sleep(Duration::from_secs(5));
    settle_counters();
    let before = flows(&d);
    let reports =
        e2e_support::load_all_clients(&d, &new_conn_load(&d, &d.lab.clients()[0], 500, 21));
    settle_counters();
    let delta = flow_delta(&before, &flows(&d));
    let (_, ok, failed, _, _) = totals(&reports);
    let versions = e2e_support::merge_versions(&reports);
    println!("after promotion: {ok} answered, {failed} failed; {versions:?}; new flows {delta:?}");
    assert_eq!(failed, 0);
    assert_eq!(
        versions.get("v1"),
        None,
        "answers from stable after the promotion"
    );
    assert_eq!(versions.get("v2").copied(), Some(ok));
    assert_eq!(group_sum(&delta, "s"), 0, "{delta:?}");
    // A socket that gets the port of one closed less than the idle timeout ago has the same
    // 5-tuple: to the balancer it continues that flow (a hit, not a new flow). The kernel
    // picks ephemeral ports at random, so a few of 1000 requests from 21 addresses do.
    assert!(
        group_sum(&delta, "k") * 100 >= ok * 97,
        "canary counted {} new flows for {ok} answered requests: {delta:?}",
        group_sum(&delta, "k")
    );
}

/// One UDP flow from the test: a socket in a client namespace, connected to the VIP.
struct Flow {
    socket: UdpSocket,
    id: u64,
}

impl Flow {
    fn open(d: &Deployment, source: std::net::IpAddr) -> Self {
        let target = vip(d);
        let socket = in_netns(&d.lab.clients()[1].netns, || {
            let s = UdpSocket::bind(SocketAddr::new(source, 0)).expect("bind");
            s.connect(target).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s
        });
        Flow { socket, id: 0 }
    }

    /// The backend that answers one request on this flow.
    fn ask(&mut self) -> String {
        self.id += 1;
        let request = serde_json::json!({ "text": "great product", "id": self.id });
        self.socket
            .send(request.to_string().as_bytes())
            .expect("send");
        let mut buf = [0u8; 2048];
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no answer on {:?}: {e}", self.socket.local_addr()));
            let v: serde_json::Value = serde_json::from_slice(&buf[..n]).expect("JSON answer");
            if v["id"].as_u64() == Some(self.id) {
                return v["backend"].as_str().unwrap_or("error").to_string();
            }
        }
    }
}

#[test]
fn udp_flows_stay_through_a_rollback_and_an_idle_flow_is_balanced_afresh() {
    const IDLE: Duration = Duration::from_secs(3);
    let mut spec = udp_spec('v');
    spec.udp_idle_timeout = "3s".into();
    spec.start = "paused".into();
    // The canary fails 30% of its requests: an error spike.
    spec.model_args = |n| {
        if n.name.starts_with('k') {
            vec!["--error-rate".into(), "0.3".into()]
        } else {
            Vec::new()
        }
    };
    let d = start(spec);
    assert_eq!(
        e2e_support::pinned_global_config(&d).udp_idle_timeout_ms,
        3_000,
        "the daemon writes udp_idle_timeout into the kernel's config"
    );
    // Half of all new flows to canary, before any judgement.
    cli_ok(&d, &["set-weight", "50"]);

    // Flows of the test itself, from the second client's addresses: some land on canary.
    let sources = e2e_support::client_sources(&d, &d.lab.clients()[1]);
    let mut mine: Vec<(Flow, String)> = sources
        .iter()
        .map(|s| {
            let mut f = Flow::open(&d, *s);
            let b = f.ask();
            (f, b)
        })
        .collect();
    let on_canary: Vec<usize> = (0..mine.len())
        .filter(|i| mine[*i].1.starts_with('k'))
        .collect();
    assert!(
        on_canary.len() >= 4,
        "flows on canary: {on_canary:?} of {}",
        mine.len()
    );
    // Half of the canary flows keep talking (every 250 ms), the other half fall silent.
    let (busy, silent) = on_canary.split_at(on_canary.len() / 2);
    let busy_set: Vec<usize> = busy.to_vec();

    let load = udp_load(&d);
    let stop = AtomicBool::new(false);
    let (rolled_back, background, busy_answers, after) = std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load, Duration::from_secs(3));
        cli_ok(&d, &["resume"]);
        let busy_flows: Vec<(Flow, String)> =
            busy_set.iter().rev().map(|i| mine.remove(*i)).collect();
        let talker = scope.spawn(|| {
            let mut flows = busy_flows;
            let mut answers: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                for (f, first) in &mut flows {
                    let b = f.ask();
                    *answers
                        .entry(first.clone())
                        .or_default()
                        .entry(b)
                        .or_default() += 1;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (flows, answers)
        });
        let (s, _) = wait_status(&d, "rollback", Duration::from_mins(2), |s| {
            s.phase == "promoted" || s.phase == "rolled_back"
        });
        // Rolled back: weight 0. The silent flows have been quiet for longer than the idle
        // timeout; the busy ones go on a little longer on their (drained) canary backend.
        std::thread::sleep(IDLE);
        stop.store(true, Ordering::Relaxed);
        let (mut flows, answers) = talker.join().expect("talker");
        // At once (before the busy flows could idle out): which backend answers each flow now.
        let after: Vec<(String, String, String)> = mine
            .iter_mut()
            .chain(flows.iter_mut())
            .map(|(f, first)| {
                let src = f.socket.local_addr().unwrap().ip().to_string();
                (src, first.clone(), f.ask())
            })
            .collect();
        (s, bg.finish(), answers, after)
    });
    let events = e2e_support::decisions(&rolled_back);
    let (requests, ok, failed, transport, status) = totals(&background);
    println!(
        "UDP during the rollback: {requests} requests, {ok} answered, {failed} failed \
         ({transport} lost, {status} injected errors); {} flows moved; busy flows {busy_answers:?}; \
         {events:#?}",
        moved(&background)
    );
    assert_eq!(rolled_back.phase, "rolled_back", "{events:#?}");
    assert_eq!(lost(&background), 0, "no UDP answer is lost");
    assert!(
        status > 0,
        "the canary's injected errors reached the clients"
    );
    assert_eq!(moved(&background), 0, "a UDP flow changed backend");
    for (first, answered_by) in &busy_answers {
        assert_eq!(
            answered_by.keys().collect::<Vec<_>>(),
            [first],
            "a busy flow on {first} moved (drain keeps canary flows)"
        );
    }

    // Weight 0 now: a flow that was silent for longer than the idle timeout is a new flow,
    // and goes to stable; a busy one (which talked until a moment ago) stays on canary.
    let silent_sources: Vec<String> = silent.iter().map(|i| sources[*i].to_string()).collect();
    let mut moved_to_stable = 0;
    let mut still_canary = 0;
    for (src, first, now) in &after {
        if !first.starts_with('k') {
            continue;
        }
        if silent_sources.contains(src) {
            assert!(
                now.starts_with('s'),
                "flow from {src} was silent for {IDLE:?}+ but stayed on {now}"
            );
            moved_to_stable += 1;
        } else {
            assert_eq!(now, first, "busy flow from {src} moved");
            still_canary += 1;
        }
    }
    println!(
        "after the rollback: {moved_to_stable} idle flows re-balanced to stable, \
         {still_canary} busy flows kept on canary"
    );
    assert_eq!(moved_to_stable, silent.len());
    assert_eq!(still_canary, busy.len());
}

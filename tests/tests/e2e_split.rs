//! The configured weight is the canary's share of new connections, measured by the kernel's
//! per-backend counters and by the clients, and each group spreads its share evenly.

mod e2e_support;

use canary_lab::deployment::DeploymentSpec;
use canary_lab::lab::LabSpec;
use e2e_support::{
    cli_ok, flow_delta, flows, group_sum, load_all_clients, merge_versions, new_conn_load,
    settle_counters, start, totals,
};

#[test]
fn canary_share_follows_the_weight_and_groups_are_balanced() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('w'));
    spec.lab.clients = 4;
    spec.lab.stable = 3;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 20;
    spec.start = "paused".into();
    let d = start(spec);

    for weight in [10.0_f64, 50.0] {
        cli_ok(&d, &["set-weight", &weight.to_string()]);
        settle_counters();
        let before = flows(&d);
        // 4 clients x 1,600 = 6,400 new connections from 84 addresses.
        let reports = load_all_clients(&d, &new_conn_load(&d, &d.lab.clients()[0], 1600, 21));
        settle_counters();
        let delta = flow_delta(&before, &flows(&d));
        let (requests, ok, failed, _, _) = totals(&reports);
        let (stable, canary) = (group_sum(&delta, "s"), group_sum(&delta, "k"));
        let kernel_share = canary as f64 / (stable + canary) as f64 * 100.0;
        let versions = merge_versions(&reports);
        let client_share = versions.get("v2").copied().unwrap_or(0) as f64 / ok as f64 * 100.0;
        println!(
            "weight {weight}%: {requests} connections, {ok} ok, {failed} failed; kernel new flows \
             {delta:?} -> canary {kernel_share:.2}%; answers {versions:?} -> canary {client_share:.2}%"
        );
        assert_eq!(failed, 0);
        assert!(
            stable + canary >= 5000,
            "only {} new flows",
            stable + canary
        );
        assert!(
            (kernel_share - weight).abs() <= 2.0,
            "kernel canary share {kernel_share:.2}% at weight {weight}%"
        );
        assert!(
            (client_share - weight).abs() <= 2.0,
            "client-seen canary share {client_share:.2}% at weight {weight}%"
        );
        for (prefix, members) in [("s", 3.0), ("k", 2.0)] {
            let total = group_sum(&delta, prefix) as f64;
            let mean = total / members;
            for (name, n) in delta.iter().filter(|(k, _)| k.starts_with(prefix)) {
                let dev = (*n as f64 - mean) / mean * 100.0;
                println!("  {name}: {n} new flows ({dev:+.1}% from its group's mean {mean:.0})");
                assert!(
                    dev.abs() <= 20.0,
                    "{name} got {n} of its group's {total} new flows ({dev:+.1}% from the mean)"
                );
            }
        }
    }
}

//! examples/custom_controller.rs, run on the harness: a controller of the
//! embedder's keeps a label-selected service at one replica per zone as
//! zones come and go.

#[path = "../examples/custom_controller.rs"]
mod example;

use std::collections::BTreeMap;

fn zones(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(z, n)| (z.to_string(), *n)).collect()
}

#[tokio::test(start_paused = true)]
async fn one_replica_per_zone_as_zones_come_and_go() {
    let steps = example::demo().await.expect("the demo runs");
    let seen: Vec<(u64, BTreeMap<String, usize>)> = steps.iter().map(|s| (s.replicas, s.per_zone.clone())).collect();
    assert_eq!(
        seen,
        vec![
            (3, zones(&[("a", 1), ("b", 1), ("c", 1)])),
            (4, zones(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)])),
            (3, zones(&[("a", 1), ("b", 1), ("d", 1)])),
        ],
        "{steps:#?}"
    );
}

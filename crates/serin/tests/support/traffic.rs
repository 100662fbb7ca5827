//! What the simulated mesh carried, over time: a background sampler of the mesh simulator's
//! `istio_requests_total` counters that turns their increments into per-second samples, so a
//! test can assert the traffic split users' requests really saw, not only the VirtualService.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One sampling period: requests recorded per (destination Service, destination workload).
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since the log started, at the end of the period.
    pub at: f64,
    pub requests: BTreeMap<(String, String), u64>,
}

impl Sample {
    /// Requests that reached `workload` through any of `services`.
    pub fn to(&self, services: &[&str], workload: &str) -> u64 {
        self.requests
            .iter()
            .filter(|((s, w), _)| w == workload && services.contains(&s.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests that reached any workload through any of `services`.
    pub fn through(&self, services: &[&str]) -> u64 {
        self.requests
            .iter()
            .filter(|((s, _), _)| services.contains(&s.as_str()))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Samples the mesh simulator's `/metrics` (what `MeshHandle::metrics_text` renders) about once a
/// second until dropped.
pub struct TrafficLog {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
    start: Instant,
}

impl Drop for TrafficLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `istio_requests_total` per (destination_service_name, destination_workload), summed over the
/// other labels.
pub fn parse_requests(text: &str) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("istio_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let n: u64 = value.trim().parse().unwrap_or(0);
        *out.entry((
            label("destination_service_name"),
            label("destination_workload"),
        ))
        .or_default() += n;
    }
    out
}

impl TrafficLog {
    /// Starts sampling the mesh simulator whose `/metrics` listens on `addr`.
    pub fn start(addr: SocketAddr) -> TrafficLog {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let start = Instant::now();
        let url = format!("http://{addr}/metrics");
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let fetch = || async {
                let text = http.get(&url).send().await.ok()?.text().await.ok()?;
                Some(parse_requests(&text))
            };
            let mut last = loop {
                if let Some(c) = fetch().await {
                    break c;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(now) = fetch().await else { continue };
                let requests = now
                    .iter()
                    .map(|(k, n)| (k.clone(), n - last.get(k).copied().unwrap_or(0)))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                out.lock().unwrap().push(Sample {
                    at: start.elapsed().as_secs_f64(),
                    requests,
                });
                last = now;
            }
        });
        TrafficLog {
            samples,
            task,
            start,
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Seconds since the log started (to mark moments, e.g. a release, against samples' `at`).
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Waits for `n` more samples, so the log covers what happened until now.
    pub async fn settle(&self, n: usize) {
        let target = self.samples.lock().unwrap().len() + n;
        for _ in 0..(n * 30) {
            if self.samples.lock().unwrap().len() >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the traffic log got no new sample for {} s", n * 3);
    }

    /// Per sample, the canary's percentage of what went through `services` (samples with fewer
    /// than `min` requests are left out: too few to say anything).
    pub fn shares(&self, services: &[&str], canary: &str, min: u64) -> Vec<(f64, f64)> {
        self.samples()
            .iter()
            .filter_map(|s| {
                let total = s.through(services);
                (total >= min).then(|| (s.at, 100.0 * s.to(services, canary) as f64 / total as f64))
            })
            .collect()
    }
}

/// Rounded percentages for failure messages.
pub fn show(shares: &[(f64, f64)]) -> String {
    shares
        .iter()
        .map(|(t, s)| format!("{t:.0}s:{s:.0}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `shares` holds each of `plateaus`, in this order, each for at least `run` consecutive
/// samples within `tol` percentage points. Returns the index after the last plateau matched.
pub fn find_plateaus(
    shares: &[(f64, f64)],
    plateaus: &[f64],
    tol: f64,
    run: usize,
) -> Option<usize> {
    let mut i = 0;
    for want in plateaus {
        let mut streak = 0;
        loop {
            let (_, s) = shares.get(i)?;
            i += 1;
            if (s - want).abs() <= tol {
                streak += 1;
                if streak >= run {
                    break;
                }
            } else {
                streak = 0;
            }
        }
        // Move past the rest of this plateau.
        while shares.get(i).is_some_and(|(_, s)| (s - want).abs() <= tol) {
            i += 1;
        }
    }
    Some(i)
}

/// Asserts the plateaus (see [`find_plateaus`]), with the whole series in the message.
pub fn assert_plateaus(what: &str, shares: &[(f64, f64)], plateaus: &[f64], tol: f64, run: usize) {
    assert!(
        find_plateaus(shares, plateaus, tol, run).is_some(),
        "{what}: expected the canary's share to hold {plateaus:?} (±{tol}) in this order, each for \
         {run}+ samples; saw (time:share%) {}",
        show(shares)
    );
}

/// Checks of the parsing and plateau logic above, run by the suite's harness (which has no
/// `#[test]`s: see `tests/e2e.rs`).
pub fn self_check() {
    let text = "# TYPE istio_requests_total counter\n\
        istio_requests_total{reporter=\"destination\",source_workload=\"loadtester\",destination_workload=\"podinfo\",destination_service_name=\"podinfo-canary\",response_code=\"200\"} 7\n\
        istio_requests_total{reporter=\"destination\",source_workload=\"loadtester\",destination_workload=\"podinfo\",destination_service_name=\"podinfo-canary\",response_code=\"500\"} 3\n\
        istio_request_duration_milliseconds_bucket{le=\"1\"} 4\n";
    let got = parse_requests(text);
    assert_eq!(got.len(), 1);
    assert_eq!(got[&("podinfo-canary".into(), "podinfo".into())], 10);

    let s: Vec<(f64, f64)> = [0., 0., 20., 25., 26., 24., 38., 50., 49., 51., 0., 0.]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as f64, *v))
        .collect();
    assert!(find_plateaus(&s, &[0., 25., 50., 0.], 5., 2).is_some());
    assert!(find_plateaus(&s, &[50., 25.], 5., 2).is_none());
    assert!(find_plateaus(&s, &[25., 50., 0.], 5., 4).is_none());
}

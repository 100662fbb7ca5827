//! Istio's destination-side request metrics, kept in memory and written in the Prometheus text
//! format by hand: two metric families do not justify a metrics crate in serin's tree.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Istio's default buckets for `istio_request_duration_milliseconds` (+Inf is implicit).
pub const DURATION_BUCKETS_MS: [f64; 18] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The labels of one series. Field order is the label order in the output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub response_code: u16,
}

impl Series {
    fn labels(&self, out: &mut String) {
        let fqdn = format!(
            "{}.{}.svc.cluster.local",
            self.destination_service_name, self.destination_service_namespace
        );
        let pairs: [(&str, &str); 10] = [
            ("reporter", "destination"),
            ("source_workload", &self.source_workload),
            ("source_workload_namespace", &self.source_workload_namespace),
            ("destination_workload", &self.destination_workload),
            (
                "destination_workload_namespace",
                &self.destination_workload_namespace,
            ),
            ("destination_service", &fqdn),
            ("destination_service_name", &self.destination_service_name),
            (
                "destination_service_namespace",
                &self.destination_service_namespace,
            ),
            ("request_protocol", "http"),
            ("response_code", &self.response_code.to_string()),
        ];
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_into(v, out);
            out.push('"');
        }
    }
}

/// Label-value escaping of the text format: backslash, double quote, newline.
fn escape_into(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    per_bucket: [u64; DURATION_BUCKETS_MS.len() + 1],
    sum: f64,
    count: u64,
}

/// Counters and histograms. A series exists only once a request was recorded for it, so a
/// workload without traffic has no series at all, as in Istio.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    requests: BTreeMap<Series, u64>,
    durations: BTreeMap<Series, Histogram>,
}

impl Registry {
    /// Records `n` requests of `series`, each taking `latency_ms`.
    pub fn record(&mut self, series: &Series, n: u64, latency_ms: f64) {
        if n == 0 {
            return;
        }
        *self.requests.entry(series.clone()).or_default() += n;
        let h = self.durations.entry(series.clone()).or_default();
        let slot = DURATION_BUCKETS_MS
            .iter()
            .position(|le| latency_ms <= *le)
            .unwrap_or(DURATION_BUCKETS_MS.len());
        h.per_bucket[slot] += n;
        h.sum += latency_ms * n as f64;
        h.count += n;
    }

    /// The total of `istio_requests_total` over the series matching `pred`.
    pub fn requests(&self, pred: impl Fn(&Series) -> bool) -> u64 {
        self.requests
            .iter()
            .filter(|(s, _)| pred(s))
            .map(|(_, n)| n)
            .sum()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP istio_requests_total Requests recorded by the destination (serin mesh simulator).\n\
             # TYPE istio_requests_total counter\n",
        );
        for (s, n) in &self.requests {
            out.push_str("istio_requests_total{");
            s.labels(&mut out);
            let _ = writeln!(out, "}} {n}");
        }
        out.push_str(
            "# HELP istio_request_duration_milliseconds Request durations recorded by the destination (serin mesh simulator).\n\
             # TYPE istio_request_duration_milliseconds histogram\n",
        );
        for (s, h) in &self.durations {
            let mut labels = String::new();
            s.labels(&mut labels);
            let mut cumulative = 0;
            for (i, n) in h.per_bucket.iter().enumerate() {
                cumulative += n;
                let le = match DURATION_BUCKETS_MS.get(i) {
                    Some(le) => le.to_string(),
                    None => "+Inf".to_string(),
                };
                let _ = writeln!(
                    out,
                    "istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_count{{{labels}}} {}",
                h.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(code: u16) -> Series {
        Series {
            source_workload: "loadtester".into(),
            source_workload_namespace: "test".into(),
            destination_workload: "podinfo".into(),
            destination_workload_namespace: "test".into(),
            destination_service_name: "podinfo-canary".into(),
            destination_service_namespace: "test".into(),
            response_code: code,
        }
    }

    #[test]
    fn empty_registry_has_no_series() {
        let text = Registry::default().render();
        assert!(!text.contains('{'), "{text}");
        let mut r = Registry::default();
        r.record(&series(200), 0, 5.0);
        assert!(!r.render().contains('{'));
    }

    #[test]
    fn golden() {
        let mut r = Registry::default();
        r.record(&series(500), 1, 250.0);
        r.record(&series(200), 3, 200.0);
        r.record(&series(200), 1, 4000000.0);
        let l200 = "reporter=\"destination\",source_workload=\"loadtester\",source_workload_namespace=\"test\",destination_workload=\"podinfo\",destination_workload_namespace=\"test\",destination_service=\"podinfo-canary.test.svc.cluster.local\",destination_service_name=\"podinfo-canary\",destination_service_namespace=\"test\",request_protocol=\"http\",response_code=\"200\"";
        let l500 = l200.replace("\"200\"", "\"500\"");
        let mut want = String::from(
            "# HELP istio_requests_total Requests recorded by the destination (serin mesh simulator).\n\
             # TYPE istio_requests_total counter\n",
        );
        want += &format!("istio_requests_total{{{l200}}} 4\n");
        want += &format!("istio_requests_total{{{l500}}} 1\n");
        want += "# HELP istio_request_duration_milliseconds Request durations recorded by the destination (serin mesh simulator).\n\
                 # TYPE istio_request_duration_milliseconds histogram\n";
        let les = [
            "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
            "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf",
        ];
        let c200 = [0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4];
        let c500 = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        for (labels, counts, sum, count) in [
            (l200.to_string(), c200, "4000600", 4),
            (l500.clone(), c500, "250", 1),
        ] {
            for (le, c) in les.iter().zip(counts) {
                want += &format!(
                    "istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {c}\n"
                );
            }
            want += &format!("istio_request_duration_milliseconds_sum{{{labels}}} {sum}\n");
            want += &format!("istio_request_duration_milliseconds_count{{{labels}}} {count}\n");
        }
        assert_eq!(r.render(), want);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = series(200);
        s.destination_workload = "a\"b\\c\nd".into();
        let mut r = Registry::default();
        r.record(&s, 1, 1.0);
        assert!(
            r.render()
                .contains("destination_workload=\"a\\\"b\\\\c\\nd\"")
        );
    }

    #[test]
    fn requests_sums_matching_series() {
        let mut r = Registry::default();
        r.record(&series(200), 7, 1.0);
        r.record(&series(500), 3, 1.0);
        assert_eq!(r.requests(|_| true), 10);
        assert_eq!(r.requests(|s| s.response_code == 500), 3);
    }
}

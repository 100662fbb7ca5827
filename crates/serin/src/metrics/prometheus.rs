//! The Prometheus provider: instant queries with Flagger's client semantics (5 s timeout,
//! optional headers, Bearer or Basic auth, last sample wins, empty or NaN means no values).

use std::collections::BTreeMap;
use std::error::Error as _;
use std::time::Duration;

use base64::Engine as _;

use prometheus_http_query::response::Data;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use super::QueryOutcome;

/// Flagger's Prometheus client timeout.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach a Prometheus server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderConfig {
    pub address: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub bearer_token: Option<String>,
    pub basic_auth: Option<(String, String)>,
    pub insecure_skip_verify: bool,
}

/// Why a [`ProviderConfig`] gives no client: a header, credential or address that cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("header name {name:?}: {source}")]
    HeaderName {
        name: String,
        source: reqwest::header::InvalidHeaderName,
    },
    #[error("header {name} value: {source}")]
    HeaderValue {
        name: String,
        source: reqwest::header::InvalidHeaderValue,
    },
    #[error("token: {0}")]
    Token(reqwest::header::InvalidHeaderValue),
    #[error("basic auth: {0}")]
    BasicAuth(reqwest::header::InvalidHeaderValue),
    #[error("building the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("address {address:?}: {source}")]
    Address {
        address: String,
        source: prometheus_http_query::Error,
    },
}

/// Why Flagger's availability probe failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfflineError {
    #[error("vector(1) returned no values")]
    NoValues,
    #[error("{0}")]
    Query(String),
}

/// A ready client for one [`ProviderConfig`]; cheap to clone.
#[derive(Clone)]
pub struct Prometheus {
    client: prometheus_http_query::Client,
}

impl Prometheus {
    pub fn new(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        let mut headers = HeaderMap::new();
        for (k, values) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|source| {
                ProviderError::HeaderName {
                    name: k.clone(),
                    source,
                }
            })?;
            for v in values {
                let value =
                    HeaderValue::from_str(v).map_err(|source| ProviderError::HeaderValue {
                        name: k.clone(),
                        source,
                    })?;
                headers.append(name.clone(), value);
            }
        }
        if let Some(token) = &cfg.bearer_token {
            let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(ProviderError::Token)?;
            headers.insert(AUTHORIZATION, value);
        }
        if let Some((user, pass)) = &cfg.basic_auth {
            let value = HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            ))
            .map_err(ProviderError::BasicAuth)?;
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .timeout(QUERY_TIMEOUT)
            .default_headers(headers)
            .danger_accept_invalid_certs(cfg.insecure_skip_verify)
            .build()
            .map_err(ProviderError::Client)?;
        let client = prometheus_http_query::Client::from(http, cfg.address.trim_end_matches('/'))
            .map_err(|source| ProviderError::Address {
            address: cfg.address.clone(),
            source,
        })?;
        Ok(Prometheus { client })
    }

    /// Runs an instant query.
    pub async fn query(&self, promql: &str) -> QueryOutcome {
        match self.client.query(promql).get().await {
            Ok(res) => classify(res.data()),
            Err(e) => QueryOutcome::Error(error_chain(&e)),
        }
    }

    /// Runs a range query from `start` to `end` (seconds since the epoch) at `step` and returns
    /// the samples of its single series (seconds, value); none for an empty result. Several
    /// series are an error naming their count, as several values are for an instant query. The
    /// error text starts with `bad_data` when Prometheus refused the query itself.
    pub async fn query_range(
        &self,
        promql: &str,
        start: i64,
        end: i64,
        step: Duration,
    ) -> Result<Vec<Sample>, String> {
        let res = self
            .client
            .query_range(promql, start, end, step.as_secs_f64().max(0.001))
            .get()
            .await
            .map_err(|e| error_chain(&e))?;
        samples(res.data())
    }

    /// Flagger's availability probe (`vector(1)`).
    pub async fn is_online(&self) -> Result<(), OfflineError> {
        match self.query("vector(1)").await {
            QueryOutcome::Value(_) => Ok(()),
            QueryOutcome::NoValues => Err(OfflineError::NoValues),
            QueryOutcome::Error(e) => Err(OfflineError::Query(e)),
        }
    }
}

/// Flagger's reading of a result: the last sample of a vector wins; a matrix is an error; an
/// empty vector or NaN is "no values".
pub fn classify(data: &Data) -> QueryOutcome {
    let value = match data {
        Data::Vector(v) => match v.last() {
            Some(sample) => sample.sample().value(),
            None => return QueryOutcome::NoValues,
        },
        Data::Scalar(s) => s.value(),
        Data::Matrix(_) => {
            return QueryOutcome::Error(
                "query returned multiple values (a range vector): use an instant query".into(),
            );
        }
    };
    if value.is_nan() {
        QueryOutcome::NoValues
    } else {
        QueryOutcome::Value(value)
    }
}

/// One sampled value: seconds since the epoch, value.
pub type Sample = (f64, f64);

/// The samples of a range query's result (see [`Prometheus::query_range`]).
pub fn samples(data: &Data) -> Result<Vec<Sample>, String> {
    match data {
        Data::Matrix(series) => match series.as_slice() {
            [] => Ok(Vec::new()),
            [one] => Ok(one
                .samples()
                .iter()
                .map(|s| (s.timestamp(), s.value()))
                .collect()),
            many => Err(format!(
                "the query returned {} series; aggregate it to one (sum, max, histogram_quantile ... by (le))",
                many.len()
            )),
        },
        _ => Err("a range query returned no matrix".into()),
    }
}

/// The client error's Display is only "failed to send request to server"; the cause is deeper.
fn error_chain(e: &prometheus_http_query::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> Data {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn classify_follows_flagger() {
        assert_eq!(
            classify(&data(r#"{"resultType":"vector","result":[]}"#)),
            QueryOutcome::NoValues
        );
        assert_eq!(
            classify(&data(
                r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]},{"metric":{},"value":[1,"99.5"]}]}"#
            )),
            QueryOutcome::Value(99.5)
        );
        assert_eq!(
            classify(&data(r#"{"resultType":"scalar","result":[1,"NaN"]}"#)),
            QueryOutcome::NoValues
        );
        assert!(matches!(
            classify(&data(
                r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}"#
            )),
            QueryOutcome::Error(_)
        ));
    }

    #[test]
    fn range_results_give_one_series_or_name_the_count() {
        assert_eq!(
            samples(&data(r#"{"resultType":"matrix","result":[]}"#)),
            Ok(vec![])
        );
        assert_eq!(
            samples(&data(
                r#"{"resultType":"matrix","result":[{"metric":{},"values":[[10,"1.5"],[25,"NaN"]]}]}"#
            ))
            .map(|s| s.len()),
            Ok(2)
        );
        let two = r#"{"resultType":"matrix","result":[{"metric":{"a":"1"},"values":[[1,"1"]]},{"metric":{"a":"2"},"values":[[1,"1"]]}]}"#;
        assert!(samples(&data(two)).unwrap_err().contains("2 series"));
        assert!(samples(&data(r#"{"resultType":"vector","result":[]}"#)).is_err());
    }

    #[test]
    fn unreachable_server_error_names_the_cause() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A port nobody listens on: bind, take the port, drop the listener.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = Prometheus::new(&ProviderConfig {
            address: format!("http://127.0.0.1:{port}"),
            ..Default::default()
        })
        .unwrap();
        let QueryOutcome::Error(e) = rt.block_on(p.query("vector(1)")) else {
            panic!("expected an error")
        };
        assert!(
            e.contains("failed to send request")
                && e.len() > "failed to send request to server".len(),
            "{e}"
        );
    }
}

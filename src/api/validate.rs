use serde::{Deserialize, Serialize};
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
    pub hint: String,
}
pub fn validate(_v: &serde_json::Value) -> Vec<Problem> {
    vec![]
}
pub fn validate_canary(_c: &super::Canary) -> Vec<Problem> {
    vec![]
}
pub fn validate_metric_template(_c: &super::MetricTemplate) -> Vec<Problem> {
    vec![]
}
pub fn validate_alert_provider(_c: &super::AlertProvider) -> Vec<Problem> {
    vec![]
}

//! Who is asking: the name recorded in `serin.dev/requested-by` and in the controller's Event.
//!
//! Kubernetes does not tell a controller who wrote an object (only the audit log knows), so the
//! CLI names the user itself, preferring what the API server says over what the kubeconfig says:
//! 1. `SelfSubjectReview` (authentication.k8s.io/v1 from 1.28, v1beta1 in 1.27): the
//!    authenticated user, whatever the credential;
//! 2. a `TokenReview` of the kubeconfig's bearer token (needs `create tokenreviews`; what answers
//!    on clusters older than 1.27, which have no SelfSubjectReview);
//! 3. the user entry of the kubeconfig's current context (a local label, not verified).
//!
//! The name is a claim by whoever may patch the Canary, not a proof; RBAC decides who may ask.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};

use super::Session;

pub struct Identity {
    pub name: String,
    /// How the name was found, for the CLI's output.
    pub source: &'static str,
}

pub async fn whoami(s: &Session) -> Identity {
    for version in ["v1", "v1beta1"] {
        if let Some(name) = self_subject_review(s, version).await {
            return Identity {
                name,
                source: "SelfSubjectReview",
            };
        }
    }
    if let Some(token) = bearer_token(s)
        && let Some(name) = token_review(s, token).await
    {
        return Identity {
            name,
            source: "TokenReview",
        };
    }
    match context_user(s) {
        Some(name) => Identity {
            name,
            source: "kubeconfig user, unverified",
        },
        None => Identity {
            name: "unknown".into(),
            source: "no identity found",
        },
    }
}

async fn self_subject_review(s: &Session, version: &str) -> Option<String> {
    let gvk = GroupVersionKind::gvk("authentication.k8s.io", version, "SelfSubjectReview");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "selfsubjectreviews");
    let api: Api<DynamicObject> = Api::all_with(s.client.clone(), &ar);
    let review = DynamicObject::new("serin-cli", &ar);
    let answer = api.create(&PostParams::default(), &review).await.ok()?;
    let name = answer.data["status"]["userInfo"]["username"].as_str()?;
    (!name.is_empty()).then(|| name.to_string())
}

async fn token_review(s: &Session, token: String) -> Option<String> {
    let api: Api<TokenReview> = Api::all(s.client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token,
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api.create(&PostParams::default(), &review).await.ok()?;
    let status = answer.status?;
    if status.authenticated != Some(true) {
        return None;
    }
    status.user?.username.filter(|n| !n.is_empty())
}

fn current_user_entry(s: &Session) -> Option<&kube::config::NamedAuthInfo> {
    let kc = s.kubeconfig.as_ref()?;
    let user = context_user(s)?;
    kc.auth_infos.iter().find(|a| a.name == user)
}

fn context_user(s: &Session) -> Option<String> {
    let kc = s.kubeconfig.as_ref()?;
    let ctx = s.context.as_ref()?;
    kc.contexts
        .iter()
        .find(|c| &c.name == ctx)?
        .context
        .as_ref()?
        .user
        .clone()
        .filter(|u| !u.is_empty())
}

/// The kubeconfig's bearer token (inline or from `tokenFile`). kube keeps it in a secret type
/// whose serialisation is the only way out without another crate.
fn bearer_token(s: &Session) -> Option<String> {
    let info = current_user_entry(s)?.auth_info.as_ref()?;
    let json = serde_json::to_value(info).ok()?;
    if let Some(t) = json["token"].as_str().filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    let path = json["tokenFile"].as_str()?;
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

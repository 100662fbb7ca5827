//! The JSON each chat service receives (docs/flagger-contract.md §7), as pure functions.
//!
//! Slack, Discord and Rocket.Chat get Flagger's attachment payload, so that users' channel
//! formatting and any receiver parsing `attachments[0]` keep working. Slack's message also carries
//! Block Kit blocks with the same text and fields, built with slack-morphism's types; Discord's
//! Slack-compatible endpoint and Rocket.Chat read the attachment and get no blocks.

use serde_json::{Value, json};
use slack_morphism::prelude::{
    SlackApiChatPostMessageRequest, SlackBlock, SlackBlockMarkDownText, SlackBlockText,
    SlackChannelId, SlackContextBlock, SlackContextBlockElement, SlackMessageAttachment,
    SlackMessageAttachmentFieldObject, SlackMessageContent, SlackSectionBlock,
};

use super::Field;
use crate::api::AlertProviderType;
use crate::rollout::Severity;

/// One alert, as every provider renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `canary.Name` (not the target's name), as Flagger uses it.
    pub canary: String,
    pub namespace: String,
    pub text: String,
    pub severity: Severity,
    pub fields: Vec<Field>,
}

impl Message {
    /// `<canary>.<ns>`
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.canary, self.namespace)
    }

    fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The body for a provider type, given the Slack-style channel and user name.
pub fn body(kind: AlertProviderType, channel: &str, username: &str, m: &Message) -> Value {
    match kind {
        AlertProviderType::Slack => slack(channel, username, m),
        AlertProviderType::Discord => slack_compatible(channel, username, m, "good", "danger"),
        AlertProviderType::Rocket => slack_compatible(channel, username, m, "#0076D7", "#FF0000"),
        AlertProviderType::Msteams => msteams(m),
        AlertProviderType::Gchat => gchat(m),
    }
}

/// A webhook address that is no URL to POST to. The address is often a secret (Slack webhook
/// URLs are credentials), so the text leaves it out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUrl {
    #[error("invalid URL: {0}")]
    Parse(#[from] url::ParseError),
    #[error("invalid URL: the scheme must be http or https")]
    Scheme,
}

/// Where to POST: Discord's Slack-compatible endpoint is the webhook URL plus `/slack`.
pub fn url(kind: AlertProviderType, address: &str) -> Result<url::Url, InvalidUrl> {
    let mut u = url::Url::parse(address)?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(InvalidUrl::Scheme);
    }
    if kind == AlertProviderType::Discord && !u.path().ends_with("/slack") {
        let path = format!("{}/slack", u.path().trim_end_matches('/'));
        u.set_path(&path);
    }
    Ok(u)
}

/// Flagger's attachment payload with the given colours, built with slack-morphism's types.
/// slack-morphism's attachment model has no `author_name`, so that key is added to the JSON.
fn attachment_payload(
    channel: &str,
    username: &str,
    m: &Message,
    good: &str,
    danger: &str,
    blocks: Option<Vec<SlackBlock>>,
) -> Value {
    let fields = m
        .fields
        .iter()
        .map(|f| {
            SlackMessageAttachmentFieldObject::new()
                .with_title(f.name.clone())
                .with_value(f.value.clone())
                .with_short(false)
        })
        .collect();
    let attachment = SlackMessageAttachment::new()
        .with_color(if m.is_error() { danger } else { good }.to_string())
        .with_text(m.text.clone())
        .with_mrkdwn_in(vec!["text".into()])
        .with_fields(fields);
    let content = SlackMessageContent::new()
        .with_attachments(vec![attachment])
        .opt_blocks(blocks);
    let request = SlackApiChatPostMessageRequest::new(SlackChannelId::new(channel.into()), content)
        .with_username(username.into())
        .with_icon_url(String::new())
        .with_icon_emoji(":rocket:".into());
    let mut v = serde_json::to_value(&request).unwrap_or_else(|_| json!({}));
    if let Some(a) = v
        .get_mut("attachments")
        .and_then(|a| a.get_mut(0))
        .and_then(Value::as_object_mut)
    {
        a.insert("author_name".into(), json!(m.qualified()));
    }
    v
}

fn slack(channel: &str, username: &str, m: &Message) -> Value {
    attachment_payload(channel, username, m, "good", "danger", Some(blocks(m)))
}

fn slack_compatible(channel: &str, username: &str, m: &Message, good: &str, bad: &str) -> Value {
    attachment_payload(channel, username, m, good, bad, None)
}

/// Slack refuses a section text over 3000 characters and a field over 2000.
const SECTION_TEXT_LIMIT: usize = 3000;
const FIELD_TEXT_LIMIT: usize = 2000;

/// At most `limit` characters, the cut marked with an ellipsis.
fn clip(text: String, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text;
    }
    let mut out: String = text.chars().take(limit - 1).collect();
    out.push('…');
    out
}

/// Block Kit: who (context), what (section text) and the fields (section fields, at most 10).
/// Error texts can be long (a Kubernetes error, a hook's answer), so texts are clipped to Slack's
/// limits rather than have the whole message refused.
pub fn blocks(m: &Message) -> Vec<SlackBlock> {
    let md = |t: String| SlackBlockMarkDownText::new(t);
    let mut out: Vec<SlackBlock> = vec![
        SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(md(m.qualified()))]).into(),
    ];
    let mut section = SlackSectionBlock::new().with_text(SlackBlockText::MarkDown(md(clip(
        m.text.clone(),
        SECTION_TEXT_LIMIT,
    ))));
    if !m.fields.is_empty() {
        section = section.with_fields(
            m.fields
                .iter()
                .take(10)
                .map(|f| {
                    let text = format!("*{}*\n{}", f.name, f.value);
                    SlackBlockText::MarkDown(md(clip(text, FIELD_TEXT_LIMIT)))
                })
                .collect(),
        );
    }
    out.push(section.into());
    out
}

fn msteams(m: &Message) -> Value {
    let facts: Vec<Value> = m
        .fields
        .iter()
        .map(|f| json!({"name": f.name, "value": f.value}))
        .collect();
    json!({
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "themeColor": if m.is_error() { "FF0000" } else { "0076D7" },
        "summary": m.qualified(),
        "sections": [{
            "activityTitle": m.text,
            "activitySubtitle": m.qualified(),
            "facts": facts,
        }],
    })
}

fn gchat(m: &Message) -> Value {
    let paragraph = |text: String| json!({"widgets": [{"textParagraph": {"text": text}}]});
    let mut sections = vec![paragraph(format!(
        "<font color=#848484><strong>{}</strong></font>",
        m.text
    ))];
    for f in &m.fields {
        sections.push(paragraph(format!(
            "{}<br><font color=#848484><strong>{}</strong></font>",
            f.name, f.value
        )));
    }
    json!({
        "cards": [{
            "header": {
                "title": "Flagger",
                "subtitle": m.qualified(),
                "imageUrl": "https://flagger.app/favicon.png",
            },
            "sections": sections,
        }],
    })
}

//! Hand-written schemas for fields whose Rust type is a `serde_json::Value`: schemars would emit `{}`,
//! which a 1.20 API server refuses ("type: Required value").

use schemars::{Schema, SchemaGenerator, json_schema};

/// A list of free-form objects the API server keeps as they are.
pub fn preserve_object_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}
